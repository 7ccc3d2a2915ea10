use std::borrow::Cow;
use std::io::Read;

use super::*;
use crate::limits::MAX_LINE_BYTES;

/// NDJSON for `events`, one line each, using serde_json for the strings.
pub(super) fn encode(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let value = serde_json::json!({
            "user_id": e.user_id,
            "device_id": e.device_id,
            "event_type": e.event_type,
            "time": e.time_ms,
            "insert_id": e.insert_id,
            "page": e.page,
            "passive": e.passive,
            "ignored": {"nested": [1, {"time": "not this one"}]},
        });
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}

#[test]
fn parses_all_fields() {
    let line = r#"{"time":"2026-01-05T11:00:00.5Z","user_id":"u1","device_id":"d1","event_type":"Page Viewed","insert_id":"i1","page":"/home","passive":true,"extra":[1,2,{"a":null}],"more":{"b":false}}"#;
    let event = parse_ndjson_line(line, &FieldNames::default()).expect("valid line");
    assert_eq!(
        event,
        ParsedEvent {
            user_id: Some(Cow::Borrowed("u1")),
            device_id: Some(Cow::Borrowed("d1")),
            event_type: Cow::Borrowed("Page Viewed"),
            time_ms: 1_767_610_800_500,
            insert_id: Some(Cow::Borrowed("i1")),
            page: Some(Cow::Borrowed("/home")),
            passive: true,
        }
    );
    // Strings without escapes are borrowed from the line.
    assert!(matches!(event.user_id, Some(Cow::Borrowed(_))));
}

