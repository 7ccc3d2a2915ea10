use std::path::Path;

use serde_json::{Value, json};

use super::*;

const TRICKY: &str = "quote \" backslash \\ newline \n tab \t comma , unicode é 🎉 control \u{1}";

fn sessions() -> Vec<SessionRow<'static>> {
    vec![
        SessionRow {
            user_id: Some("u1"),
            device_id: None,
            session_id: 1_767_610_800_000,
            session_uid: "0f8fad5b-d9cb-469f-a165-70867728950e",
            start_ms: 1_767_610_800_000,
            end_ms: 1_767_610_860_000,
            length_ms: 60_000,
            active_ms: 50_000,
            event_count: 3,
            end_reason: "timeout",
            entry_event_type: "Page Viewed",
            entry_page: Some("/home"),
            exit_event_type: "Login",
            exit_page: None,
        },
        SessionRow {
            user_id: None,
            device_id: Some(TRICKY),
            session_id: -1,
            session_uid: "",
            start_ms: 0,
            end_ms: i64::MAX,
            length_ms: i64::MIN,
            active_ms: i64::MAX,
            event_count: u64::MAX,
            end_reason: "open",
            entry_event_type: TRICKY,
            entry_page: None,
            exit_event_type: "e",
            exit_page: Some(TRICKY),
        },
    ]
}

fn events() -> Vec<EventRow<'static>> {
    vec![
        EventRow {
            user_id: Some("u1"),
            device_id: None,
            event_type: "Page Viewed",
            time_ms: 1_767_610_800_000,
            insert_id: Some("i1"),
            page: Some(TRICKY),
            passive: false,
            session_id: Some(1_767_610_800_000),
            session_uid: Some("uid"),
        },
        EventRow {
            user_id: None,
            device_id: Some(TRICKY),
            event_type: "Push Delivered",
            time_ms: 0,
            insert_id: None,
            page: None,
            passive: true,
            session_id: None,
            session_uid: None,
        },
    ]
}

/// The JSON object each row must produce (field names and order included).
fn session_json(s: &SessionRow<'_>) -> Value {
    json!({
        "user_id": s.user_id, "device_id": s.device_id, "session_id": s.session_id, "session_uid": s.session_uid,
        "start_ms": s.start_ms, "end_ms": s.end_ms, "length_ms": s.length_ms,
        "active_ms": s.active_ms, "event_count": s.event_count, "end_reason": s.end_reason,
        "entry_event_type": s.entry_event_type, "entry_page": s.entry_page,
        "exit_event_type": s.exit_event_type, "exit_page": s.exit_page,
    })
}

fn event_json(e: &EventRow<'_>) -> Value {
    json!({
        "user_id": e.user_id, "device_id": e.device_id, "event_type": e.event_type,
        "time_ms": e.time_ms, "insert_id": e.insert_id, "page": e.page, "passive": e.passive,
        "session_id": e.session_id, "session_uid": e.session_uid,
    })
}

const SESSION_COLUMNS: [&str; 14] = [
    "user_id",
    "device_id",
    "session_id",
    "session_uid",
    "start_ms",
    "end_ms",
    "length_ms",
    "active_ms",
    "event_count",
    "end_reason",
    "entry_event_type",
    "entry_page",
    "exit_event_type",
    "exit_page",
];
const EVENT_COLUMNS: [&str; 9] =
    ["user_id", "device_id", "event_type", "time_ms", "insert_id", "page", "passive", "session_id", "session_uid"];

fn write_sessions(path: &Path) {
    let mut sink = create_session_writer(Some(path)).expect("create");
    for row in sessions() {
        sink.write(&row).expect("write");
    }
    sink.finish().expect("finish");
}

fn write_events(path: &Path) {
    let mut sink = create_event_writer(Some(path)).expect("create");
    for row in events() {
        sink.write(&row).expect("write");
    }
    sink.finish().expect("finish");
}

/// Parses NDJSON lines, checking the key order of each object.
fn read_ndjson(path: &Path, columns: &[&str]) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.ends_with('\n'));
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("valid JSON line");
            // Keys appear in column order in the text.
            let positions: Vec<usize> =
                columns.iter().map(|c| line.find(&format!("\"{c}\":")).expect("key present")).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "key order in {line}");
            value
        })
        .collect()
}

