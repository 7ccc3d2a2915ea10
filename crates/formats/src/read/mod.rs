//! Event readers: NDJSON, CSV and Parquet files into [`EventChunk`]s.
//!
//! # Row semantics (all formats)
//! * `event_type` is required and non-empty.
//! * `time` is required: a JSON number or string, a CSV string, or a Parquet
//!   integer, float, timestamp or string column (see [`crate::parse_event_time`]).
//! * `user_id` and `device_id` are optional but at least one must be non-empty;
//!   an empty string counts as absent. Integer ids (JSON, Parquet) become
//!   their decimal strings.
//! * `insert_id` (string or integer) and `page` (string) are optional; an empty
//!   string is stored as `None` there too.
//! * `passive` is an optional boolean (JSON `true`/`false`; CSV `true`, `false`,
//!   `1`, `0` in any case, or empty for `false`).
//! * Any string longer than [`MAX_FIELD_BYTES`] is an error.
//! * Unknown fields and columns are ignored.
//!
//! A bad row fails [`EventReader::next_chunk`] unless
//! [`ReadOptions::skip_invalid`] is set, in which case it is skipped and
//! counted. Errors about the whole input (I/O, a corrupt Parquet file, a
//! missing column) always fail.

mod csv;
mod ndjson;
#[cfg(feature = "parquet")]
mod parquet;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::columns::EventChunk;
use crate::error::{ReadError, ReadErrorKind};
use crate::limits::MAX_FIELD_BYTES;

pub use ndjson::{ParsedEvent, parse_ndjson_line};

/// The input field (NDJSON key, CSV header, Parquet column) holding each part
/// of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    pub user_id: String,
    pub device_id: String,
    pub event_type: String,
    pub time: String,
    pub insert_id: String,
    pub page: String,
    pub passive: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        Self {
            user_id: "user_id".to_owned(),
            device_id: "device_id".to_owned(),
            event_type: "event_type".to_owned(),
            time: "time".to_owned(),
            insert_id: "insert_id".to_owned(),
            page: "page".to_owned(),
            passive: "passive".to_owned(),
        }
    }
}

/// An input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Ndjson,
    Csv,
    Parquet,
}

impl FileFormat {
    /// The format for a path, by its (case-insensitive) extension:
    /// `.ndjson`/`.jsonl`/`.json` NDJSON, `.csv` CSV, `.parquet`/`.pq` Parquet.
    /// The path `-` means NDJSON on standard input.
    pub fn from_path(path: &Path) -> Result<FileFormat, ReadErrorKind> {
        if path == Path::new("-") {
            return Ok(FileFormat::Ndjson);
        }
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match extension.as_str() {
            "ndjson" | "jsonl" | "json" => Ok(FileFormat::Ndjson),
            "csv" => Ok(FileFormat::Csv),
            "parquet" | "pq" => Ok(FileFormat::Parquet),
            _ => Err(ReadErrorKind::UnknownFormat(path.display().to_string())),
        }
    }
}

/// How to read events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    pub fields: FieldNames,
    /// Skip (and count) bad rows instead of failing on the first one.
    pub skip_invalid: bool,
    /// Decoding threads (Parquet, NDJSON and CSV use more than one).
    pub threads: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { fields: FieldNames::default(), skip_invalid: false, threads: 1 }
    }
}

/// A source of event chunks, in file order.
pub trait EventReader: Send {
    /// The next chunk, `None` at the end. Chunks are never empty.
    fn next_chunk(&mut self) -> Result<Option<EventChunk>, ReadError>;
    /// Rows skipped so far because they were invalid (with `skip_invalid`).
    fn skipped_rows(&self) -> u64;
    /// The first skipped row's error, to show the user an example.
    fn first_skipped_error(&self) -> Option<&ReadError>;
    /// Input bytes consumed so far, for a progress bar (for Parquet, the
    /// compressed size of the row groups decoded so far).
    fn bytes_read(&self) -> u64;
    /// Total input bytes, when known (not for standard input).
    fn total_bytes(&self) -> Option<u64>;
}

