//! Reader tests: every format through `open_event_reader`, as the CLI uses it.

mod csv_format;
mod ndjson_format;
#[cfg(feature = "parquet")]
mod parquet_format;

use std::path::{Path, PathBuf};

use super::*;
use crate::columns::StrColumn;

/// One event, owned, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    user_id: Option<String>,
    device_id: Option<String>,
    event_type: String,
    time_ms: i64,
    insert_id: Option<String>,
    page: Option<String>,
    passive: bool,
    line: u64,
}

impl Event {
    fn new(user_id: &str, event_type: &str, time_ms: i64, line: u64) -> Self {
        Event {
            user_id: Some(user_id.to_owned()),
            device_id: None,
            event_type: event_type.to_owned(),
            time_ms,
            insert_id: None,
            page: None,
            passive: false,
            line,
        }
    }
}

fn events_of(chunk: &EventChunk) -> Vec<Event> {
    let owned = |s: Option<&str>| s.map(str::to_owned);
    let n = chunk.len();
    for len in [
        chunk.user_id.len(),
        chunk.device_id.len(),
        chunk.event_type.len(),
        chunk.insert_id.len(),
        chunk.page.len(),
        chunk.passive.len(),
        chunk.source_line.len(),
    ] {
        assert_eq!(len, n, "all columns have the chunk's length");
    }
    (0..n)
        .map(|i| Event {
            user_id: owned(chunk.user_id.get(i)),
            device_id: owned(chunk.device_id.get(i)),
            event_type: chunk.event_type.get(i).expect("event_type is never null").to_owned(),
            time_ms: chunk.time_ms[i],
            insert_id: owned(chunk.insert_id.get(i)),
            page: owned(chunk.page.get(i)),
            passive: chunk.passive[i],
            line: chunk.source_line[i],
        })
        .collect()
}

/// Reads all of `reader`, returning the events (or the first error) and the
/// reader for its counters.
fn drain(mut reader: Box<dyn EventReader>) -> (Result<Vec<Event>, ReadError>, Box<dyn EventReader>) {
    let mut events = Vec::new();
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                assert!(!chunk.is_empty(), "chunks are never empty");
                events.extend(events_of(&chunk));
            }
            Ok(None) => return (Ok(events), reader),
            Err(e) => return (Err(e), reader),
        }
    }
}

/// Reads `path` (`bytes` long, with `skipped` bad rows, the first on line
/// `first_bad_line`) with one thread and with 2, 3 and 8, and checks that
/// they agree: the same events, skipped rows, first error and bytes read,
/// and without `skip_invalid` the same failing line. Returns the events and
/// the first error of the one-thread read.
fn assert_parallel_matches_sequential(
    path: &Path,
    bytes: u64,
    skipped: u64,
    first_bad_line: u64,
) -> (Vec<Event>, Option<String>) {
    let read = |threads: usize, skip_invalid: bool| {
        let options = ReadOptions { threads, skip_invalid, ..ReadOptions::default() };
        let (events, reader) = drain(open_event_reader(path, &options).expect("open"));
        (events, reader.skipped_rows(), reader.first_skipped_error().map(ToString::to_string), reader.bytes_read())
    };
    let (sequential, sequential_skipped, first, sequential_bytes) = read(1, true);
    let sequential = sequential.expect("skips");
    assert_eq!((sequential_skipped, sequential_bytes), (skipped, bytes));
    for threads in [2, 3, 8] {
        let (events, skipped_here, first_error, bytes_here) = read(threads, true);
        assert_eq!(events.expect("skips"), sequential, "threads = {threads}");
        assert_eq!((skipped_here, &first_error, bytes_here), (skipped, &first, bytes), "threads = {threads}");
        let (events, ..) = read(threads, false);
        let error = events.expect_err("the first bad row fails");
        assert_eq!(error.line, Some(first_bad_line), "threads = {threads}");
    }
    (sequential, first)
}

fn read_all(path: &Path, options: &ReadOptions) -> Result<Vec<Event>, ReadError> {
    drain(open_event_reader(path, options)?).0
}

