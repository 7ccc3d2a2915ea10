//! The body of every fuzz target, as plain functions.
//!
//! Each `fuzz_targets/<name>.rs` is one line that calls the function of the
//! same name here, so the same bodies run two ways:
//! * `cargo +nightly fuzz run <name>` (libFuzzer, coverage-guided; see docs/fuzzing.md);
//! * `cargo test --manifest-path fuzz/Cargo.toml` on stable (tests/smoke.rs):
//!   every seed in `corpus/<name>/` plus a few thousand deterministic mutations.
//!
//! A body panics when its property fails, which is what both runners detect:
//! * no panic and no hang inside the parser (inputs are bounded by [`MAX_INPUT_BYTES`]);
//! * every error is a typed error of the kind a client can be told about
//!   (a 4xx [`ApiError`], a row or input [`ReadError`], a TOML error), never a
//!   500 and never an error without its line;
//! * everything accepted respects the documented bounds (ids, times, depth, counts).
//!
//! The SDK translators (`crates/server/src/sdk.rs`) and the native event
//! validator they share (`crates/server/src/ingest.rs`) are `pub(crate)` in a
//! private module of `sessionizer-server`, so their source files are compiled
//! into this crate as they are (`#[path]` modules below, with `crate::error`
//! and `crate::limits` re-exporting the server's own public types): the code
//! fuzzed is the server's code, byte for byte. The native body goes through the
//! server's public `decode_body` and `parse_batch`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use sessionizer_formats::{EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS, MAX_FIELD_BYTES, ReadErrorKind, ReadOptions};
use sessionizer_server::ApiError;
use sessionizer_server::limits::{MAX_AGE_MS, MAX_EVENTS_PER_REQUEST, MAX_FUTURE_MS, MAX_ID_BYTES, MAX_PROPERTY_DEPTH};
use sessionizer_store::NewEvent;

/// The server's own source, compiled here (see the crate docs).
#[path = "../../crates/server/src/ingest.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
#[rustfmt::skip] // formatted where it lives
mod ingest;
#[path = "../../crates/server/src/sdk.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
#[rustfmt::skip]
mod sdk;

#[path = "../../crates/server/src/session_cursor.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
#[rustfmt::skip]
mod session_cursor;
#[path = "../../crates/server/src/feed_cursor.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
#[rustfmt::skip]
mod feed_cursor;
/// The cluster's configuration file (`--cluster FILE`), compiled here as it is:
/// the `sessionizer-cluster` crate itself brings NATS and ClickHouse clients.
#[path = "../../crates/cluster/src/config.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
#[rustfmt::skip]
mod cluster_config;

/// What `crates/server/src/error.rs` gives `ingest.rs` and `sdk.rs`: the server's public types.
mod error {
    pub(crate) use sessionizer_server::{ApiError, EventProblem};

    pub(crate) fn distinct_events(problems: &[EventProblem]) -> u64 {
        problems.iter().map(|p| p.index).collect::<std::collections::BTreeSet<_>>().len() as u64
    }
}

/// What `crates/server/src/limits.rs` gives them: the server's public bounds.
mod limits {
    pub(crate) use sessionizer_server::limits::*;
}

/// Largest input a target looks at. Bodies up to the server's own bound are
/// legal, but the fuzzer learns nothing from megabytes; the gzip decoder's
/// output bound is exercised by small bombs all the same.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// The server clock every target uses: 2026-01-05T09:00:00Z.
pub const NOW_MS: i64 = 1_767_603_600_000;

/// A target's body.
pub type Body = fn(&[u8]);

/// The targets, by name: the fuzz target, its corpus directory and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("native_body", native_body),
    ("amplitude", amplitude),
    ("segment", segment),
    ("posthog", posthog),
    ("mixpanel", mixpanel),
    ("ndjson_reader", ndjson_reader),
    ("csv_reader", csv_reader),
    ("config", config),
    ("cluster_config", cluster_config),
    ("feed_cursor", feed_cursor),
    ("session_cursor", session_cursor),
];

