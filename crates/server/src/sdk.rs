//! Ingestion in the formats of existing SDKs: Amplitude HTTP V2, Segment (and
//! RudderStack), PostHog and Mixpanel, so that an app keeps its SDK and only
//! changes the server URL and key (the project's write key).
//!
//! Each format is translated into native events (see `ingest`) and validated
//! by the same rules and bounds; the answers follow each SDK's expectations
//! (`docs/sdk-compatibility.md` has the details):
//!
//! * Amplitude: a batch with invalid events is rejected whole with 400 and the
//!   events listed by index (the SDK drops those and resends the rest); success
//!   is `{"code": 200, ...}` in the body, which the SDK reads.
//! * Segment, RudderStack, PostHog: their SDKs drop a whole batch on a 4xx, so
//!   valid events are stored and invalid ones are dropped (counted in the
//!   metrics), as Segment's own API does.
//! * Mixpanel: all or nothing; the body is `1` (or `{"status":1}` with `verbose=1`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sessionizer_store::NewEvent;

use crate::error::{ApiError, EventProblem};
use crate::ingest::parse_event;
use crate::limits::MAX_EVENTS_PER_REQUEST;

/// A request translated into native events, ready to store.
#[derive(Debug)]
pub(crate) struct Translated {
    /// The key the request carried in its body (or Basic auth), if any.
    pub(crate) key: Option<String>,
    pub(crate) events: Vec<NewEvent>,
    /// Problems of events that were dropped (or, for all-or-nothing formats, of the batch).
    pub(crate) problems: Vec<EventProblem>,
}

/// What each request needs besides its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub(crate) now_ms: i64,
    pub(crate) client_ip: Option<IpAddr>,
    /// `Authorization: Basic` user name, if any (Segment, RudderStack, Mixpanel import).
    pub(crate) basic_user: Option<&'a str>,
}

fn object(value: Option<&Value>) -> Option<&Map<String, Value>> {
    value.and_then(Value::as_object)
}

fn string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Validates translated native events: the valid ones with their index, and every problem.
fn validate(events: Vec<Value>, sent_at: Option<i64>, now_ms: i64) -> (Vec<NewEvent>, Vec<EventProblem>) {
    let mut valid = Vec::with_capacity(events.len());
    let mut problems = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        match parse_event(event, sent_at, now_ms) {
            Ok(event) => valid.push(event),
            Err(found) => problems.extend(found.into_iter().map(|p| EventProblem { index, ..p })),
        }
    }
    (valid, problems)
}

fn check_count(count: usize) -> Result<(), ApiError> {
    if count > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooLarge(format!("{count} events in one request; at most {MAX_EVENTS_PER_REQUEST}")));
    }
    Ok(())
}

/// The body's JSON, refusing duplicate keys (see [`crate::ingest::strict_json`]);
/// `events_key` is where the format keeps its events (`events`, `batch`), so a
/// failure inside one is reported with the event's index.
fn parse_json(body: &[u8], events_key: &str) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
    crate::ingest::strict_json::parse(text).map_err(|error| error.into_api_error(events_key))
}

/// The path of a URL (`https://a.b/c?d` gives `/c`), or the text itself when it is not a URL.
fn path_of(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => {
            let path = rest.find('/').map_or("/", |i| &rest[i..]);
            path.split(['?', '#']).next().unwrap_or("/").to_string()
        }
        None => url.to_string(),
    }
}

// ---- Amplitude HTTP V2: POST /2/httpapi and /batch ----

/// Amplitude's body: `{api_key, events: [...], options?, client_upload_time?}`.
pub(crate) fn amplitude(body: &[u8], context: Context<'_>) -> Result<Translated, ApiError> {
    let value = parse_json(body, "events")?;
    let top = value.as_object().ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let key = string(top.get("api_key"));
    let events = top
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("missing \"events\" array".into()))?;
    check_count(events.len())?;
    let native: Vec<Value> = events.iter().map(|event| amplitude_event(event, context)).collect();
    // All or nothing: the SDK drops the listed events and resends the rest.
    let (events, problems) = validate(native, None, context.now_ms);
    Ok(Translated { key, events, problems })
}

