//! Each SDK's payload, as its SDK sends it (see `../shared/clients` notes in
//! docs/sdk-compatibility.md), translated into native events.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;

use super::*;

const NOW: i64 = 1_767_603_600_000; // 2026-01-05T09:00:00Z

fn context() -> Context<'static> {
    Context { now_ms: NOW, client_ip: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))), basic_user: None }
}

#[test]
fn amplitude_http_v2() {
    let body = json!({
        "api_key": "sk_write_x",
        "events": [
            {"user_id": "alice", "device_id": "d1", "event_type": "Page Viewed", "time": NOW - 1000,
             "insert_id": "i-1", "session_id": NOW - 60_000, "event_properties": {"[Amplitude] Page Path": "/home"},
             "user_properties": {"plan": "pro"}, "platform": "Web", "ip": "$remote", "event_id": 3,
             "library": "amplitude-ts"},
            {"device_id": "d2", "event_type": "Clicked", "session_id": -1},
        ],
        "client_upload_time": "2026-01-05T09:00:00.000Z",
    });
    let translated = amplitude(body.to_string().as_bytes(), context()).unwrap();
    assert_eq!(translated.key.as_deref(), Some("sk_write_x"));
    assert!(translated.problems.is_empty(), "{:?}", translated.problems);
    let [first, second] = &translated.events[..] else { panic!("two events") };
    assert_eq!((first.user_id.as_deref(), first.device_id.as_deref()), (Some("alice"), Some("d1")));
    assert_eq!(first.time_ms, NOW - 1000);
    assert_eq!(first.insert_id.as_deref(), Some("i-1"));
    assert_eq!(first.page.as_deref(), Some("/home"));
    assert_eq!(first.client_session_id, Some((NOW - 60_000).to_string()), "the client's session id is kept");
    assert_eq!(first.platform.as_deref(), Some("web"));
    assert_eq!(first.ip.as_deref(), Some("203.0.113.7"), "$remote is the client address");
    let properties: Value = serde_json::from_str(first.properties.as_deref().unwrap()).unwrap();
    assert_eq!(properties["$user_properties"], json!({"plan": "pro"}));
    assert_eq!(second.time_ms, NOW, "a missing time is the upload time");
    assert_eq!(second.client_session_id, None, "-1 means no session");
}

#[test]
fn amplitude_lists_bad_events_by_index_in_its_own_fields() {
    let body = json!({"api_key": "k", "events": [
        {"user_id": "ok", "event_type": "e"},
        {"event_type": "e"},
        {"user_id": "u"},
        {"user_id": "u", "event_type": "e", "time": "not a time", "event_properties": 5},
    ]});
    let translated = amplitude(body.to_string().as_bytes(), context()).unwrap();
    let answer = amplitude_invalid(&translated.problems);
    assert_eq!(answer["code"], json!(400));
    assert_eq!(answer["events_with_missing_fields"], json!({"event_type": [2], "user_id": [1]}));
    assert_eq!(answer["events_with_invalid_fields"], json!({"event_properties": [3], "time": [3]}));
}

