//! The native ingestion format: decoding, validation and bounds.
//!
//! `{"events": [{"user_id", "device_id", "event_type", "time", "insert_id",
//! "page", "passive", "properties", "sent_at", "client_session_id",
//! "platform", "ip"}], "sent_at"?}`
//!
//! The SDK-compatible endpoints (`sdk`) translate each SDK's events into
//! this shape and validate them with [`parse_event`], so every entry point
//! applies the same rules and bounds.
//!
//! A batch is accepted whole or rejected whole: when any event is invalid,
//! the answer lists every problem (by index and field) and nothing is stored,
//! so a client can fix and resend the batch without creating duplicates or gaps.

use std::io::Read;

use serde_json::{Map, Value};
use sessionizer_engine::MAX_EVENT_TYPE_BYTES;
use sessionizer_formats::{parse_event_time, parse_event_time_int, parse_event_time_u64};
use sessionizer_store::NewEvent;

use crate::error::{ApiError, EventProblem};
use crate::limits::{
    MAX_AGE_MS, MAX_DECOMPRESSED_BYTES, MAX_EVENT_BYTES, MAX_EVENTS_PER_REQUEST, MAX_FUTURE_MS, MAX_ID_BYTES,
    MAX_PROPERTY_DEPTH, MIN_SKEW_CORRECTION_MS,
};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The request body, decompressed when it is gzip (by header or by its magic
/// bytes), bounded by [`MAX_DECOMPRESSED_BYTES`].
pub fn decode_body(content_encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let declared_gzip = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" || e == "x-gzip" => true,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Encoding {other:?}: send gzip or no encoding"
            )));
        }
    };
    if !declared_gzip && !body.starts_with(&GZIP_MAGIC) {
        return Ok(body.to_vec());
    }
    let mut decoded = Vec::new();
    let mut reader = flate2::read::MultiGzDecoder::new(body).take(MAX_DECOMPRESSED_BYTES as u64 + 1);
    reader.read_to_end(&mut decoded).map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
    if decoded.len() > MAX_DECOMPRESSED_BYTES {
        return Err(ApiError::TooLarge(format!("the decompressed body exceeds {MAX_DECOMPRESSED_BYTES} bytes")));
    }
    Ok(decoded)
}

/// Parses and validates a native batch received at `now_ms`.
pub fn parse_batch(body: &[u8], now_ms: i64) -> Result<Vec<NewEvent>, ApiError> {
    parse_keyed_batch(body, now_ms).map(|(_, events)| events)
}

/// [`parse_batch`], also returning the body's `write_key` (how browsers send
/// the key with `navigator.sendBeacon`, which cannot set headers).
pub(crate) fn parse_keyed_batch(body: &[u8], now_ms: i64) -> Result<(Option<String>, Vec<NewEvent>), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ApiError::BadRequest("the body must be a JSON object with an \"events\" array".into()));
    };
    let write_key = match top.remove("write_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key),
        Some(_) => return Err(ApiError::BadRequest("\"write_key\" must be a string".into())),
    };
    let batch_sent_at = match top.remove("sent_at") {
        None | Some(Value::Null) => None,
        Some(value) => Some(time_of(&value).map_err(|m| ApiError::BadRequest(format!("sent_at: {m}")))?),
    };
    let events = match top.remove("events") {
        Some(Value::Array(events)) => events,
        Some(_) => return Err(ApiError::BadRequest("\"events\" must be an array".into())),
        None => return Err(ApiError::BadRequest("missing \"events\" array".into())),
    };
    if let Some(unknown) = top.keys().next() {
        return Err(ApiError::BadRequest(format!(
            "unknown top-level field {unknown:?}: expected \"events\", \"sent_at\" and \"write_key\""
        )));
    }
    if events.is_empty() {
        return Err(ApiError::BadRequest("\"events\" is empty".into()));
    }
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooLarge(format!(
            "{} events in one request; at most {MAX_EVENTS_PER_REQUEST} are accepted",
            events.len()
        )));
    }
    let mut accepted = Vec::with_capacity(events.len());
    let mut problems = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        match parse_event(event, batch_sent_at, now_ms) {
            Ok(event) => accepted.push(event),
            Err(mut found) => {
                for problem in &mut found {
                    problem.index = index;
                }
                problems.extend(found);
            }
        }
    }
    if problems.is_empty() { Ok((write_key, accepted)) } else { Err(ApiError::InvalidEvents(problems)) }
}