/// A small deterministic choice from the input itself (its length), so a
/// corpus file stays a real payload and mutations still reach every option.
fn choice(data: &[u8], n: usize) -> usize {
    data.len() % n
}

// ---- the HTTP bodies ----

/// `POST /v1/events`: `decode_body` (gzip by header or magic, bounded) then `parse_batch`.
pub fn native_body(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let encoding =
        [None, None, None, Some("gzip"), Some("identity"), Some(" GZip "), Some("br"), Some("")][choice(data, 8)];
    let result =
        sessionizer_server::decode_body(encoding, data).and_then(|body| sessionizer_server::parse_batch(&body, NOW_MS));
    match result {
        Ok(events) => check_events("native_body", &events, usize::MAX),
        Err(error) => check_client_error("native_body", &error),
    }
}

/// Amplitude HTTP V2 (`/2/httpapi`, `/batch`).
pub fn amplitude(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let result = sessionizer_server::decode_body(None, data).and_then(|body| sdk::amplitude(&body, context(None)));
    check_translated("amplitude", result);
}

/// Segment and RudderStack: the batch route and the single-message routes.
pub fn segment(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let single = [None, None, Some("track"), Some("page"), Some("screen"), Some("identify")][choice(data, 6)];
    let basic = sdk::basic_user(Some("Basic c2tfd3JpdGVfeDo=")); // "sk_write_x:"
    let result = sessionizer_server::decode_body(None, data)
        .and_then(|body| sdk::segment(&body, single, context(basic.as_deref())));
    check_translated("segment", result);
}

/// PostHog (`/batch/`, `/e/`, `/capture/`, `/i/v0/e/`), with the route's
/// `data=` form and `?compression=base64` handling (`sdk_routes::posthog`).
pub fn posthog(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let result = sessionizer_server::decode_body(None, data).and_then(|mut body| {
        if choice(data, 4) == 0 {
            let text = String::from_utf8_lossy(&body).into_owned();
            let payload = sdk::form_value(&text, "data").map(sdk::percent_decode).unwrap_or(text);
            body = sessionizer_server::decode_body(None, &sdk::decode_base64(&payload)?)?;
        } else if body.starts_with(b"data=") {
            let text = String::from_utf8_lossy(&body).into_owned();
            let payload = sdk::percent_decode(sdk::form_value(&text, "data").unwrap_or(""));
            body = if payload.trim_start().starts_with(['{', '[']) {
                payload.into_bytes()
            } else {
                sdk::decode_base64(&payload)?
            };
        }
        sdk::posthog(&body, context(None))
    });
    check_translated("posthog", result);
}

/// Mixpanel (`/track`, `/import`): a form body with `data=<base64>`, or the
/// `data` value itself (as the query parameter gives it).
pub fn mixpanel(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let import_key = [None, Some("sk_write_x")][choice(data, 2)];
    let result = sessionizer_server::decode_body(None, data).and_then(|body| {
        let text = String::from_utf8_lossy(&body).into_owned();
        let payload = match sdk::form_value(&text, "data") {
            Some(payload) => sdk::percent_decode(payload),
            None => text,
        };
        sdk::mixpanel(&payload, import_key, context(None))
    });
    check_translated("mixpanel", result);
}

fn context(basic_user: Option<&str>) -> sdk::Context<'_> {
    sdk::Context { now_ms: NOW_MS, client_ip: Some(std::net::IpAddr::from([203, 0, 113, 7])), basic_user }
}

/// An SDK translation: a 4xx error, or events within bounds and problems naming events that exist.
fn check_translated(target: &str, result: Result<sdk::Translated, ApiError>) {
    match result {
        Ok(translated) => {
            check_events(target, &translated.events, MAX_EVENTS_PER_REQUEST);
            for problem in &translated.problems {
                assert!(
                    problem.index < MAX_EVENTS_PER_REQUEST,
                    "{target}: problem index {} out of range",
                    problem.index
                );
                assert!(!problem.message.is_empty(), "{target}: a problem without a message");
            }
            // The answers built from the problems must not panic either.
            let answer = sdk::amplitude_invalid(&translated.problems);
            assert_eq!(answer["code"], 400, "{target}");
        }
        Err(error) => check_client_error(target, &error),
    }
}