#[test]
fn ndjson_sessions_and_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.ndjson");
    write_sessions(&path);
    let expected: Vec<Value> = sessions().iter().map(session_json).collect();
    assert_eq!(read_ndjson(&path, &SESSION_COLUMNS), expected);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with(r#"{"user_id":"u1","device_id":null,"session_id":1767610800000,"#), "{text}");
    assert!(text.contains(r#""exit_page":null}"#));
    assert_eq!(text.lines().count(), 2, "newlines inside strings are escaped");

    let path = dir.path().join("e.JSONL");
    write_events(&path);
    let expected: Vec<Value> = events().iter().map(event_json).collect();
    assert_eq!(read_ndjson(&path, &EVENT_COLUMNS), expected);
}

#[test]
fn csv_sessions_and_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.csv");
    write_sessions(&path);
    let mut reader = csv::Reader::from_path(&path).expect("open");
    assert_eq!(reader.headers().expect("header").iter().collect::<Vec<_>>(), SESSION_COLUMNS);
    let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(records.len(), 2);
    let expected_rows: Vec<Vec<String>> = sessions()
        .iter()
        .map(|s| {
            vec![
                s.user_id.unwrap_or("").to_owned(),
                s.device_id.unwrap_or("").to_owned(),
                s.session_id.to_string(),
                s.session_uid.to_owned(),
                s.start_ms.to_string(),
                s.end_ms.to_string(),
                s.length_ms.to_string(),
                s.active_ms.to_string(),
                s.event_count.to_string(),
                s.end_reason.to_owned(),
                s.entry_event_type.to_owned(),
                s.entry_page.unwrap_or("").to_owned(),
                s.exit_event_type.to_owned(),
                s.exit_page.unwrap_or("").to_owned(),
            ]
        })
        .collect();
    for (record, expected) in records.iter().zip(&expected_rows) {
        assert_eq!(record.iter().collect::<Vec<_>>(), *expected);
    }

    let path = dir.path().join("e.csv");
    write_events(&path);
    let mut reader = csv::Reader::from_path(&path).expect("open");
    assert_eq!(reader.headers().expect("header").iter().collect::<Vec<_>>(), EVENT_COLUMNS);
    let records: Vec<Vec<String>> =
        reader.records().map(|r| r.expect("record").iter().map(str::to_owned).collect()).collect();
    assert_eq!(
        records,
        [
            ["u1", "", "Page Viewed", "1767610800000", "i1", TRICKY, "false", "1767610800000", "uid"],
            ["", TRICKY, "Push Delivered", "0", "", "", "true", "", ""],
        ]
    );
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_sessions_and_events() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, UInt64Type};
    use arrow_array::{Array, RecordBatch};
    use arrow_schema::DataType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn read_batch(path: &Path) -> RecordBatch {
        let file = std::fs::File::open(path).expect("open");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.len(), 1);
        batches.into_iter().next().expect("one batch")
    }
    let strs = |batch: &RecordBatch, name: &str| -> Vec<Option<String>> {
        let column = batch.column_by_name(name).expect(name);
        assert_eq!(column.data_type(), &DataType::Utf8, "{name}");
        column.as_string::<i32>().iter().map(|s| s.map(str::to_owned)).collect()
    };
    let ints = |batch: &RecordBatch, name: &str| -> Vec<Option<i64>> {
        batch.column_by_name(name).expect(name).as_primitive::<Int64Type>().iter().collect()
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.parquet");
    write_sessions(&path);
    let batch = read_batch(&path);
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, SESSION_COLUMNS);
    let rows = sessions();
    let own = |s: &str| Some(s.to_owned());
    assert_eq!(strs(&batch, "user_id"), [own("u1"), None]);
    assert_eq!(strs(&batch, "device_id"), [None, own(TRICKY)]);
    assert_eq!(ints(&batch, "session_id"), [Some(1_767_610_800_000), Some(-1)]);
    assert_eq!(strs(&batch, "session_uid"), rows.iter().map(|s| own(s.session_uid)).collect::<Vec<_>>());
    assert_eq!(ints(&batch, "start_ms"), [Some(1_767_610_800_000), Some(0)]);
    assert_eq!(ints(&batch, "end_ms"), [Some(1_767_610_860_000), Some(i64::MAX)]);
    assert_eq!(ints(&batch, "length_ms"), [Some(60_000), Some(i64::MIN)]);
    assert_eq!(ints(&batch, "active_ms"), [Some(50_000), Some(i64::MAX)]);
    let counts: Vec<Option<u64>> =
        batch.column_by_name("event_count").expect("count").as_primitive::<UInt64Type>().iter().collect();
    assert_eq!(counts, [Some(3), Some(u64::MAX)]);
    assert_eq!(strs(&batch, "end_reason"), [own("timeout"), own("open")]);
    assert_eq!(strs(&batch, "entry_event_type"), [own("Page Viewed"), own(TRICKY)]);
    assert_eq!(strs(&batch, "entry_page"), [own("/home"), None]);
    assert_eq!(strs(&batch, "exit_event_type"), [own("Login"), own("e")]);
    assert_eq!(strs(&batch, "exit_page"), [None, own(TRICKY)]);
    assert!(!batch.schema().field_with_name("session_uid").expect("field").is_nullable());
    assert!(batch.schema().field_with_name("exit_page").expect("field").is_nullable());

    let path = dir.path().join("e.pq");
    write_events(&path);
    let batch = read_batch(&path);
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, EVENT_COLUMNS);
    assert_eq!(strs(&batch, "user_id"), [own("u1"), None]);
    assert_eq!(strs(&batch, "device_id"), [None, own(TRICKY)]);
    assert_eq!(strs(&batch, "event_type"), [own("Page Viewed"), own("Push Delivered")]);
    assert_eq!(ints(&batch, "time_ms"), [Some(1_767_610_800_000), Some(0)]);
    assert_eq!(strs(&batch, "insert_id"), [own("i1"), None]);
    assert_eq!(strs(&batch, "page"), [own(TRICKY), None]);
    let passive: Vec<Option<bool>> = batch.column_by_name("passive").expect("passive").as_boolean().iter().collect();
    assert_eq!(passive, [Some(false), Some(true)]);
    assert_eq!(ints(&batch, "session_id"), [Some(1_767_610_800_000), None]);
    assert_eq!(strs(&batch, "session_uid"), [own("uid"), None]);
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_row_groups_are_bounded() {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.parquet");
    let mut sink = create_event_writer(Some(&path)).expect("create");
    let rows = 300_000;
    for i in 0..rows {
        let row = EventRow { time_ms: i, ..events()[1] };
        sink.write(&row).expect("write");
    }
    sink.finish().expect("finish");
    let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("parquet");
    let groups: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [131_072, 131_072, 300_000 - 2 * 131_072]);
    let compression = reader.metadata().row_group(0).column(0).compression();
    assert!(matches!(compression, parquet::basic::Compression::ZSTD(_)), "{compression:?}");
}

