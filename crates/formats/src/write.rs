//! Session and event writers: NDJSON, CSV and Parquet.
//!
//! Every format has the same columns, named exactly like the fields of
//! [`SessionRow`] and [`EventRow`] and in the same order. `None` is JSON
//! `null`, an empty CSV cell, or a Parquet null.
//!
//! Call `finish` at the end: it flushes buffered rows and, for Parquet, writes
//! the footer without which the file is unreadable.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::WriteError;
use crate::read::FileFormat;

mod parallel;

pub use parallel::{write_event_rows, write_session_rows};

/// One session, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRow<'a> {
    /// The session's key: the user id, or for anonymous sessions the device id
    /// (exactly one of the two is set).
    pub user_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub session_id: i64,
    pub session_uid: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub length_ms: i64,
    /// Time in the foreground: the length minus the time after app
    /// background events (equal to the length without lifecycle events).
    pub active_ms: i64,
    pub event_count: u64,
    pub end_reason: &'a str,
    pub entry_event_type: &'a str,
    pub entry_page: Option<&'a str>,
    pub exit_event_type: &'a str,
    pub exit_page: Option<&'a str>,
}

/// One event with its session, as written; the session fields are `None` for
/// events outside any session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRow<'a> {
    pub user_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub event_type: &'a str,
    pub time_ms: i64,
    pub insert_id: Option<&'a str>,
    pub page: Option<&'a str>,
    pub passive: bool,
    pub session_id: Option<i64>,
    pub session_uid: Option<&'a str>,
}

/// An event as the server exports it: [`EventRow`] plus what the store keeps
/// besides the session inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEventRow<'a> {
    pub event: EventRow<'a>,
    /// `web`, `ios`, ... as the SDK said it.
    pub platform: Option<&'a str>,
    /// The SDK's own session id.
    pub client_session_id: Option<&'a str>,
    /// The event's properties, a JSON object: embedded as an object in NDJSON,
    /// its text in CSV and Parquet.
    pub properties: Option<&'a str>,
}

