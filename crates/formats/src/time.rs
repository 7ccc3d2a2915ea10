//! Event times: epoch numbers (seconds or milliseconds) and ISO-8601 strings,
//! all turned into milliseconds since the Unix epoch, UTC.
//!
//! # The number rule
//! A number whose absolute value is below 100 000 000 000 is epoch **seconds**
//! (a fraction is allowed and floored to the millisecond); anything larger is
//! epoch **milliseconds** (a fraction is floored). 10^11 seconds is the year
//! 5138 and 10^11 milliseconds is March 1973, so realistic times in either unit
//! never meet the boundary.
//!
//! # Strings
//! Leading and trailing whitespace is ignored. A numeric string follows the
//! number rule, parsed exactly in decimal. Anything else must be an ISO-8601 /
//! RFC 3339 date-time: `2026-01-05T11:00:00Z`, `2026-01-05T13:00:00+02:00`,
//! with optional fractional seconds and a space allowed instead of `T`. A
//! date-time **without an offset is taken as UTC**, and a bare date means its
//! midnight UTC. A time zone annotation (`[Europe/Paris]`) applies only when
//! there is no offset.
//!
//! Every time must lie between [`EVENT_TIME_MIN_MS`] and [`EVENT_TIME_MAX_MS`], inclusive.

use std::fmt;

/// The earliest accepted event time: 1970-01-01T00:00:00Z.
pub const EVENT_TIME_MIN_MS: i64 = 0;

/// The latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const EVENT_TIME_MAX_MS: i64 = 253_402_300_799_999;

/// Numbers below this (in absolute value) are seconds, the rest milliseconds.
const SECONDS_BELOW: u64 = 100_000_000_000;

/// How many characters of a bad value an error message quotes.
const QUOTED_CHARS: usize = 64;

/// Why a value is not an acceptable event time. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeError {
    /// The offending value as the message shows it, truncated.
    value: String,
    problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Empty,
    NotATime,
    NotFinite,
    TooEarly,
    TooLate,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = &self.value;
        match self.problem {
            Problem::Empty => write!(f, "the value is empty"),
            Problem::NotATime => {
                write!(f, "{value} is neither an epoch number nor an ISO-8601 date-time (like 2026-01-05T11:00:00Z)")
            }
            Problem::NotFinite => write!(f, "{value} is not a finite number"),
            Problem::TooEarly => write!(f, "{value} is before 1970-01-01T00:00:00Z"),
            Problem::TooLate => write!(f, "{value} is after 9999-12-31T23:59:59.999Z"),
        }
    }
}

impl std::error::Error for TimeError {}

impl TimeError {
    fn number(value: impl fmt::Display, problem: Problem) -> Self {
        Self { value: truncate(&value.to_string(), QUOTED_CHARS), problem }
    }

    fn string(value: &str, problem: Problem) -> Self {
        Self { value: format!("\"{}\"", truncate(value, QUOTED_CHARS).escape_debug()), problem }
    }
}

/// The first `max_chars` characters of `s`, with `…` when cut.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn check_range(ms: i64, value: impl fmt::Display) -> Result<i64, TimeError> {
    if ms < EVENT_TIME_MIN_MS {
        Err(TimeError::number(value, Problem::TooEarly))
    } else if ms > EVENT_TIME_MAX_MS {
        Err(TimeError::number(value, Problem::TooLate))
    } else {
        Ok(ms)
    }
}

/// An exact instant already in milliseconds (e.g. a Parquet timestamp),
/// range-checked; `shown` is how an error names the value.
#[cfg_attr(not(feature = "parquet"), expect(dead_code, reason = "used by the Parquet reader"))]
pub(crate) fn check_instant_ms(ms: i64, shown: impl fmt::Display) -> Result<i64, TimeError> {
    check_range(ms, shown)
}

/// An integer epoch time (seconds or milliseconds by the number rule) in ms.
///
/// Used for JSON integers and integer Parquet columns, without going through
/// `f64`, so no precision is lost.
pub fn parse_event_time_int(v: i64) -> Result<i64, TimeError> {
    match number_rule_ms(v) {
        Some(ms) => Ok(ms),
        None => check_range(if v.unsigned_abs() < SECONDS_BELOW { v * 1000 } else { v }, v),
    }
}

/// The number rule on an integer, `None` when out of range: the hot path of
/// [`parse_event_time_int`], for whole columns.
#[inline]
pub(crate) fn number_rule_ms(v: i64) -> Option<i64> {
    let ms = if v.unsigned_abs() < SECONDS_BELOW { v * 1000 } else { v };
    (EVENT_TIME_MIN_MS..=EVENT_TIME_MAX_MS).contains(&ms).then_some(ms)
}

/// An unsigned integer epoch time (number rule) in ms.
pub fn parse_event_time_u64(v: u64) -> Result<i64, TimeError> {
    match i64::try_from(v) {
        Ok(v) => parse_event_time_int(v),
        Err(_) => Err(TimeError::number(v, Problem::TooLate)),
    }
}