fn read_ok(path: &Path) -> Vec<Event> {
    read_all(path, &ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The error text of reading `path`, which must fail.
fn read_err(path: &Path) -> String {
    match read_all(path, &ReadOptions::default()) {
        Ok(events) => panic!("expected an error, read {events:?}"),
        Err(e) => e.to_string(),
    }
}

fn skipping() -> ReadOptions {
    ReadOptions { skip_invalid: true, ..ReadOptions::default() }
}

fn write_file(dir: &tempfile::TempDir, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

/// The events that every format's "same events" test encodes.
fn sample_events() -> Vec<Event> {
    vec![
        Event {
            user_id: Some("u1".into()),
            device_id: Some("d1".into()),
            event_type: "Page Viewed".into(),
            time_ms: 1_767_610_800_000,
            insert_id: Some("i1".into()),
            page: Some("/home".into()),
            passive: false,
            line: 0,
        },
        Event {
            user_id: None,
            device_id: Some("d2".into()),
            event_type: "Button Clicked".into(),
            time_ms: 1_767_610_801_500,
            insert_id: None,
            page: Some("/a, \"quoted\"\nnext".into()),
            passive: true,
            line: 0,
        },
        Event {
            user_id: Some("ünïcødé 🎉".into()),
            device_id: None,
            event_type: "Login".into(),
            time_ms: 0,
            insert_id: Some("i3".into()),
            page: None,
            passive: false,
            line: 0,
        },
    ]
}

fn without_lines(events: &[Event]) -> Vec<Event> {
    events.iter().map(|e| Event { line: 0, ..e.clone() }).collect()
}

#[test]
fn file_format_from_extension() {
    let format = |p: &str| FileFormat::from_path(Path::new(p));
    assert_eq!(format("a.ndjson").ok(), Some(FileFormat::Ndjson));
    assert_eq!(format("a.JSONL").ok(), Some(FileFormat::Ndjson));
    assert_eq!(format("dir.x/a.json").ok(), Some(FileFormat::Ndjson));
    assert_eq!(format("a.Csv").ok(), Some(FileFormat::Csv));
    assert_eq!(format("a.parquet").ok(), Some(FileFormat::Parquet));
    assert_eq!(format("a.PQ").ok(), Some(FileFormat::Parquet));
    assert_eq!(format("-").ok(), Some(FileFormat::Ndjson));
    let error = format("events.txt").expect_err("unknown extension");
    assert_eq!(
        error.to_string(),
        "unknown file format \"events.txt\": supported extensions are .ndjson, .jsonl, .json, .csv, .parquet and .pq \
         (\"-\" reads NDJSON from standard input)"
    );
    assert!(format("noextension").is_err());
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.ndjson");
    let error = open_event_reader(&missing, &ReadOptions::default()).err().expect("missing file");
    assert!(matches!(error.kind, ReadErrorKind::Io(_)));
    assert!(error.to_string().starts_with(&format!("{}: I/O error: ", missing.display())), "{error}");
    assert!(!error.is_row_error());
    let txt = write_file(&dir, "events.txt", "");
    let error = open_event_reader(&txt, &ReadOptions::default()).err().expect("unknown format");
    assert!(matches!(error.kind, ReadErrorKind::UnknownFormat(_)));
}

#[test]
fn same_events_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = sample_events();
    let ndjson = write_file(&dir, "e.ndjson", ndjson_format::encode(&expected));
    let csv = write_file(&dir, "e.csv", csv_format::encode(&expected));
    let from_ndjson = read_ok(&ndjson);
    let from_csv = read_ok(&csv);
    assert_eq!(without_lines(&from_ndjson), expected);
    assert_eq!(without_lines(&from_csv), expected);
    assert_eq!(from_ndjson.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 3]);
    // The second record's page spans two lines.
    assert_eq!(from_csv.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3, 5]);
    #[cfg(feature = "parquet")]
    {
        let parquet = dir.path().join("e.parquet");
        parquet_format::write_events(&parquet, &expected);
        let from_parquet = read_ok(&parquet);
        assert_eq!(without_lines(&from_parquet), expected);
        assert_eq!(from_parquet.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 3]);
    }
}