/// A destination for sessions.
pub trait SessionSink {
    fn write(&mut self, row: &SessionRow<'_>) -> Result<(), WriteError>;
    /// Flushes everything and completes the file.
    fn finish(self: Box<Self>) -> Result<(), WriteError>;
}

/// A destination for events.
pub trait EventSink {
    fn write(&mut self, row: &EventRow<'_>) -> Result<(), WriteError>;
    /// Flushes everything and completes the file.
    fn finish(self: Box<Self>) -> Result<(), WriteError>;
}

/// Writes sessions to `path` in the format of its extension, or NDJSON to
/// standard output for `None` or `-`.
pub fn create_session_writer(path: Option<&Path>) -> Result<Box<dyn SessionSink>, WriteError> {
    Ok(Box::new(Writer::<SessionRow<'static>>::create(path)?))
}

/// Writes events to `path` in the format of its extension, or NDJSON to
/// standard output for `None` or `-`.
pub fn create_event_writer(path: Option<&Path>) -> Result<Box<dyn EventSink>, WriteError> {
    Ok(Box::new(Writer::<EventRow<'static>>::create(path)?))
}

/// Writes sessions in `format` to any byte sink (an HTTP response body, say).
pub fn session_writer_to(format: FileFormat, out: Box<dyn Write + Send>) -> Result<Box<dyn SessionSink>, WriteError> {
    Ok(Box::new(Writer::<SessionRow<'static>>::to_writer(format, out)?))
}

/// A destination for stored events (the server's exports).
pub trait StoredEventSink {
    fn write(&mut self, row: &StoredEventRow<'_>) -> Result<(), WriteError>;
    /// Flushes everything and completes the file.
    fn finish(self: Box<Self>) -> Result<(), WriteError>;
}

/// Writes stored events in `format` to any byte sink (an HTTP response body, say).
pub fn stored_event_writer_to(
    format: FileFormat,
    out: Box<dyn Write + Send>,
) -> Result<Box<dyn StoredEventSink>, WriteError> {
    Ok(Box::new(Writer::<StoredEventRow<'static>>::to_writer(format, out)?))
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    OptStr,
    I64,
    OptI64,
    U64,
    Bool,
    /// A JSON value's text, or null.
    OptJson,
}

/// A row type: its columns and how to visit its values in column order.
trait Row {
    const COLUMNS: &'static [(&'static str, Kind)];
    fn visit<V: Visit>(&self, visitor: &mut V) -> Result<(), WriteError>;
}

/// Receives a row's values, in column order.
trait Visit {
    fn str(&mut self, value: Option<&str>) -> Result<(), WriteError>;
    fn i64(&mut self, value: Option<i64>) -> Result<(), WriteError>;
    fn u64(&mut self, value: u64) -> Result<(), WriteError>;
    fn bool(&mut self, value: bool) -> Result<(), WriteError>;
    /// A JSON value's text: as text unless the format can hold JSON itself.
    fn json(&mut self, value: Option<&str>) -> Result<(), WriteError> {
        self.str(value)
    }
}

impl Row for SessionRow<'_> {
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("user_id", Kind::OptStr),
        ("device_id", Kind::OptStr),
        ("session_id", Kind::I64),
        ("session_uid", Kind::Str),
        ("start_ms", Kind::I64),
        ("end_ms", Kind::I64),
        ("length_ms", Kind::I64),
        ("active_ms", Kind::I64),
        ("event_count", Kind::U64),
        ("end_reason", Kind::Str),
        ("entry_event_type", Kind::Str),
        ("entry_page", Kind::OptStr),
        ("exit_event_type", Kind::Str),
        ("exit_page", Kind::OptStr),
    ];

    fn visit<V: Visit>(&self, v: &mut V) -> Result<(), WriteError> {
        v.str(self.user_id)?;
        v.str(self.device_id)?;
        v.i64(Some(self.session_id))?;
        v.str(Some(self.session_uid))?;
        v.i64(Some(self.start_ms))?;
        v.i64(Some(self.end_ms))?;
        v.i64(Some(self.length_ms))?;
        v.i64(Some(self.active_ms))?;
        v.u64(self.event_count)?;
        v.str(Some(self.end_reason))?;
        v.str(Some(self.entry_event_type))?;
        v.str(self.entry_page)?;
        v.str(Some(self.exit_event_type))?;
        v.str(self.exit_page)
    }
}

const EVENT_COLUMNS: [(&str, Kind); 9] = [
    ("user_id", Kind::OptStr),
    ("device_id", Kind::OptStr),
    ("event_type", Kind::Str),
    ("time_ms", Kind::I64),
    ("insert_id", Kind::OptStr),
    ("page", Kind::OptStr),
    ("passive", Kind::Bool),
    ("session_id", Kind::OptI64),
    ("session_uid", Kind::OptStr),
];

/// The event columns, then what the store keeps besides.
const STORED_EVENT_COLUMNS: [(&str, Kind); 12] = append_columns(
    EVENT_COLUMNS,
    [("platform", Kind::OptStr), ("client_session_id", Kind::OptStr), ("properties", Kind::OptJson)],
);

/// `first` then `second`; `N` must be their total length (checked at compile time).
const fn append_columns<const A: usize, const B: usize, const N: usize>(
    first: [(&'static str, Kind); A],
    second: [(&'static str, Kind); B],
) -> [(&'static str, Kind); N] {
    assert!(A + B == N, "N must be the total number of columns");
    let mut all = [("", Kind::Str); N];
    let mut i = 0;
    while i < N {
        all[i] = if i < A { first[i] } else { second[i - A] };
        i += 1;
    }
    all
}

impl Row for EventRow<'_> {
    const COLUMNS: &'static [(&'static str, Kind)] = &EVENT_COLUMNS;

    fn visit<V: Visit>(&self, v: &mut V) -> Result<(), WriteError> {
        v.str(self.user_id)?;
        v.str(self.device_id)?;
        v.str(Some(self.event_type))?;
        v.i64(Some(self.time_ms))?;
        v.str(self.insert_id)?;
        v.str(self.page)?;
        v.bool(self.passive)?;
        v.i64(self.session_id)?;
        v.str(self.session_uid)
    }
}

impl Row for StoredEventRow<'_> {
    const COLUMNS: &'static [(&'static str, Kind)] = &STORED_EVENT_COLUMNS;

    fn visit<V: Visit>(&self, v: &mut V) -> Result<(), WriteError> {
        self.event.visit(v)?;
        v.str(self.platform)?;
        v.str(self.client_session_id)?;
        v.json(self.properties)
    }
}

/// A writer of one row type in one format.
struct Writer<R> {
    format: Format,
    _row: std::marker::PhantomData<fn(&R)>,
}

enum Format {
    Ndjson(NdjsonOut),
    Csv(Box<CsvOut>),
    #[cfg(feature = "parquet")]
    Parquet(Box<parquet_out::ParquetOut>),
}

impl<R: Row> Writer<R> {
    fn create(path: Option<&Path>) -> Result<Self, WriteError> {
        let format = match path {
            None => Format::Ndjson(NdjsonOut::new(Box::new(std::io::stdout().lock()))),
            Some(path) if path == Path::new("-") => Format::Ndjson(NdjsonOut::new(Box::new(std::io::stdout().lock()))),
            Some(path) => {
                let format =
                    FileFormat::from_path(path).map_err(|_| WriteError::UnknownFormat(path.display().to_string()))?;
                match format {
                    FileFormat::Ndjson => Format::Ndjson(NdjsonOut::new(Box::new(File::create(path)?))),
                    FileFormat::Csv => Format::Csv(Box::new(CsvOut::new(Box::new(File::create(path)?), R::COLUMNS)?)),
                    #[cfg(feature = "parquet")]
                    FileFormat::Parquet => Format::Parquet(Box::new(parquet_out::ParquetOut::new(
                        Box::new(File::create(path)?),
                        R::COLUMNS,
                    )?)),
                    #[cfg(not(feature = "parquet"))]
                    FileFormat::Parquet => {
                        return Err(WriteError::Parquet(
                            "this build has no Parquet support (cargo feature \"parquet\")".to_owned(),
                        ));
                    }
                }
            }
        };
        Ok(Self { format, _row: std::marker::PhantomData })
    }

    fn to_writer(format: FileFormat, out: Box<dyn Write + Send>) -> Result<Self, WriteError> {
        let format = match format {
            FileFormat::Ndjson => Format::Ndjson(NdjsonOut::new(out)),
            FileFormat::Csv => Format::Csv(Box::new(CsvOut::new(out, R::COLUMNS)?).for_spreadsheets()),
            #[cfg(feature = "parquet")]
            FileFormat::Parquet => Format::Parquet(Box::new(parquet_out::ParquetOut::new(out, R::COLUMNS)?)),
            #[cfg(not(feature = "parquet"))]
            FileFormat::Parquet => {
                return Err(WriteError::Parquet(
                    "this build has no Parquet support (cargo feature \"parquet\")".to_owned(),
                ));
            }
        };
        Ok(Self { format, _row: std::marker::PhantomData })
    }

    /// Writes one row of any row type (the sinks' rows borrow for less than `'static`).
    fn write_row<T: Row>(&mut self, row: &T) -> Result<(), WriteError> {
        match &mut self.format {
            Format::Ndjson(out) => out.write_row(row),
            Format::Csv(out) => out.write_row(row),
            #[cfg(feature = "parquet")]
            Format::Parquet(out) => out.write_row(row),
        }
    }

    fn finish_format(self) -> Result<(), WriteError> {
        match self.format {
            Format::Ndjson(out) => out.finish(),
            Format::Csv(out) => out.finish(),
            #[cfg(feature = "parquet")]
            Format::Parquet(out) => out.finish(),
        }
    }
}

impl SessionSink for Writer<SessionRow<'static>> {
    fn write(&mut self, row: &SessionRow<'_>) -> Result<(), WriteError> {
        self.write_row(row)
    }

    fn finish(self: Box<Self>) -> Result<(), WriteError> {
        self.finish_format()
    }
}

impl StoredEventSink for Writer<StoredEventRow<'static>> {
    fn write(&mut self, row: &StoredEventRow<'_>) -> Result<(), WriteError> {
        self.write_row(row)
    }

    fn finish(self: Box<Self>) -> Result<(), WriteError> {
        self.finish_format()
    }
}

impl EventSink for Writer<EventRow<'static>> {
    fn write(&mut self, row: &EventRow<'_>) -> Result<(), WriteError> {
        self.write_row(row)
    }

    fn finish(self: Box<Self>) -> Result<(), WriteError> {
        self.finish_format()
    }
}

/// Bytes buffered before a write to the output.
const FLUSH_BYTES: usize = 64 * 1024;

/// NDJSON: one compact object per line, built in a buffer.
struct NdjsonOut {
    out: Box<dyn Write>,
    buffer: Vec<u8>,
}

impl NdjsonOut {
    fn new(out: Box<dyn Write>) -> Self {
        Self { out, buffer: Vec::with_capacity(FLUSH_BYTES + 4096) }
    }

    fn write_row<R: Row>(&mut self, row: &R) -> Result<(), WriteError> {
        write_json_row(&mut self.buffer, row)?;
        if self.buffer.len() >= FLUSH_BYTES {
            self.out.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), WriteError> {
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        self.out.flush()?;
        Ok(())
    }
}

impl Drop for NdjsonOut {
    /// Best effort for a writer dropped without `finish` (say, on an error
    /// path): rows already accepted are not silently lost.
    fn drop(&mut self) {
        if !self.buffer.is_empty() && self.out.write_all(&self.buffer).is_ok() {
            drop(self.out.flush());
        }
    }
}

/// Appends one row as a line of NDJSON.
fn write_json_row<R: Row>(buffer: &mut Vec<u8>, row: &R) -> Result<(), WriteError> {
    buffer.push(b'{');
    row.visit(&mut JsonVisit { buffer, columns: R::COLUMNS, index: 0 })?;
    buffer.extend_from_slice(b"}\n");
    Ok(())
}

struct JsonVisit<'b> {
    buffer: &'b mut Vec<u8>,
    columns: &'static [(&'static str, Kind)],
    index: usize,
}

impl JsonVisit<'_> {
    /// Writes `"name":` (with a leading comma after the first column).
    #[inline]
    fn key(&mut self) {
        if self.index > 0 {
            self.buffer.push(b',');
        }
        // Column names are plain ASCII identifiers: nothing to escape.
        self.buffer.push(b'"');
        self.buffer.extend_from_slice(self.columns[self.index].0.as_bytes());
        self.buffer.extend_from_slice(b"\":");
        self.index += 1;
    }
}

