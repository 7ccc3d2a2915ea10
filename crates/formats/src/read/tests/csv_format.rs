use super::*;

/// CSV for `events` (with the `csv` crate's quoting), columns in a shuffled
/// order with an unknown one.
pub(super) fn encode(events: &[Event]) -> Vec<u8> {
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer
        .write_record(["page", "time", "extra", "device_id", "event_type", "user_id", "passive", "insert_id"])
        .expect("header");
    for e in events {
        let opt = |s: &Option<String>| s.clone().unwrap_or_default();
        writer
            .write_record([
                opt(&e.page),
                e.time_ms.to_string(),
                "whatever".to_owned(),
                opt(&e.device_id),
                e.event_type.clone(),
                opt(&e.user_id),
                if e.passive { "TRUE".to_owned() } else { String::new() },
                opt(&e.insert_id),
            ])
            .expect("record");
    }
    writer.into_inner().expect("flush")
}

#[test]
fn quoting_bom_crlf_and_blank_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = "\u{feff}user_id,event_type,time,passive\r\n\
                   \"a,1\",\"say \"\"hi\"\"\",2026-01-05T11:00:00Z,1\r\n\
                   \r\n\
                   b,e,1767610800,false\r\n\
                   \"multi\nline\",e,1767610800000,True\n\
                   c,e,1767610800000,0";
    let path = write_file(&dir, "q.csv", content);
    let events = read_ok(&path);
    let t = 1_767_610_800_000;
    assert_eq!(
        events,
        [
            Event { passive: true, ..Event::new("a,1", "say \"hi\"", t, 2) },
            Event::new("b", "e", t, 4),
            Event { passive: true, ..Event::new("multi\nline", "e", t, 5) },
            Event::new("c", "e", t, 7),
        ]
    );
}

#[test]
fn missing_required_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("user_id,time\nu,1\n", "missing required column \"event_type\""),
        ("user_id,event_type\nu,e\n", "missing required column \"time\""),
        ("insert_id,event_type,time\ni,e,1\n", "missing user column: need \"user_id\" or \"device_id\""),
        ("user_id,event_type,time,user_id\nu,e,1,v\n", "column \"user_id\" appears more than once"),
    ];
    for (i, (content, message)) in cases.into_iter().enumerate() {
        let path = write_file(&dir, &format!("m{i}.csv"), content);
        let error = open_event_reader(&path, &skipping()).err().expect("a header error");
        assert_eq!(error.to_string(), format!("{}:1: {message}", path.display()));
        assert!(!error.is_row_error());
    }
    // device_id alone is enough.
    let path = write_file(&dir, "device.csv", "device_id,event_type,time\nd,e,1\n");
    assert_eq!(read_ok(&path)[0].device_id.as_deref(), Some("d"));
    // An empty file has no events.
    let path = write_file(&dir, "empty.csv", "");
    assert_eq!(read_ok(&path), []);
}

#[test]
fn bad_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let header = "user_id,device_id,event_type,time,passive,page\n";
    let long = "x".repeat(crate::limits::MAX_FIELD_BYTES + 1);
    let cases = [
        (",,e,1,,".to_owned(), "no user: neither \"user_id\" nor \"device_id\" is set to a non-empty value"),
        ("u,,,1,,".to_owned(), "field \"event_type\" is empty"),
        ("u,,e, ,,".to_owned(), "missing field \"time\""),
        (
            "u,,e,later,,".to_owned(),
            "invalid time: \"later\" is neither an epoch number nor an ISO-8601 date-time (like 2026-01-05T11:00:00Z)",
        ),
        ("u,,e,1,yes,".to_owned(), "field \"passive\" must be true, false, 1, 0 or empty"),
        ("u,,e,1,".to_owned(), "CSV error: the record has 5 fields but the header has 6"),
        (format!("u,,e,1,,{long}"), "field \"page\" is longer than 8192 bytes"),
        (format!("{long},,e,1,,"), "field \"user_id\" is longer than 8192 bytes"),
    ];
    for (i, (record, message)) in cases.into_iter().enumerate() {
        let content = format!("{header}u,,e,1,,\n{record}\nu,,e,2,,\n");
        let path = write_file(&dir, &format!("bad{i}.csv"), content);
        assert_eq!(read_err(&path), format!("{}:3: {message}", path.display()));
        let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
        assert_eq!(events.expect("skips").iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4], "{message}");
        assert_eq!(reader.skipped_rows(), 1);
        assert_eq!(
            reader.first_skipped_error().map(ToString::to_string),
            Some(format!("{}:3: {message}", path.display()))
        );
    }
    // Invalid UTF-8 in a used column.
    let mut content = format!("{header}u,,e,1,,\nu,,e").into_bytes();
    content.extend_from_slice(&[0xff, b',', b'1', b',', b',', b'\n']);
    let path = write_file(&dir, "utf8.csv", content);
    assert_eq!(read_err(&path), format!("{}:3: line is not valid UTF-8", path.display()));
}