#[test]
fn optional_fields_may_be_absent_null_or_empty() {
    let fields = FieldNames::default();
    let event = parse_ndjson_line(r#"{"device_id":"d","event_type":"e","time":1700000000}"#, &fields).expect("valid");
    assert_eq!((event.user_id, event.insert_id, event.page, event.passive), (None, None, None, false));
    let event = parse_ndjson_line(
        r#"{"user_id":"","device_id":"d","event_type":"e","time":1,"insert_id":null,"page":"","passive":null}"#,
        &fields,
    )
    .expect("valid");
    assert_eq!((event.user_id, event.insert_id, event.page, event.passive), (None, None, None, false));
    assert_eq!(event.time_ms, 1000);
}

#[test]
fn integer_ids_become_decimal_strings() {
    let fields = FieldNames::default();
    let line =
        r#"{"user_id":18446744073709551615,"device_id":-42,"insert_id":7,"event_type":"e","time":1767610800000}"#;
    let event = parse_ndjson_line(line, &fields).expect("valid");
    assert_eq!(event.user_id.as_deref(), Some("18446744073709551615"));
    assert_eq!(event.device_id.as_deref(), Some("-42"));
    assert_eq!(event.insert_id.as_deref(), Some("7"));
    // Through the reader too (rendered straight into the column).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "ids.ndjson", format!("{line}\n"));
    let events = read_ok(&path);
    assert_eq!(events[0].user_id.as_deref(), Some("18446744073709551615"));
    assert_eq!(events[0].device_id.as_deref(), Some("-42"));
    assert_eq!(events[0].insert_id.as_deref(), Some("7"));
}

#[test]
fn escaped_strings_and_keys() {
    let line =
        r#"{"user_id":"a\"b\\c\u00e9\n\ud83c\udf89","event\u005ftype":"tab\there","time":"1767610800","page":"\/p"}"#;
    let event = parse_ndjson_line(line, &FieldNames::default()).expect("valid");
    assert_eq!(event.user_id.as_deref(), Some("a\"b\\cé\n🎉"));
    assert!(matches!(event.user_id, Some(Cow::Owned(_))));
    assert_eq!(event.event_type, "tab\there");
    assert_eq!(event.page.as_deref(), Some("/p"));
    assert_eq!(event.time_ms, 1_767_610_800_000);
}

#[test]
fn configured_field_names() {
    let fields = FieldNames {
        user_id: "uid".into(),
        device_id: "did".into(),
        event_type: "name".into(),
        time: "ts".into(),
        insert_id: "dedup".into(),
        page: "url".into(),
        passive: "bg".into(),
    };
    let line = r#"{"uid":"u","user_id":"ignored","name":"n","event_type":1,"ts":1700000000000,"url":"/x","bg":true,"dedup":"k"}"#;
    let event = parse_ndjson_line(line, &fields).expect("valid");
    assert_eq!(
        (
            event.user_id.as_deref(),
            &*event.event_type,
            event.page.as_deref(),
            event.passive,
            event.insert_id.as_deref()
        ),
        (Some("u"), "n", Some("/x"), true, Some("k"))
    );
    // Messages use the configured names.
    let error = parse_ndjson_line(r#"{"uid":"u","name":"n"}"#, &fields).expect_err("no time");
    assert_eq!(error.to_string(), "missing field \"ts\"");
    let error = parse_ndjson_line(r#"{"name":"n","ts":1}"#, &fields).expect_err("no user");
    assert_eq!(error.to_string(), "no user: neither \"uid\" nor \"did\" is set to a non-empty value");
}

#[test]
fn blank_lines_count_for_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = "{\"user_id\":\"a\",\"event_type\":\"e\",\"time\":1}\n\n   \t\n\r\n{\"user_id\":\"b\",\"event_type\":\"e\",\"time\":2}\r\n\n{\"user_id\":\"c\",\"event_type\":\"e\",\"time\":3}";
    let path = write_file(&dir, "blank.ndjson", content);
    let events = read_ok(&path);
    assert_eq!(events, [Event::new("a", "e", 1000, 1), Event::new("b", "e", 2000, 5), Event::new("c", "e", 3000, 7)]);
    let empty = write_file(&dir, "empty.ndjson", "");
    assert_eq!(read_ok(&empty), []);
    let only_blank = write_file(&dir, "blank_only.ndjson", "\n\n  \n");
    assert_eq!(read_ok(&only_blank), []);
}

const GOOD: &str = r#"{"user_id":"u","event_type":"e","time":1767610800000}"#;

/// Each bad line, after a good one, and the message it must produce.
fn bad_lines() -> Vec<(Vec<u8>, String)> {
    let long = "x".repeat(crate::limits::MAX_FIELD_BYTES + 1);
    let cases: Vec<(String, &str)> = vec![
        (r#"{"user_id":"u","event_type":"e","#.into(), "invalid JSON: EOF while parsing a value at line 1 column 32"),
        (r#"{"user_id":"u" "event_type":"e"}"#.into(), "invalid JSON: expected `,` or `}` at line 1 column 16"),
        (format!("{GOOD} trailing"), "invalid JSON: trailing characters at line 1 column 55"),
        ("[1,2]".into(), "line is not a JSON object"),
        ("\"just a string\"".into(), "line is not a JSON object"),
        ("42".into(), "line is not a JSON object"),
        (r#"{"user_id":"u","user_id":"v","event_type":"e","time":1}"#.into(), "duplicate field \"user_id\""),
        (r#"{"user_id":"u","event_type":"e","time":1,"time":2}"#.into(), "duplicate field \"time\""),
        (r#"{"user_id":"u","time":1}"#.into(), "missing field \"event_type\""),
        (r#"{"user_id":"u","event_type":null,"time":1}"#.into(), "missing field \"event_type\""),
        (r#"{"user_id":"u","event_type":"","time":1}"#.into(), "field \"event_type\" is empty"),
        (r#"{"user_id":"u","event_type":"e"}"#.into(), "missing field \"time\""),
        (
            r#"{"event_type":"e","time":1}"#.into(),
            "no user: neither \"user_id\" nor \"device_id\" is set to a non-empty value",
        ),
        (
            r#"{"user_id":"","device_id":null,"event_type":"e","time":1}"#.into(),
            "no user: neither \"user_id\" nor \"device_id\" is set to a non-empty value",
        ),
        (
            r#"{"user_id":"u","event_type":"e","time":"soon"}"#.into(),
            "invalid time: \"soon\" is neither an epoch number nor an ISO-8601 date-time (like 2026-01-05T11:00:00Z)",
        ),
        (r#"{"user_id":"u","event_type":"e","time":-5}"#.into(), "invalid time: -5 is before 1970-01-01T00:00:00Z"),
        (r#"{"user_id":"u","event_type":"e","time":true}"#.into(), "field \"time\" must be a number or a string"),
        (r#"{"user_id":1.5,"event_type":"e","time":1}"#.into(), "field \"user_id\" must be a string or an integer"),
        (r#"{"user_id":["u"],"event_type":"e","time":1}"#.into(), "field \"user_id\" must be a string or an integer"),
        (r#"{"user_id":"u","event_type":7,"time":1}"#.into(), "field \"event_type\" must be a string"),
        (r#"{"user_id":"u","event_type":"e","time":1,"page":{}}"#.into(), "field \"page\" must be a string"),
        (r#"{"user_id":"u","event_type":"e","time":1,"passive":"yes"}"#.into(), "field \"passive\" must be a boolean"),
        (format!(r#"{{"user_id":"{long}","event_type":"e","time":1}}"#), "field \"user_id\" is longer than 8192 bytes"),
        (
            format!(r#"{{"user_id":"u","event_type":"e","time":1,"page":"{long}"}}"#),
            "field \"page\" is longer than 8192 bytes",
        ),
    ];
    let mut out: Vec<(Vec<u8>, String)> =
        cases.into_iter().map(|(line, msg)| (line.into_bytes(), msg.to_owned())).collect();
    let mut invalid_utf8 = br#"{"user_id":"u"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#"","event_type":"e","time":1}"#);
    out.push((invalid_utf8, "line is not valid UTF-8".to_owned()));
    out
}

#[test]
fn each_bad_row_names_path_line_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (line, message)) in bad_lines().into_iter().enumerate() {
        let mut content = format!("{GOOD}\n\n").into_bytes();
        content.extend_from_slice(&line);
        content.extend_from_slice(format!("\n{GOOD}\n").as_bytes());
        let path = write_file(&dir, &format!("bad{i}.ndjson"), &content);
        assert_eq!(read_err(&path), format!("{}:3: {message}", path.display()));
        // Skipping: the row is counted, the good ones kept.
        let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
        let events = events.unwrap_or_else(|e| panic!("skipping must not fail: {e}"));
        assert_eq!(events.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 4], "{message}");
        assert_eq!(reader.skipped_rows(), 1);
        let first = reader.first_skipped_error().expect("kept");
        assert_eq!(first.line, Some(3));
        assert_eq!(first.to_string(), format!("{}:3: {message}", path.display()));
    }
}

#[test]
fn skip_invalid_counts_and_keeps_the_first_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = format!("{GOOD}\nnot json\n{GOOD}\n{{\"user_id\":\"u\"}}\n[]\n{GOOD}\n");
    let path = write_file(&dir, "mixed.ndjson", content);
    let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
    assert_eq!(events.expect("skips").iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3, 6]);
    assert_eq!(reader.skipped_rows(), 3);
    let first = reader.first_skipped_error().expect("first error");
    assert_eq!(first.line, Some(2));
    assert!(matches!(first.kind, ReadErrorKind::InvalidJson(_)));
    // Without skipping, the first bad line fails.
    assert!(read_err(&path).starts_with(&format!("{}:2: invalid JSON: ", path.display())));
}

#[test]
fn an_over_long_line_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long_line = format!(r#"{{"user_id":"u","event_type":"e","time":1,"page":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let content = format!("{GOOD}\n{long_line}\n{GOOD}\n");
    let path = write_file(&dir, "long.ndjson", &content);
    assert_eq!(read_err(&path), format!("{}:2: line is longer than 1048576 bytes", path.display()));
    let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
    assert_eq!(events.expect("skips").iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(reader.skipped_rows(), 1);
    assert!(matches!(reader.first_skipped_error().map(|e| &e.kind), Some(ReadErrorKind::LineTooLong { .. })));
    assert_eq!(reader.bytes_read(), content.len() as u64);

    // A long last line without a newline, and a line of exactly the limit.
    let exact = format!(r#"{{"user_id":"u","event_type":"e","time":1,"page":"{}"}}"#, "y".repeat(8000));
    let padded = format!("{exact}{}", " ".repeat(MAX_LINE_BYTES - exact.len()));
    let content = format!("{padded}\n{long_line}");
    let path = write_file(&dir, "long_last.ndjson", &content);
    let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
    assert_eq!(events.expect("skips").iter().map(|e| e.line).collect::<Vec<_>>(), [1]);
    assert_eq!(reader.skipped_rows(), 1);
    assert_eq!(reader.first_skipped_error().and_then(|e| e.line), Some(2));
}

/// An endless-looking line produced lazily: `len` bytes of `x`, then a newline
/// and a good line.
struct LongLine {
    remaining: usize,
    tail: std::io::Cursor<Vec<u8>>,
}

impl Read for LongLine {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return self.tail.read(buf);
        }
        let n = buf.len().min(self.remaining);
        buf[..n].fill(b'x');
        self.remaining -= n;
        Ok(n)
    }
}

#[test]
fn a_huge_line_never_enters_memory() {
    let input =
        LongLine { remaining: 256 * 1024 * 1024, tail: std::io::Cursor::new(format!("\n{GOOD}\n").into_bytes()) };
    let mut reader = ndjson::NdjsonReader::new(Box::new(input), "stream".into(), None, &skipping());
    let chunk = reader.next_chunk().expect("skips").expect("the good line");
    assert_eq!(events_of(&chunk).iter().map(|e| e.line).collect::<Vec<_>>(), [2]);
    assert_eq!(reader.skipped_rows(), 1);
    assert!(reader.peak_line_capacity() <= MAX_LINE_BYTES + 1, "{}", reader.peak_line_capacity());
    assert_eq!(reader.bytes_read(), 256 * 1024 * 1024 + 1 + GOOD.len() as u64 + 1);
}

#[test]
fn parallel_parsing_matches_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = crate::limits::CHUNK_ROWS * 3 + 17;
    let mut content = String::new();
    for i in 0..rows {
        match i {
            100 | 70_000 => content.push_str("{\"user_id\":\"u\"\n"),
            140_000 => content.push_str(&format!("{{\"page\":\"{}\"}}\n", "x".repeat(2 * MAX_LINE_BYTES))),
            _ if i % 1000 == 7 => content.push('\n'),
            _ => content.push_str(&format!(
                "{{\"user_id\":\"u{}\",\"event_type\":\"e{}\",\"time\":{}}}\n",
                i % 13,
                i % 3,
                1_700_000_000_000u64 + i as u64
            )),
        }
    }
    let path = write_file(&dir, "many.ndjson", &content);
    let (sequential, first) = assert_parallel_matches_sequential(&path, content.len() as u64, 3, 101);
    assert_eq!(
        first,
        Some(format!("{}:101: invalid JSON: EOF while parsing an object at line 1 column 14", path.display()))
    );
    assert_eq!(sequential.len(), rows - 3 - rows.div_ceil(1000));
}

#[test]
fn a_utf8_bom_on_the_first_line_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "bom.ndjson", format!("\u{feff}{GOOD}\n{GOOD}\n"));
    assert_eq!(read_ok(&path).iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2]);
    // Elsewhere it is not whitespace.
    let path = write_file(&dir, "bom2.ndjson", format!("{GOOD}\n\u{feff}{GOOD}\n"));
    assert!(read_err(&path).starts_with(&format!("{}:2: invalid JSON: ", path.display())));
}

/// Found by the `ndjson_reader` fuzz target: with more than one thread, a
/// file without a single event (empty, or only blank lines) made the parallel
/// reader slice its blocks as `[1..0]` and panic.
#[test]
fn a_file_without_events_reads_as_empty_with_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [("empty.ndjson", ""), ("crs.ndjson", "\r\r"), ("blank.ndjson", "\n\r\n\n")] {
        let path = write_file(&dir, name, content);
        for threads in [1, 2, 3] {
            let options = ReadOptions { threads, ..ReadOptions::default() };
            assert_eq!(read_all(&path, &options).map_err(|e| e.to_string()), Ok(vec![]), "{name:?}, {threads} threads");
        }
    }
}