impl Visit for JsonVisit<'_> {
    #[inline]
    fn str(&mut self, value: Option<&str>) -> Result<(), WriteError> {
        self.key();
        match value {
            // Writing a string into a Vec cannot fail.
            Some(s) => serde_json::to_writer(&mut *self.buffer, s).map_err(std::io::Error::from)?,
            None => self.buffer.extend_from_slice(b"null"),
        }
        Ok(())
    }

    /// Valid JSON is embedded as is (the store only keeps what it parsed);
    /// anything else is written as a string rather than break the line.
    fn json(&mut self, value: Option<&str>) -> Result<(), WriteError> {
        match value {
            Some(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                self.key();
                self.buffer.extend_from_slice(text.as_bytes());
                Ok(())
            }
            other => self.str(other),
        }
    }

    #[inline]
    fn i64(&mut self, value: Option<i64>) -> Result<(), WriteError> {
        self.key();
        match value {
            Some(v) => self.buffer.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            None => self.buffer.extend_from_slice(b"null"),
        }
        Ok(())
    }

    #[inline]
    fn u64(&mut self, value: u64) -> Result<(), WriteError> {
        self.key();
        self.buffer.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        Ok(())
    }

    #[inline]
    fn bool(&mut self, value: bool) -> Result<(), WriteError> {
        self.key();
        self.buffer.extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }
}

