//! NDJSON: one JSON object per line.
//!
//! Lines are parsed with a serde visitor over the object's keys that captures
//! only the configured fields (borrowing strings without escapes) and skips
//! everything else with `IgnoredAny`: no `serde_json::Value`, no map per line.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    FieldNames, ParsedBlock, ReadOptions, Skips, check_len, missing_user, optional_str, parse_blocks,
    required_event_type,
};
use crate::columns::EventChunk;
use crate::error::{ReadError, ReadErrorKind};
use crate::limits::{CHUNK_BYTES, CHUNK_ROWS, MAX_LINE_BYTES};
use crate::time::{parse_event_time, parse_event_time_int, parse_event_time_number, parse_event_time_u64};

/// One validated event parsed from an NDJSON line, borrowing from the line
/// where it can (strings with escapes and integer ids are owned).
///
/// Optional strings are `None` when absent, `null` or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent<'a> {
    pub user_id: Option<Cow<'a, str>>,
    pub device_id: Option<Cow<'a, str>>,
    pub event_type: Cow<'a, str>,
    /// Milliseconds since the Unix epoch, UTC.
    pub time_ms: i64,
    pub insert_id: Option<Cow<'a, str>>,
    pub page: Option<Cow<'a, str>>,
    pub passive: bool,
}

/// Parses and validates one NDJSON line (without its newline) against the
/// row semantics of the crate (see the `read` module docs).
pub fn parse_ndjson_line<'a>(line: &'a str, fields: &FieldNames) -> Result<ParsedEvent<'a>, ReadErrorKind> {
    let raw = parse_raw(line, fields)?;
    let id = |id: Option<Id<'a>>| {
        id.map(|id| match id {
            Id::Str(s) => s,
            Id::Int(i) => Cow::Owned(i.to_string()),
            Id::UInt(u) => Cow::Owned(u.to_string()),
        })
    };
    Ok(ParsedEvent {
        user_id: id(raw.user_id),
        device_id: id(raw.device_id),
        event_type: raw.event_type,
        time_ms: raw.time_ms,
        insert_id: id(raw.insert_id),
        page: raw.page,
        passive: raw.passive,
    })
}

/// An id as found in the line: a string or an integer, rendered later.
#[derive(Debug)]
enum Id<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
}

impl Id<'_> {
    fn push_to(&self, column: &mut crate::StrColumn) {
        match self {
            Id::Str(s) => column.push(Some(s)),
            Id::Int(i) => column.push_int(*i),
            Id::UInt(u) => column.push_int(*u),
        }
    }
}

/// A validated event whose integer ids are not rendered yet.
#[derive(Debug)]
struct RawEvent<'a> {
    user_id: Option<Id<'a>>,
    device_id: Option<Id<'a>>,
    event_type: Cow<'a, str>,
    time_ms: i64,
    insert_id: Option<Id<'a>>,
    page: Option<Cow<'a, str>>,
    passive: bool,
}

/// Which captured field a key is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    UserId = 0,
    DeviceId = 1,
    EventType = 2,
    Time = 3,
    InsertId = 4,
    Page = 5,
    Passive = 6,
}

const SLOTS: usize = 7;

/// A JSON value of a captured field. Containers are skipped, keeping only
/// what they were, for the error message.
#[derive(Debug)]
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Container,
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Container)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Container)
    }
}

/// Matches a key against the configured field names.
struct KeySeed<'f>(&'f FieldNames);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<Slot>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<Slot>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    #[inline]
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let f = self.0;
        Ok(if key == f.user_id {
            Some(Slot::UserId)
        } else if key == f.event_type {
            Some(Slot::EventType)
        } else if key == f.time {
            Some(Slot::Time)
        } else if key == f.insert_id {
            Some(Slot::InsertId)
        } else if key == f.device_id {
            Some(Slot::DeviceId)
        } else if key == f.page {
            Some(Slot::Page)
        } else if key == f.passive {
            Some(Slot::Passive)
        } else {
            None
        })
    }
}

/// The captured values of one object, before validation.
#[derive(Debug, Default)]
struct Captured<'de> {
    values: [Option<Scalar<'de>>; SLOTS],
    duplicate: Option<Slot>,
}

