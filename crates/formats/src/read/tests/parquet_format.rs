use std::sync::Arc;

use ::parquet::arrow::ArrowWriter;
use ::parquet::file::properties::WriterProperties;
use arrow_array::builder::{StringDictionaryBuilder, UInt64Builder};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray,
    StringViewArray, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampSecondArray, UInt64Array,
};

use super::*;

/// Writes `columns` to a Parquet file with row groups of `row_group_rows`.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, row_group_rows: usize) {
    let batch = RecordBatch::try_from_iter(columns).expect("batch");
    let file = std::fs::File::create(path).expect("create");
    let properties = WriterProperties::builder().set_max_row_group_size(row_group_rows).build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// `events` as plain Utf8/Int64/Boolean columns.
pub(super) fn write_events(path: &Path, events: &[Event]) {
    let col = |f: fn(&Event) -> Option<&str>| strings(&events.iter().map(f).collect::<Vec<_>>());
    write_parquet(
        path,
        vec![
            ("user_id", col(|e| e.user_id.as_deref())),
            ("device_id", col(|e| e.device_id.as_deref())),
            ("event_type", col(|e| Some(&e.event_type))),
            ("time", Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.time_ms)))),
            ("insert_id", col(|e| e.insert_id.as_deref())),
            ("page", col(|e| e.page.as_deref())),
            ("passive", Arc::new(BooleanArray::from(events.iter().map(|e| e.passive).collect::<Vec<_>>()))),
            ("unused", Arc::new(Float64Array::from(vec![1.0; events.len()]))),
        ],
        1024,
    );
}

#[test]
fn integer_user_ids_dictionaries_and_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typed.parquet");
    let mut users = UInt64Builder::new();
    users.append_value(u64::MAX);
    users.append_value(7);
    users.append_null();
    let mut types = StringDictionaryBuilder::<Int32Type>::new();
    for t in ["Login", "Page Viewed", "Login"] {
        types.append_value(t);
    }
    let time = TimestampMillisecondArray::from(vec![1_767_610_800_000, 1_767_610_800_001, 5]).with_timezone("UTC");
    write_parquet(
        &path,
        vec![
            ("user_id", Arc::new(users.finish())),
            ("device_id", strings(&[None, Some(""), Some("dev")])),
            ("event_type", Arc::new(types.finish())),
            ("time", Arc::new(time)),
            ("insert_id", Arc::new(Int32Array::from(vec![Some(-1), None, Some(3)]))),
        ],
        2,
    );
    let events = read_ok(&path);
    assert_eq!(
        events,
        [
            Event { insert_id: Some("-1".into()), ..Event::new("18446744073709551615", "Login", 1_767_610_800_000, 1) },
            Event::new("7", "Page Viewed", 1_767_610_800_001, 2),
            // A timestamp is exact: 5 ms stays 5 ms (no seconds guess).
            Event {
                user_id: None,
                device_id: Some("dev".into()),
                insert_id: Some("3".into()),
                ..Event::new("-", "Login", 5, 3)
            },
        ]
    );
}

#[test]
fn int64_float_and_string_times_follow_the_number_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = || strings(&[Some("u"), Some("u")]);
    let types = || -> ArrayRef { Arc::new(LargeStringArray::from(vec!["e", "e"])) };
    let t = 1_767_610_800_000;
    let cases: Vec<(&str, ArrayRef, [i64; 2])> = vec![
        ("int64", Arc::new(Int64Array::from(vec![1_767_610_800, t])), [t, t]),
        ("int32", Arc::new(Int32Array::from(vec![1_767_610_800, 0])), [t, 0]),
        ("uint64", Arc::new(UInt64Array::from(vec![1_767_610_800, 1_767_610_800_123])), [t, t + 123]),
        ("float", Arc::new(Float64Array::from(vec![1_767_610_800.25, 1.767_610_800_5e12])), [t + 250, t + 500]),
        ("string", strings(&[Some("2026-01-05T13:00:00+02:00"), Some("1767610800")]), [t, t]),
        ("view", Arc::new(StringViewArray::from(vec!["2026-01-05 11:00:00", "1767610800000"])), [t, t]),
        ("seconds", Arc::new(TimestampSecondArray::from(vec![1_767_610_800, 1])), [t, 1000]),
        ("micros", Arc::new(TimestampMicrosecondArray::from(vec![1_767_610_800_000_999, 1])), [t, 0]),
    ];
    for (name, time, expected) in cases {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, vec![("user_id", users()), ("event_type", types()), ("time", time)], 1024);
        let times: Vec<i64> = read_ok(&path).iter().map(|e| e.time_ms).collect();
        assert_eq!(times, expected, "{name}");
    }
}