/// CSV: a header row of the column names, then one record per row.
struct CsvOut {
    writer: csv::Writer<Box<dyn Write>>,
    /// Downloads (the server's streamed exports) are opened in spreadsheets:
    /// a cell that would run as a formula gets a leading `'` (OWASP's advice).
    /// Files written by the command line keep values exactly.
    neutralize_formulas: bool,
}

fn csv_error(error: csv::Error) -> WriteError {
    match error.into_kind() {
        csv::ErrorKind::Io(e) => WriteError::Io(e),
        other => WriteError::Csv(format!("{other:?}")),
    }
}

impl CsvOut {
    fn new(out: Box<dyn Write>, columns: &[(&str, Kind)]) -> Result<Self, WriteError> {
        let mut writer = csv::WriterBuilder::new().buffer_capacity(FLUSH_BYTES).from_writer(out);
        writer.write_record(columns.iter().map(|(name, _)| name)).map_err(csv_error)?;
        Ok(Self { writer, neutralize_formulas: false })
    }

    fn for_spreadsheets(mut self: Box<Self>) -> Box<Self> {
        self.neutralize_formulas = true;
        self
    }

    fn write_row<R: Row>(&mut self, row: &R) -> Result<(), WriteError> {
        if self.neutralize_formulas {
            row.visit(&mut SpreadsheetCsvVisit(&mut self.writer))?;
            return self.writer.write_record(std::iter::empty::<&[u8]>()).map_err(csv_error);
        }
        write_csv_row(&mut self.writer, row)
    }