struct ObjectSeed<'f>(&'f FieldNames);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Captured<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Captured<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut captured = Captured::default();
        while let Some(slot) = map.next_key_seed(KeySeed(self.0))? {
            match slot {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(slot) => {
                    let value = map.next_value::<Scalar<'de>>()?;
                    let entry = &mut captured.values[slot as usize];
                    if entry.is_some() {
                        // Keep parsing: a syntax error later in the line wins.
                        captured.duplicate.get_or_insert(slot);
                    } else {
                        *entry = Some(value);
                    }
                }
            }
        }
        Ok(captured)
    }
}

fn field_name(fields: &FieldNames, slot: Slot) -> &str {
    match slot {
        Slot::UserId => &fields.user_id,
        Slot::DeviceId => &fields.device_id,
        Slot::EventType => &fields.event_type,
        Slot::Time => &fields.time,
        Slot::InsertId => &fields.insert_id,
        Slot::Page => &fields.page,
        Slot::Passive => &fields.passive,
    }
}

fn parse_raw<'a>(line: &'a str, fields: &FieldNames) -> Result<RawEvent<'a>, ReadErrorKind> {
    let mut deserializer = serde_json::Deserializer::from_str(line);
    let captured = ObjectSeed(fields)
        .deserialize(&mut deserializer)
        .and_then(|captured| deserializer.end().map(|()| captured))
        .map_err(|e| json_error(line, e))?;
    if let Some(slot) = captured.duplicate {
        return Err(ReadErrorKind::DuplicateField(field_name(fields, slot).to_owned()));
    }
    validate(captured, fields)
}

/// Turns a serde_json error into `NotAnObject` (valid JSON, wrong shape) or
/// `InvalidJson`.
#[cold]
fn json_error(line: &str, error: serde_json::Error) -> ReadErrorKind {
    let starts_with_brace = line.trim_start().starts_with('{');
    if !starts_with_brace && serde_json::from_str::<IgnoredAny>(line).is_ok() {
        ReadErrorKind::NotAnObject
    } else {
        ReadErrorKind::InvalidJson(error.to_string())
    }
}

fn validate<'a>(captured: Captured<'a>, fields: &FieldNames) -> Result<RawEvent<'a>, ReadErrorKind> {
    let [user_id, device_id, event_type, time, insert_id, page, passive] = captured.values;
    let user_id = id_field(&fields.user_id, user_id)?;
    let device_id = id_field(&fields.device_id, device_id)?;
    if user_id.is_none() && device_id.is_none() {
        return Err(missing_user(fields));
    }
    let event_type = match event_type {
        Some(Scalar::Str(s)) => {
            required_event_type(&fields.event_type, Some(&s))?;
            s
        }
        None | Some(Scalar::Null) => return Err(ReadErrorKind::MissingField(fields.event_type.clone())),
        Some(_) => return Err(wrong_type(&fields.event_type, "a string")),
    };
    let time_ms = match time {
        Some(Scalar::Int(v)) => parse_event_time_int(v),
        Some(Scalar::UInt(v)) => parse_event_time_u64(v),
        Some(Scalar::Float(v)) => parse_event_time_number(v),
        Some(Scalar::Str(s)) => {
            check_len(&fields.time, &s)?;
            parse_event_time(&s)
        }
        None | Some(Scalar::Null) => return Err(ReadErrorKind::MissingField(fields.time.clone())),
        Some(_) => return Err(wrong_type(&fields.time, "a number or a string")),
    }
    .map_err(ReadErrorKind::InvalidTime)?;
    let insert_id = id_field(&fields.insert_id, insert_id)?;
    let page = match page {
        Some(Scalar::Str(s)) => optional_str(&fields.page, Some(&s))?.is_some().then_some(s),
        None | Some(Scalar::Null) => None,
        Some(_) => return Err(wrong_type(&fields.page, "a string")),
    };
    let passive = match passive {
        Some(Scalar::Bool(b)) => b,
        None | Some(Scalar::Null) => false,
        Some(_) => return Err(wrong_type(&fields.passive, "a boolean")),
    };
    Ok(RawEvent { user_id, device_id, event_type, time_ms, insert_id, page, passive })
}

