//! Hostile input against the real server: every bound of `limits.rs` at its
//! value and one past it, compression bombs, pathological JSON, impossible
//! numbers and times, unknown encodings, and slow clients holding
//! connections. Each row names its expected status and error code (and, for
//! a bad event, its index and field); after the table, the stored events are
//! exactly those of the accepted rows, and the server still answers.
//! The parsers behind these routes are also fuzzed (`fuzz/`, docs/fuzzing.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessionizer_server::limits::{
    MAX_AGE_MS, MAX_BODY_BYTES, MAX_DECOMPRESSED_BYTES, MAX_EVENT_BYTES, MAX_EVENTS_PER_REQUEST, MAX_FUTURE_MS,
    MAX_ID_BYTES, MAX_PROPERTY_DEPTH,
};

use super::server::{TestServer, create_project, free_port, now_ms};

/// What a row expects.
#[derive(Debug)]
enum Expect {
    /// 200, with this many events accepted (all of them new).
    Accepted(usize),
    /// This status and error code; the message contains the fragment.
    Refused { status: u16, code: &'static str, message: &'static str },
    /// 400 `invalid_events` naming this event and field; the event's message contains the fragment.
    InvalidEvent { index: usize, field: &'static str, message: &'static str },
}

struct Row {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
}

fn event(user: &str, time: i64) -> Value {
    json!({"user_id": user, "event_type": "Hostile", "time": time, "insert_id": format!("{user}-{time}")})
}

fn batch(events: Vec<Value>) -> Vec<u8> {
    json!({ "events": events }).to_string().into_bytes()
}