    fn finish(mut self) -> Result<(), WriteError> {
        self.writer.flush()?;
        Ok(())
    }
}

/// Appends one record to a CSV writer.
fn write_csv_row<W: Write, R: Row>(writer: &mut csv::Writer<W>, row: &R) -> Result<(), WriteError> {
    row.visit(&mut CsvVisit(writer))?;
    writer.write_record(std::iter::empty::<&[u8]>()).map_err(csv_error)
}

struct CsvVisit<'w, W: Write>(&'w mut csv::Writer<W>);

/// [`CsvVisit`] for downloads: text that a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, tab or carriage return) gets a leading `'`.
struct SpreadsheetCsvVisit<'w, W: Write>(&'w mut csv::Writer<W>);

impl<W: Write> Visit for SpreadsheetCsvVisit<'_, W> {
    fn str(&mut self, value: Option<&str>) -> Result<(), WriteError> {
        match value {
            Some(text) if text.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                self.0.write_field(format!("'{text}")).map_err(csv_error)
            }
            other => CsvVisit(&mut *self.0).str(other),
        }
    }

    fn i64(&mut self, value: Option<i64>) -> Result<(), WriteError> {
        CsvVisit(&mut *self.0).i64(value)
    }

    fn u64(&mut self, value: u64) -> Result<(), WriteError> {
        CsvVisit(&mut *self.0).u64(value)
    }

    fn bool(&mut self, value: bool) -> Result<(), WriteError> {
        CsvVisit(&mut *self.0).bool(value)
    }
}