/// An optional id: a string (empty is absent) or an integer.
#[inline]
fn id_field<'a>(field: &str, value: Option<Scalar<'a>>) -> Result<Option<Id<'a>>, ReadErrorKind> {
    match value {
        Some(Scalar::Str(s)) => Ok(optional_str(field, Some(&s))?.is_some().then_some(Id::Str(s))),
        Some(Scalar::Int(i)) => Ok(Some(Id::Int(i))),
        Some(Scalar::UInt(u)) => Ok(Some(Id::UInt(u))),
        None | Some(Scalar::Null) => Ok(None),
        Some(_) => Err(wrong_type(field, "a string or an integer")),
    }
}

#[cold]
fn wrong_type(field: &str, expected: &'static str) -> ReadErrorKind {
    ReadErrorKind::WrongType { field: field.to_owned(), expected }
}

/// Parses one line (newline and any `\r` removed) into `chunk`.
/// `Ok(false)` for a blank line.
#[inline]
fn push_line(line: &[u8], fields: &FieldNames, chunk: &mut EventChunk, line_no: u64) -> Result<bool, ReadErrorKind> {
    let line = if line_no == 1 { line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line) } else { line };
    if line.first() != Some(&b'{') && line.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let text = std::str::from_utf8(line).map_err(|_| ReadErrorKind::InvalidUtf8)?;
    let raw = parse_raw(text, fields)?;
    match raw.user_id {
        Some(id) => id.push_to(&mut chunk.user_id),
        None => chunk.user_id.push_null(),
    }
    match raw.device_id {
        Some(id) => id.push_to(&mut chunk.device_id),
        None => chunk.device_id.push_null(),
    }
    match raw.insert_id {
        Some(id) => id.push_to(&mut chunk.insert_id),
        None => chunk.insert_id.push_null(),
    }
    chunk.event_type.push(Some(&raw.event_type));
    chunk.time_ms.push(raw.time_ms);
    chunk.page.push(raw.page.as_deref());
    chunk.passive.push(raw.passive);
    chunk.source_line.push(line_no);
    Ok(true)
}

/// Strips one trailing `\r` (CRLF files).
#[inline]
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where the reader puts the lines it splits off: parsed straight into a
/// chunk (one thread), or copied into a block for a worker to parse.
trait LineSink {
    /// Takes one line (newline and `\r` removed); an error is a bad row.
    fn line(&mut self, line: &[u8], line_no: u64, fields: &FieldNames) -> Result<(), ReadErrorKind>;
    /// Takes a line over [`MAX_LINE_BYTES`], consumed without being kept; an
    /// error is the bad row to report now.
    fn too_long(&mut self, line_no: u64) -> Result<(), ReadErrorKind>;
    /// Whether the sink is full.
    fn is_full(&self) -> bool;
}

impl LineSink for EventChunk {
    #[inline]
    fn line(&mut self, line: &[u8], line_no: u64, fields: &FieldNames) -> Result<(), ReadErrorKind> {
        push_line(line, fields, self, line_no).map(drop)
    }

    fn too_long(&mut self, _line_no: u64) -> Result<(), ReadErrorKind> {
        Err(ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES })
    }

    #[inline]
    fn is_full(&self) -> bool {
        self.len() >= CHUNK_ROWS || self.max_column_bytes() >= CHUNK_BYTES
    }
}

/// Lines copied out of the input for a worker thread, in order.
#[derive(Debug, Default)]
struct Block {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug)]
enum Entry {
    /// A line: its end in `bytes` (it starts where the previous line ended).
    Line { end: usize, line_no: u64 },
    /// A line over [`MAX_LINE_BYTES`], not kept.
    TooLong { line_no: u64 },
}

impl LineSink for Block {
    #[inline]
    fn line(&mut self, line: &[u8], line_no: u64, _fields: &FieldNames) -> Result<(), ReadErrorKind> {
        if line.first() != Some(&b'{') && line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.bytes.extend_from_slice(line);
        self.entries.push(Entry::Line { end: self.bytes.len(), line_no });
        Ok(())
    }

    fn too_long(&mut self, line_no: u64) -> Result<(), ReadErrorKind> {
        self.entries.push(Entry::TooLong { line_no });
        Ok(())
    }

    #[inline]
    fn is_full(&self) -> bool {
        // Each column of the resulting chunk holds at most the block's bytes.
        self.entries.len() >= CHUNK_ROWS || self.bytes.len() >= BLOCK_BYTES
    }
}

