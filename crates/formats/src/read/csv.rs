//! CSV with a header row; columns are found by header name.
//!
//! Records are split by `csv-core` (the state machine under the `csv` crate)
//! driven directly, so that a record's memory is bounded while it is read: a
//! record over [`MAX_LINE_BYTES`] is consumed without being kept and reported
//! as a row error. Quoting, `""` escapes, CRLF and a UTF-8 BOM are handled as
//! by the `csv` crate; blank lines are skipped.

use std::fmt;
use std::io::{BufRead, BufReader, Read};

use super::{FieldNames, ReadOptions, Skips, check_len, missing_user, optional_str, required_event_type};
use crate::columns::{EventChunk, EventRef};
use crate::error::{ReadError, ReadErrorKind};
use crate::limits::{CHUNK_BYTES, CHUNK_ROWS, MAX_LINE_BYTES};
use crate::time::parse_event_time;

const BUFFER_BYTES: usize = 256 * 1024;

/// Column indexes of the configured fields in the header.
#[derive(Debug, Clone, Copy)]
struct Columns {
    user_id: Option<usize>,
    device_id: Option<usize>,
    event_type: usize,
    time: usize,
    insert_id: Option<usize>,
    page: Option<usize>,
    passive: Option<usize>,
}

/// One record's fields as split by csv-core, plus where it started.
struct Record {
    line: u64,
    too_long: bool,
    fields: usize,
}

pub(crate) struct CsvReader {
    input: BufReader<Box<dyn Read + Send>>,
    core: csv_core::Reader,
    path: String,
    fields: FieldNames,
    skips: Skips,
    /// `None` for an empty file (no header, no rows).
    columns: Option<Columns>,
    header_fields: usize,
    /// Unescaped bytes of the current record and the end of each field.
    out: Vec<u8>,
    ends: Vec<usize>,
    bytes_read: u64,
    total_bytes: Option<u64>,
    at_end: bool,
}

impl fmt::Debug for CsvReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvReader").field("path", &self.path).field("columns", &self.columns).finish()
    }
}