impl<W: Write> Visit for CsvVisit<'_, W> {
    #[inline]
    fn str(&mut self, value: Option<&str>) -> Result<(), WriteError> {
        self.0.write_field(value.unwrap_or("")).map_err(csv_error)
    }

    #[inline]
    fn i64(&mut self, value: Option<i64>) -> Result<(), WriteError> {
        match value {
            Some(v) => self.0.write_field(itoa::Buffer::new().format(v)),
            None => self.0.write_field(""),
        }
        .map_err(csv_error)
    }

    #[inline]
    fn u64(&mut self, value: u64) -> Result<(), WriteError> {
        self.0.write_field(itoa::Buffer::new().format(value)).map_err(csv_error)
    }

    #[inline]
    fn bool(&mut self, value: bool) -> Result<(), WriteError> {
        self.0.write_field(if value { "true" } else { "false" }).map_err(csv_error)
    }
}

#[cfg(feature = "parquet")]
mod parquet_out {
    //! Parquet through arrow builders; a row group every [`ROW_GROUP_ROWS`].

    use std::io::Write;
    use std::sync::Arc;

    use arrow_array::builder::{BooleanBuilder, Int64Builder, StringBuilder, UInt64Builder};
    use arrow_array::{ArrayRef, RecordBatch};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Encoding;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;

    use super::{Kind, Row, Visit, WriteError};

    /// Rows per row group: large enough for good compression, small enough to
    /// keep the builders' memory modest.
    pub(super) const ROW_GROUP_ROWS: usize = 128 * 1024;

    /// Columns whose values repeat across rows, worth dictionary encoding.
    const REPEATING_COLUMNS: [&str; 9] = [
        "user_id",
        "device_id",
        "event_type",
        "page",
        "end_reason",
        "entry_event_type",
        "entry_page",
        "exit_event_type",
        "exit_page",
    ];

    enum Builder {
        Str(StringBuilder),
        I64(Int64Builder),
        U64(UInt64Builder),
        Bool(BooleanBuilder),
    }

    pub(super) struct ParquetOut {
        writer: ArrowWriter<Box<dyn Write + Send>>,
        schema: SchemaRef,
        builders: Builders,
        rows: usize,
    }

    /// One Arrow builder per column: rows go in one at a time (each row is
    /// visited once, while it is in cache), arrays come out.
    pub(super) struct Builders(Vec<Builder>);

    impl Builders {
        pub(super) fn new(columns: &[(&str, Kind)]) -> Self {
            Self(
                columns
                    .iter()
                    .map(|&(_, kind)| match kind {
                        Kind::Str | Kind::OptStr | Kind::OptJson => Builder::Str(StringBuilder::new()),
                        Kind::I64 | Kind::OptI64 => Builder::I64(Int64Builder::new()),
                        Kind::U64 => Builder::U64(UInt64Builder::new()),
                        Kind::Bool => Builder::Bool(BooleanBuilder::new()),
                    })
                    .collect(),
            )
        }

        #[inline]
        pub(super) fn push<R: Row>(&mut self, row: &R) -> Result<(), WriteError> {
            row.visit(&mut ParquetVisit { builders: &mut self.0, index: 0 })
        }

        /// The arrays of the rows pushed since the last call, in column order.
        pub(super) fn finish(&mut self) -> Vec<ArrayRef> {
            self.0
                .iter_mut()
                .map(|builder| -> ArrayRef {
                    match builder {
                        Builder::Str(b) => Arc::new(b.finish()),
                        Builder::I64(b) => Arc::new(b.finish()),
                        Builder::U64(b) => Arc::new(b.finish()),
                        Builder::Bool(b) => Arc::new(b.finish()),
                    }
                })
                .collect()
        }
    }

    pub(super) fn parquet_error(error: impl std::fmt::Display) -> WriteError {
        WriteError::Parquet(error.to_string())
    }