impl Block {
    fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    /// Parses the block into a chunk and its bad rows (in line order). Without
    /// `skip_invalid`, stops at the first bad row.
    fn parse(&self, fields: &FieldNames, skip_invalid: bool) -> ParsedBlock {
        let mut chunk = EventChunk::with_capacity(self.entries.len());
        let mut errors = Vec::new();
        let mut start = 0;
        for entry in &self.entries {
            let result = match entry {
                Entry::Line { end, line_no } => {
                    let line = &self.bytes[start..*end];
                    start = *end;
                    push_line(line, fields, &mut chunk, *line_no).map(drop).map_err(|kind| (*line_no, kind))
                }
                Entry::TooLong { line_no } => Err((*line_no, ReadErrorKind::LineTooLong { limit: MAX_LINE_BYTES })),
            };
            if let Err(error) = result {
                errors.push(error);
                if !skip_invalid {
                    break;
                }
            }
        }
        (chunk, errors)
    }
}

/// Reads NDJSON from any byte stream, enforcing [`MAX_LINE_BYTES`] while
/// reading (an over-long line is consumed without being kept).
///
/// With one thread, lines are parsed in place from the read buffer. With
/// more, the reader splits lines into one block per thread and the threads
/// parse the blocks at the same time; chunks come out in file order.
pub(crate) struct NdjsonReader {
    input: BufReader<Box<dyn Read + Send>>,
    path: String,
    fields: FieldNames,
    skips: Skips,
    threads: usize,
    /// Lines seen so far (the number of the last line started).
    line_no: u64,
    bytes_read: u64,
    total_bytes: Option<u64>,
    /// The start of a line that crosses the end of the read buffer.
    partial: Vec<u8>,
    /// The largest capacity `partial` reached: the memory bound under test.
    peak_partial: usize,
    at_end: bool,
    /// Blocks for the worker threads, reused.
    blocks: Vec<Block>,
    /// Parsed chunks not handed out yet.
    ready: VecDeque<EventChunk>,
}

impl fmt::Debug for NdjsonReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NdjsonReader").field("path", &self.path).field("line_no", &self.line_no).finish()
    }
}

/// Read buffer size: large reads, and most lines parsed in place.
const BUFFER_BYTES: usize = 256 * 1024;

/// Bytes of lines in one block for a worker thread: with [`MAX_THREADS`],
/// bounds the memory of blocks in flight to 256 MiB whatever the lines.
const BLOCK_BYTES: usize = 16 * 1024 * 1024;

/// The most parsing threads; more would not help and would cost memory.
const MAX_THREADS: usize = 16;