#[test]
fn segment_and_rudderstack() {
    let body = json!({
        "writeKey": "sk_write_body",
        "sentAt": "2026-01-05T08:59:59Z",
        "batch": [
            {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": "2026-01-05T08:00:00Z",
             "messageId": "m-1", "properties": {"total": 5}, "context": {"page": {"path": "/checkout"}, "ip": "198.51.100.1"}},
            {"type": "page", "anonymousId": "a1", "name": "Pricing", "originalTimestamp": "2026-01-05T08:01:00Z",
             "properties": {"path": "/pricing"}, "messageId": "m-2", "context": {"sessionId": 1767600000000i64}},
            {"type": "screen", "userId": "u1", "name": "Home", "timestamp": "2026-01-05T08:02:00Z",
             "originalTimestamp": "2026-01-05T09:00:00Z", "messageId": "m-3", "context": {"os": {"name": "iOS"}}},
            {"type": "identify", "userId": "u1", "traits": {"email": "x@example.com"}, "messageId": "m-4"},
            {"type": "track", "event": "No one", "messageId": "m-5"},
        ],
    });
    let basic = Context { basic_user: Some("sk_write_basic"), ..context() };
    let translated = segment(body.to_string().as_bytes(), None, basic).unwrap();
    assert_eq!(translated.key.as_deref(), Some("sk_write_basic"), "Basic auth wins over the body");
    assert_eq!(translated.problems.iter().map(|p| p.index).collect::<Vec<_>>(), [4], "no user: dropped");
    let types: Vec<&str> = translated.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Order Completed", "Page Viewed", "Screen Viewed", "Identity Set"]);
    let [track, page, screen, identify] = &translated.events[..] else { panic!() };
    assert_eq!(track.time_ms, 1_767_600_000_000);
    assert_eq!(track.page.as_deref(), Some("/checkout"));
    assert_eq!(track.insert_id.as_deref(), Some("m-1"));
    assert_eq!(track.ip.as_deref(), Some("198.51.100.1"));
    assert_eq!((page.user_id.as_deref(), page.device_id.as_deref()), (None, Some("a1")));
    assert_eq!(page.page.as_deref(), Some("/pricing"));
    assert_eq!(page.time_ms, 1_767_600_060_000, "originalTimestamp when there is no timestamp");
    assert_eq!(page.client_session_id.as_deref(), Some("1767600000000"));
    assert_eq!(screen.time_ms, 1_767_600_120_000, "an explicit timestamp wins over originalTimestamp");
    assert_eq!((screen.page.as_deref(), screen.platform.as_deref()), (Some("Home"), Some("ios")));
    assert_eq!(identify.time_ms, NOW);
    let single = json!({"userId": "u9", "event": "Signed Up", "timestamp": "2026-01-05T08:00:00Z"});
    let translated = segment(single.to_string().as_bytes(), Some("track"), context()).unwrap();
    assert_eq!(translated.events[0].event_type, "Signed Up");
    assert_eq!(translated.key, None);
}

#[test]
fn posthog_node_and_js() {
    let body = json!({
        "api_key": "sk_write_ph",
        "sent_at": "2026-01-05T09:00:00Z",
        "batch": [
            {"event": "$pageview", "distinct_id": "user-1", "timestamp": "2026-01-05T08:30:00Z",
             "uuid": "0190-a", "properties": {"$current_url": "https://shop.example/cart?x=1", "$session_id": "s-1",
             "$device_id": "dev-1", "$lib": "web"}},
            {"event": "clicked", "distinct_id": "dev-2", "uuid": "0190-b",
             "properties": {"$device_id": "dev-2", "$time": 1767601800.5, "$pathname": "/x"}},
        ],
    });
    let translated = posthog(body.to_string().as_bytes(), context()).unwrap();
    assert_eq!(translated.key.as_deref(), Some("sk_write_ph"));
    let [view, click] = &translated.events[..] else { panic!("{:?}", translated.problems) };
    assert_eq!((view.user_id.as_deref(), view.device_id.as_deref()), (Some("user-1"), Some("dev-1")));
    assert_eq!(view.page.as_deref(), Some("/cart"));
    assert_eq!(view.time_ms, NOW - 30 * 60_000);
    assert_eq!((view.insert_id.as_deref(), view.client_session_id.as_deref()), (Some("0190-a"), Some("s-1")));
    assert_eq!(view.platform.as_deref(), Some("web"));
    assert_eq!((click.user_id.as_deref(), click.device_id.as_deref()), (None, Some("dev-2")), "anonymous: the device");
    assert_eq!(click.time_ms, 1_767_601_800_500);
    assert_eq!(click.page.as_deref(), Some("/x"));
    // One event with its token in the properties (capture), and a bare array.
    let single = json!({"event": "e", "distinct_id": "u", "properties": {"token": "sk_write_t"}});
    assert_eq!(posthog(single.to_string().as_bytes(), context()).unwrap().key.as_deref(), Some("sk_write_t"));
    let array = json!([{"event": "e", "distinct_id": "u", "properties": {"token": "sk_write_a"}}]);
    let translated = posthog(array.to_string().as_bytes(), context()).unwrap();
    assert_eq!((translated.key.as_deref(), translated.events.len()), (Some("sk_write_a"), 1));
    assert!(posthog_config()["supportedCompression"].is_array());
}