fn problem(field: &str, message: impl Into<String>) -> EventProblem {
    EventProblem { index: 0, field: field.to_string(), message: message.into() }
}

/// One event; every problem found in it (with index 0, set by the caller).
pub(crate) fn parse_event(
    event: Value,
    batch_sent_at: Option<i64>,
    now_ms: i64,
) -> Result<NewEvent, Vec<EventProblem>> {
    let size = serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_EVENT_BYTES {
        return Err(vec![problem(
            "",
            format!("the event is {size} bytes of JSON; at most {MAX_EVENT_BYTES} are accepted"),
        )]);
    }
    let Value::Object(mut fields) = event else {
        return Err(vec![problem("", "an event must be a JSON object")]);
    };
    let mut problems = Vec::new();
    let id = |fields: &mut Map<String, Value>, name: &str, problems: &mut Vec<EventProblem>| match fields.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => {
            problems.push(problem(name, format!("longer than {MAX_ID_BYTES} bytes")));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => {
            problems.push(problem(name, "must be a string or an integer"));
            None
        }
    };
    let user_id = id(&mut fields, "user_id", &mut problems);
    let device_id = id(&mut fields, "device_id", &mut problems);
    let insert_id = id(&mut fields, "insert_id", &mut problems);
    let page = id(&mut fields, "page", &mut problems);
    let client_session_id = id(&mut fields, "client_session_id", &mut problems);
    // Lower case, as the SDK formats give it: platform rules name platforms in lower case.
    let platform = id(&mut fields, "platform", &mut problems).map(|p| p.to_ascii_lowercase());
    let ip = id(&mut fields, "ip", &mut problems);
    if user_id.is_none()
        && device_id.is_none()
        && !problems.iter().any(|p| p.field == "user_id" || p.field == "device_id")
    {
        problems.push(problem("user_id", "an event needs a user_id or a device_id"));
    }
    let event_type = match fields.remove("event_type") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            problems.push(problem("event_type", "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.len() > MAX_EVENT_TYPE_BYTES => {
            problems.push(problem("event_type", format!("longer than {MAX_EVENT_TYPE_BYTES} bytes")));
            None
        }
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => {
            problems.push(problem("event_type", "required"));
            None
        }
        Some(_) => {
            problems.push(problem("event_type", "must be a string"));
            None
        }
    };
    let time_ms = match fields.remove("time") {
        None | Some(Value::Null) => {
            problems.push(problem("time", "required: epoch milliseconds or an ISO-8601 date-time"));
            None
        }
        Some(value) => match time_of(&value) {
            Ok(ms) => Some(ms),
            Err(message) => {
                problems.push(problem("time", message));
                None
            }
        },
    };
    let sent_at = match fields.remove("sent_at") {
        None | Some(Value::Null) => batch_sent_at,
        Some(value) => match time_of(&value) {
            Ok(ms) => Some(ms),
            Err(message) => {
                problems.push(problem("sent_at", message));
                None
            }
        },
    };
    let passive = match fields.remove("passive") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            problems.push(problem("passive", "must be true or false"));
            false
        }
    };
    let properties = match fields.remove("properties") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => {
            let depth = depth_of(&value);
            if depth > MAX_PROPERTY_DEPTH {
                problems
                    .push(problem("properties", format!("nested {depth} deep; at most {MAX_PROPERTY_DEPTH} levels")));
                None
            } else {
                Some(value.to_string())
            }
        }
        Some(_) => {
            problems.push(problem("properties", "must be a JSON object"));
            None
        }
    };
    for unknown in fields.keys() {
        problems.push(problem(unknown, "unknown field: put custom data in \"properties\""));
    }
    // Clock-skew correction: the client's clock was `sent_at - now` off. A
    // small difference is transit time or a retry resending the same
    // `sent_at` seconds later, not a wrong clock: correcting it would move
    // events by the delay, so it is ignored.
    let time_ms = time_ms.map(|ms| match sent_at {
        Some(sent_at) if (now_ms - sent_at).abs() >= MIN_SKEW_CORRECTION_MS => ms.saturating_add(now_ms - sent_at),
        _ => ms,
    });
    if let Some(ms) = time_ms {
        if ms > now_ms.saturating_add(MAX_FUTURE_MS) {
            problems.push(problem(
                "time",
                format!("more than {} minutes in the future (after clock-skew correction)", MAX_FUTURE_MS / 60_000),
            ));
        } else if ms < now_ms.saturating_sub(MAX_AGE_MS) || ms < 0 {
            problems.push(problem(
                "time",
                format!("older than {} days: load history with the batch tools", MAX_AGE_MS / 86_400_000),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(event_type), Some(time_ms)) = (event_type, time_ms) else {
        unreachable!("a missing field is a problem");
    };
    Ok(NewEvent {
        user_id,
        device_id,
        event_type,
        time_ms,
        insert_id,
        page,
        passive,
        properties,
        received_ms: now_ms,
        client_session_id,
        platform,
        ip,
    })
}

/// A time: epoch ms (or s, by the number rule of the file readers) or ISO-8601.
fn time_of(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_i64() {
                parse_event_time_int(v).map_err(|e| e.to_string())
            } else if let Some(v) = n.as_u64() {
                parse_event_time_u64(v).map_err(|e| e.to_string())
            } else {
                Err(format!("{n} is not an integer number of milliseconds"))
            }
        }
        Value::String(s) => parse_event_time(s).map_err(|e| e.to_string()),
        _ => Err("must be epoch milliseconds or an ISO-8601 date-time string".into()),
    }
}

