//! Durations on the command line: `30m`, `1h30m`, `90s`, `500ms`, `PT30M`, or
//! a bare number of seconds (`1800`, `0.5`).

use std::str::FromStr;

use jiff::SignedDuration;

/// Parses a duration into whole milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() || !(0.0..=1e12).contains(&seconds) {
            return Err(format!("duration {text:?} is out of range"));
        }
        return Ok((seconds * 1000.0).round() as i64);
    }
    let duration = SignedDuration::from_str(text)
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 30m, 1h30m, 90s, 500ms or a number of seconds"))?;
    if duration.is_negative() {
        return Err(format!("duration {text:?} is negative"));
    }
    i64::try_from(duration.as_millis()).map_err(|_| format!("duration {text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn accepts_friendly_iso_and_bare_seconds() {
        let cases = [
            ("30m", 1_800_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("90s", 90_000),
            ("500ms", 500),
            ("PT30M", 1_800_000),
            ("1800", 1_800_000),
            ("0.5", 500),
            (" 10s ", 10_000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_ms(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_negative_and_empty() {
        for text in ["", "abc", "-5m", "-1", "1e400", "30 parsecs"] {
            let error = parse_duration_ms(text).expect_err(text);
            assert!(!error.is_empty());
        }
    }
}