#[test]
fn missing_and_mistyped_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = || strings(&[Some("x")]);
    let time = || -> ArrayRef { Arc::new(Int64Array::from(vec![1])) };
    let cases: Vec<(Vec<(&str, ArrayRef)>, &str)> = vec![
        (vec![("user_id", one()), ("time", time())], "missing required column \"event_type\""),
        (vec![("user_id", one()), ("event_type", one())], "missing required column \"time\""),
        (vec![("event_type", one()), ("time", time())], "missing user column: need \"user_id\" or \"device_id\""),
        (
            vec![("user_id", one()), ("event_type", time()), ("time", time())],
            "Parquet error: column \"event_type\" has type Int64, expected a string type",
        ),
        (
            vec![("user_id", one()), ("event_type", one()), ("time", time()), ("passive", one())],
            "Parquet error: column \"passive\" has type Utf8, expected Boolean",
        ),
    ];
    for (i, (columns, message)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("m{i}.parquet"));
        write_parquet(&path, columns, 1024);
        let error = open_event_reader(&path, &skipping()).err().expect("a schema error");
        assert_eq!(error.to_string(), format!("{}: {message}", path.display()));
        assert!(!error.is_row_error());
    }
    let garbage = write_file(&dir, "garbage.parquet", "not parquet at all");
    let error = open_event_reader(&garbage, &ReadOptions::default()).err().expect("corrupt");
    assert!(matches!(error.kind, ReadErrorKind::Parquet(_)), "{error}");
}

/// `rows` events over several row groups, with bad rows at `bad`.
fn many_rows(path: &Path, rows: usize, bad: &[usize]) {
    let users: Vec<Option<String>> =
        (0..rows).map(|i| if bad.contains(&i) { None } else { Some(format!("user_{}", i % 97)) }).collect();
    let types: Vec<&str> = (0..rows).map(|i| ["a", "bb", "ccc"][i % 3]).collect();
    let times: Vec<i64> = (0..rows).map(|i| 1_700_000_000_000 + i as i64).collect();
    let pages: Vec<Option<String>> = (0..rows).map(|i| (i % 5 == 0).then(|| format!("/p{i}"))).collect();
    write_parquet(
        path,
        vec![
            ("user_id", Arc::new(StringArray::from(users))),
            ("event_type", Arc::new(StringArray::from(types))),
            ("time", Arc::new(Int64Array::from(times))),
            ("page", Arc::new(StringArray::from(pages))),
        ],
        10_000,
    );
}

#[test]
fn parallel_decoding_matches_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.parquet");
    let rows = 95_000;
    many_rows(&path, rows, &[]);
    let sequential = read_ok(&path);
    assert_eq!(sequential.len(), rows);
    assert_eq!(sequential.iter().map(|e| e.line).collect::<Vec<_>>(), (1..=rows as u64).collect::<Vec<_>>());
    assert_eq!(sequential[5].page.as_deref(), Some("/p5"));
    assert_eq!(sequential[6].page, None);
    for threads in [2, 3, 16] {
        let options = ReadOptions { threads, ..ReadOptions::default() };
        let (events, reader) = drain(open_event_reader(&path, &options).expect("open"));
        assert_eq!(events.expect("read"), sequential, "threads = {threads}");
        assert_eq!(reader.bytes_read(), reader.total_bytes().expect("known"));
    }
}

#[test]
fn bad_rows_by_row_number_in_any_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.parquet");
    // Row groups of 10 000: bad rows in the third, second and fifth.
    many_rows(&path, 50_000, &[25_000, 12_345, 45_000]);
    for threads in [1, 2, 4] {
        let options = ReadOptions { threads, ..ReadOptions::default() };
        let error = read_all(&path, &options).expect_err("a bad row");
        assert_eq!(
            error.to_string(),
            format!(
                "{}:12346: no user: neither \"user_id\" nor \"device_id\" is set to a non-empty value",
                path.display()
            ),
            "threads = {threads}"
        );
        let options = ReadOptions { threads, skip_invalid: true, ..ReadOptions::default() };
        let (events, reader) = drain(open_event_reader(&path, &options).expect("open"));
        let events = events.expect("skips");
        assert_eq!(events.len(), 50_000 - 3);
        assert!(events.iter().all(|e| ![12_346, 25_001, 45_001].contains(&e.line)));
        assert_eq!(reader.skipped_rows(), 3, "threads = {threads}");
        assert_eq!(reader.first_skipped_error().and_then(|e| e.line), Some(12_346), "threads = {threads}");
    }
}

#[test]
fn dropping_a_parallel_reader_early_stops_its_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("early.parquet");
    many_rows(&path, 60_000, &[]);
    let mut reader = open_event_reader(&path, &ReadOptions { threads: 2, ..ReadOptions::default() }).expect("open");
    assert!(reader.next_chunk().expect("read").is_some());
    drop(reader); // Must not hang.
}