/// Nesting depth of a JSON value (scalars are 0, `{}` is 1).
fn depth_of(value: &Value) -> usize {
    // Iterative, so hostile input cannot exhaust the stack.
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Object(map) => {
                deepest = deepest.max(depth);
                stack.extend(map.values().map(|v| (v, depth + 1)));
            }
            Value::Array(items) => {
                deepest = deepest.max(depth);
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_603_600_000;

    fn problems(body: &str) -> Vec<EventProblem> {
        match parse_batch(body.as_bytes(), NOW) {
            Err(ApiError::InvalidEvents(problems)) => problems,
            other => panic!("expected invalid events, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_batch() {
        let body = r#"{"events":[
            {"user_id":"u1","event_type":"Page Viewed","time":1767603500000,"insert_id":"a","page":"/","properties":{"x":[1,{"y":2}]}},
            {"device_id":42,"event_type":"poll","time":"2026-01-05T09:00:00Z","passive":true}
        ]}"#;
        let events = parse_batch(body.as_bytes(), NOW).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].user_id.as_deref(), Some("u1"));
        assert_eq!(events[0].properties.as_deref(), Some(r#"{"x":[1,{"y":2}]}"#));
        assert_eq!(events[1].device_id.as_deref(), Some("42"));
        assert_eq!(events[1].time_ms, NOW);
        assert!(events[1].passive);
    }

    #[test]
    fn every_problem_is_named_by_index_and_field() {
        let found = problems(
            r#"{"events":[
                {"user_id":"ok","event_type":"e","time":1767603500000},
                {"event_type":"e","time":1767603500000},
                {"user_id":"u","time":"yesterday-ish","color":"red"},
                {"user_id":"u","event_type":"e","time":1767603500000,"properties":[1]},
                "nope"
            ]}"#,
        );
        let pairs: Vec<(usize, &str)> = found.iter().map(|p| (p.index, p.field.as_str())).collect();
        assert_eq!(pairs, [(1, "user_id"), (2, "event_type"), (2, "time"), (2, "color"), (3, "properties"), (4, "")]);
    }

    #[test]
    fn bounds() {
        let too_many = format!(
            r#"{{"events":[{}]}}"#,
            vec![r#"{"user_id":"u","event_type":"e","time":1767603500000}"#; MAX_EVENTS_PER_REQUEST + 1].join(",")
        );
        assert!(matches!(parse_batch(too_many.as_bytes(), NOW), Err(ApiError::TooLarge(_))));
        let deep = format!(
            r#"{{"events":[{{"user_id":"u","event_type":"e","time":1767603500000,"properties":{}1{}}}]}}"#,
            r#"{"a":"#.repeat(MAX_PROPERTY_DEPTH + 1),
            "}".repeat(MAX_PROPERTY_DEPTH + 1)
        );
        assert_eq!(problems(&deep)[0].field, "properties");
        let at_limit = format!(
            r#"{{"events":[{{"user_id":"u","event_type":"e","time":1767603500000,"properties":{}1{}}}]}}"#,
            r#"{"a":"#.repeat(MAX_PROPERTY_DEPTH),
            "}".repeat(MAX_PROPERTY_DEPTH)
        );
        assert!(parse_batch(at_limit.as_bytes(), NOW).is_ok());
        let long_id = format!(
            r#"{{"events":[{{"user_id":"{}","event_type":"e","time":1767603500000}}]}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert_eq!(problems(&long_id)[0].field, "user_id");
        let future = format!(r#"{{"events":[{{"user_id":"u","event_type":"e","time":{}}}]}}"#, NOW + MAX_FUTURE_MS + 1);
        assert!(problems(&future)[0].message.contains("future"));
        let old = format!(r#"{{"events":[{{"user_id":"u","event_type":"e","time":{}}}]}}"#, NOW - MAX_AGE_MS - 1);
        assert!(problems(&old)[0].message.contains("older"));
    }

    #[test]
    fn clock_skew_is_corrected_by_sent_at() {
        // The client's clock is 10 minutes fast.
        let body = format!(
            r#"{{"sent_at":{},"events":[{{"user_id":"u","event_type":"e","time":{}}}]}}"#,
            NOW + 600_000,
            NOW + 600_000 - 5_000
        );
        let events = parse_batch(body.as_bytes(), NOW).unwrap();
        assert_eq!(events[0].time_ms, NOW - 5_000);
        // A few seconds is transit or a retry, not a wrong clock: times are kept.
        let retried = format!(
            r#"{{"sent_at":{},"events":[{{"user_id":"u","event_type":"e","time":{}}}]}}"#,
            NOW - 3_000,
            NOW - 10_000
        );
        assert_eq!(parse_batch(retried.as_bytes(), NOW).unwrap()[0].time_ms, NOW - 10_000);
    }

    #[test]
    fn malformed_bodies() {
        for (body, fragment) in [
            ("", "not valid JSON"),
            ("[]", "JSON object"),
            ("{}", "missing"),
            (r#"{"events":{}}"#, "must be an array"),
            (r#"{"events":[]}"#, "empty"),
            (r#"{"events":[],"extra":1}"#, "unknown top-level"),
        ] {
            let error = parse_batch(body.as_bytes(), NOW).unwrap_err().to_string();
            assert!(error.contains(fragment), "{body}: {error}");
        }
        assert!(parse_batch(b"\xff\xfe", NOW).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn gzip_by_header_or_magic_and_bounded() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"events\":[]}").unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(decode_body(Some("gzip"), &gz).unwrap(), b"{\"events\":[]}");
        assert_eq!(decode_body(None, &gz).unwrap(), b"{\"events\":[]}", "sniffed by magic bytes");
        assert!(matches!(decode_body(Some("br"), b"x"), Err(ApiError::UnsupportedMediaType(_))));
        assert!(matches!(decode_body(Some("gzip"), b"not gzip"), Err(ApiError::BadRequest(_))));
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; MAX_DECOMPRESSED_BYTES + 1]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 100_000);
        assert!(matches!(decode_body(Some("gzip"), &bomb), Err(ApiError::TooLarge(_))));
    }
}
