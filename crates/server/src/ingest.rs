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
    let value = strict_json::parse(text).map_err(|error| error.into_api_error("events"))?;
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

/// JSON parsing for every ingestion body: serde_json's parser, but an object
/// with a duplicate key is refused. RFC 8259 leaves duplicates open and parsers
/// differ (serde_json keeps the last, others the first or both), so an event
/// that says two things about one field is not guessed at: the answer names the
/// key and where it is. The path of a failure is built only while the error
/// unwinds, so the accepted path costs what `serde_json::from_str::<Value>` does.
pub(crate) mod strict_json {
    use std::cell::RefCell;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use serde_json::map::Entry;
    use serde_json::{Map, Number, Value};

    use crate::error::{ApiError, EventProblem};
    use crate::limits::MAX_PROPERTY_DEPTH;

    /// serde_json's nesting limit: its parser refuses deeper JSON.
    const SERDE_JSON_DEPTH_LIMIT: usize = 128;
    /// Path segments shown in a message (a failure 128 levels deep has 128).
    const SHOWN_SEGMENTS: usize = 6;

    /// One step of the path to a failure.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Segment {
        Key(String),
        Index(usize),
    }

    /// Why a body is not acceptable JSON, and where.
    #[derive(Debug)]
    pub(crate) struct JsonError {
        pub(crate) kind: JsonErrorKind,
        /// From the top of the document to the failure.
        pub(crate) path: Vec<Segment>,
    }

    #[derive(Debug)]
    pub(crate) enum JsonErrorKind {
        /// An object has this key twice.
        DuplicateKey(String),
        /// Deeper than serde_json's nesting limit.
        TooDeep(serde_json::Error),
        Syntax(serde_json::Error),
    }

    /// The path as `events[3].properties.a`, shortened in the middle when long.
    pub(crate) fn path_text(path: &[Segment]) -> String {
        let mut text = String::new();
        for (i, segment) in path.iter().enumerate() {
            if path.len() > SHOWN_SEGMENTS && i == SHOWN_SEGMENTS - 2 {
                text.push_str(&format!("…({} more)…", path.len() - SHOWN_SEGMENTS + 1));
            }
            if path.len() > SHOWN_SEGMENTS && i >= SHOWN_SEGMENTS - 2 && i < path.len() - 1 {
                continue;
            }
            match segment {
                Segment::Key(key) if i == 0 => text.push_str(key),
                Segment::Key(key) => {
                    text.push('.');
                    text.push_str(key);
                }
                Segment::Index(index) => text.push_str(&format!("[{index}]")),
            }
        }
        if text.is_empty() { "the top level".to_string() } else { text }
    }

    impl JsonError {
        /// The answer to a body whose events are the array under `events_key`: a
        /// failure inside event `i` is that event's problem, with its field.
        pub(crate) fn into_api_error(self, events_key: &str) -> ApiError {
            let in_event = match self.path.as_slice() {
                [Segment::Key(key), Segment::Index(index), rest @ ..] if key == events_key => Some((*index, rest)),
                _ => None,
            };
            let location = |e: &serde_json::Error| format!("line {}, column {}", e.line(), e.column());
            match (self.kind, in_event) {
                (JsonErrorKind::DuplicateKey(key), Some((index, rest))) => {
                    let field = match rest.first() {
                        Some(Segment::Key(field)) => field.clone(),
                        _ => key.clone(),
                    };
                    let message = if rest.len() <= 1 {
                        format!("duplicate key {key:?}: each field may appear once")
                    } else {
                        format!("duplicate key {key:?} at {}: each key may appear once", path_text(&self.path))
                    };
                    ApiError::InvalidEvents(vec![EventProblem { index, field, message }])
                }
                (JsonErrorKind::DuplicateKey(key), None) => ApiError::BadRequest(format!(
                    "duplicate key {key:?} at {}: each key may appear once",
                    path_text(&self.path)
                )),
                (JsonErrorKind::TooDeep(e), Some((index, rest))) => {
                    let field = match rest.first() {
                        Some(Segment::Key(field)) => field.clone(),
                        _ => String::new(),
                    };
                    let message = format!(
                        "nested more than {SERDE_JSON_DEPTH_LIMIT} levels deep (at {}, {}); properties may nest at most {MAX_PROPERTY_DEPTH} levels",
                        path_text(&self.path),
                        location(&e)
                    );
                    ApiError::InvalidEvents(vec![EventProblem { index, field, message }])
                }
                (JsonErrorKind::TooDeep(e), None) => ApiError::BadRequest(format!(
                    "the body nests JSON more than {SERDE_JSON_DEPTH_LIMIT} levels deep (at {}, {})",
                    path_text(&self.path),
                    location(&e)
                )),
                (JsonErrorKind::Syntax(e), _) => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
            }
        }
    }

    /// Parses one JSON document (trailing whitespace only).
    pub(crate) fn parse(text: &str) -> Result<Value, JsonError> {
        let failure = RefCell::new(None);
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = Strict { failure: &failure }.deserialize(&mut deserializer).and_then(|value| {
            deserializer.end()?;
            Ok(value)
        });
        parsed.map_err(|error| match failure.into_inner() {
            Some(Failure::Duplicate { key, mut path }) => {
                path.reverse();
                JsonError { kind: JsonErrorKind::DuplicateKey(key), path }
            }
            Some(Failure::Other { mut path }) => {
                path.reverse();
                // serde_json has no error variant for its depth limit; its message is stable.
                let kind = if error.to_string().starts_with("recursion limit exceeded") {
                    JsonErrorKind::TooDeep(error)
                } else {
                    JsonErrorKind::Syntax(error)
                };
                JsonError { kind, path }
            }
            None => JsonError { kind: JsonErrorKind::Syntax(error), path: Vec::new() },
        })
    }

    /// The failure seen while unwinding, its path innermost first.
    enum Failure {
        Duplicate { key: String, path: Vec<Segment> },
        Other { path: Vec<Segment> },
    }

    struct Strict<'a> {
        failure: &'a RefCell<Option<Failure>>,
    }

    impl Strict<'_> {
        /// Records that an error passed through `segment` on its way up.
        fn unwinding(&self, segment: Segment) {
            let mut failure = self.failure.borrow_mut();
            match &mut *failure {
                Some(Failure::Duplicate { path, .. } | Failure::Other { path }) => path.push(segment),
                None => *failure = Some(Failure::Other { path: vec![segment] }),
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Strict<'_> {
        type Value = Value;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    // The same values serde_json's own `Value` visitor builds.
    impl<'de> Visitor<'de> for Strict<'_> {
        type Value = Value;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("any JSON value")
        }

        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Value, E> {
            Ok(Value::Bool(value))
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Value, E> {
            Ok(Value::Number(value.into()))
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Value, E> {
            Ok(Value::Number(value.into()))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
            Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Value, E> {
            Ok(Value::String(value.to_owned()))
        }

        fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Value, E> {
            Ok(Value::String(value))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            loop {
                match seq.next_element_seed(Strict { failure: self.failure }) {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => return Ok(Value::Array(items)),
                    Err(error) => {
                        self.unwinding(Segment::Index(items.len()));
                        return Err(error);
                    }
                }
            }
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                let value = match access.next_value_seed(Strict { failure: self.failure }) {
                    Ok(value) => value,
                    Err(error) => {
                        self.unwinding(Segment::Key(key));
                        return Err(error);
                    }
                };
                // One lookup: the entry both finds a duplicate and inserts.
                match map.entry(key) {
                    Entry::Vacant(entry) => {
                        entry.insert(value);
                    }
                    Entry::Occupied(entry) => {
                        let key = entry.key().clone();
                        let error = A::Error::custom(format_args!("duplicate key {key:?}"));
                        *self.failure.borrow_mut() =
                            Some(Failure::Duplicate { key: key.clone(), path: vec![Segment::Key(key)] });
                        return Err(error);
                    }
                }
            }
            Ok(Value::Object(map))
        }
    }
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

    #[test]
    fn strict_json_builds_what_serde_json_builds() {
        for text in [
            r#"{"a":[1,-2,3.5,1e300,18446744073709551615,"s\u00e9",true,false,null,{}],"b":{"c":{"d":[]}}}"#,
            "[]",
            " 42 ",
            r#""x""#,
            r#"[{"k":1},{"k":2}]"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict_json::parse(text).unwrap(), expected, "{text}");
        }
        assert!(strict_json::parse("{} x").is_err(), "trailing characters");
        assert!(strict_json::parse("1e400").is_err(), "out of range");
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        use strict_json::{JsonErrorKind, Segment, parse};
        let error = parse(r#"{"events":[{"a":1},{"p":{"q":[0,{"k":1,"k":2}]}}]}"#).unwrap_err();
        assert!(matches!(&error.kind, JsonErrorKind::DuplicateKey(key) if key == "k"), "{error:?}");
        assert_eq!(
            error.path,
            vec![
                Segment::Key("events".into()),
                Segment::Index(1),
                Segment::Key("p".into()),
                Segment::Key("q".into()),
                Segment::Index(1),
                Segment::Key("k".into()),
            ]
        );
        assert_eq!(strict_json::path_text(&error.path), "events[1].p.q[1].k");
        // Each field of the event: the field itself; deeper: the top field, with the path in the message.
        let top = problems(&format!(r#"{{"events":[{{"user_id":"a","user_id":"b","event_type":"e","time":{NOW}}}]}}"#));
        assert_eq!((top[0].index, top[0].field.as_str()), (0, "user_id"));
        let body = r#"{"events":[{},{"properties":{"a":{"b":1,"b":1}}}]}"#;
        let deep = problems(body);
        assert_eq!((deep[0].index, deep[0].field.as_str()), (1, "properties"));
        assert!(deep[0].message.contains("events[1].properties.a.b"), "{}", deep[0].message);
        // Outside the events: the whole body is refused.
        let body = r#"{"events":[],"events":[]}"#;
        assert!(
            matches!(parse_batch(body.as_bytes(), NOW), Err(ApiError::BadRequest(m)) if m.contains("duplicate key \"events\""))
        );
        // The same key in sibling objects is no duplicate.
        assert!(parse(r#"[{"k":1},{"k":2,"o":{"k":3}}]"#).is_ok());
    }

    #[test]
    fn json_deeper_than_serde_json_allows_is_named_precisely() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        let body = format!(r#"{{"events":[{{}},{{"properties":{deep}}}]}}"#);
        let found = problems(&body);
        assert_eq!((found[0].index, found[0].field.as_str()), (1, "properties"), "{found:?}");
        assert!(found[0].message.contains("more than 128 levels"), "{}", found[0].message);
        assert!(found[0].message.contains("events[1].properties.a"), "{}", found[0].message);
        let body = format!(r#"{{"x":{deep},"events":[]}}"#);
        match parse_batch(body.as_bytes(), NOW) {
            Err(ApiError::BadRequest(message)) => {
                assert!(message.contains("more than 128 levels deep (at x.a.a"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