#[test]
fn unknown_extension_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.xlsx");
    let error = create_session_writer(Some(&path)).err().expect("unknown");
    assert_eq!(
        error.to_string(),
        format!(
            "unknown output format \"{}\": supported extensions are .ndjson, .jsonl, .json, .csv, .parquet and .pq \
             (\"-\" writes NDJSON to standard output)",
            path.display()
        )
    );
    assert!(create_event_writer(Some(&path)).is_err());
    assert!(!path.exists(), "no file is created for an unknown format");
}

/// A writer whose reader went away, like `| head`.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

#[test]
fn a_closed_pipe_is_an_io_error_not_a_panic() {
    let mut out = NdjsonOut::new(Box::new(ClosedPipe));
    let row = events()[0];
    // Rows are buffered; the error surfaces at the first flush.
    let mut result = Ok(());
    for _ in 0..10_000 {
        result = out.write_row(&row);
        if result.is_err() {
            break;
        }
    }
    let error = result.expect_err("the pipe is closed");
    assert!(error.is_broken_pipe(), "{error}");
    let out = NdjsonOut::new(Box::new(ClosedPipe));
    assert!(out.finish().expect_err("flush fails").is_broken_pipe());

    let mut csv_out = CsvOut::new(Box::new(ClosedPipe), EventRow::COLUMNS).expect("buffered header");
    let mut result = Ok(());
    for _ in 0..10_000 {
        result = csv_out.write_row(&row);
        if result.is_err() {
            break;
        }
    }
    assert!(result.expect_err("closed").is_broken_pipe());
}

