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

/// A duration as [`parse`] reads it back, in its largest whole unit: `26h`, `90s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// An age or a span for people: `3d 4h`, `5h 12m`, `7m 30s`, `12.3s` (two units at most).
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".into();
    }
    let sign = if secs < 0.0 { "-" } else { "" };
    let s = secs.abs();
    if s < 60.0 {
        return if s == s.trunc() {
            format!("{sign}{s:.0}s")
        } else {
            format!("{sign}{s:.1}s")
        };
    }
    // Rounded to the smaller unit shown, so 2d 3h 59m 59s reads 2d 4h.
    let unit = if s >= 86_400.0 {
        3600.0
    } else if s >= 3600.0 {
        60.0
    } else {
        1.0
    };
    let t = ((s / unit).round() * unit) as u64;
    let (d, h, m, sec) = (t / 86400, t % 86400 / 3600, t % 3600 / 60, t % 60);
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua} {b}{ub}")
        }
    };
    let body = if d > 0 {
        two(d, "d", h, "h")
    } else if h > 0 {
        two(h, "h", m, "m")
    } else {
        two(m, "m", sec, "s")
    };
    format!("{sign}{body}")
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

    #[test]
    fn format_reads_back() {
        for s in ["26h", "90s", "250ms", "7d", "5m", "1500ms"] {
            assert_eq!(format(parse(s).expect(s)), s);
        }
        assert_eq!(format(Duration::from_secs(3600 * 48)), "2d");
    }

    #[test]
    fn human_ages() {
        assert_eq!(human(12.34), "12.3s");
        assert_eq!(human(5.0), "5s");
        assert_eq!(human(450.0), "7m 30s");
        assert_eq!(human(5.0 * 3600.0 + 720.0), "5h 12m");
        assert_eq!(human(3.0 * 86400.0 + 4.0 * 3600.0 + 59.0), "3d 4h");
        assert_eq!(human(2.0 * 86400.0 + 4.0 * 3600.0 - 1.0), "2d 4h");
        assert_eq!(human(-90.0), "-1m 30s");
        assert_eq!(human(86400.0), "1d");
        assert_eq!(human(7200.0), "2h");
    }
}
