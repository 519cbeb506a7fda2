//! Human durations on the command line: `250ms`, `2s`, `5m`, `6h`, `30d`, or a bare number of
//! seconds.

use std::time::Duration;

/// Parse a duration. A clap value parser (e.g. `--timeout`): the error is the message clap
/// prints after the flag it concerns, so a plain `String` serves.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 2s, 5m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    // Far beyond any sane timeout, and Duration cannot hold it: an error, not a panic.
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse("2x").is_err());
        assert!(parse("0s").is_err());
        assert!(parse("").is_err());
    }
}