#[test]
fn a_dropped_ndjson_writer_still_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dropped.ndjson");
    {
        let mut sink = create_event_writer(Some(&path)).expect("create");
        sink.write(&events()[0]).expect("write");
    }
    assert_eq!(read_ndjson(&path, &EVENT_COLUMNS), [event_json(&events()[0])]);
}

/// `rows` varied sessions borrowing from `text` (one string per row).
fn many_sessions(text: &[String]) -> Vec<SessionRow<'_>> {
    let template = sessions();
    text.iter()
        .enumerate()
        .map(|(i, s)| {
            let base = template[i % 2];
            let i = i as i64;
            SessionRow {
                user_id: base.user_id.map(|_| s.as_str()),
                device_id: base.device_id.map(|_| s.as_str()),
                session_id: i * 1_000,
                session_uid: s,
                start_ms: i * 1_000,
                end_ms: i * 1_000 + i % 7,
                length_ms: i % 7,
                active_ms: i % 5,
                event_count: (i % 5) as u64,
                end_reason: ["inactivity", "max_length", "midnight"][i as usize % 3],
                entry_event_type: if i % 11 == 0 { TRICKY } else { "Page Viewed" },
                entry_page: (i % 3 == 0).then_some(s.as_str()),
                exit_event_type: "Login",
                exit_page: (i % 4 == 0).then_some(TRICKY),
            }
        })
        .collect()
}

/// Checks that `write_parallel(path, threads)` writes exactly what
/// `write_by_rows(path)` (the row writer) writes, in every format and with
/// any thread count: rows in order, same row groups.
fn assert_parallel_equals_row_writer(write_by_rows: impl Fn(&Path), write_parallel: impl Fn(&Path, usize)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extensions = vec!["ndjson", "csv"];
    if cfg!(feature = "parquet") {
        extensions.push("parquet");
    }
    for extension in extensions {
        let by_rows = dir.path().join(format!("rows.{extension}"));
        write_by_rows(&by_rows);
        for threads in [1, 3] {
            let parallel = dir.path().join(format!("parallel{threads}.{extension}"));
            write_parallel(&parallel, threads);
            let (expected, actual) = (std::fs::read(&by_rows).expect("read"), std::fs::read(&parallel).expect("read"));
            assert!(expected == actual, "{extension} with {threads} threads differs from the row writer");
        }
    }
}

#[test]
fn parallel_session_writer_equals_the_row_writer() {
    // Past two Parquet row groups and several text blocks.
    let text: Vec<String> = (0..2 * 131_072 + 5).map(|i| format!("user-{i}")).collect();
    let rows = many_sessions(&text);
    assert_parallel_equals_row_writer(
        |path| {
            let mut sink = create_session_writer(Some(path)).expect("create");
            rows.iter().for_each(|row| sink.write(row).expect("write"));
            sink.finish().expect("finish");
        },
        |path, threads| write_session_rows(Some(path), rows.len(), &|i| rows[i], threads).expect("write in parallel"),
    );
}

#[test]
fn parallel_event_writer_equals_the_row_writer() {
    let text: Vec<String> = (0..131_072 + 5).map(|i| format!("event-{i}")).collect();
    let template = events();
    let rows: Vec<EventRow<'_>> = text
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let base = template[i % 2];
            EventRow {
                user_id: base.user_id.map(|_| s.as_str()),
                insert_id: (i % 3 != 0).then_some(s.as_str()),
                time_ms: i as i64 * 997,
                session_id: base.session_id.map(|id| id + i as i64),
                ..base
            }
        })
        .collect();
    assert_parallel_equals_row_writer(
        |path| {
            let mut sink = create_event_writer(Some(path)).expect("create");
            rows.iter().for_each(|row| sink.write(row).expect("write"));
            sink.finish().expect("finish");
        },
        |path, threads| write_event_rows(Some(path), rows.len(), &|i| rows[i], threads).expect("write in parallel"),
    );
}