fn amplitude_event(event: &Value, context: Context<'_>) -> Value {
    let Some(e) = event.as_object() else { return event.clone() };
    let mut properties = object(e.get("event_properties")).cloned().unwrap_or_default();
    if let Some(user_properties) = object(e.get("user_properties")) {
        properties.insert("$user_properties".into(), Value::Object(user_properties.clone()));
    }
    let page = ["[Amplitude] Page Path", "page_path", "page"].iter().find_map(|k| string(properties.get(*k)));
    // Not an object: passed on as is, so validation names the field.
    let properties = match e.get("event_properties") {
        Some(bad) if !bad.is_object() && !bad.is_null() => bad.clone(),
        _ if properties.is_empty() => Value::Null,
        _ => Value::Object(properties),
    };
    let ip = match e.get("ip").and_then(Value::as_str) {
        Some("$remote") => context.client_ip.map(|ip| ip.to_string()),
        Some(ip) if !ip.is_empty() => Some(ip.to_string()),
        _ => None,
    };
    // Amplitude's session id is the session start in ms; -1 (or absent) means none.
    let client_session_id = e.get("session_id").and_then(Value::as_i64).filter(|&id| id > 0).map(|id| id.to_string());
    json!({
        "user_id": e.get("user_id"),
        "device_id": e.get("device_id"),
        "event_type": e.get("event_type"),
        // Amplitude defaults a missing time to the upload time.
        "time": e.get("time").filter(|t| !t.is_null()).cloned().unwrap_or(json!(context.now_ms)),
        "insert_id": e.get("insert_id"),
        "page": page,
        "properties": properties,
        "client_session_id": client_session_id,
        "platform": e.get("platform").and_then(Value::as_str).map(str::to_ascii_lowercase),
        "ip": ip,
    })
}

/// Amplitude's field name for a native one.
fn amplitude_field(field: &str) -> &str {
    match field {
        "properties" => "event_properties",
        "client_session_id" => "session_id",
        other => other,
    }
}

/// Amplitude's 400 body for invalid events.
pub(crate) fn amplitude_invalid(problems: &[EventProblem]) -> Value {
    let mut invalid: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut missing: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for problem in problems {
        let is_missing = problem.message == "required" || problem.message.starts_with("an event needs");
        let map = if is_missing { &mut missing } else { &mut invalid };
        let indexes = map.entry(amplitude_field(&problem.field).to_string()).or_default();
        if indexes.last() != Some(&problem.index) {
            indexes.push(problem.index);
        }
    }
    let first = problems.first().map_or(String::new(), |p| format!(": event {}: {} {}", p.index, p.field, p.message));
    json!({
        "code": 400,
        "error": format!("Request has {} invalid events{first}", crate::error::distinct_events(problems)),
        "events_with_invalid_fields": invalid,
        "events_with_missing_fields": missing,
    })
}

// ---- Segment and RudderStack: POST /v1/batch, /v1/track, /v1/page, /v1/screen, /v1/identify ----

/// `{batch: [...], writeKey?, sentAt?}` or, for the single-message routes, one message.
pub(crate) fn segment(body: &[u8], single_type: Option<&str>, context: Context<'_>) -> Result<Translated, ApiError> {
    let value = parse_json(body, "batch")?;
    let top = value.as_object().ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let key = context.basic_user.map(str::to_string).or_else(|| string(top.get("writeKey")));
    let messages: Vec<Value> = match single_type {
        None => top
            .get("batch")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ApiError::BadRequest("missing \"batch\" array".into()))?,
        Some(kind) => {
            let mut message = top.clone();
            message.entry("type").or_insert_with(|| json!(kind));
            vec![Value::Object(message)]
        }
    };
    check_count(messages.len())?;
    let native: Vec<Value> = messages.iter().map(|m| segment_message(m, context)).collect();
    // Segment's SDKs drop a whole batch on any 4xx: keep the valid events.
    let (events, problems) = validate(native, None, context.now_ms);
    Ok(Translated { key, events, problems })
}