#[test]
fn chunks_are_bounded_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = crate::limits::CHUNK_ROWS + 10;
    let mut text = String::new();
    for i in 0..rows {
        text.push_str(&format!(
            "{{\"user_id\":\"u{i}\",\"event_type\":\"e\",\"time\":{}}}\n",
            1_700_000_000_000i64 + i as i64
        ));
    }
    let path = write_file(&dir, "many.ndjson", &text);
    let mut reader = open_event_reader(&path, &ReadOptions::default()).expect("open");
    let first = reader.next_chunk().expect("read").expect("a chunk");
    assert_eq!(first.len(), crate::limits::CHUNK_ROWS);
    let second = reader.next_chunk().expect("read").expect("a chunk");
    assert_eq!(second.len(), 10);
    assert_eq!(second.source_line[0], crate::limits::CHUNK_ROWS as u64 + 1);
    assert_eq!(second.user_id.get(9), Some(format!("u{}", rows - 1).as_str()));
    assert!(reader.next_chunk().expect("read").is_none());
    assert_eq!(reader.bytes_read(), text.len() as u64);
    assert_eq!(reader.total_bytes(), Some(text.len() as u64));
}

#[test]
fn str_column_layout() {
    let mut column = StrColumn::with_capacity(4, 16);
    assert!(column.is_empty());
    column.push(Some("ab"));
    column.push(None);
    column.push(Some(""));
    column.push(Some("é"));
    assert_eq!(column.len(), 4);
    assert_eq!(column.iter().collect::<Vec<_>>(), [Some("ab"), None, Some(""), Some("é")]);
    assert_eq!(column.byte_len(), 4);
    column.extend_utf8(b"xxhelloworld", &[2i32, 7, 7, 12], |_| true);
    assert_eq!(column.iter().skip(4).collect::<Vec<_>>(), [Some("hello"), None, Some("world")]);
    column.extend_utf8(b"abc", &[0i64, 1, 2, 3], |i| i != 1);
    assert_eq!(column.iter().skip(7).collect::<Vec<_>>(), [Some("a"), None, Some("c")]);
    column.clear();
    assert!(column.is_empty());
    column.push(Some("z"));
    assert_eq!(column.get(0), Some("z"));
}

#[test]
fn a_str_column_takes_over_a_utf8_buffer_or_gives_it_back() {
    let column = StrColumn::from_utf8_buffer(b"hello\xc3\xa9!".to_vec(), &[0, 5, 5, 7, 8], |i| i != 3).unwrap();
    assert_eq!(column.iter().collect::<Vec<_>>(), [Some("hello"), None, Some("é"), None]);
    let given_back = |values: &[u8], offsets: &[i32]| {
        StrColumn::from_utf8_buffer(values.to_vec(), offsets, |_| true).expect_err("not a column")
    };
    assert_eq!(given_back(b"abc", &[0, 2, 1, 3]), b"abc", "offsets out of order");
    assert_eq!(given_back(b"abc", &[0, 1]), b"abc", "offsets short of the end");
    assert_eq!(given_back(b"abc", &[1, 3]), b"abc", "offsets not from 0");
    assert_eq!(given_back(b"abc", &[]), b"abc", "no offsets");
    assert_eq!(given_back(b"\xc3\xa9", &[0, 1, 2]), b"\xc3\xa9", "an offset inside a character");
    assert_eq!(given_back(b"\xff", &[0, 1]), b"\xff", "not UTF-8");
}

#[test]
fn str_column_dictionary_mode() {
    let values = {
        let mut values = StrColumn::new();
        values.push(Some("a"));
        values.push(None);
        values.push(Some("b"));
        values
    };
    let null = StrColumn::NULL_KEY;
    let mut column = StrColumn::from_dictionary(values, vec![0, 2, null, 1, 0]);
    assert_eq!(column.len(), 5);
    assert_eq!(column.iter().collect::<Vec<_>>(), [Some("a"), Some("b"), None, None, Some("a")]);
    assert_eq!(column.dictionary_keys(), Some(&[0, 2, null, 1, 0][..]));
    assert_eq!(column.dictionary_len(), 3);
    assert_eq!(
        (column.dictionary_value(2), column.dictionary_value(1), column.dictionary_value(null)),
        (Some("b"), None, None)
    );
    let mut plain = StrColumn::new();
    for value in [Some("a"), Some("b"), None, None, Some("a")] {
        plain.push(value);
    }
    assert_eq!(column, plain, "equal by rows, whatever the encoding");
    // Appending turns it plain, keeping every row.
    column.push(Some("c"));
    assert!(column.dictionary_keys().is_none());
    assert_eq!(column.iter().collect::<Vec<_>>(), [Some("a"), Some("b"), None, None, Some("a"), Some("c")]);
}
