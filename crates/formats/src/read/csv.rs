//! CSV with a header row; columns are found by header name.
//!
//! Records are split by `csv-core` (the state machine under the `csv` crate)
//! driven directly, so that a record's memory is bounded while it is read: a
//! record over [`MAX_LINE_BYTES`] is consumed without being kept and reported
//! as a row error. Quoting, `""` escapes, CRLF and a UTF-8 BOM are handled as
//! by the `csv` crate; blank lines are skipped.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use super::{
    FieldNames, ParsedBlock, ReadOptions, Skips, check_len, missing_user, optional_str, parse_blocks,
    required_event_type,
};
use crate::columns::{EventChunk, EventRef};
use crate::error::{ReadError, ReadErrorKind};
use crate::limits::{CHUNK_BYTES, CHUNK_ROWS, MAX_LINE_BYTES};
use crate::time::parse_event_time;

const BUFFER_BYTES: usize = 256 * 1024;

/// Unescaped bytes of records in one block for a worker thread: with
/// [`MAX_THREADS`], bounds the memory of blocks in flight to 256 MiB.
const BLOCK_BYTES: usize = 16 * 1024 * 1024;

/// The most parsing threads; more would not help and would cost memory.
const MAX_THREADS: usize = 16;

/// Blocks the splitter thread may have ready before the converting threads
/// take them: with [`BLOCK_BYTES`], bounds that memory to 32 MiB.
const SPLIT_AHEAD_BLOCKS: usize = 2;

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
#[derive(Debug, Clone, Copy)]
struct Record {
    line: u64,
    too_long: bool,
    fields: usize,
}

/// A record's unescaped bytes and the end of each field in them.
#[derive(Clone, Copy)]
struct RecordFields<'a> {
    bytes: &'a [u8],
    ends: &'a [usize],
}

impl<'a> RecordFields<'a> {
    /// The bytes of field `i`.
    #[inline]
    fn field(self, i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// What converting a record needs besides the record.
#[derive(Clone, Copy)]
struct Layout<'a> {
    columns: Columns,
    header_fields: usize,
    fields: &'a FieldNames,
}

/// Records split off the input for a worker thread, in order.
#[derive(Debug, Default)]
struct Block {
    /// Every record's unescaped bytes, one after the other.
    bytes: Vec<u8>,
    /// Every record's field ends, each relative to its record's start.
    ends: Vec<usize>,
    /// Each record with where its bytes and field ends end.
    records: Vec<(Record, usize, usize)>,
}

impl Block {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.records.clear();
    }

    fn push(&mut self, record: Record, fields: RecordFields<'_>) {
        if !record.too_long {
            self.bytes.extend_from_slice(&fields.bytes[..fields.ends.last().copied().unwrap_or(0)]);
            self.ends.extend_from_slice(fields.ends);
        }
        self.records.push((record, self.bytes.len(), self.ends.len()));
    }

    fn is_full(&self) -> bool {
        // Each column of the resulting chunk holds at most the block's bytes.
        self.records.len() >= CHUNK_ROWS || self.bytes.len() >= BLOCK_BYTES
    }

    /// Converts the block into a chunk and its bad rows (in line order).
    /// Without `skip_invalid`, stops at the first bad row.
    fn parse(&self, layout: Layout<'_>, skip_invalid: bool) -> ParsedBlock {
        let mut chunk = EventChunk::with_capacity(self.records.len());
        let mut errors = Vec::new();
        let (mut bytes_start, mut ends_start) = (0, 0);
        for &(record, bytes_end, ends_end) in &self.records {
            let fields =
                RecordFields { bytes: &self.bytes[bytes_start..bytes_end], ends: &self.ends[ends_start..ends_end] };
            (bytes_start, ends_start) = (bytes_end, ends_end);
            if let Err(kind) = push_record(record, fields, layout, &mut chunk) {
                errors.push((record.line, kind));
                if !skip_invalid {
                    break;
                }
            }
        }
        (chunk, errors)
    }
}

/// Splits the input into records with csv-core: on the caller's thread, or
/// on a splitter thread of its own when several threads convert records.
struct RecordSource {
    input: BufReader<Box<dyn Read + Send>>,
    core: csv_core::Reader,
    /// Unescaped bytes of the current record and the end of each field.
    out: Vec<u8>,
    ends: Vec<usize>,
    /// Shared with the reader, which reports it while a splitter thread runs.
    bytes_read: Arc<AtomicU64>,
}

pub(crate) struct CsvReader {
    /// `None` once a splitter thread owns it.
    source: Option<RecordSource>,
    path: String,
    fields: FieldNames,
    skips: Skips,
    /// `None` for an empty file (no header, no rows).
    columns: Option<Columns>,
    header_fields: usize,
    bytes_read: Arc<AtomicU64>,
    total_bytes: Option<u64>,
    at_end: bool,
    threads: usize,
    /// Blocks from the splitter thread, once it runs (see [`CsvReader::read_blocks`]).
    split: Option<Receiver<std::io::Result<Block>>>,
    /// Parsed chunks not handed out yet.
    ready: VecDeque<EventChunk>,
}

impl fmt::Debug for CsvReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvReader").field("path", &self.path).field("columns", &self.columns).finish()
    }
}

impl RecordSource {
    /// The last record read, of `fields` fields.
    fn record_fields(&self, fields: usize) -> RecordFields<'_> {
        RecordFields { bytes: &self.out, ends: &self.ends[..fields.min(self.ends.len())] }
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
            self.bytes_read.fetch_add(blank as u64, Ordering::Relaxed);
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
            self.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
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