/// A batch of a valid event (index 0) and a bad one (index 1): the valid one must not be stored either.
fn with_bad_second(user: &str, bad: Value, time: i64) -> Vec<u8> {
    batch(vec![event(user, time), bad])
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// gzip of `size` spaces, compressed in pieces (never held decompressed).
fn gzip_bomb(size: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let block = vec![b' '; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        encoder.write_all(&block[..n]).unwrap();
        left -= n;
    }
    encoder.finish().unwrap()
}

/// An event whose compact JSON (as the server measures it) is exactly `size` bytes.
fn event_of_size(user: &str, time: i64, size: usize) -> Value {
    let mut value = event(user, time);
    value["properties"] = json!({"pad": ""});
    let base = serde_json::to_vec(&value).unwrap().len();
    value["properties"]["pad"] = json!("x".repeat(size - base));
    assert_eq!(serde_json::to_vec(&value).unwrap().len(), size);
    value
}

fn rows(t: i64, now: i64) -> Vec<Row> {
    use Expect::*;
    let row = |name: &'static str, body: Vec<u8>, expect: Expect| Row { name, headers: Vec::new(), body, expect };
    let gz = || vec![("Content-Encoding", "gzip".to_string())];
    let deep = |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    let properties = |user: &str, properties: String| {
        format!(r#"{{"events":[{{"user_id":"{user}","event_type":"Hostile","time":{t},"properties":{properties}}}]}}"#)
            .into_bytes()
    };

    // Body size: exactly the bound (a valid batch padded with whitespace), and one byte more.
    let mut at_body_limit = batch(vec![event("ok-body-at-limit", t)]);
    at_body_limit.resize(MAX_BODY_BYTES, b' ');
    let mut over_body_limit = batch(vec![event("refused-body-over-limit", t)]);
    over_body_limit.resize(MAX_BODY_BYTES + 1, b' ');

    let many = |user: &str, n: usize| batch((0..n).map(|i| event(user, t - i as i64)).collect());

    let gzip_in_gzip = gzip(&gzip(&batch(vec![event("refused-gzip-in-gzip", t)])));
    let truncated_gzip = {
        let mut bytes = gzip(&batch(vec![event("refused-truncated-gzip", t)]));
        bytes.truncate(bytes.len() / 2);
        bytes
    };
    let bomb = gzip_bomb(16 * MAX_DECOMPRESSED_BYTES);
    assert!(bomb.len() < MAX_BODY_BYTES, "the bomb passes the body bound: only decompression stops it");

    let mut invalid_utf8 = batch(vec![event("refused-invalid-utf8-XX", t)]);
    let at = invalid_utf8.windows(2).position(|w| w == b"XX").unwrap();
    invalid_utf8[at..at + 2].copy_from_slice(b"\xff\xfe");

    let id = |n: usize| "i".repeat(n);
    let mut too_deep = event("refused-properties-too-deep", t);
    too_deep["properties"] = serde_json::from_str(&deep(r#"{"a":"#, "}", MAX_PROPERTY_DEPTH + 1)).unwrap();
    let mut rows = vec![
        row("body exactly MAX_BODY_BYTES", at_body_limit, Accepted(1)),
        row(
            "body one byte over MAX_BODY_BYTES",
            over_body_limit,
            Refused { status: 413, code: "too_large", message: "exceeds" },
        ),
        row("MAX_EVENTS_PER_REQUEST events", many("ok-events-at-limit", MAX_EVENTS_PER_REQUEST), Accepted(MAX_EVENTS_PER_REQUEST)),
        row(
            "MAX_EVENTS_PER_REQUEST + 1 events",
            many("refused-events-over-limit", MAX_EVENTS_PER_REQUEST + 1),
            Refused { status: 413, code: "too_large", message: "at most 2000" },
        ),
        row("an event of exactly MAX_EVENT_BYTES", batch(vec![event_of_size("ok-event-at-limit", t, MAX_EVENT_BYTES)]), Accepted(1)),
        row(
            "an event one byte over MAX_EVENT_BYTES",
            batch(vec![event("refused-event-over-limit", t), event_of_size("refused-event-over-limit", t, MAX_EVENT_BYTES + 1)]),
            InvalidEvent { index: 1, field: "", message: "at most 65536" },
        ),
        Row {
            name: "gzip bomb (16 x MAX_DECOMPRESSED_BYTES of spaces)",
            headers: gz(),
            body: bomb.clone(),
            expect: Refused { status: 413, code: "too_large", message: "decompressed body exceeds" },
        },
        row(
            "gzip bomb without Content-Encoding (found by its magic bytes)",
            bomb,
            Refused { status: 413, code: "too_large", message: "decompressed body exceeds" },
        ),
        Row { name: "gzip inside gzip (one layer is decoded)", headers: gz(), body: gzip_in_gzip, expect: Refused { status: 400, code: "bad_request", message: "not UTF-8" } },
        Row { name: "truncated gzip", headers: gz(), body: truncated_gzip, expect: Refused { status: 400, code: "bad_request", message: "invalid gzip" } },
        Row {
            name: "gzip of a valid batch",
            headers: gz(),
            body: gzip(&batch(vec![event("ok-gzip", t)])),
            expect: Accepted(1),
        },
        // serde_json stops at 128 levels; the answer says where, and which event.
        row(
            "body nested 10,000 deep",
            format!(r#"{{"events":{}}}"#, deep("[", "]", 10_000)).into_bytes(),
            InvalidEvent { index: 0, field: "", message: "nested more than 128 levels deep (at events[0][0][0]" },
        ),
        row(
            "properties nested 10,000 deep",
            properties("refused-properties-10000-deep", deep(r#"{"a":"#, "}", 10_000)),
            InvalidEvent { index: 0, field: "properties", message: "nested more than 128 levels deep (at events[0].properties.a" },
        ),
        row(
            "a top-level field nested 10,000 deep",
            format!(r#"{{"x":{},"events":[{}]}}"#, deep("[", "]", 10_000), event("refused-deep-top", t)).into_bytes(),
            Refused { status: 400, code: "bad_request", message: "the body nests JSON more than 128 levels deep (at x[0]" },
        ),
        row(
            "properties exactly MAX_PROPERTY_DEPTH deep",
            properties("ok-properties-at-depth", deep(r#"{"a":"#, "}", MAX_PROPERTY_DEPTH)),
            Accepted(1),
        ),
        row(
            "properties MAX_PROPERTY_DEPTH + 1 deep",
            with_bad_second("refused-properties-too-deep", too_deep, t),
            InvalidEvent { index: 1, field: "properties", message: "at most 8 levels" },
        ),
        row("invalid UTF-8 in a string", invalid_utf8, Refused { status: 400, code: "bad_request", message: "not UTF-8" }),
        row(
            "a lone surrogate escape",
            format!(r#"{{"events":[{{"user_id":"refused-\ud800","event_type":"e","time":{t}}}]}}"#).into_bytes(),
            Refused { status: 400, code: "bad_request", message: "not valid JSON" },
        ),
        // Duplicate keys: parsers disagree on which one counts (first, last, both), so none is guessed.
        row(
            "duplicate keys in an event",
            format!(r#"{{"events":[{{"user_id":"refused-duplicate-first","user_id":"refused-duplicate-last","event_type":"e","time":{t}}}]}}"#).into_bytes(),
            InvalidEvent { index: 0, field: "user_id", message: "duplicate key \"user_id\"" },
        ),
        row(
            "duplicate keys in the second event's properties",
            format!(r#"{{"events":[{},{{"user_id":"refused-duplicate-property","event_type":"e","time":{t},"properties":{{"a":{{"b":1,"b":2}}}}}}]}}"#, event("refused-duplicate-property", t)).into_bytes(),
            InvalidEvent { index: 1, field: "properties", message: "duplicate key \"b\" at events[1].properties.a.b" },
        ),
        row(
            "duplicate \"events\" at the top",
            format!(r#"{{"events":[{}],"events":[{}]}}"#, event("refused-duplicate-events", t), event("refused-duplicate-events", t + 1)).into_bytes(),
            Refused { status: 400, code: "bad_request", message: "duplicate key \"events\" at events" },
        ),
        row(
            "the same key in different objects",
            format!(r#"{{"events":[{{"user_id":"ok-same-key-elsewhere","event_type":"e","time":{t},"properties":{{"user_id":"x","a":{{"user_id":"y"}}}}}}]}}"#).into_bytes(),
            Accepted(1),
        ),
        row(
            "time 1e400",
            br#"{"events":[{"user_id":"refused-1e400","event_type":"e","time":1e400}]}"#.to_vec(),
            Refused { status: 400, code: "bad_request", message: "number out of range" },
        ),
        row(
            "time 2^64",
            with_bad_second("refused-time-2-64", json!({"user_id": "refused-time-2-64", "event_type": "e", "time": 18446744073709551616.0_f64}), t),
            InvalidEvent { index: 1, field: "time", message: "not an integer" },
        ),
        row(
            "time 2^64 as an integer literal",
            format!(r#"{{"events":[{},{{"user_id":"refused-time-2-64-literal","event_type":"e","time":18446744073709551616}}]}}"#, event("refused-time-2-64-literal", t)).into_bytes(),
            InvalidEvent { index: 1, field: "time", message: "" },
        ),
        row(
            "time -1",
            with_bad_second("refused-negative-time", json!({"user_id": "refused-negative-time", "event_type": "e", "time": -1}), t),
            InvalidEvent { index: 1, field: "time", message: "" },
        ),
        row(
            "time i64::MIN",
            with_bad_second("refused-min-time", json!({"user_id": "refused-min-time", "event_type": "e", "time": i64::MIN}), t),
            InvalidEvent { index: 1, field: "time", message: "" },
        ),
        row(
            "user_id 1e30 (a float, not an integer id)",
            format!(r#"{{"events":[{{"user_id":1e30,"event_type":"e","time":{t}}}]}}"#).into_bytes(),
            InvalidEvent { index: 0, field: "user_id", message: "string or an integer" },
        ),
        row(
            "time beyond MAX_FUTURE_MS",
            with_bad_second("refused-future", event("refused-future", now + MAX_FUTURE_MS + 60_000), t),
            InvalidEvent { index: 1, field: "time", message: "future" },
        ),
        row(
            "time in the year 9999",
            with_bad_second("refused-9999", json!({"user_id": "refused-9999", "event_type": "e", "time": "9999-12-31T23:59:59Z"}), t),
            InvalidEvent { index: 1, field: "time", message: "future" },
        ),
        row(
            "time beyond MAX_AGE_MS",
            with_bad_second("refused-ancient", event("refused-ancient", now - MAX_AGE_MS - 60_000), t),
            InvalidEvent { index: 1, field: "time", message: "older" },
        ),
        row(
            "sent_at skew pushing times out of range",
            format!(r#"{{"sent_at":0,"events":[{}]}}"#, event("refused-skew", t)).into_bytes(),
            InvalidEvent { index: 0, field: "time", message: "future" },
        ),
        row(
            "user_id of exactly MAX_ID_BYTES",
            batch(vec![json!({"user_id": format!("ok-id-at-limit-{}", id(MAX_ID_BYTES - 15)), "event_type": "e", "time": t})]),
            Accepted(1),
        ),
        row(
            "user_id of MAX_ID_BYTES + 1",
            with_bad_second("refused-long-user", json!({"user_id": format!("refused-long-user-{}", id(MAX_ID_BYTES)), "event_type": "e", "time": t}), t),
            InvalidEvent { index: 1, field: "user_id", message: "longer than 1024" },
        ),
        row(
            "insert_id of MAX_ID_BYTES + 1",
            with_bad_second("refused-long-insert", json!({"user_id": "refused-long-insert", "insert_id": id(MAX_ID_BYTES + 1), "event_type": "e", "time": t}), t),
            InvalidEvent { index: 1, field: "insert_id", message: "longer than 1024" },
        ),
        row(
            "device_id of MAX_ID_BYTES + 1",
            with_bad_second("refused-long-device", json!({"device_id": id(MAX_ID_BYTES + 1), "event_type": "e", "time": t}), t),
            InvalidEvent { index: 1, field: "device_id", message: "longer than 1024" },
        ),
        Row {
            name: "Content-Encoding: br",
            headers: vec![("Content-Encoding", "br".into())],
            body: batch(vec![event("refused-brotli", t)]),
            expect: Refused { status: 415, code: "unsupported_media_type", message: "br" },
        },
        Row {
            name: "Content-Encoding: gzip, gzip",
            headers: vec![("Content-Encoding", "gzip, gzip".into())],
            body: gzip(&gzip(&batch(vec![event("refused-double-encoding", t)]))),
            expect: Refused { status: 415, code: "unsupported_media_type", message: "gzip" },
        },
        row("an empty body", Vec::new(), Refused { status: 400, code: "bad_request", message: "not valid JSON" }),
        row("a JSON array at the top", b"[]".to_vec(), Refused { status: 400, code: "bad_request", message: "JSON object" }),
        row(
            "an array of events at the top",
            format!("[{}]", event("refused-array-top", t)).into_bytes(),
            Refused { status: 400, code: "bad_request", message: "JSON object" },
        ),
        row("a JSON string at the top", br#""events""#.to_vec(), Refused { status: 400, code: "bad_request", message: "JSON object" }),
        row("null at the top", b"null".to_vec(), Refused { status: 400, code: "bad_request", message: "JSON object" }),
        row(
            "trailing garbage after the object",
            format!(r#"{{"events":[{}]}} x"#, event("refused-trailing", t)).into_bytes(),
            Refused { status: 400, code: "bad_request", message: "trailing" },
        ),
        row(
            "an event that is not an object",
            format!(r#"{{"events":[{},"nope"]}}"#, event("refused-not-object", t)).into_bytes(),
            InvalidEvent { index: 1, field: "", message: "JSON object" },
        ),
    ];
    for row in &mut rows {
        row.headers.push(("Content-Type", "application/json".into()));
    }
    rows
}

#[test]
fn bad_inputs_are_refused_with_their_status_and_nothing_of_them_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "hostile");
    let server = TestServer::start(dir.path(), free_port());
    let now = now_ms();
    let t = now - 60_000;
    let auth = format!("Bearer {}", project.write_key);
    let mut failures = Vec::new();
    let mut accepted = 0;
    for row in rows(t, now) {
        let mut headers: Vec<(&str, &str)> = row.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.push(("Authorization", &auth));
        let started = Instant::now();
        let (status, _, body) = server.request("POST", "/v1/events", &headers, &row.body);
        let took = started.elapsed();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let error = &answer["error"];
        let ok = match &row.expect {
            Expect::Accepted(n) => {
                accepted += n;
                status == 200 && answer == json!({"accepted": n, "duplicates": 0})
            }
            Expect::Refused { status: expected, code, message } => {
                status == *expected
                    && error["code"] == *code
                    && error["message"].as_str().is_some_and(|m| m.contains(message))
            }
            Expect::InvalidEvent { index, field, message } => {
                status == 400
                    && error["code"] == "invalid_events"
                    && error["events"].as_array().is_some_and(|problems| {
                        problems.iter().any(|p| {
                            p["index"] == *index
                                && p["field"] == *field
                                && p["message"].as_str().is_some_and(|m| !m.is_empty() && m.contains(message))
                        })
                    })
            }
        };
        if !ok {
            failures.push(format!("{}: expected {:?}, got {status} {}", row.name, row.expect, truncate(&body)));
        }
        // A refusal is fast: nothing waits for the writer or reads past a bound.
        if took > Duration::from_secs(10) {
            failures.push(format!("{}: took {took:?}", row.name));
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));

    // Exactly the accepted rows' events are stored; nothing of any refused request.
    let export = server.get("/v1/export/events?format=ndjson", Some(&project.read_key));
    assert_eq!(export.status, 200, "{}", truncate(&export.body));
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for line in export.body.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let user = row["user_id"].as_str().or(row["device_id"].as_str()).unwrap_or("").to_string();
        *users.entry(user).or_default() += 1;
    }
    let refused: Vec<&String> = users.keys().filter(|user| !user.starts_with("ok-")).collect();
    assert!(refused.is_empty(), "events of refused requests were stored: {refused:?}");
    assert_eq!(users.values().sum::<usize>(), accepted, "{users:?}");
    assert_eq!(users.get("ok-events-at-limit"), Some(&MAX_EVENTS_PER_REQUEST));

    assert_eq!(server.get("/healthz", None).status, 200);
    assert_eq!(server.get("/readyz", None).status, 200);
}

fn truncate(text: &str) -> &str {
    let end = (0..=text.len().min(300)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..end]
}

/// Slow clients: many connections that send part of a request and hold it
/// (headers never finished; a body shorter than its Content-Length) must not
/// keep the server from answering everyone else promptly, and are cut off by
/// the server's timeouts (shortened here by flags): a header not finished in
/// time closes the connection, a body that stalls or trickles gets 408 and a
/// close. Nothing they sent is stored, and SIGTERM still drains in-flight requests.
#[test]
fn slow_clients_holding_connections_do_not_block_others() {
    const HELD: usize = 64;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "slow");
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let flags = ["--header-read-timeout", &timeout, "--body-idle-timeout", &timeout, "--body-total-timeout", "3s"];
    let mut server = TestServer::start_with(dir.path(), free_port(), &flags);
    let address = format!("127.0.0.1:{}", server.port);
    let post_head = |length: usize| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            project.write_key
        )
    };
    let mut held = Vec::new();
    let opened = Instant::now();
    for i in 0..HELD {
        let mut stream = TcpStream::connect(&address).unwrap();
        let partial = match i % 3 {
            // Headers never finished.
            0 => "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".to_string(),
            // A body shorter than it said.
            1 => format!("{}{{\"events\":[", post_head(100_000)),
            // Only the start of the request line.
            _ => "POS".to_string(),
        };
        stream.write_all(partial.as_bytes()).unwrap();
        held.push((i % 3, stream));
    }

    let started = Instant::now();
    assert_eq!(server.get("/healthz", None).status, 200);
    let body = json!({"events": [event("ok-while-slow", now_ms() - 1_000)]});
    let reply = server.post("/v1/events", Some(&project.write_key), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sessions = server.get("/v1/sessions?user_id=ok-while-slow", Some(&project.read_key));
    assert_eq!(sessions.status, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "normal requests took {took:?} with {HELD} slow clients holding connections"
    );

    // Each held connection is cut off by the server: what it reads until the close, and when.
    let mut closed_after = Vec::new();
    for (kind, stream) in &mut held {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let result = stream.read_to_end(&mut answer);
        let waited = opened.elapsed();
        assert!(
            !matches!(&result, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a slow client (kind {kind}) was still connected after {waited:?}"
        );
        let answer = String::from_utf8_lossy(&answer);
        match kind {
            // An unfinished header gets no answer, only the close.
            0 | 2 => assert!(answer.is_empty(), "{answer}"),
            _ => {
                assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body: {answer}");
                assert!(answer.contains("request_timeout"), "{answer}");
            }
        }
        closed_after.push(waited);
    }
    let latest = closed_after.iter().max().unwrap();
    assert!(*latest < TIMEOUT * 4, "the last slow connection was closed after {latest:?}");

    // A body that trickles in (a byte every 300 ms, never idle for a second) is cut off by the total deadline.
    let mut trickle = TcpStream::connect(&address).unwrap();
    trickle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    trickle.write_all(post_head(1_000).as_bytes()).unwrap();
    let trickle_started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    trickle.set_nonblocking(true).unwrap();
    while trickle_started.elapsed() < Duration::from_secs(8) {
        // The server may close while we write: stop writing then.
        if trickle.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        match trickle.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let trickled = trickle_started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a trickling body after {trickled:?}: {answer}");
    assert!(trickled >= Duration::from_secs(2) && trickled < Duration::from_secs(6), "{trickled:?}");
    eprintln!(
        "slow clients: {HELD} held connections closed within {latest:?} (timeouts {TIMEOUT:?}); a trickling body got 408 after {trickled:?}"
    );

    let export = server.get("/v1/export/events?format=ndjson", Some(&project.read_key));
    assert_eq!(export.body.lines().count(), 1, "{}", export.body);
    assert_eq!(server.get("/healthz", None).status, 200);

    // Graceful shutdown still drains: a request in flight when SIGTERM arrives is answered, then the server exits 0.
    let body = batch(vec![event("ok-during-shutdown", now_ms() - 1_000)]);
    let mut in_flight = TcpStream::connect(&address).unwrap();
    in_flight.write_all(post_head(body.len()).as_bytes()).unwrap();
    in_flight.write_all(&body[..10]).unwrap();
    let client = std::thread::spawn(move || {
        // The rest of the body arrives after SIGTERM.
        std::thread::sleep(Duration::from_millis(400));
        in_flight.write_all(&body[10..]).unwrap();
        in_flight.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        drop(in_flight.read_to_end(&mut answer));
        String::from_utf8_lossy(&answer).into_owned()
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.terminate().success(), "a clean exit after SIGTERM");
    let answer = client.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the request in flight during shutdown: {answer}");
}

/// The SDK formats refuse duplicate keys too, naming the key and the event,
/// and store nothing of such a request.
#[test]
fn sdk_bodies_with_duplicate_keys_are_refused() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "sdk-duplicates");
    let server = TestServer::start(dir.path(), free_port());
    let key = project.write_key.as_str();
    let t = now_ms() - 60_000;
    let json_type = ("Content-Type", "application/json");

    let amplitude = format!(
        r#"{{"api_key":"{key}","events":[{{"user_id":"amp-ok","event_type":"e","time":{t}}},{{"user_id":"amp-a","user_id":"amp-b","event_type":"e","time":{t}}}]}}"#
    );
    let (status, _, body) = server.request("POST", "/2/httpapi", &[json_type], amplitude.as_bytes());
    assert_eq!(status, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["events_with_invalid_fields"], json!({"user_id": [1]}), "{body}");

    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:")));
    let segment = r#"{"batch":[{"type":"track","userId":"seg","event":"a","event":"b","messageId":"s1"}],"sentAt":"2026-01-01T00:00:00Z"}"#;
    let (status, _, body) =
        server.request("POST", "/v1/batch", &[json_type, ("Authorization", basic.as_str())], segment.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#"duplicate key \"event\""#), "{body}");

    let posthog = format!(r#"[{{"api_key":"{key}","event":"a","distinct_id":"ph","distinct_id":"ph2"}}]"#);
    let (status, _, body) = server.request("POST", "/batch/", &[json_type], posthog.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("duplicate key") && body.contains("[0].distinct_id"), "{body}");

    let export = server.get("/v1/export/events?format=ndjson", Some(&project.read_key));
    assert_eq!(export.status, 200);
    assert_eq!(export.body, "", "nothing of a refused request is stored");
}
