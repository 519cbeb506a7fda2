//! Reading a guest's serial console for the outcome of a boot.
//!
//! Invariant: an error line is taken only once whole, and the marker seen first wins, so a
//! later boot's message never rewrites the outcome of an earlier one.

/// What a console shows of a boot waited for: see [`console_outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The ready marker, before any error line.
    Ready,
    /// The first line holding the error marker, before any ready marker (from the marker on,
    /// carriage returns dropped).
    Failed(String),
}

/// The console's outcome so far: whichever of `ready` and `error` appears first; `None` if
/// neither yet. An error line counts only once whole (ended by a newline), so a line still
/// being written is not cut short.
pub fn console_outcome(text: &str, ready: &str, error: &str) -> Option<Outcome> {
    let r = text.find(ready);
    let e = marker_line(text, error).filter(|m| m.whole);
    match (r, e) {
        (Some(r), Some(e)) if r < e.at => Some(Outcome::Ready),
        (_, Some(e)) => Some(Outcome::Failed(e.line)),
        (Some(_), None) => Some(Outcome::Ready),
        (None, None) => None,
    }
}

/// The first console line holding a marker: see [`marker_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerLine {
    /// Byte offset of the marker in the console text.
    pub at: usize,
    /// The line from the marker on, carriage returns dropped.
    pub line: String,
    /// The line was ended by a newline (a line still being written may be cut short).
    pub whole: bool,
}

/// The first line of `text` holding `marker`, from the marker on; `None` if it is not there.
/// One reading for the testbeds' boot waits and verify's evidence, so both quote the guest's
/// line the same way.
pub fn marker_line(text: &str, marker: &str) -> Option<MarkerLine> {
    let at = text.find(marker)?;
    let rest = &text[at..];
    let (line, whole) = match rest.find('\n') {
        Some(n) => (&rest[..n], true),
        None => (rest, false),
    };
    Some(MarkerLine {
        at,
        line: line.trim_end_matches('\r').to_string(),
        whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestError;

    const R: &str = "CGSNAP-CASS: ready";
    const E: &str = "CGSNAP-CASS: error";

    #[test]
    fn console_outcome_takes_whichever_marker_comes_first() {
        assert_eq!(console_outcome("boot\nINFO x\n", R, E), None);
        assert_eq!(
            console_outcome("boot\r\nCGSNAP-CASS: ready\r\n", R, E),
            Some(Outcome::Ready)
        );
        let failed = "[ 1.0] x\r\nCGSNAP-CASS: error: Invalid yaml. Please remove properties [hints_directory] from your cassandra.yaml\r\nmore\n";
        assert_eq!(
            console_outcome(failed, R, E),
            Some(Outcome::Failed(
                "CGSNAP-CASS: error: Invalid yaml. Please remove properties [hints_directory] from your cassandra.yaml".into()
            ))
        );
        // An error after ready (a later boot's trouble) does not undo the ready one.
        let later = "CGSNAP-CASS: ready\nCGSNAP-CASS: error: x\n";
        assert_eq!(console_outcome(later, R, E), Some(Outcome::Ready));
        let first = "CGSNAP-CASS: error: cannot mount data disk vdc\nCGSNAP-CASS: ready\n";
        assert!(
            matches!(console_outcome(first, R, E), Some(Outcome::Failed(l)) if l.ends_with("vdc"))
        );
    }

    #[test]
    fn a_half_written_error_line_waits_for_its_end() {
        assert_eq!(console_outcome("CGSNAP-CASS: error: Inval", R, E), None);
        let half = marker_line("x\nCGSNAP-CASS: error: Inval", E).expect("marker is there");
        assert_eq!(
            (half.at, half.line.as_str(), half.whole),
            (2, "CGSNAP-CASS: error: Inval", false)
        );
        assert_eq!(
            console_outcome("CGSNAP-CASS: error: Invalid yaml\n", R, E),
            Some(Outcome::Failed("CGSNAP-CASS: error: Invalid yaml".into()))
        );
        let e = GuestError::Reported {
            name: "cgsnap-cass".into(),
            line: "CGSNAP-CASS: error: Invalid yaml".into(),
        };
        assert_eq!(
            e.to_string(),
            "guest cgsnap-cass: CGSNAP-CASS: error: Invalid yaml"
        );
    }
}