fn segment_message(message: &Value, context: Context<'_>) -> Value {
    let Some(m) = message.as_object() else { return message.clone() };
    let kind = m.get("type").and_then(Value::as_str).unwrap_or("track");
    let name = string(m.get("name"));
    let mut properties = object(m.get("properties")).cloned().unwrap_or_default();
    let ctx = object(m.get("context"));
    let context_page = ctx.and_then(|c| object(c.get("page"))).and_then(|p| string(p.get("path")));
    let (event_type, page) = match kind {
        "track" => (m.get("event").cloned().unwrap_or(Value::Null), context_page),
        "page" => {
            let page = string(properties.get("path")).or(context_page).or_else(|| name.clone());
            (json!("Page Viewed"), page)
        }
        "screen" => (json!("Screen Viewed"), name.clone()),
        "identify" => (json!("Identity Set"), None),
        "group" => (json!("Group Set"), None),
        "alias" => (json!("Alias Set"), None),
        other => (json!(other), None),
    };
    if let Some(name) = name {
        properties.entry("name").or_insert(json!(name));
    }
    if let Some(traits) = object(m.get("traits")) {
        properties.insert("$traits".into(), Value::Object(traits.clone()));
    }
    let platform = ctx
        .and_then(|c| object(c.get("os")))
        .and_then(|os| os.get("name"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .map(|os| if os == "iphone os" { "ios".to_string() } else { os });
    // RudderStack sets `originalTimestamp` to now when the caller gave no
    // `timestamp`, so the explicit one wins; no sentAt correction of either.
    let time = m
        .get("timestamp")
        .filter(|t| !t.is_null())
        .or_else(|| m.get("originalTimestamp").filter(|t| !t.is_null()))
        .cloned()
        .unwrap_or(json!(context.now_ms));
    json!({
        "user_id": m.get("userId"),
        "device_id": m.get("anonymousId"),
        "event_type": event_type,
        "time": time,
        "insert_id": m.get("messageId"),
        "page": page,
        "properties": if properties.is_empty() { Value::Null } else { Value::Object(properties) },
        // RudderStack's JS SDK sends its session id here.
        "client_session_id": ctx.and_then(|c| string(c.get("sessionId"))),
        "platform": platform,
        "ip": ctx.and_then(|c| string(c.get("ip"))),
    })
}

// ---- PostHog: POST /batch/, /e/, /capture/, /i/v0/e/ ----

/// `{api_key, batch: [...], sent_at?}`, one event with `api_key`, or an array of events.
pub(crate) fn posthog(body: &[u8], context: Context<'_>) -> Result<Translated, ApiError> {
    let value = parse_json(body, "batch")?;
    let (key, sent_at, events): (Option<String>, Option<&Value>, Vec<Value>) = match &value {
        Value::Array(events) => (None, None, events.clone()),
        Value::Object(top) => {
            let key = string(top.get("api_key")).or_else(|| string(top.get("token")));
            match top.get("batch").or_else(|| top.get("data")) {
                Some(Value::Array(events)) => (key, top.get("sent_at"), events.clone()),
                Some(Value::Object(event)) => (key, top.get("sent_at"), vec![Value::Object(event.clone())]),
                _ => (key, top.get("sent_at"), vec![value.clone()]),
            }
        }
        _ => return Err(ApiError::BadRequest("the body must be a JSON object or array".into())),
    };
    check_count(events.len())?;
    let key =
        key.or_else(|| events.iter().find_map(|e| object(e.get("properties")).and_then(|p| string(p.get("token")))));
    let sent_at = sent_at.and_then(|v| v.as_str()).and_then(|s| sessionizer_formats::parse_event_time(s).ok());
    let native: Vec<Value> = events.iter().map(|e| posthog_event(e, context)).collect();
    // PostHog corrects the client clock by sent_at, as the native API does.
    let (events, problems) = validate(native, sent_at, context.now_ms);
    Ok(Translated { key, events, problems })
}

fn posthog_event(event: &Value, context: Context<'_>) -> Value {
    let Some(e) = event.as_object() else { return event.clone() };
    let mut properties = object(e.get("properties")).cloned().unwrap_or_default();
    properties.remove("token");
    let distinct_id = string(e.get("distinct_id")).or_else(|| string(properties.get("distinct_id")));
    let device_id = string(properties.get("$device_id"));
    // Before `identify`, posthog-js uses the device id as the distinct id: an anonymous device.
    let user_id = distinct_id.filter(|d| Some(d) != device_id.as_ref());
    let page =
        string(properties.get("$pathname")).or_else(|| string(properties.get("$current_url")).map(|u| path_of(&u)));
    let time = e
        .get("timestamp")
        .filter(|t| !t.is_null())
        .cloned()
        .or_else(|| properties.get("$time").and_then(Value::as_f64).map(|s| json!((s * 1000.0).round() as i64)))
        .unwrap_or(json!(context.now_ms));
    let platform = match properties.get("$lib").and_then(Value::as_str) {
        Some("web") => Some("web"),
        Some("posthog-ios") => Some("ios"),
        Some("posthog-android") => Some("android"),
        // Cross-platform apps say their OS in `$os`.
        Some("posthog-react-native") | Some("posthog-flutter") => mobile_os(properties.get("$os")).or(Some("mobile")),
        Some(_) => Some("server"),
        None => None,
    };
    json!({
        "user_id": user_id,
        "device_id": device_id,
        "event_type": e.get("event"),
        "time": time,
        "insert_id": e.get("uuid").filter(|u| !u.is_null()).or_else(|| properties.get("$insert_id")),
        "page": page,
        "client_session_id": string(properties.get("$session_id")),
        "platform": platform,
        "ip": string(properties.get("$ip")),
        "properties": if properties.is_empty() { Value::Null } else { Value::Object(properties) },
    })
}

/// What posthog-js asks for at start (`/array/<token>/config`): enough to carry on with everything off.
pub(crate) fn posthog_config() -> Value {
    json!({
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": false,
        "featureFlags": {},
        "featureFlagPayloads": {},
        "sessionRecording": false,
        "autocapture_opt_out": true,
        "capturePerformance": false,
        "heatmaps": false,
        "surveys": false,
        "siteApps": [],
        "elementsChainAsString": true,
    })
}

/// `ios` or `android` from an SDK's operating system name, so that a
/// cross-platform app's events meet the platform rules of its OS.
fn mobile_os(os: Option<&Value>) -> Option<&'static str> {
    match os.and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("ios" | "ipados" | "iphone os") => Some("ios"),
        Some("android") => Some("android"),
        _ => None,
    }
}