#[test]
fn parallel_writer_with_no_sessions_writes_an_empty_file_of_the_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_row = |_: usize| -> SessionRow<'static> { unreachable!("there are no rows") };
    let path = dir.path().join("empty.csv");
    write_session_rows(Some(&path), 0, &no_row, 2).expect("write");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), SESSION_COLUMNS.join(",") + "\n");
    let path = dir.path().join("empty.ndjson");
    write_session_rows(Some(&path), 0, &no_row, 2).expect("write");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
}

/// A `Write` into a shared buffer, for writers that take ownership of their output.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn csv_downloads_neutralise_formulas_and_files_keep_values_exactly() {
    let mut row = sessions()[0];
    row.user_id = Some("=HYPERLINK(\"http://evil\")");
    row.entry_page = Some("-2+3");
    row.exit_page = Some("@SUM(A1)");
    let buffer = SharedBuffer::default();
    let mut download = session_writer_to(FileFormat::Csv, Box::new(buffer.clone())).unwrap();
    download.write(&row).unwrap();
    download.finish().unwrap();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let record = text.lines().nth(1).unwrap();
    assert!(record.starts_with("\"'=HYPERLINK(\"\"http://evil\"\")\""), "{record}");
    assert!(record.contains(",'-2+3,") && record.contains(",'@SUM(A1)"), "{record}");
    // Numbers are numbers, never quoted.
    assert!(record.contains(&format!(",{},", row.start_ms)), "{record}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.csv");
    let mut file = create_session_writer(Some(&path)).unwrap();
    file.write(&row).unwrap();
    file.finish().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.lines().nth(1).unwrap().contains(",-2+3,"), "the command line's files keep values: {text}");
}

/// The server's event export: what the store keeps besides the event row, the
/// properties embedded as a JSON object in NDJSON and as their text elsewhere.
#[test]
fn stored_event_exports_carry_platform_client_session_and_properties() {
    let properties = r#"{"plan":"pro","cart":{"items":[1,2]},"note":"=1+1"}"#;
    let rows = [
        StoredEventRow {
            event: events()[0],
            platform: Some("ios"),
            client_session_id: Some("cs-1"),
            properties: Some(properties),
        },
        StoredEventRow { event: events()[1], platform: None, client_session_id: None, properties: None },
        // Not JSON (a damaged row): written as a string, never a broken line.
        StoredEventRow { event: events()[1], platform: None, client_session_id: None, properties: Some("{\"open") },
    ];
    let export = |format: FileFormat| -> Vec<u8> {
        let buffer = SharedBuffer::default();
        let mut sink = stored_event_writer_to(format, Box::new(buffer.clone())).unwrap();
        for row in &rows {
            sink.write(row).unwrap();
        }
        sink.finish().unwrap();
        buffer.0.lock().unwrap().clone()
    };

    let ndjson = String::from_utf8(export(FileFormat::Ndjson)).unwrap();
    let lines: Vec<Value> = ndjson.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["properties"], serde_json::from_str::<Value>(properties).unwrap(), "an object, not a string");
    assert_eq!((lines[0]["platform"].as_str(), lines[0]["client_session_id"].as_str()), (Some("ios"), Some("cs-1")));
    assert_eq!(lines[0]["insert_id"], json!("i1"));
    assert_eq!((&lines[1]["properties"], &lines[1]["platform"]), (&Value::Null, &Value::Null));
    assert_eq!(lines[2]["properties"], json!("{\"open"));

    let csv_text = String::from_utf8(export(FileFormat::Csv)).unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(&headers[9..], ["platform", "client_session_id", "properties"]);
    let first = reader.records().next().unwrap().unwrap();
    assert_eq!(&first[11], properties, "the JSON text (it starts with a brace: nothing to neutralise)");

    #[cfg(feature = "parquet")]
    {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.parquet");
        std::fs::write(&path, export(FileFormat::Parquet)).unwrap();
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
        let batch = reader.into_iter().next().unwrap().unwrap();
        let column = batch.column_by_name("properties").unwrap().as_string::<i32>().clone();
        assert_eq!((column.value(0), column.is_null(1)), (properties, true));
    }
}