#[test]
fn an_over_long_record_is_skipped_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A quoted field with newlines and commas inside, over 3 MiB.
    let huge = format!("\"{}\"", "ab,\n\"\"".repeat(600_000));
    let content = format!("user_id,event_type,time,page\nu,e,1,\nu,e,1,{huge}\nu,e,2,\n");
    let path = write_file(&dir, "long.csv", &content);
    assert_eq!(read_err(&path), format!("{}:3: line is longer than 1048576 bytes", path.display()));
    let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
    // The record after the long one starts after its 600 000 embedded newlines.
    assert_eq!(events.expect("skips").iter().map(|e| e.line).collect::<Vec<_>>(), [2, 600_004]);
    assert_eq!(reader.skipped_rows(), 1);
    assert_eq!(reader.bytes_read(), content.len() as u64);
}

#[test]
fn passive_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = "user_id,event_type,time,passive\nu,e,1,true\nu,e,1,FALSE\nu,e,1,1\nu,e,1,0\nu,e,1,\nu,e,1,True\n";
    let path = write_file(&dir, "p.csv", content);
    let passive: Vec<bool> = read_ok(&path).iter().map(|e| e.passive).collect();
    assert_eq!(passive, [true, false, true, false, false, true]);
}

#[test]
fn parallel_parsing_matches_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = crate::limits::CHUNK_ROWS * 3 + 17;
    let mut content = String::from("user_id,event_type,time,page\n");
    for i in 0..rows {
        match i {
            // Bad records: too few fields, a bad time, an over-long quoted field.
            100 => content.push_str("u,e\n"),
            70_000 => content.push_str("u,e,yesterday,\n"),
            140_000 => content.push_str(&format!("u,e,1,\"{}\"\n", "x,\n".repeat(crate::limits::MAX_LINE_BYTES))),
            _ if i % 1000 == 7 => content.push_str("\r\n"),
            // Quoted fields with separators, quotes and newlines inside.
            _ if i % 5 == 3 => content.push_str(&format!(
                "\"u{},\"\"q\"\"\",e{},{},\"line one\nline two\"\n",
                i % 13,
                i % 3,
                1_700_000_000_000u64 + i as u64
            )),
            _ => content.push_str(&format!("u{},e{},{},p\n", i % 13, i % 3, 1_700_000_000_000u64 + i as u64)),
        }
    }
    let path = write_file(&dir, "many.csv", &content);
    let (sequential, first) = assert_parallel_matches_sequential(&path, content.len() as u64, 3, 122);
    assert_eq!(first, Some(format!("{}:122: CSV error: the record has 2 fields but the header has 4", path.display())));
    assert_eq!(sequential.len(), rows - 3 - rows.div_ceil(1000));
}

#[test]
fn dropping_a_parallel_reader_early_stops_its_splitter_thread() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A CSV source that records when it is dropped.
    struct Source {
        bytes: std::io::Cursor<Vec<u8>>,
        dropped: Arc<AtomicBool>,
    }
    impl std::io::Read for Source {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            self.bytes.read(buffer)
        }
    }
    impl Drop for Source {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    let mut content = String::from("user_id,event_type,time\n");
    for i in 0..crate::limits::CHUNK_ROWS * 8 {
        content.push_str(&format!("u{},e,{}\n", i % 7, 1_700_000_000_000u64 + i as u64));
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let source = Source { bytes: std::io::Cursor::new(content.into_bytes()), dropped: dropped.clone() };
    let options = ReadOptions { threads: 2, ..ReadOptions::default() };
    let mut reader =
        super::super::csv::CsvReader::new(Box::new(source), "early.csv".to_owned(), None, &options).expect("header");
    assert!(reader.next_chunk().expect("read").is_some());
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dropped.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the splitter thread still holds the input");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