#[test]
fn bad_values_in_typed_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "x".repeat(crate::limits::MAX_FIELD_BYTES + 1);
    let time = |t: Option<i64>| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![Some(1), t])) };
    let cases: Vec<(Vec<(&str, ArrayRef)>, &str)> = vec![
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), Some("e")])),
                ("time", time(Some(-1000))),
            ],
            "invalid time: timestamp -1000 ms is before 1970-01-01T00:00:00Z",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), Some("e")])),
                ("time", time(None)),
            ],
            "missing field \"time\"",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), Some("")])),
                ("time", time(Some(2))),
            ],
            "field \"event_type\" is empty",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), None])),
                ("time", time(Some(2))),
            ],
            "missing field \"event_type\"",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), Some("e")])),
                ("time", time(Some(2))),
                ("page", strings(&[None, Some(&long)])),
            ],
            "field \"page\" is longer than 8192 bytes",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("")])),
                ("device_id", Arc::new(UInt64Array::from(vec![None, None]))),
                ("event_type", strings(&[Some("e"), Some("e")])),
                ("time", time(Some(2))),
            ],
            "no user: neither \"user_id\" nor \"device_id\" is set to a non-empty value",
        ),
        (
            vec![
                ("user_id", strings(&[Some("u"), Some("u")])),
                ("event_type", strings(&[Some("e"), Some("e")])),
                ("time", strings(&[Some("0.001"), Some("tomorrow")])),
            ],
            "invalid time: \"tomorrow\" is neither an epoch number nor an ISO-8601 date-time (like 2026-01-05T11:00:00Z)",
        ),
    ];
    for (i, (columns, message)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.parquet"));
        write_parquet(&path, columns, 1024);
        assert_eq!(read_err(&path), format!("{}:2: {message}", path.display()));
        let (events, reader) = drain(open_event_reader(&path, &skipping()).expect("open"));
        assert_eq!(
            events.expect("skips").iter().map(|e| (e.line, e.time_ms)).collect::<Vec<_>>(),
            [(1, 1)],
            "{message}"
        );
        assert_eq!(reader.skipped_rows(), 1);
    }
}

#[test]
fn dictionary_encoded_columns_stay_dictionaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dictionary.parquet");
    let expected = sample_events();
    // The writer dictionary-encodes every column by default.
    write_events(&path, &expected);
    let mut reader = open_event_reader(&path, &ReadOptions::default()).expect("open");
    let chunk = reader.next_chunk().expect("read").expect("a chunk");
    for (name, column) in
        [("user_id", &chunk.user_id), ("device_id", &chunk.device_id), ("event_type", &chunk.event_type)]
    {
        assert!(column.dictionary_keys().is_some(), "{name} is read as a dictionary");
    }
    // Unique per row: not worth a dictionary.
    assert!(chunk.insert_id.dictionary_keys().is_none());
    assert_eq!(without_lines(&events_of(&chunk)), expected);

    // A file written without dictionaries reads the same, as plain columns.
    let plain = dir.path().join("plain.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        ("user_id", strings(&[Some("u1"), None, Some("u1")])),
        ("device_id", strings(&[None, Some("d1"), Some("d1")])),
        ("event_type", strings(&[Some("a"), Some("b"), Some("a")])),
        ("time", Arc::new(Int64Array::from(vec![1_767_610_800_000, 1_767_610_800_001, 1_767_610_800_002])) as ArrayRef),
    ])
    .expect("batch");
    let properties = WriterProperties::builder().set_dictionary_enabled(false).build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&plain).unwrap(), batch.schema(), Some(properties)).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    let mut reader = open_event_reader(&plain, &ReadOptions::default()).expect("open");
    let chunk = reader.next_chunk().expect("read").expect("a chunk");
    assert!(chunk.user_id.dictionary_keys().is_none());
    assert_eq!(chunk.user_id.iter().collect::<Vec<_>>(), [Some("u1"), None, Some("u1")]);
    assert_eq!(chunk.device_id.iter().collect::<Vec<_>>(), [None, Some("d1"), Some("d1")]);
}

#[test]
fn chunks_of_one_row_group_share_their_dictionaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.parquet");
    // Two row groups of two chunks each.
    let rows = 4 * crate::limits::CHUNK_ROWS;
    let users: Vec<Option<String>> = (0..rows).map(|i| Some(format!("user_{}", i % 1000))).collect();
    let users: Vec<Option<&str>> = users.iter().map(Option::as_deref).collect();
    let types: Vec<Option<&str>> = (0..rows).map(|i| Some(["a", "b", "c"][i % 3])).collect();
    write_parquet(
        &path,
        vec![
            ("user_id", strings(&users)),
            ("event_type", strings(&types)),
            ("time", Arc::new(Int64Array::from_iter_values((0..rows as i64).map(|i| 1_767_610_800_000 + i)))),
        ],
        2 * crate::limits::CHUNK_ROWS,
    );
    for threads in [1, 2] {
        let mut reader = open_event_reader(&path, &ReadOptions { threads, ..ReadOptions::default() }).expect("open");
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next_chunk().expect("read") {
            chunks.push(chunk);
        }
        assert_eq!(chunks.len(), 4);
        let same = |a: &EventChunk, b: &EventChunk| {
            Arc::ptr_eq(a.user_id.dictionary().expect("dictionary"), b.user_id.dictionary().expect("dictionary"))
        };
        assert!(same(&chunks[0], &chunks[1]) && same(&chunks[2], &chunks[3]), "shared within a row group");
        assert!(!same(&chunks[1], &chunks[2]), "each row group has its own");
        let read: Vec<Option<&str>> = chunks.iter().flat_map(|c| c.user_id.iter()).collect();
        assert_eq!(read, users);
    }
}