/// Every error of a body parser is a client error with a message: 400, 413 or 415.
fn check_client_error(target: &str, error: &ApiError) {
    match error {
        ApiError::BadRequest(message) | ApiError::TooLarge(message) | ApiError::UnsupportedMediaType(message) => {
            assert!(!message.is_empty(), "{target}: an error without a message: {error:?}");
        }
        ApiError::InvalidEvents(problems) => {
            assert!(!problems.is_empty(), "{target}: invalid_events with no problem listed");
            for problem in problems {
                assert!(problem.index < MAX_EVENTS_PER_REQUEST, "{target}: problem index {}", problem.index);
                assert!(!problem.message.is_empty(), "{target}: a problem without a message");
            }
        }
        other => panic!("{target}: a body parser answered {other:?} ({})", other.status()),
    }
    let status = error.status().as_u16();
    assert!((400..500).contains(&status), "{target}: status {status} for {error:?}");
    assert!(!error.code().is_empty());
    let _ = error.to_string();
}

/// Accepted events are within every documented bound.
fn check_events(target: &str, events: &[NewEvent], max_events: usize) {
    assert!(events.len() <= MAX_EVENTS_PER_REQUEST.min(max_events), "{target}: {} events accepted", events.len());
    for event in events {
        assert!(event.user_id.is_some() || event.device_id.is_some(), "{target}: an event without a user: {event:?}");
        for (name, id) in [
            ("user_id", &event.user_id),
            ("device_id", &event.device_id),
            ("insert_id", &event.insert_id),
            ("page", &event.page),
            ("client_session_id", &event.client_session_id),
            ("platform", &event.platform),
            ("ip", &event.ip),
        ] {
            if let Some(id) = id {
                assert!(!id.is_empty(), "{target}: empty {name} kept");
                assert!(id.len() <= MAX_ID_BYTES, "{target}: {name} of {} bytes", id.len());
            }
        }
        assert!(!event.event_type.trim().is_empty(), "{target}: empty event_type");
        assert!(event.event_type.len() <= sessionizer_engine::MAX_EVENT_TYPE_BYTES, "{target}: long event_type");
        assert!(
            event.time_ms >= NOW_MS - MAX_AGE_MS && event.time_ms <= NOW_MS + MAX_FUTURE_MS,
            "{target}: time {} outside the accepted window",
            event.time_ms
        );
        assert_eq!(event.received_ms, NOW_MS);
        if let Some(properties) = &event.properties {
            let value: Value = serde_json::from_str(properties)
                .unwrap_or_else(|e| panic!("{target}: stored properties are not JSON ({e}): {properties}"));
            assert!(value.is_object(), "{target}: properties not an object");
            assert!(depth(&value) <= MAX_PROPERTY_DEPTH, "{target}: properties deeper than the bound");
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---- the file readers ----

/// `sessionizer sessionize file.ndjson`: the NDJSON reader, and `parse_ndjson_line` on the first line.
pub fn ndjson_reader(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let line = text.split('\n').next().unwrap_or("");
        match sessionizer_formats::parse_ndjson_line(line, &Default::default()) {
            Ok(event) => {
                assert!(!event.event_type.is_empty(), "ndjson_reader: empty event_type");
                assert!((EVENT_TIME_MIN_MS..=EVENT_TIME_MAX_MS).contains(&event.time_ms));
                assert!(event.user_id.is_some() || event.device_id.is_some());
            }
            Err(kind) => assert!(kind.is_row_error(), "ndjson_reader: a line error that is not a row error: {kind}"),
        }
    }
    read_file("ndjson_reader", "ndjson", data);
}

/// `sessionizer sessionize file.csv`: the CSV reader.
pub fn csv_reader(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    read_file("csv_reader", "csv", data);
}

/// Reads `data` as a file of the given extension to the end (or the first
/// error), with options chosen by the input, and checks every chunk.
fn read_file(target: &str, extension: &str, data: &[u8]) {
    let path = scratch_file(extension);
    std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("scratch file written");
    let options =
        ReadOptions { skip_invalid: choice(data, 2) == 1, threads: 1 + choice(data, 3) / 2, ..Default::default() };
    let result = std::panic::catch_unwind(|| read_all(target, &path, &options));
    let _ = std::fs::remove_file(&path);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn read_all(target: &str, path: &std::path::Path, options: &ReadOptions) {
    let mut reader = match sessionizer_formats::open_event_reader(path, options) {
        Ok(reader) => reader,
        Err(error) => {
            check_read_error(target, &error, options);
            return;
        }
    };
    let mut rows = 0u64;
    let mut last_line = 0u64;
    loop {
        match reader.next_chunk() {
            Ok(None) => break,
            Ok(Some(chunk)) => {
                let n = chunk.len();
                assert!(n > 0, "{target}: an empty chunk");
                for column in [&chunk.user_id, &chunk.device_id, &chunk.event_type, &chunk.insert_id, &chunk.page] {
                    assert_eq!(column.len(), n, "{target}: ragged chunk");
                    for value in column.iter().flatten() {
                        assert!(value.len() <= MAX_FIELD_BYTES, "{target}: a field of {} bytes", value.len());
                    }
                }
                assert_eq!((chunk.time_ms.len(), chunk.passive.len(), chunk.source_line.len()), (n, n, n));
                for i in 0..n {
                    assert!(chunk.event_type.get(i).is_some_and(|t| !t.is_empty()), "{target}: empty event_type");
                    assert!(chunk.user_id.get(i).is_some() || chunk.device_id.get(i).is_some(), "{target}: no user");
                    assert!((EVENT_TIME_MIN_MS..=EVENT_TIME_MAX_MS).contains(&chunk.time_ms[i]), "{target}: time");
                    assert!(chunk.source_line[i] > last_line, "{target}: source lines out of order");
                    last_line = chunk.source_line[i];
                }
                rows += n as u64;
                assert!(rows <= MAX_INPUT_BYTES as u64, "{target}: more rows than bytes");
            }
            Err(error) => {
                check_read_error(target, &error, options);
                break;
            }
        }
    }
    if !options.skip_invalid {
        assert_eq!(reader.skipped_rows(), 0, "{target}: rows skipped without skip_invalid");
    }
    let _ = reader.bytes_read();
}

/// A read error names the file, and its line when it is about one row; with
/// `skip_invalid` no row error ever reaches the caller.
fn check_read_error(target: &str, error: &sessionizer_formats::ReadError, options: &ReadOptions) {
    let message = error.to_string();
    assert!(message.starts_with(&error.path), "{target}: {message}");
    if error.is_row_error() {
        assert!(!options.skip_invalid, "{target}: a row error with skip_invalid: {message}");
        assert!(error.line.is_some_and(|l| l > 0), "{target}: a row error without its line: {message}");
    }
    assert!(!matches!(error.kind, ReadErrorKind::UnknownFormat(_)), "{target}: {message}");
}

/// A scratch file path unique to this process and call (the smoke test runs targets on several threads).
fn scratch_file(extension: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sessionizer-fuzz-{}-{n}.{extension}", std::process::id()))
}

// ---- the configuration file ----

/// The keys of `sessionizer serve --config FILE`: the same shape as the
/// binary's private `ConfigFile` (crates/cli/src/serve.rs), which a library
/// cannot reach; keep the two in step.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "only parsed")]
struct ConfigFile {
    data: Option<PathBuf>,
    listen: Option<String>,
    log_format: Option<String>,
    write_queue_requests: Option<usize>,
    ingest_rate_limit: Option<u32>,
    read_rate_limit: Option<u32>,
    apply_batch_events: Option<usize>,
    apply_delay: Option<String>,
}

/// Largest configuration file `serve` reads (`MAX_CONFIG_BYTES` in serve.rs).
const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// `toml::from_str` of the config shape, then the checks `serve` makes on its values.
pub fn config(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES.min(MAX_CONFIG_BYTES) {
        return;
    }
    // `read_to_string` refuses invalid UTF-8 with an I/O error, before TOML.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match toml::from_str::<ConfigFile>(text) {
        Ok(file) => {
            if let Some(listen) = &file.listen {
                let _ = listen.parse::<std::net::SocketAddr>();
            }
            if let Some(n) = file.write_queue_requests {
                let _ = (1..=sessionizer_server::limits::MAX_WRITE_QUEUE_REQUESTS).contains(&n);
            }
            // (`apply_delay` is parsed by the binary's private duration parser.)
            if let Some(n) = file.apply_batch_events {
                let delay = sessionizer_server::ApplyBatching::default().max_delay();
                let accepted = sessionizer_server::ApplyBatching::new(n, delay).is_ok();
                assert_eq!(accepted, (1..=sessionizer_server::limits::MAX_APPLY_BATCH_EVENTS).contains(&n), "config: {n}");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "config: an error without a message"),
    }
    // Any TOML document, as a table: the parser under the struct.
    let _ = toml::from_str::<toml::Table>(text).map_err(|e| e.to_string());
}

/// `--cluster FILE` (every cluster node and `sessionizer cluster`): TOML into
/// the configuration, then its checks. Anything accepted is within its bounds.
pub fn cluster_config(data: &[u8]) {
    use cluster_config::{ClusterConfig, MAX_CONFIG_BYTES, MAX_PARTITIONS, MAX_SHARDS, MAX_STREAM_REPLICAS};
    if data.len() > MAX_INPUT_BYTES.min(MAX_CONFIG_BYTES as usize) {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClusterConfig::parse(text) {
        Ok(config) => {
            assert!(
                (1..=MAX_PARTITIONS).contains(&config.partitions),
                "cluster_config: {} partitions",
                config.partitions
            );
            assert!((1..=MAX_SHARDS).contains(&config.clickhouse_shards.len()), "cluster_config: shards");
            assert!((1..=MAX_STREAM_REPLICAS).contains(&config.stream_replicas), "cluster_config: replicas");
            assert!(!config.nats_urls.is_empty(), "cluster_config: no NATS URL accepted");
            assert_eq!(
                config.validate().map_err(|e| e.to_string()),
                Ok(()),
                "cluster_config: parse accepted, validate refuses"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "cluster_config: an error without a message"),
    }
}

/// A query node's change-feed cursor (`GET /v1/changes?cursor=`): a 400 or a
/// cursor within its bounds that encodes back to text that decodes to itself.
pub fn feed_cursor(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let text = String::from_utf8_lossy(data);
    match feed_cursor::decode_feed_cursor(&text) {
        Ok(cursor) => {
            assert!(
                cursor.len() <= feed_cursor::MAX_FEED_CURSOR_PARTITIONS,
                "feed_cursor: {} partitions",
                cursor.len()
            );
            let encoded = feed_cursor::encode_feed_cursor(&cursor);
            assert!(encoded.len() <= feed_cursor::MAX_FEED_CURSOR_BYTES.max(text.len()), "feed_cursor: grew");
            assert_eq!(feed_cursor::decode_feed_cursor(&encoded).ok(), Some(cursor), "feed_cursor: no round trip");
        }
        Err(error) => check_client_error("feed_cursor", &error),
    }
}

/// A session list's cursor (`GET /v1/sessions?cursor=`): a 400, or a cursor
/// whose id is within `MAX_ID_BYTES` and that encodes back to itself.
pub fn session_cursor(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let text = String::from_utf8_lossy(data);
    match session_cursor::decode_session_cursor(&text) {
        Ok(cursor) => {
            assert!(
                !cursor.user.id().is_empty() && cursor.user.id().len() <= MAX_ID_BYTES,
                "session_cursor: id bounds"
            );
            let encoded = session_cursor::encode_session_cursor(cursor.start_ms, &cursor.user);
            assert_eq!(
                session_cursor::decode_session_cursor(&encoded).ok(),
                Some(cursor),
                "session_cursor: no round trip"
            );
        }
        Err(error) => check_client_error("session_cursor", &error),
    }
}