impl NdjsonReader {
    pub(crate) fn new(
        input: Box<dyn Read + Send>,
        path: String,
        total_bytes: Option<u64>,
        options: &ReadOptions,
    ) -> Self {
        Self {
            input: BufReader::with_capacity(BUFFER_BYTES, input),
            path,
            fields: options.fields.clone(),
            skips: Skips::new(options.skip_invalid),
            threads: options.threads.clamp(1, MAX_THREADS),
            line_no: 0,
            bytes_read: 0,
            total_bytes,
            partial: Vec::new(),
            peak_partial: 0,
            at_end: false,
            blocks: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// The most memory a line crossing the read buffer ever took.
    #[cfg(test)]
    pub(crate) fn peak_line_capacity(&self) -> usize {
        self.peak_partial
    }

    fn row_error(&mut self, line_no: u64, kind: ReadErrorKind) -> Result<(), ReadError> {
        self.skips.absorb(ReadError { path: self.path.clone(), line: Some(line_no), kind })
    }

    fn io_error(&self, error: std::io::Error) -> ReadError {
        ReadError { path: self.path.clone(), line: None, kind: error.into() }
    }

    /// Feeds lines to `sink` until it is full or the input ends.
    fn fill<S: LineSink>(&mut self, sink: &mut S) -> Result<(), ReadError> {
        while !self.at_end && !sink.is_full() {
            if !self.read_buffered_lines(sink)? {
                self.read_long_line(sink)?;
            }
        }
        Ok(())
    }

    /// Feeds the complete lines in the read buffer to `sink`, until it is
    /// full. Returns whether the buffer had a complete line.
    fn read_buffered_lines<S: LineSink>(&mut self, sink: &mut S) -> Result<bool, ReadError> {
        let buffer = match self.input.fill_buf() {
            Ok(buffer) => buffer,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(self.io_error(e)),
        };
        if buffer.is_empty() {
            return Ok(false);
        }
        let mut consumed = 0;
        let mut error = None;
        // The buffer is smaller than MAX_LINE_BYTES: lines found here are short enough.
        while let Some(newline) = memchr::memchr(b'\n', &buffer[consumed..]) {
            let line = strip_cr(&buffer[consumed..consumed + newline]);
            consumed += newline + 1;
            self.line_no += 1;
            if let Err(kind) = sink.line(line, self.line_no, &self.fields) {
                error = Some((self.line_no, kind));
                break;
            }
            if sink.is_full() {
                break;
            }
        }
        let found_line = consumed > 0;
        self.input.consume(consumed);
        self.bytes_read += consumed as u64;
        if let Some((line_no, kind)) = error {
            self.row_error(line_no, kind)?;
        }
        Ok(found_line)
    }

    /// Reads one line that crosses the read buffer into `partial` (at most
    /// `MAX_LINE_BYTES` of it) and feeds it to `sink`.
    fn read_long_line<S: LineSink>(&mut self, sink: &mut S) -> Result<(), ReadError> {
        self.partial.clear();
        let mut overlong = false;
        let line_no = self.line_no + 1;
        loop {
            let buffer = match self.input.fill_buf() {
                Ok(buffer) => buffer,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            if buffer.is_empty() {
                self.at_end = true;
                if self.partial.is_empty() && !overlong {
                    return Ok(());
                }
                break;
            }
            let (piece, used, complete) = match memchr::memchr(b'\n', buffer) {
                Some(newline) => (&buffer[..newline], newline + 1, true),
                None => (buffer, buffer.len(), false),
            };
            if !overlong {
                let needed = self.partial.len() + piece.len();
                // A trailing `\r` is not content; allow for it before rejecting.
                if needed > MAX_LINE_BYTES + 1 {
                    overlong = true;
                    self.partial = Vec::new();
                } else {
                    if needed > self.partial.capacity() {
                        // Grow geometrically but never past the bound.
                        let target = (self.partial.capacity() * 2).max(needed).min(MAX_LINE_BYTES + 1);
                        self.partial.reserve_exact(target - self.partial.len());
                    }
                    self.partial.extend_from_slice(piece);
                    self.peak_partial = self.peak_partial.max(self.partial.capacity());
                }
            }
            self.input.consume(used);
            self.bytes_read += used as u64;
            if complete {
                break;
            }
        }
        self.line_no = line_no;
        let line = strip_cr(&self.partial);
        let result = if overlong || line.len() > MAX_LINE_BYTES {
            sink.too_long(line_no)
        } else {
            sink.line(line, line_no, &self.fields)
        };
        if self.partial.capacity() > BUFFER_BYTES {
            self.partial = Vec::new();
        }
        match result {
            Ok(()) => Ok(()),
            Err(kind) => self.row_error(line_no, kind),
        }
    }

    /// Splits up to one block per thread, parses them in parallel and queues
    /// the chunks in order.
    fn read_blocks(&mut self) -> Result<(), ReadError> {
        let mut blocks = std::mem::take(&mut self.blocks);
        blocks.resize_with(self.threads, Block::default);
        let mut used = 0;
        for block in &mut blocks {
            block.clear();
            if let Err(error) = self.fill(block) {
                self.blocks = blocks;
                return Err(error);
            }
            if block.entries.is_empty() {
                break;
            }
            used += 1;
        }
        let (fields, skip_invalid) = (&self.fields, self.skips.skip_invalid);
        let parse = |block: &Block| block.parse(fields, skip_invalid);
        let parsed = parse_blocks(&blocks[..used], parse, &self.path, &mut self.skips, &mut self.ready);
        self.blocks = blocks;
        parsed
    }
}

impl super::EventReader for NdjsonReader {
    fn next_chunk(&mut self) -> Result<Option<EventChunk>, ReadError> {
        if self.threads > 1 {
            while self.ready.is_empty() && !self.at_end {
                self.read_blocks()?;
            }
            return Ok(self.ready.pop_front());
        }
        let mut chunk = EventChunk::with_capacity(CHUNK_ROWS);
        self.fill(&mut chunk)?;
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