impl CsvReader {
    /// Reads the header and finds the configured columns in it.
    pub(crate) fn new(
        input: Box<dyn Read + Send>,
        path: String,
        total_bytes: Option<u64>,
        options: &ReadOptions,
    ) -> Result<Self, ReadError> {
        let mut reader = Self {
            input: BufReader::with_capacity(BUFFER_BYTES, input),
            core: csv_core::Reader::new(),
            path,
            fields: options.fields.clone(),
            skips: Skips::new(options.skip_invalid),
            columns: None,
            header_fields: 0,
            out: vec![0; 4096],
            ends: vec![0; 64],
            bytes_read: 0,
            total_bytes,
            at_end: false,
        };
        let fail = |path: &str, kind| ReadError { path: path.to_owned(), line: Some(1), kind };
        let Some(header) = reader.read_record().map_err(|e| reader.io_error(e))? else {
            reader.at_end = true;
            return Ok(reader);
        };
        if header.too_long {
            return Err(fail(&reader.path, ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES }));
        }
        reader.header_fields = header.fields;
        let names: Vec<&[u8]> = (0..header.fields).map(|i| reader.field(i)).collect();
        let find = |name: &str| -> Result<Option<usize>, ReadErrorKind> {
            let mut found = names.iter().enumerate().filter(|(_, n)| **n == name.as_bytes()).map(|(i, _)| i);
            let first = found.next();
            if found.next().is_some() {
                return Err(ReadErrorKind::DuplicateColumn(name.to_owned()));
            }
            Ok(first)
        };
        let names_of = &reader.fields;
        let columns = (|| {
            let required = |name: &str| find(name)?.ok_or_else(|| ReadErrorKind::MissingColumn(name.to_owned()));
            let columns = Columns {
                user_id: find(&names_of.user_id)?,
                device_id: find(&names_of.device_id)?,
                event_type: required(&names_of.event_type)?,
                time: required(&names_of.time)?,
                insert_id: find(&names_of.insert_id)?,
                page: find(&names_of.page)?,
                passive: find(&names_of.passive)?,
            };
            if columns.user_id.is_none() && columns.device_id.is_none() {
                return Err(ReadErrorKind::MissingUserColumn {
                    user_id: names_of.user_id.clone(),
                    device_id: names_of.device_id.clone(),
                });
            }
            Ok(columns)
        })()
        .map_err(|kind| fail(&reader.path, kind))?;
        reader.columns = Some(columns);
        Ok(reader)
    }

    fn io_error(&self, error: std::io::Error) -> ReadError {
        ReadError { path: self.path.clone(), line: None, kind: error.into() }
    }

    /// The bytes of field `i` of the last record read.
    #[inline]
    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// Reads the next record into `out`/`ends`; `None` at the end.
    fn read_record(&mut self) -> std::io::Result<Option<Record>> {
        use csv_core::ReadRecordResult;

        // Skip blank lines ourselves, so that the record's line is exact.
        loop {
            let buffer = self.input.fill_buf()?;
            let blank = buffer.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
            let newlines = buffer[..blank].iter().filter(|&&b| b == b'\n').count();
            let exhausted = blank == buffer.len() && blank > 0;
            self.input.consume(blank);
            self.bytes_read += blank as u64;
            self.core.set_line(self.core.line() + newlines as u64);
            if !exhausted {
                break;
            }
        }
        let line = self.core.line();
        let (mut out_len, mut ends_len, mut record_bytes, mut too_long) = (0, 0, 0, false);
        loop {
            let buffer = self.input.fill_buf()?;
            let (result, read, written, ended) =
                self.core.read_record(buffer, &mut self.out[out_len..], &mut self.ends[ends_len..]);
            self.input.consume(read);
            self.bytes_read += read as u64;
            record_bytes += read;
            out_len += written;
            ends_len += ended;
            // Allow for a CRLF terminator before calling the record too long.
            if record_bytes > MAX_LINE_BYTES + 2 {
                too_long = true;
            }
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull if too_long => out_len = 0,
                ReadRecordResult::OutputFull => self.out.resize(self.out.len() * 2, 0),
                ReadRecordResult::OutputEndsFull if too_long => ends_len = 0,
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    if too_long {
                        // Do not keep buffers grown for a rejected record.
                        self.out.truncate(4096);
                        self.out.shrink_to_fit();
                    }
                    return Ok(Some(Record { line, too_long, fields: ends_len }));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// Validates the last record read and appends it to `chunk`.
    fn push_record(&self, record: &Record, columns: &Columns, chunk: &mut EventChunk) -> Result<(), ReadErrorKind> {
        if record.too_long {
            return Err(ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES });
        }
        if record.fields != self.header_fields {
            return Err(ReadErrorKind::Csv(format!(
                "the record has {} fields but the header has {}",
                record.fields, self.header_fields
            )));
        }
        let text = |column: Option<usize>| -> Result<Option<&str>, ReadErrorKind> {
            match column {
                Some(i) => std::str::from_utf8(self.field(i)).map(Some).map_err(|_| ReadErrorKind::InvalidUtf8),
                None => Ok(None),
            }
        };
        let f = &self.fields;
        let user_id = optional_str(&f.user_id, text(columns.user_id)?)?;
        let device_id = optional_str(&f.device_id, text(columns.device_id)?)?;
        if user_id.is_none() && device_id.is_none() {
            return Err(missing_user(f));
        }
        let event_type = required_event_type(&f.event_type, text(Some(columns.event_type))?)?;
        let time = text(Some(columns.time))?.unwrap_or_default();
        if time.trim().is_empty() {
            return Err(ReadErrorKind::MissingField(f.time.clone()));
        }
        check_len(&f.time, time)?;
        let time_ms = parse_event_time(time).map_err(ReadErrorKind::InvalidTime)?;
        let insert_id = optional_str(&f.insert_id, text(columns.insert_id)?)?;
        let page = optional_str(&f.page, text(columns.page)?)?;
        let passive = match text(columns.passive)? {
            None => false,
            Some(v) => parse_bool(v).ok_or_else(|| ReadErrorKind::WrongType {
                field: f.passive.clone(),
                expected: "true, false, 1, 0 or empty",
            })?,
        };
        chunk.push_event(EventRef { user_id, device_id, event_type, time_ms, insert_id, page, passive }, record.line);
        Ok(())
    }
}

/// A CSV boolean: `true`/`false`/`1`/`0` in any case, empty for `false`.
fn parse_bool(value: &str) -> Option<bool> {
    let value = value.trim();
    if value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false") {
        Some(false)
    } else if value == "1" || value.eq_ignore_ascii_case("true") {
        Some(true)
    } else {
        None
    }
}

impl super::EventReader for CsvReader {
    fn next_chunk(&mut self) -> Result<Option<EventChunk>, ReadError> {
        let Some(columns) = self.columns else {
            return Ok(None);
        };
        let mut chunk = EventChunk::with_capacity(CHUNK_ROWS);
        while !self.at_end && chunk.len() < CHUNK_ROWS && chunk.max_column_bytes() < CHUNK_BYTES {
            let Some(record) = self.read_record().map_err(|e| self.io_error(e))? else {
                self.at_end = true;
                break;
            };
            if let Err(kind) = self.push_record(&record, &columns, &mut chunk) {
                self.skips.absorb(ReadError { path: self.path.clone(), line: Some(record.line), kind })?;
            }
        }
        Ok(if chunk.is_empty() { None } else { Some(chunk) })
    }

    fn skipped_rows(&self) -> u64 {
        self.skips.skipped
    }

    fn first_skipped_error(&self) -> Option<&ReadError> {
        self.skips.first.as_ref()
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }
}
