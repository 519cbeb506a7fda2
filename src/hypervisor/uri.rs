//! Where a libvirt URI points: this machine or another one.
//!
//! Invariant: only a URI without a host part counts as local; `qemu+ssh://host/system` is
//! remote even when `host` resolves to this machine, because cgsnap cannot know that its files
//! are the ones it sees.

/// A URI without a host part names a daemon on this machine, whose files we can create.
pub fn is_local(uri: &str) -> bool {
    uri.split_once("://")
        .map(|(_, rest)| rest.starts_with('/'))
        .unwrap_or(false)
}