#[test]
fn mixpanel_base64_keeps_plus_signs() {
    use base64::Engine as _;
    // A payload whose base64 holds '+' and '/'.
    let events = json!([
        {"event": "Played", "properties": {"token": "sk_write_mp", "distinct_id": "u1", "time": 1767603000,
                                            "$insert_id": "i>>>??", "$current_url": "https://a.example/b"}},
        {"event": "Played", "properties": {"token": "sk_write_mp", "distinct_id": "$device:d9", "$device_id": "d9",
                                            "time": 1767603000123i64}},
    ]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(events.to_string());
    let form = format!("data={encoded}");
    assert!(encoded.contains('+') || encoded.contains('/'));
    let data = percent_decode(form_value(&form, "data").unwrap());
    let translated = mixpanel(&data, None, context()).unwrap();
    assert_eq!(translated.key.as_deref(), Some("sk_write_mp"));
    let [first, second] = &translated.events[..] else { panic!("{:?}", translated.problems) };
    assert_eq!(first.time_ms, 1_767_603_000_000, "seconds");
    assert_eq!(first.insert_id.as_deref(), Some("i>>>??"));
    assert_eq!(first.page.as_deref(), Some("/b"));
    assert_eq!(second.time_ms, 1_767_603_000_123, "milliseconds");
    assert_eq!((second.user_id.as_deref(), second.device_id.as_deref()), (None, Some("d9")));
    let mixed = json!([
        {"event": "a", "properties": {"token": "one", "distinct_id": "u"}},
        {"event": "b", "properties": {"token": "two", "distinct_id": "u"}},
    ]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(mixed.to_string());
    assert!(mixpanel(&encoded, None, context()).is_err());
    assert!(mixpanel("%%%not base64", None, context()).is_err());
}

#[test]
fn helpers() {
    assert_eq!(path_of("https://a.example/x/y?z#w"), "/x/y");
    assert_eq!(path_of("https://a.example"), "/");
    assert_eq!(path_of("/plain"), "/plain");
    assert_eq!(percent_decode("a%2Bb+c%zz"), "a+b+c%zz");
    assert_eq!(form_value("ip=1&data=abc&verbose=1", "data"), Some("abc"));
    assert_eq!(form_value("xdata=1", "data"), None);
    use base64::Engine as _;
    let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("sk_write_k:"));
    assert_eq!(basic_user(Some(&header)).as_deref(), Some("sk_write_k"));
    assert_eq!(basic_user(Some("Bearer x")), None);
}

/// Cross-platform mobile SDKs (React Native, Flutter) say their OS in `$os`,
/// so their events meet the rules of `ios` or `android`.
#[test]
fn cross_platform_mobile_sdks_take_their_platform_from_the_os() {
    let posthog_event = |lib: &str, os: &str| {
        json!({"api_key": "k", "batch": [{"event": "e", "distinct_id": "u", "uuid": "x",
               "properties": {"$lib": lib, "$os": os}}]})
    };
    let platform = |body: Value| posthog(body.to_string().as_bytes(), context()).unwrap().events[0].platform.clone();
    assert_eq!(platform(posthog_event("posthog-react-native", "iOS")).as_deref(), Some("ios"));
    assert_eq!(platform(posthog_event("posthog-flutter", "Android")).as_deref(), Some("android"));
    assert_eq!(platform(posthog_event("posthog-react-native", "Windows")).as_deref(), Some("mobile"));
    assert_eq!(platform(posthog_event("posthog-node", "Linux")).as_deref(), Some("server"));

    use base64::Engine as _;
    let mixpanel_platform = |lib: &str, os: &str| {
        let data = json!([{"event": "e", "properties": {"token": "k", "distinct_id": "u", "mp_lib": lib, "$os": os}}]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(data.to_string());
        mixpanel(&encoded, None, context()).unwrap().events[0].platform.clone()
    };
    assert_eq!(mixpanel_platform("react-native", "iOS").as_deref(), Some("ios"));
    assert_eq!(mixpanel_platform("flutter", "Android").as_deref(), Some("android"));
    assert_eq!(mixpanel_platform("iphone", "iOS").as_deref(), Some("ios"));
}
