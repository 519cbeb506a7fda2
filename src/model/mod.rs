//! The engine's vocabulary, depending on nothing else of it: the manifest and its state
//! machine, the documented exit codes, durations as written on the command line.

pub mod backup;
pub mod duration;
pub mod exit;
pub mod manifest;
pub mod negative;