// ---- Mixpanel: GET|POST /track and /import ----

/// The `data` parameter: base64 of a JSON object or array. In POST bodies the
/// base64 is not URL-encoded, so `+` is kept (never read as a space).
pub(crate) fn mixpanel(data: &str, import_key: Option<&str>, context: Context<'_>) -> Result<Translated, ApiError> {
    let decoded = decode_base64(data)?;
    let value = parse_json(&decoded, "")?;
    let events = match value {
        Value::Array(events) => events,
        event @ Value::Object(_) => vec![event],
        _ => return Err(ApiError::BadRequest("data must hold a JSON object or array".into())),
    };
    check_count(events.len())?;
    let mut tokens: Vec<String> =
        events.iter().filter_map(|e| object(e.get("properties")).and_then(|p| string(p.get("token")))).collect();
    tokens.sort();
    tokens.dedup();
    if tokens.len() > 1 {
        return Err(ApiError::BadRequest("events of one request carry different tokens".into()));
    }
    let key = import_key.map(str::to_string).or_else(|| tokens.pop());
    let native: Vec<Value> = events.iter().map(|e| mixpanel_event(e, context)).collect();
    let (events, problems) = validate(native, None, context.now_ms);
    Ok(Translated { key, events, problems })
}

fn mixpanel_event(event: &Value, context: Context<'_>) -> Value {
    let Some(e) = event.as_object() else { return event.clone() };
    let mut properties = object(e.get("properties")).cloned().unwrap_or_default();
    properties.remove("token");
    let distinct_id = string(properties.get("distinct_id"));
    let device_id = string(properties.get("$device_id"));
    // Mixpanel's anonymous ids look like `$device:<id>`.
    let user_id = distinct_id.filter(|d| !d.starts_with("$device:") && Some(d) != device_id.as_ref());
    // `time`: seconds (possibly fractional) or ms, as Mixpanel accepts.
    let time = match properties.get("time") {
        Some(Value::Number(n)) if n.is_f64() => json!((n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64),
        Some(Value::Null) | None => json!(context.now_ms),
        Some(other) => other.clone(),
    };
    let platform = match properties.get("mp_lib").and_then(Value::as_str) {
        Some("web") => Some("web"),
        Some("iphone") | Some("swift") => Some("ios"),
        Some("android") => Some("android"),
        Some("react-native") | Some("flutter") => mobile_os(properties.get("$os")).or(Some("mobile")),
        Some(_) => Some("server"),
        None => None,
    };
    json!({
        "user_id": user_id,
        "device_id": device_id,
        "event_type": e.get("event"),
        "time": time,
        "insert_id": properties.get("$insert_id"),
        "page": string(properties.get("$current_url")).map(|u| path_of(&u)),
        "platform": platform,
        "ip": string(properties.get("ip")),
        "properties": if properties.is_empty() { Value::Null } else { Value::Object(properties) },
    })
}

/// Base64 in either alphabet, with or without padding, surrounding whitespace ignored.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| ApiError::BadRequest("data is not valid base64".into()))
}

/// Percent-decoding of one form or query value, keeping `+` as `+` (see [`mixpanel`]).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// The raw value of `name` in a query string or form body.
pub(crate) fn form_value<'a>(form: &'a str, name: &str) -> Option<&'a str> {
    form.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// The user name of `Authorization: Basic base64(user:password)`.
pub(crate) fn basic_user(header: Option<&str>) -> Option<String> {
    let (scheme, encoded) = header?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    (!user.is_empty()).then(|| user.to_string())
}

#[cfg(test)]
mod tests;