    /// Fills `block` with the next records until it is full; `false` at the end.
    fn fill(&mut self, block: &mut Block) -> std::io::Result<bool> {
        block.clear();
        while !block.is_full() {
            match self.read_record()? {
                Some(record) => block.push(record, self.record_fields(record.fields)),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The splitter thread: blocks in file order into `blocks` until the
    /// input ends, reading fails or the reader is dropped.
    fn split_into(mut self, blocks: &SyncSender<std::io::Result<Block>>) {
        loop {
            let mut block = Block::default();
            let more = match self.fill(&mut block) {
                Ok(more) => more,
                Err(error) => {
                    // The reader reports the error, unless it is gone already
                    // (then nobody is left to tell).
                    blocks.send(Err(error)).ok();
                    return;
                }
            };
            let dropped = !block.records.is_empty() && blocks.send(Ok(block)).is_err();
            if dropped || !more {
                return;
            }
        }
    }
}

fn io_error(path: &str, error: std::io::Error) -> ReadError {
    ReadError { path: path.to_owned(), line: None, kind: error.into() }
}

impl CsvReader {
    /// Reads the header and finds the configured columns in it.
    pub(crate) fn new(
        input: Box<dyn Read + Send>,
        path: String,
        total_bytes: Option<u64>,
        options: &ReadOptions,
    ) -> Result<Self, ReadError> {
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut source = RecordSource {
            input: BufReader::with_capacity(BUFFER_BYTES, input),
            core: csv_core::Reader::new(),
            out: vec![0; 4096],
            ends: vec![0; 64],
            bytes_read: bytes_read.clone(),
        };
        let fail = |path: &str, kind| ReadError { path: path.to_owned(), line: Some(1), kind };
        let header = source.read_record().map_err(|error| io_error(&path, error))?;
        let mut reader = Self {
            source: None,
            path,
            fields: options.fields.clone(),
            skips: Skips::new(options.skip_invalid),
            columns: None,
            header_fields: 0,
            bytes_read,
            total_bytes,
            at_end: header.is_none(),
            threads: options.threads.clamp(1, MAX_THREADS),
            split: None,
            ready: VecDeque::new(),
        };
        let Some(header) = header else {
            return Ok(reader);
        };
        if header.too_long {
            return Err(fail(&reader.path, ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES }));
        }
        reader.header_fields = header.fields;
        let header_fields = source.record_fields(header.fields);
        let names: Vec<&[u8]> = (0..header.fields).map(|i| header_fields.field(i)).collect();
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
        reader.source = Some(source);
        Ok(reader)
    }

    /// Takes up to one block per converting thread from the splitter thread
    /// (starting it the first time), converts them in parallel and queues
    /// the chunks in order. The splitter runs ahead by at most
    /// `SPLIT_AHEAD_BLOCKS`, so csv-core's work overlaps the conversions.
    fn read_blocks(&mut self, columns: Columns) -> Result<(), ReadError> {
        if self.split.is_none() {
            let Some(source) = self.source.take() else {
                self.at_end = true;
                return Ok(());
            };
            let (sender, receiver) = std::sync::mpsc::sync_channel(SPLIT_AHEAD_BLOCKS);
            std::thread::Builder::new()
                .name("csv-split".to_owned())
                .spawn(move || source.split_into(&sender))
                .map_err(|error| io_error(&self.path, error))?;
            self.split = Some(receiver);
        }
        let split = self.split.as_ref().expect("started above");
        // The splitter keeps a core busy: convert on the others.
        let mut blocks = Vec::with_capacity(self.threads);
        while blocks.len() < (self.threads - 1).max(1) {
            let next = if blocks.is_empty() { split.recv().ok() } else { split.try_recv().ok() };
            match next {
                Some(Ok(block)) => blocks.push(block),
                Some(Err(error)) => return Err(io_error(&self.path, error)),
                None if blocks.is_empty() => {
                    self.at_end = true;
                    return Ok(());
                }
                None => break,
            }
        }
        let layout = Layout { columns, header_fields: self.header_fields, fields: &self.fields };
        let skip_invalid = self.skips.skip_invalid;
        let parse = |block: &Block| block.parse(layout, skip_invalid);
        parse_blocks(&blocks, parse, &self.path, &mut self.skips, &mut self.ready)
    }
}

/// Validates a record and appends it to `chunk`.
fn push_record(
    record: Record,
    fields: RecordFields<'_>,
    layout: Layout<'_>,
    chunk: &mut EventChunk,
) -> Result<(), ReadErrorKind> {
    if record.too_long {
        return Err(ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES });
    }
    if record.fields != layout.header_fields {
        return Err(ReadErrorKind::Csv(format!(
            "the record has {} fields but the header has {}",
            record.fields, layout.header_fields
        )));
    }
    let text = |column: Option<usize>| -> Result<Option<&str>, ReadErrorKind> {
        match column {
            Some(i) => std::str::from_utf8(fields.field(i)).map(Some).map_err(|_| ReadErrorKind::InvalidUtf8),
            None => Ok(None),
        }
    };
    let (f, columns) = (layout.fields, layout.columns);
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
        if self.threads > 1 {
            while self.ready.is_empty() && !self.at_end {
                self.read_blocks(columns)?;
            }
            return Ok(self.ready.pop_front());
        }
        let mut chunk = EventChunk::with_capacity(CHUNK_ROWS);
        let layout = Layout { columns, header_fields: self.header_fields, fields: &self.fields };
        let Some(source) = self.source.as_mut() else {
            return Ok(None);
        };
        while !self.at_end && chunk.len() < CHUNK_ROWS && chunk.max_column_bytes() < CHUNK_BYTES {
            let Some(record) = source.read_record().map_err(|error| io_error(&self.path, error))? else {
                self.at_end = true;
                break;
            };
            if let Err(kind) = push_record(record, source.record_fields(record.fields), layout, &mut chunk) {
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
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }
}
