//! The SDK-compatible routes over the wire, against the real binary: each
//! SDK's request as it sends it (headers, encodings, keys), and the answer
//! it needs. `tests/sdk` drives the SDKs themselves.

use std::io::Write;

use base64::Engine as _;
use serde_json::{Value, json};

use super::server::{TestServer, create_project, free_port, now_ms};

const MIN: i64 = 60_000;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sessions_of(server: &TestServer, key: &str, query: &str) -> Vec<Value> {
    let reply = server.get(&format!("/v1/sessions?{query}"), Some(key));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["sessions"].as_array().unwrap().clone()
}

#[test]
fn every_sdk_format_lands_in_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "sdk");
    let server = TestServer::start(dir.path(), free_port());
    let key = project.write_key.as_str();
    let t0 = now_ms() - 3 * 60 * MIN;

    // Amplitude HTTP V2: the key in the body, success in the body's `code`.
    let amplitude = json!({"api_key": key, "events": [
        {"user_id": "amp-user", "event_type": "Page Viewed", "time": t0, "insert_id": "amp-1", "session_id": t0},
        {"user_id": "amp-user", "event_type": "Clicked", "time": t0 + 5 * MIN, "insert_id": "amp-2", "session_id": t0},
    ]});
    let (status, _, body) =
        server.request("POST", "/2/httpapi", &[("Content-Type", "application/json")], amplitude.to_string().as_bytes());
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &answer["code"], &answer["events_ingested"]), (200, &json!(200), &json!(2)), "{body}");
    // A retry is acknowledged again and stored once.
    let (_, _, again) = server.request("POST", "/batch", &[], amplitude.to_string().as_bytes());
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap()["code"], json!(200));
    let amp = sessions_of(&server, &project.read_key, "user_id=amp-user");
    assert_eq!((amp.len(), &amp[0]["event_count"]), (1, &json!(2)));
    // Invalid events are listed in Amplitude's fields; a wrong key is Amplitude's "Invalid API key".
    let bad = json!({"api_key": key, "events": [{"user_id": "u", "event_type": "e"}, {"event_type": "e"}]});
    let (status, _, body) = server.request("POST", "/2/httpapi", &[], bad.to_string().as_bytes());
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["events_with_missing_fields"], json!({"user_id": [1]}));
    let wrong = json!({"api_key": "sk_write_wrong", "events": [{"user_id": "u", "event_type": "e"}]});
    let (status, _, body) = server.request("POST", "/2/httpapi", &[], wrong.to_string().as_bytes());
    assert_eq!(status, 400);
    assert!(body.contains("Invalid API key"), "{body}");

    // Segment: Basic auth with the write key as the user.
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:")));
    let iso = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let segment = json!({"batch": [
        {"type": "track", "userId": "seg-user", "event": "Order Completed", "timestamp": iso(t0), "messageId": "seg-1"},
        {"type": "page", "userId": "seg-user", "name": "Home", "timestamp": iso(t0 + 50 * MIN), "messageId": "seg-2",
         "properties": {"path": "/"}},
        {"type": "track", "event": "nobody", "messageId": "seg-3"},
    ], "sentAt": iso(now_ms())});
    let (status, _, body) = server.request(
        "POST",
        "/v1/batch",
        &[("Authorization", basic.as_str()), ("Content-Type", "application/json")],
        segment.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["dropped"],
        json!([2]),
        "no user id: dropped, the rest kept"
    );
    let seg = sessions_of(&server, &project.read_key, "user_id=seg-user");
    assert_eq!(seg.len(), 2, "a 50-minute gap");
    assert_eq!(seg[1]["entry_page"], json!("/"));

    // RudderStack: gzip under a form content type; originalTimestamp when no timestamp.
    let rudder = json!({"batch": [
        {"type": "track", "anonymousId": "rud-anon", "event": "Opened", "originalTimestamp": iso(t0), "messageId": "rud-1"},
    ]});
    let (status, _, body) = server.request(
        "POST",
        "/v1/batch",
        &[
            ("Authorization", basic.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(rudder.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let rud = sessions_of(&server, &project.read_key, "device_id=rud-anon");
    assert_eq!(rud[0]["start_ms"], json!(t0));

    // posthog-js: gzip as text/plain with no Content-Encoding header.
    let posthog = json!({"api_key": key, "batch": [
        {"event": "$pageview", "distinct_id": "ph-user", "timestamp": iso(t0), "uuid": "ph-1",
         "properties": {"$current_url": "http://shop.example/cart", "$session_id": "s-1"}},
    ]});
    let (status, _, _) =
        server.request("POST", "/e/", &[("Content-Type", "text/plain")], &gzip(posthog.to_string().as_bytes()));
    assert_eq!(status, 200);
    // posthog-node: /batch/ with Content-Encoding: gzip; the same uuid again is a duplicate.
    let (status, _, _) =
        server.request("POST", "/batch/", &[("Content-Encoding", "gzip")], &gzip(posthog.to_string().as_bytes()));
    assert_eq!(status, 200);
    let ph = sessions_of(&server, &project.read_key, "user_id=ph-user");
    assert_eq!((ph.len(), &ph[0]["event_count"], &ph[0]["entry_page"]), (1, &json!(1), &json!("/cart")));
    // Too large for either: Amplitude's answer (its SDK reads `code`; PostHog's only the status).
    let huge = vec![b' '; sessionizer_server::limits::MAX_BODY_BYTES + 1];
    let (status, _, body) = server.request("POST", "/batch", &[], &huge);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["code"].clone()), (413, json!(413)));
    let (status, _, config) = server.request("GET", &format!("/array/{key}/config"), &[], b"");
    assert_eq!(status, 200);
    assert!(config.contains("supportedCompression"));

    // Mixpanel: base64 not URL-encoded in a POST form, so '+' must survive; the answer is `1`.
    let mut mixpanel_events = Vec::new();
    for i in 0..40 {
        // Varied payloads so the base64 holds '+' and '/'.
        mixpanel_events.push(json!({"event": "Played", "properties": {"token": key, "distinct_id": "mp-user",
            "time": (t0 + i * MIN) / 1000, "$insert_id": format!("mp-{i}-??>>~~")}}));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(Value::Array(mixpanel_events).to_string());
    assert!(encoded.contains('+'), "the test payload exercises '+'");
    let (status, _, body) = server.request(
        "POST",
        "/track?ip=1&verbose=0",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("data={encoded}").as_bytes(),
    );
    assert_eq!((status, body.as_str()), (200, "1"));
    let single = base64::engine::general_purpose::STANDARD
        .encode(json!({"event": "Paused", "properties": {"token": key, "distinct_id": "mp-user", "time": (t0 + 41 * MIN) / 1000}}).to_string());
    let (status, _, body) = server.request("GET", &format!("/track?data={single}&verbose=1"), &[], b"");
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": 1, "error": null})));
    let mp = sessions_of(&server, &project.read_key, "user_id=mp-user");
    assert_eq!((mp.len(), &mp[0]["event_count"]), (1, &json!(41)));
    let (_, _, body) = server.request("GET", "/track?data=!!!&verbose=0", &[], b"");
    assert_eq!(body, "0");
}

#[test]
fn cors_only_on_ingestion() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "cors");
    let server = TestServer::start(dir.path(), free_port());
    let origin = ("Origin", "http://app.example");
    for path in ["/v1/events", "/2/httpapi", "/e/", "/v1/batch", "/track"] {
        let (status, headers, _) = server.request(
            "OPTIONS",
            path,
            &[origin, ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "content-type")],
            b"",
        );
        assert_eq!(status, 204, "{path}");
        assert_eq!(headers["access-control-allow-origin"], "http://app.example", "{path}");
        assert_eq!(headers["access-control-allow-headers"], "content-type", "{path}");
    }
    let body = json!({"events": [{"user_id": "u", "event_type": "e", "time": now_ms()}]}).to_string();
    let auth = format!("Bearer {}", project.write_key);
    let (status, headers, _) =
        server.request("POST", "/v1/events", &[origin, ("Authorization", auth.as_str())], body.as_bytes());
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
    // Read routes answer no preflight and carry no CORS header.
    let read = format!("Bearer {}", project.read_key);
    let (status, headers, _) =
        server.request("GET", "/v1/sessions?user_id=u", &[origin, ("Authorization", read.as_str())], b"");
    assert_eq!(status, 200);
    assert!(!headers.contains_key("access-control-allow-origin"));
    let (status, headers, _) =
        server.request("OPTIONS", "/v1/sessions", &[origin, ("Access-Control-Request-Method", "GET")], b"");
    assert_ne!(status, 204);
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[test]
fn client_session_source_follows_the_sdk_session_ids() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "client-sessions");
    let set = std::process::Command::new(super::BIN)
        .args(["project", "set", &project.id, "--session-source", "client", "--data", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let server = TestServer::start(dir.path(), free_port());
    let t0 = now_ms() - 60 * MIN;
    // The browser SDK started a new session at minute 6 (say, after its own reset); the gap is only a minute.
    let events: Vec<Value> = [(0, t0), (5, t0), (6, t0 + 6 * MIN), (8, t0 + 6 * MIN)]
        .iter()
        .map(|&(minute, session_id)| {
            json!({"user_id": "u", "event_type": "view", "time": t0 + minute * MIN,
                   "insert_id": format!("c-{minute}"), "session_id": session_id})
        })
        .collect();
    let body = json!({"api_key": project.write_key, "events": events});
    let (status, _, answer) = server.request("POST", "/2/httpapi", &[], body.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    let sessions = sessions_of(&server, &project.read_key, "user_id=u");
    let starts: Vec<&Value> = sessions.iter().map(|s| &s["start_ms"]).collect();
    assert_eq!(starts, [&json!(t0), &json!(t0 + 6 * MIN)]);
    assert_eq!(sessions[0]["end_reason"], json!("client_session"));
}

/// A full write queue refuses at once and stores nothing: 503 with
/// `Retry-After` on the native route, Amplitude's 429 throttling answer on
/// its routes; every acknowledged event is stored, no refused one is.
#[test]
fn a_full_write_queue_answers_busy_and_stores_nothing_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "busy");
    let server = TestServer::start_with(dir.path(), free_port(), &["--write-queue-requests", "1"]);
    let t0 = now_ms() - 60 * MIN;
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    let (mut native_busy, mut amplitude_busy) = (0, 0);
    for round in 0..40 {
        let replies: Vec<(String, bool, u16, Option<String>, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let (server, key) = (&server, project.write_key.as_str());
                    scope.spawn(move || {
                        let user = format!("u{round}-{i}");
                        let event = json!({"user_id": user, "event_type": "e", "time": t0 + i, "insert_id": user});
                        let amplitude = i % 2 == 0;
                        let (path, headers, body) = if amplitude {
                            ("/2/httpapi", vec![], json!({"api_key": key, "events": [event]}))
                        } else {
                            let auth = format!("Bearer {key}");
                            ("/v1/events", vec![("Authorization".to_string(), auth)], json!({"events": [event]}))
                        };
                        let mut all: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
                        all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                        let (status, headers, body) = server.request("POST", path, &all, body.to_string().as_bytes());
                        let retry = headers.get("retry-after").map(|v| v.to_str().unwrap().to_string());
                        (user, amplitude, status, retry, body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (user, amplitude, status, retry, body) in replies {
            match (status, amplitude) {
                (200, _) => {
                    acknowledged.insert(user);
                }
                (503, false) => {
                    assert_eq!(retry.as_deref(), Some("1"), "{body}");
                    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], json!("busy"));
                    native_busy += 1;
                    refused.insert(user);
                }
                (429, true) => {
                    assert_eq!(retry.as_deref(), Some("1"), "{body}");
                    let body: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(body["code"], json!(429), "Amplitude reads the code from the body");
                    assert!(body["throttled_events"].is_array(), "{body}");
                    amplitude_busy += 1;
                    refused.insert(user);
                }
                other => panic!("unexpected answer {other:?}: {body}"),
            }
        }
        if native_busy > 0 && amplitude_busy > 0 && round >= 2 {
            break;
        }
    }
    assert!(native_busy > 0 && amplitude_busy > 0, "a one-request queue overflows under 32 concurrent requests");
    let export = server.get("/v1/export/events?format=ndjson", Some(&project.read_key));
    let stored: std::collections::BTreeSet<String> = export
        .body
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acknowledged, "exactly the acknowledged events are stored");
    assert!(refused.is_disjoint(&stored));
}
