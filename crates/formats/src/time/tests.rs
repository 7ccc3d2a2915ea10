use super::*;

const JAN_5_2026_11H: i64 = 1_767_610_800_000; // 2026-01-05T11:00:00Z

#[test]
fn seconds_or_milliseconds_at_the_boundary() {
    // Just below 10^11: seconds.
    assert_eq!(parse_event_time_int(99_999_999_999), Ok(99_999_999_999_000));
    assert_eq!(parse_event_time_number(99_999_999_999.0), Ok(99_999_999_999_000));
    assert_eq!(parse_event_time("99999999999"), Ok(99_999_999_999_000));
    // At 10^11: milliseconds.
    assert_eq!(parse_event_time_int(100_000_000_000), Ok(100_000_000_000));
    assert_eq!(parse_event_time_number(100_000_000_000.0), Ok(100_000_000_000));
    assert_eq!(parse_event_time("100000000000"), Ok(100_000_000_000));
    assert_eq!(parse_event_time_u64(100_000_000_000), Ok(100_000_000_000));
    // Typical values of each unit.
    assert_eq!(parse_event_time_int(1_767_610_800), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time_int(JAN_5_2026_11H), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time_int(0), Ok(0));
}

#[test]
fn fractions_are_floored_to_the_millisecond() {
    assert_eq!(parse_event_time_number(1_767_610_800.123), Ok(JAN_5_2026_11H + 123));
    assert_eq!(parse_event_time_number(1_767_610_800.123_9), Ok(JAN_5_2026_11H + 123));
    assert_eq!(parse_event_time_number(1.5), Ok(1500));
    assert_eq!(parse_event_time_number(1_767_610_800_000.9), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("1767610800.123"), Ok(JAN_5_2026_11H + 123));
    assert_eq!(parse_event_time("1767610800.1239999"), Ok(JAN_5_2026_11H + 123));
    assert_eq!(parse_event_time("1767610800.5"), Ok(JAN_5_2026_11H + 500));
    assert_eq!(parse_event_time(" 1767610800000.75 "), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("1.7676108e9"), Ok(JAN_5_2026_11H));
}

#[test]
fn iso_8601_forms() {
    assert_eq!(parse_event_time("2026-01-05T11:00:00Z"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("2026-01-05t11:00:00z"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("2026-01-05T13:00:00+02:00"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("2026-01-05T06:30:00-04:30"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("2026-01-05T11:00:00.123Z"), Ok(JAN_5_2026_11H + 123));
    assert_eq!(parse_event_time("2026-01-05T11:00:00.123999999Z"), Ok(JAN_5_2026_11H + 123));
    // No offset: UTC.
    assert_eq!(parse_event_time("2026-01-05T11:00:00"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("2026-01-05T11:00:00.250"), Ok(JAN_5_2026_11H + 250));
    // A space instead of `T`, surrounding whitespace.
    assert_eq!(parse_event_time("2026-01-05 11:00:00"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("  2026-01-05 11:00:00Z\t"), Ok(JAN_5_2026_11H));
    // A bare date is its midnight UTC.
    assert_eq!(parse_event_time("2026-01-05"), Ok(JAN_5_2026_11H - 11 * 3_600_000));
    // A zone annotation applies without an offset (Paris is UTC+1 in January).
    assert_eq!(parse_event_time("2026-01-05T12:00:00[Europe/Paris]"), Ok(JAN_5_2026_11H));
    assert_eq!(parse_event_time("1970-01-01T00:00:00Z"), Ok(0));
}

#[test]
fn the_range_ends_are_inclusive() {
    assert_eq!(parse_event_time("9999-12-31T23:59:59.999Z"), Ok(EVENT_TIME_MAX_MS));
    assert_eq!(parse_event_time_int(EVENT_TIME_MAX_MS), Ok(EVENT_TIME_MAX_MS));
    assert_eq!(parse_event_time("253402300799999"), Ok(EVENT_TIME_MAX_MS));
    // 253402300799 (the maximum in seconds) is above 10^11, hence milliseconds.
    assert_eq!(parse_event_time("253402300799.999"), Ok(253_402_300_799));
    assert_eq!(parse_event_time_int(EVENT_TIME_MIN_MS), Ok(EVENT_TIME_MIN_MS));
    assert_eq!(parse_event_time("0"), Ok(0));
    assert_eq!(parse_event_time("-0.000"), Ok(0));
}

fn message(result: Result<i64, TimeError>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn out_of_range_at_both_ends() {
    assert_eq!(message(parse_event_time_int(-1)), "-1 is before 1970-01-01T00:00:00Z");
    assert_eq!(message(parse_event_time_number(-0.5)), "-0.5 is before 1970-01-01T00:00:00Z");
    assert_eq!(message(parse_event_time("-1")), "\"-1\" is before 1970-01-01T00:00:00Z");
    assert_eq!(
        message(parse_event_time("1969-12-31T23:59:59Z")),
        "\"1969-12-31T23:59:59Z\" is before 1970-01-01T00:00:00Z"
    );
    assert_eq!(
        message(parse_event_time_int(EVENT_TIME_MAX_MS + 1)),
        "253402300800000 is after 9999-12-31T23:59:59.999Z"
    );
    assert_eq!(message(parse_event_time_u64(u64::MAX)), "18446744073709551615 is after 9999-12-31T23:59:59.999Z");
    assert_eq!(
        message(parse_event_time_number(1e300)).len(),
        64 + "…".len() + " is after 9999-12-31T23:59:59.999Z".len()
    );
    assert_eq!(
        message(parse_event_time("99999999999999999999999")),
        "\"99999999999999999999999\" is after 9999-12-31T23:59:59.999Z"
    );
    assert!(parse_event_time("-9999-01-01T00:00:00Z").is_err());
    // The offset can push a valid-looking local time out of range.
    assert!(parse_event_time("1970-01-01T00:30:00+01:00").is_err());
    assert!(parse_event_time("9999-12-31T23:30:00-01:00").is_err());
}

#[test]
fn garbage_is_named_in_the_error() {
    assert_eq!(
        message(parse_event_time("yesterday")),
        "\"yesterday\" is neither an epoch number nor an ISO-8601 date-time (like 2026-01-05T11:00:00Z)"
    );
    assert_eq!(message(parse_event_time("   ")), "the value is empty");
    assert_eq!(message(parse_event_time_number(f64::NAN)), "NaN is not a finite number");
    assert_eq!(message(parse_event_time_number(f64::INFINITY)), "inf is not a finite number");
    assert!(message(parse_event_time("inf")).contains("\"inf\""));
    for bad in ["2026-13-01T00:00:00Z", "2026-01-05T25:00:00Z", "12:00", "1.2.3", "-", "2026-01-05T11:00:00+99:00"] {
        assert!(parse_event_time(bad).is_err(), "{bad} should be rejected");
    }
    // A long value is cut in the message.
    let long = "x".repeat(1000);
    let text = message(parse_event_time(&long));
    assert!(text.starts_with(&format!("\"{}…\"", "x".repeat(64))), "{text}");
    assert!(text.len() < 200);
}

#[test]
fn days_from_civil_matches_jiff() {
    for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (1969, 12, 31), (9999, 12, 31), (1, 1, 1)] {
        let expected = jiff::civil::date(y, m, d)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second().div_euclid(86_400))
            .unwrap_or_else(|_| days_from_civil(i64::from(y), m, d));
        assert_eq!(days_from_civil(i64::from(y), m, d), expected, "{y}-{m}-{d}");
    }
    assert_eq!(days_from_civil(9999, 12, 31), 2_932_896);
}