    /// The Arrow schema of `columns` and how to encode them: zstd, and
    /// dictionary encoding only where values repeat (on unique columns, ids
    /// and times, the writer would build a dictionary and throw it away).
    pub(super) fn schema_and_properties(columns: &[(&str, Kind)]) -> (SchemaRef, WriterProperties) {
        let fields: Vec<Field> = columns
            .iter()
            .map(|&(name, kind)| {
                let (data_type, nullable) = match kind {
                    Kind::Str => (DataType::Utf8, false),
                    Kind::OptStr | Kind::OptJson => (DataType::Utf8, true),
                    Kind::I64 => (DataType::Int64, false),
                    Kind::OptI64 => (DataType::Int64, true),
                    Kind::U64 => (DataType::UInt64, false),
                    Kind::Bool => (DataType::Boolean, false),
                };
                Field::new(name, data_type, nullable)
            })
            .collect();
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_size(ROW_GROUP_ROWS)
            .set_dictionary_enabled(false);
        for &(name, kind) in columns {
            if REPEATING_COLUMNS.contains(&name) {
                properties = properties.set_column_dictionary_enabled(ColumnPath::from(name), true);
            } else if matches!(kind, Kind::I64 | Kind::OptI64 | Kind::U64) {
                // Times and counts as bit-packed deltas, uncompressed: in all
                // about the size zstd made of the plain values (smaller for
                // starts and ends, larger for counts), and zstd finds nothing
                // more in them. Measured on the 10M-event benchmark.
                properties = properties
                    .set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BINARY_PACKED)
                    .set_column_compression(ColumnPath::from(name), Compression::UNCOMPRESSED);
            } else if name.ends_with("session_uid") {
                // UUIDv7 text led by the start: neighbours share a prefix.
                properties = properties.set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BYTE_ARRAY);
            }
        }
        (Arc::new(Schema::new(fields)), properties.build())
    }

    impl ParquetOut {
        pub(super) fn new(file: Box<dyn Write + Send>, columns: &[(&str, Kind)]) -> Result<Self, WriteError> {
            let (schema, properties) = schema_and_properties(columns);
            let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties)).map_err(parquet_error)?;
            Ok(Self { writer, schema, builders: Builders::new(columns), rows: 0 })
        }

        pub(super) fn write_row<R: Row>(&mut self, row: &R) -> Result<(), WriteError> {
            self.builders.push(row)?;
            self.rows += 1;
            if self.rows >= ROW_GROUP_ROWS {
                self.flush()?;
            }
            Ok(())
        }

        /// Writes the buffered rows as one row group.
        fn flush(&mut self) -> Result<(), WriteError> {
            if self.rows == 0 {
                return Ok(());
            }
            let arrays = self.builders.finish();
            let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(parquet_error)?;
            self.writer.write(&batch).map_err(parquet_error)?;
            self.writer.flush().map_err(parquet_error)?;
            self.rows = 0;
            Ok(())
        }

        pub(super) fn finish(mut self) -> Result<(), WriteError> {
            self.flush()?;
            let mut out = self.writer.into_inner().map_err(parquet_error)?;
            out.flush()?;
            Ok(())
        }
    }

    struct ParquetVisit<'b> {
        builders: &'b mut [Builder],
        index: usize,
    }

    impl ParquetVisit<'_> {
        #[inline]
        fn next(&mut self) -> &mut Builder {
            self.index += 1;
            &mut self.builders[self.index - 1]
        }
    }

    impl Visit for ParquetVisit<'_> {
        #[inline]
        fn str(&mut self, value: Option<&str>) -> Result<(), WriteError> {
            if let Builder::Str(b) = self.next() {
                b.append_option(value);
            }
            Ok(())
        }

        #[inline]
        fn i64(&mut self, value: Option<i64>) -> Result<(), WriteError> {
            if let Builder::I64(b) = self.next() {
                b.append_option(value);
            }
            Ok(())
        }

        #[inline]
        fn u64(&mut self, value: u64) -> Result<(), WriteError> {
            if let Builder::U64(b) = self.next() {
                b.append_value(value);
            }
            Ok(())
        }

        #[inline]
        fn bool(&mut self, value: bool) -> Result<(), WriteError> {
            if let Builder::Bool(b) = self.next() {
                b.append_value(value);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