/// Opens `path` (or standard input for `-`, as NDJSON) for reading events, in
/// the format given by its extension.
pub fn open_event_reader(path: &Path, options: &ReadOptions) -> Result<Box<dyn EventReader>, ReadError> {
    let display = display_path(path);
    let fail = |kind| ReadError { path: display.clone(), line: None, kind };
    let format = FileFormat::from_path(path).map_err(fail)?;
    if path == Path::new("-") {
        let input: Box<dyn Read + Send> = Box::new(std::io::stdin());
        return Ok(Box::new(ndjson::NdjsonReader::new(input, display, None, options)));
    }
    match format {
        FileFormat::Ndjson | FileFormat::Csv => {
            let file = File::open(path).map_err(|e| fail(e.into()))?;
            let total = file.metadata().ok().map(|m| m.len());
            let input: Box<dyn Read + Send> = Box::new(file);
            Ok(if format == FileFormat::Ndjson {
                Box::new(ndjson::NdjsonReader::new(input, display, total, options))
            } else {
                Box::new(csv::CsvReader::new(input, display, total, options)?)
            })
        }
        #[cfg(feature = "parquet")]
        FileFormat::Parquet => Ok(Box::new(parquet::ParquetReader::open(path, display, options)?)),
        #[cfg(not(feature = "parquet"))]
        FileFormat::Parquet => Err(fail(ReadErrorKind::Parquet(
            "this build has no Parquet support (cargo feature \"parquet\")".to_owned(),
        ))),
    }
}

fn display_path(path: &Path) -> String {
    if path == Path::new("-") { "<stdin>".to_owned() } else { path.display().to_string() }
}

/// Bad-row bookkeeping shared by the readers.
#[derive(Debug)]
struct Skips {
    skip_invalid: bool,
    skipped: u64,
    first: Option<ReadError>,
}

impl Skips {
    fn new(skip_invalid: bool) -> Self {
        Self { skip_invalid, skipped: 0, first: None }
    }

    /// Absorbs a row error when skipping, else hands it back.
    fn absorb(&mut self, error: ReadError) -> Result<(), ReadError> {
        if self.skip_invalid && error.is_row_error() {
            self.skipped += 1;
            self.first.get_or_insert(error);
            Ok(())
        } else {
            Err(error)
        }
    }

    /// Adds another reader's skips, which come after this one's in file order.
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    fn merge(&mut self, other: Skips) {
        self.skipped += other.skipped;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// A block of rows converted into a chunk, with its bad rows (line, problem) in order.
type ParsedBlock = (EventChunk, Vec<(u64, ReadErrorKind)>);

/// The parallel step of the NDJSON and CSV readers: converts `blocks` at
/// once (the first on the calling thread, the others on scoped threads),
/// then, in block order, hands their bad rows to `skips` (stopping at the
/// first one it does not absorb) and queues their non-empty chunks on `ready`.
fn parse_blocks<B: Sync>(
    blocks: &[B],
    parse: impl Fn(&B) -> ParsedBlock + Sync,
    path: &str,
    skips: &mut Skips,
    ready: &mut std::collections::VecDeque<EventChunk>,
) -> Result<(), ReadError> {
    let parse = &parse;
    let results: Vec<ParsedBlock> = std::thread::scope(|scope| {
        let workers: Vec<_> = blocks.iter().skip(1).map(|block| scope.spawn(move || parse(block))).collect();
        let first = blocks.first().map(parse);
        let rest =
            workers.into_iter().map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        first.into_iter().chain(rest).collect()
    });
    for (chunk, errors) in results {
        for (line, kind) in errors {
            skips.absorb(ReadError { path: path.to_owned(), line: Some(line), kind })?;
        }
        if !chunk.is_empty() {
            ready.push_back(chunk);
        }
    }
    Ok(())
}

/// Checks a string field against [`MAX_FIELD_BYTES`].
#[inline]
fn check_len(field: &str, value: &str) -> Result<(), ReadErrorKind> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(ReadErrorKind::FieldTooLong { field: field.to_owned(), limit: MAX_FIELD_BYTES });
    }
    Ok(())
}

/// An optional string field: empty means absent.
#[inline]
fn optional_str<'a>(field: &str, value: Option<&'a str>) -> Result<Option<&'a str>, ReadErrorKind> {
    match value {
        Some(v) if !v.is_empty() => check_len(field, v).map(|()| Some(v)),
        _ => Ok(None),
    }
}

/// The required `event_type`.
#[inline]
fn required_event_type<'a>(field: &str, value: Option<&'a str>) -> Result<&'a str, ReadErrorKind> {
    match value {
        None => Err(ReadErrorKind::MissingField(field.to_owned())),
        Some("") => Err(ReadErrorKind::EmptyField(field.to_owned())),
        Some(v) => check_len(field, v).map(|()| v),
    }
}

fn missing_user(fields: &FieldNames) -> ReadErrorKind {
    ReadErrorKind::MissingUser { user_id: fields.user_id.clone(), device_id: fields.device_id.clone() }
}

#[cfg(test)]
mod tests;