/// A floating-point epoch time (number rule) in ms. NaN and infinities are
/// errors.
pub fn parse_event_time_number(v: f64) -> Result<i64, TimeError> {
    if !v.is_finite() {
        return Err(TimeError::number(v, Problem::NotFinite));
    }
    if v.abs() < SECONDS_BELOW as f64 {
        // Round to the microsecond before flooring to the millisecond:
        // 1767610800.123 is stored as 1767610800.12299990654, and a plain
        // floor of v * 1000 would give ...122. |v * 1e6| < 1e17 fits in i64.
        let micros = (v * 1e6).round() as i64;
        check_range(micros.div_euclid(1000), v)
    } else {
        let ms = v.floor();
        if ms < EVENT_TIME_MIN_MS as f64 {
            Err(TimeError::number(v, Problem::TooEarly))
        } else if ms > EVENT_TIME_MAX_MS as f64 {
            Err(TimeError::number(v, Problem::TooLate))
        } else {
            Ok(ms as i64)
        }
    }
}

/// A time given as text: an epoch number or an ISO-8601 date-time (see the
/// module docs for the exact rules), in ms since the epoch.
pub fn parse_event_time(s: &str) -> Result<i64, TimeError> {
    let text = s.trim();
    let Some(&first) = text.as_bytes().first() else {
        return Err(TimeError::string(s, Problem::Empty));
    };
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        if let Some(result) = parse_decimal(text) {
            return result;
        }
        // Exponent forms such as 1.7e12 (and not dates, which never parse as f64).
        if let Ok(v) = text.parse::<f64>() {
            return parse_event_time_number(v).map_err(|e| TimeError::string(text, e.problem));
        }
    }
    parse_iso(text)
}

/// Exact decimal parsing of `[+-]digits[.digits]`; `None` if `text` has
/// another shape.
fn parse_decimal(text: &str) -> Option<Result<i64, TimeError>> {
    let (negative, unsigned) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) => (i, f),
        None => (unsigned, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return None;
    }
    let is_zero = int_part.bytes().chain(frac_part.bytes()).all(|b| b == b'0');
    if negative && !is_zero {
        return Some(Err(TimeError::string(text, Problem::TooEarly)));
    }
    let Ok(int) = int_part.parse::<u64>() else {
        // More than 19 digits: far beyond the year 9999 in any unit.
        return Some(Err(TimeError::string(text, Problem::TooLate)));
    };
    let ms = if int < SECONDS_BELOW {
        let mut frac_ms = 0;
        for (i, b) in frac_part.bytes().chain(std::iter::repeat(b'0')).take(3).enumerate() {
            frac_ms += u64::from(b - b'0') * [100, 10, 1][i];
        }
        int * 1000 + frac_ms
    } else {
        int
    };
    Some(match i64::try_from(ms) {
        Ok(ms) if ms <= EVENT_TIME_MAX_MS => Ok(ms),
        _ => Err(TimeError::string(text, Problem::TooLate)),
    })
}

fn parse_iso(text: &str) -> Result<i64, TimeError> {
    use jiff::fmt::temporal::Pieces;

    let not_a_time = || TimeError::string(text, Problem::NotATime);
    let pieces = Pieces::parse(text).map_err(|_| not_a_time())?;
    let date = pieces.date();
    let time = pieces.time().unwrap_or(jiff::civil::Time::midnight());
    let offset_seconds = match (pieces.to_numeric_offset(), pieces.time_zone_annotation()) {
        (Some(offset), _) => i64::from(offset.seconds()),
        (None, None) => 0,
        (None, Some(_)) => {
            // Resolve the civil time in the annotated zone (jiff's database).
            let zone = pieces.to_time_zone().ok().flatten().ok_or_else(not_a_time)?;
            let zoned = date.to_datetime(time).to_zoned(zone).map_err(|_| not_a_time())?;
            return check_iso_range(zoned.timestamp().as_millisecond(), text);
        }
    };
    let days = days_from_civil(i64::from(date.year()), date.month(), date.day());
    let time_ms = i64::from(time.hour()) * 3_600_000
        + i64::from(time.minute()) * 60_000
        + i64::from(time.second()) * 1000
        + i64::from(time.subsec_nanosecond()) / 1_000_000;
    check_iso_range(days * 86_400_000 + time_ms - offset_seconds * 1000, text)
}

fn check_iso_range(ms: i64, text: &str) -> Result<i64, TimeError> {
    if ms < EVENT_TIME_MIN_MS {
        Err(TimeError::string(text, Problem::TooEarly))
    } else if ms > EVENT_TIME_MAX_MS {
        Err(TimeError::string(text, Problem::TooLate))
    } else {
        Ok(ms)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). Computed by hand because jiff's `Timestamp` stops a day
/// short of 9999-12-31T23:59:59.999Z, our documented maximum.
fn days_from_civil(year: i64, month: i8, day: i8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests;
