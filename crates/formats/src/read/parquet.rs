//! Parquet through arrow-rs: only the needed columns are decoded, in batches
//! of [`CHUNK_ROWS`], and copied column-wise into [`EventChunk`]s.
//!
//! With `threads > 1` and several row groups, each of `threads` workers
//! decodes every `threads`-th row group and the reader hands the chunks back
//! in file order. Each worker's channel holds up to a row group's chunks (so a
//! worker is not stalled while the consumer drains the previous row group from
//! another worker), bounded by [`MAX_WORKER_QUEUE_CHUNKS`] whatever the row
//! group size.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, GenericStringArray, RecordBatch, StringViewArray};
use arrow_buffer::{Buffer, NullBuffer};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};

use super::{FieldNames, ReadOptions, Skips, check_len, missing_user};
use crate::columns::{EventChunk, StrColumn};
use crate::error::{ReadError, ReadErrorKind};
use crate::limits::{CHUNK_ROWS, MAX_FIELD_BYTES};
use crate::time::{
    EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS, check_instant_ms, number_rule_ms, parse_event_time, parse_event_time_int,
    parse_event_time_number, parse_event_time_u64,
};

/// Chunks a worker may decode ahead of the consumer beyond a row group's.
const WORKER_QUEUE_SLACK_CHUNKS: usize = 4;
/// Bound on the chunks a worker may decode ahead of the consumer (2M rows).
///
/// The consumer takes row groups in file order, so while it drains worker
/// A's row group, worker B can only work as far as its queue reaches: a queue
/// of a whole row group keeps both busy (measured on the 10M-event benchmark
/// file, 1M-row groups: 1.45 cores used while reading with 4 chunks, against
/// about 1.9 with a row group's worth).
const MAX_WORKER_QUEUE_CHUNKS: usize = 32;

/// What is known before decoding: the file, its metadata and the columns.
#[derive(Clone)]
struct Plan {
    path: Arc<Path>,
    display: Arc<str>,
    metadata: ArrowReaderMetadata,
    mask: ProjectionMask,
    fields: Arc<FieldNames>,
    skip_invalid: bool,
    /// First row (0-based) of each row group, plus the total at the end.
    row_group_starts: Arc<[u64]>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan").field("path", &self.display).finish()
    }
}

impl Plan {
    fn error(&self, line: Option<u64>, kind: ReadErrorKind) -> ReadError {
        ReadError { path: self.display.to_string(), line, kind }
    }

    fn parquet_error(&self, error: impl fmt::Display) -> ReadError {
        self.error(None, ReadErrorKind::Parquet(error.to_string()))
    }

    /// A batch reader over `row_groups` (in order).
    fn batches(&self, row_groups: Vec<usize>) -> Result<ParquetRecordBatchReader, ReadError> {
        let file = File::open(&self.path).map_err(|e| self.error(None, e.into()))?;
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
            .with_projection(self.mask.clone())
            .with_batch_size(CHUNK_ROWS)
            .with_row_groups(row_groups)
            .build()
            .map_err(|e| self.parquet_error(e))
    }
}

/// Decodes consecutive batches into chunks, skipping or failing on bad rows.
struct Decoder {
    plan: Plan,
    batches: ParquetRecordBatchReader,
    /// 0-based file row of the next batch's first row.
    next_row: u64,
    skips: Skips,
    dictionaries: Dictionaries,
}

impl Decoder {
    /// The next non-empty chunk, `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<EventChunk>, ReadError> {
        loop {
            let Some(batch) = self.batches.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| self.plan.parquet_error(e))?;
            let first_row = self.next_row;
            self.next_row += batch.num_rows() as u64;
            let chunk = decode_batch(&self.plan, batch, first_row, &mut self.skips, &mut self.dictionaries)?;
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }
}

/// A message from a worker, for one of its row groups.
#[expect(clippy::large_enum_variant, reason = "one message per chunk of 65 536 rows: the size does not matter")]
enum Message {
    Chunk(EventChunk),
    /// The row group is fully decoded; its skipped rows.
    RowGroupDone(Skips),
    Error(ReadError),
}

enum Mode {
    Single(Box<Decoder>),
    Parallel { receivers: Vec<Receiver<Message>>, workers: Vec<JoinHandle<()>> },
}

pub(crate) struct ParquetReader {
    plan: Plan,
    mode: Mode,
    skips: Skips,
    /// Row groups handed out completely (parallel) so far.
    row_groups_done: usize,
    row_group_bytes: Vec<u64>,
    bytes_read: u64,
    total_bytes: u64,
    finished: bool,
}

impl fmt::Debug for ParquetReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParquetReader").field("plan", &self.plan).finish()
    }
}

impl ParquetReader {
    pub(crate) fn open(path: &Path, display: String, options: &ReadOptions) -> Result<Self, ReadError> {
        let fail = |kind| ReadError { path: display.clone(), line: None, kind };
        let file = File::open(path).map_err(|e| fail(e.into()))?;
        let parquet_error = |e: parquet::errors::ParquetError| fail(ReadErrorKind::Parquet(e.to_string()));
        let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(parquet_error)?;
        let indices = project(metadata.schema(), &options.fields).map_err(fail)?;
        let metadata = keep_dictionaries(metadata, &options.fields).map_err(parquet_error)?;
        let mask = ProjectionMask::roots(metadata.parquet_schema(), indices);
        let row_groups = metadata.metadata().row_groups();
        let mut row_group_starts = Vec::with_capacity(row_groups.len() + 1);
        let mut total = 0u64;
        for group in row_groups {
            row_group_starts.push(total);
            total += u64::try_from(group.num_rows()).unwrap_or(0);
        }
        row_group_starts.push(total);
        let row_group_bytes: Vec<u64> =
            row_groups.iter().map(|g| u64::try_from(g.compressed_size()).unwrap_or(0)).collect();
        let plan = Plan {
            path: Arc::from(path),
            display: Arc::from(display.as_str()),
            metadata,
            mask,
            fields: Arc::new(options.fields.clone()),
            skip_invalid: options.skip_invalid,
            row_group_starts: row_group_starts.into(),
        };
        let groups = row_group_bytes.len();
        let threads = options.threads.clamp(1, groups.max(1));
        let mode = if threads == 1 {
            Mode::Single(Box::new(Decoder {
                batches: plan.batches((0..groups).collect())?,
                plan: plan.clone(),
                next_row: 0,
                skips: Skips::new(options.skip_invalid),
                dictionaries: Dictionaries::default(),
            }))
        } else {
            start_workers(&plan, threads)
        };
        Ok(Self {
            total_bytes: row_group_bytes.iter().sum(),
            plan,
            mode,
            skips: Skips::new(options.skip_invalid),
            row_groups_done: 0,
            row_group_bytes,
            bytes_read: 0,
            finished: false,
        })
    }
}

fn start_workers(plan: &Plan, threads: usize) -> Mode {
    let groups = plan.row_group_starts.len() - 1;
    let largest_group_rows = plan.row_group_starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let queue_chunks = (usize::try_from(largest_group_rows.div_ceil(CHUNK_ROWS as u64)).unwrap_or(usize::MAX))
        .saturating_add(WORKER_QUEUE_SLACK_CHUNKS)
        .min(MAX_WORKER_QUEUE_CHUNKS);
    let mut receivers = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for worker in 0..threads {
        let (sender, receiver) = sync_channel(queue_chunks);
        let plan = plan.clone();
        let mine: Vec<usize> = (worker..groups).step_by(threads).collect();
        workers.push(std::thread::spawn(move || run_worker(&plan, &mine, &sender)));
        receivers.push(receiver);
    }
    Mode::Parallel { receivers, workers }
}

/// Decodes `row_groups` one after the other; stops at the first error or when
/// the reader is gone.
fn run_worker(plan: &Plan, row_groups: &[usize], sender: &SyncSender<Message>) {
    for &group in row_groups {
        let result = plan.batches(vec![group]).and_then(|batches| {
            let mut decoder = Decoder {
                plan: plan.clone(),
                batches,
                next_row: plan.row_group_starts[group],
                skips: Skips::new(plan.skip_invalid),
                dictionaries: Dictionaries::default(),
            };
            while let Some(chunk) = decoder.next_chunk()? {
                if sender.send(Message::Chunk(chunk)).is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(decoder.skips))
        });
        let message = match result {
            Ok(Some(skips)) => Message::RowGroupDone(skips),
            Ok(None) => return,
            Err(error) => Message::Error(error),
        };
        let stop = matches!(message, Message::Error(_));
        if sender.send(message).is_err() || stop {
            return;
        }
    }
}

impl Drop for ParquetReader {
    fn drop(&mut self) {
        if let Mode::Parallel { receivers, workers } = &mut self.mode {
            // Dropping the receivers makes every pending send fail, so each
            // worker stops; then wait for them.
            receivers.clear();
            for worker in workers.drain(..) {
                // A worker that panicked has nothing left to say here.
                drop(worker.join());
            }
        }
    }
}

impl super::EventReader for ParquetReader {
    fn next_chunk(&mut self) -> Result<Option<EventChunk>, ReadError> {
        if self.finished {
            return Ok(None);
        }
        match &mut self.mode {
            Mode::Single(decoder) => {
                let result = decoder.next_chunk();
                // Progress: row groups whose rows have all been decoded.
                let starts = &self.plan.row_group_starts;
                while self.row_groups_done < self.row_group_bytes.len()
                    && starts[self.row_groups_done + 1] <= decoder.next_row
                {
                    self.bytes_read += self.row_group_bytes[self.row_groups_done];
                    self.row_groups_done += 1;
                }
                if !matches!(result, Ok(Some(_))) {
                    self.finished = true;
                }
                result
            }
            Mode::Parallel { receivers, .. } => loop {
                if self.row_groups_done == self.row_group_bytes.len() {
                    self.finished = true;
                    return Ok(None);
                }
                let worker = self.row_groups_done % receivers.len();
                match receivers[worker].recv() {
                    Ok(Message::Chunk(chunk)) => return Ok(Some(chunk)),
                    Ok(Message::RowGroupDone(skips)) => {
                        self.skips.merge(skips);
                        self.bytes_read += self.row_group_bytes[self.row_groups_done];
                        self.row_groups_done += 1;
                    }
                    Ok(Message::Error(error)) => {
                        self.finished = true;
                        return Err(error);
                    }
                    Err(_) => {
                        self.finished = true;
                        return Err(self.plan.parquet_error("a decoding thread stopped unexpectedly"));
                    }
                }
            },
        }
    }

    fn skipped_rows(&self) -> u64 {
        match &self.mode {
            Mode::Single(decoder) => decoder.skips.skipped,
            Mode::Parallel { .. } => self.skips.skipped,
        }
    }

    fn first_skipped_error(&self) -> Option<&ReadError> {
        match &self.mode {
            Mode::Single(decoder) => decoder.skips.first.as_ref(),
            Mode::Parallel { .. } => self.skips.first.as_ref(),
        }
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn total_bytes(&self) -> Option<u64> {
        Some(self.total_bytes)
    }
}

/// Reads the repeating string columns (user and device ids, event types,
/// pages) as Arrow dictionaries when the file stores them dictionary-encoded
/// in every row group: each distinct value is then decoded and copied once per
/// batch instead of once per row, and consumers can intern by key.
fn keep_dictionaries(
    metadata: ArrowReaderMetadata,
    fields: &FieldNames,
) -> Result<ArrowReaderMetadata, parquet::errors::ParquetError> {
    let schema = metadata.schema();
    let repeating = [&fields.user_id, &fields.device_id, &fields.event_type, &fields.page];
    let row_groups = metadata.metadata().row_groups();
    let mut changed = false;
    let new_fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let plain_string = matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8);
            // A flat schema (what `project` admits): root index = leaf index.
            let dictionary_encoded = !row_groups.is_empty()
                && row_groups
                    .iter()
                    .all(|group| index < group.num_columns() && group.column(index).dictionary_page_offset().is_some());
            if plain_string && dictionary_encoded && repeating.contains(&field.name()) {
                changed = true;
                let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(field.data_type().clone()));
                field.as_ref().clone().with_data_type(dictionary)
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    let flat = schema.fields().len() == metadata.parquet_schema().num_columns();
    if !changed || !flat {
        return Ok(metadata);
    }
    let schema = Arc::new(Schema::new_with_metadata(new_fields, schema.metadata().clone()));
    ArrowReaderMetadata::try_new(metadata.metadata().clone(), ArrowReaderOptions::new().with_schema(schema))
}

/// Checks the schema and returns the root indexes of the columns to decode.
fn project(schema: &Schema, fields: &FieldNames) -> Result<Vec<usize>, ReadErrorKind> {
    let mut indices = Vec::new();
    let mut find = |name: &str, accepts: fn(&DataType) -> bool, expected: &str| {
        let Some((index, field)) = schema.fields().iter().enumerate().find(|(_, f)| f.name() == name) else {
            return Ok(false);
        };
        if !accepts(field.data_type()) {
            return Err(ReadErrorKind::Parquet(format!(
                "column \"{name}\" has type {}, expected {expected}",
                field.data_type()
            )));
        }
        indices.push(index);
        Ok(true)
    };
    const ID: &str = "a string or integer type";
    const STR: &str = "a string type";
    let user = find(&fields.user_id, is_id_type, ID)?;
    let device = find(&fields.device_id, is_id_type, ID)?;
    if !find(&fields.event_type, is_string_type, STR)? {
        return Err(ReadErrorKind::MissingColumn(fields.event_type.clone()));
    }
    if !find(&fields.time, is_time_type, "an integer, float, timestamp or string type")? {
        return Err(ReadErrorKind::MissingColumn(fields.time.clone()));
    }
    find(&fields.insert_id, is_id_type, ID)?;
    find(&fields.page, is_string_type, STR)?;
    find(&fields.passive, |t| *t == DataType::Boolean, "Boolean")?;
    if !user && !device {
        return Err(ReadErrorKind::MissingUserColumn {
            user_id: fields.user_id.clone(),
            device_id: fields.device_id.clone(),
        });
    }
    indices.sort_unstable();
    Ok(indices)
}

fn is_string_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string_type(values),
        _ => false,
    }
}

fn is_id_type(t: &DataType) -> bool {
    is_string_type(t) || t.is_integer()
}

fn is_time_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int64
            | DataType::Int32
            | DataType::UInt64
            | DataType::UInt32
            | DataType::Float64
            | DataType::Float32
            | DataType::Timestamp(_, _)
    ) || is_string_type(t)
}

/// One value of a string-or-integer column.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    UInt(u64),
}

/// The values of an integer column, by width and sign.
#[derive(Clone, Copy)]
enum Ints<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
}

impl<'a> Ints<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        Some(match array.data_type() {
            DataType::Int8 => Ints::I8(array.as_primitive::<Int8Type>().values()),
            DataType::Int16 => Ints::I16(array.as_primitive::<Int16Type>().values()),
            DataType::Int32 => Ints::I32(array.as_primitive::<Int32Type>().values()),
            DataType::Int64 => Ints::I64(array.as_primitive::<Int64Type>().values()),
            DataType::UInt8 => Ints::U8(array.as_primitive::<UInt8Type>().values()),
            DataType::UInt16 => Ints::U16(array.as_primitive::<UInt16Type>().values()),
            DataType::UInt32 => Ints::U32(array.as_primitive::<UInt32Type>().values()),
            DataType::UInt64 => Ints::U64(array.as_primitive::<UInt64Type>().values()),
            _ => return None,
        })
    }

    #[inline]
    fn get(self, i: usize) -> Value<'static> {
        match self {
            Ints::I8(v) => Value::Int(v[i].into()),
            Ints::I16(v) => Value::Int(v[i].into()),
            Ints::I32(v) => Value::Int(v[i].into()),
            Ints::I64(v) => Value::Int(v[i]),
            Ints::U8(v) => Value::UInt(v[i].into()),
            Ints::U16(v) => Value::UInt(v[i].into()),
            Ints::U32(v) => Value::UInt(v[i].into()),
            Ints::U64(v) => Value::UInt(v[i]),
        }
    }
}

/// A typed view of a string or id column.
enum StrSource<'a> {
    Absent,
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    View(&'a StringViewArray),
    /// Keys normalised to indexes into `values`; [`StrColumn::NULL_KEY`] for a null key.
    Dictionary {
        keys: Vec<u32>,
        values: Box<StrSource<'a>>,
        /// The values array itself: the batches of one column chunk share it.
        array: &'a ArrayRef,
    },
    Int {
        values: Ints<'a>,
        nulls: Option<&'a NullBuffer>,
    },
}

impl<'a> StrSource<'a> {
    fn new(array: Option<&'a dyn Array>) -> Self {
        let Some(array) = array else {
            return StrSource::Absent;
        };
        match array.data_type() {
            DataType::Utf8 => StrSource::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => StrSource::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => StrSource::View(array.as_string_view()),
            DataType::Dictionary(_, _) => {
                let dictionary = array.as_any_dictionary();
                let values = dictionary.values();
                let keys = if values.is_empty() {
                    vec![StrColumn::NULL_KEY; array.len()]
                } else {
                    // A chunk has at most `CHUNK_ROWS` rows, so keys fit in `u32`.
                    let nulls = dictionary.keys().logical_nulls();
                    dictionary
                        .normalized_keys()
                        .into_iter()
                        .enumerate()
                        .map(|(i, k)| match &nulls {
                            Some(n) if n.is_null(i) => StrColumn::NULL_KEY,
                            _ => k as u32,
                        })
                        .collect()
                };
                StrSource::Dictionary { keys, values: Box::new(StrSource::new(Some(values.as_ref()))), array: values }
            }
            // `project` admits only strings and integers.
            _ => match Ints::new(array) {
                Some(values) => StrSource::Int { values, nulls: array.nulls() },
                None => StrSource::Absent,
            },
        }
    }

    #[inline]
    fn value(&self, i: usize) -> Value<'a> {
        match self {
            StrSource::Absent => Value::Null,
            StrSource::Utf8(a) => {
                if a.is_null(i) {
                    Value::Null
                } else {
                    Value::Str(a.value(i))
                }
            }
            StrSource::LargeUtf8(a) => {
                if a.is_null(i) {
                    Value::Null
                } else {
                    Value::Str(a.value(i))
                }
            }
            StrSource::View(a) => {
                if a.is_null(i) {
                    Value::Null
                } else {
                    Value::Str(a.value(i))
                }
            }
            StrSource::Dictionary { keys, values, .. } => match keys[i] {
                StrColumn::NULL_KEY => Value::Null,
                k => values.value(k as usize),
            },
            StrSource::Int { values, nulls } => {
                if nulls.is_some_and(|n| n.is_null(i)) {
                    Value::Null
                } else {
                    values.get(i)
                }
            }
        }
    }

    /// The value as an optional field: empty strings are absent; strings
    /// longer than the field limit are an error.
    #[inline]
    fn optional(&self, field: &str, i: usize) -> Result<Value<'a>, ReadErrorKind> {
        match self.value(i) {
            Value::Str("") => Ok(Value::Null),
            Value::Str(s) => check_len(field, s).map(|()| Value::Str(s)),
            other => Ok(other),
        }
    }

    /// What a scan of the whole column says, to skip per-row checks.
    fn summary(&self) -> Summary {
        match self {
            StrSource::Absent => Summary { every_row_present: false, lengths_ok: true },
            StrSource::Utf8(a) => Summary::of_offsets(a.value_offsets(), a.null_count() == 0),
            StrSource::LargeUtf8(a) => Summary::of_offsets(a.value_offsets(), a.null_count() == 0),
            StrSource::View(a) => {
                // A view's low 32 bits are the string's length.
                let (min, max) = a.views().iter().fold((u32::MAX, 0), |(min, max), view| {
                    let len = *view as u32;
                    (min.min(len), max.max(len))
                });
                Summary {
                    every_row_present: a.null_count() == 0 && min > 0,
                    lengths_ok: max as usize <= MAX_FIELD_BYTES,
                }
            }
            StrSource::Dictionary { keys, values, .. } => {
                let values = values.summary();
                Summary {
                    every_row_present: values.every_row_present && keys.iter().all(|&k| k != StrColumn::NULL_KEY),
                    lengths_ok: values.lengths_ok,
                }
            }
            StrSource::Int { nulls, .. } => {
                Summary { every_row_present: nulls.is_none_or(|n| n.null_count() == 0), lengths_ok: true }
            }
        }
    }

    /// Appends the `rows` of this column to `column` (all `len` rows when
    /// `None`). `bulk` says every value is within the field limit, so
    /// buffers may be copied whole.
    fn append(
        &self,
        column: &mut StrColumn,
        rows: Option<&[usize]>,
        len: usize,
        bulk: bool,
        dictionaries: &mut Dictionaries,
    ) {
        fn extend<O: arrow_array::OffsetSizeTrait + Into<i64>>(column: &mut StrColumn, a: &GenericStringArray<O>) {
            match a.nulls() {
                None => column.extend_utf8(a.value_data(), a.value_offsets(), |_| true),
                Some(nulls) => column.extend_utf8(a.value_data(), a.value_offsets(), |i| nulls.is_valid(i)),
            }
        }
        match (self, rows) {
            // Dictionary in, dictionary out: each distinct value is copied once.
            (StrSource::Dictionary { keys, values, array }, rows)
                if column.is_empty()
                    && matches!(**values, StrSource::Utf8(_) | StrSource::LargeUtf8(_))
                    && values.summary().lengths_ok =>
            {
                let distinct = dictionaries.get_or_insert(array, || {
                    let mut distinct = StrColumn::with_capacity(0, 0);
                    values.append(&mut distinct, None, 0, true, &mut Dictionaries::default());
                    distinct
                });
                let keys = match rows {
                    None => keys.clone(),
                    Some(rows) => rows.iter().map(|&i| keys[i]).collect(),
                };
                *column = StrColumn::from_shared_dictionary(distinct, keys);
            }
            (StrSource::Utf8(a), None) if bulk => extend(column, a),
            (StrSource::LargeUtf8(a), None) if bulk => extend(column, a),
            (StrSource::Absent, None) => column.push_nulls(len),
            (_, Some(rows)) => rows.iter().for_each(|&i| self.push(column, i)),
            (_, None) => (0..len).for_each(|i| self.push(column, i)),
        }
    }

    #[inline]
    fn push(&self, column: &mut StrColumn, i: usize) {
        match self.value(i) {
            Value::Null | Value::Str("") => column.push_null(),
            Value::Str(s) => column.push_str(s),
            Value::Int(v) => column.push_int(v),
            Value::UInt(v) => column.push_int(v),
        }
    }
}

/// The dictionaries of the current row group, each converted once: arrow
/// hands every batch of a column chunk the same values buffers, so the chunks
/// of a row group share one [`StrColumn`] of values (and consumers can keep
/// per-value work across chunks).
#[derive(Default)]
struct Dictionaries {
    /// Holding the arrays keeps their buffers' addresses from being reused.
    converted: Vec<(ArrayRef, Arc<StrColumn>)>,
}

impl Dictionaries {
    /// More than this many dictionaries in a row group only happens when
    /// arrow recomputes them per batch; then keep only the latest.
    const MAX_KEPT: usize = 8;

    fn get_or_insert(&mut self, array: &ArrayRef, convert: impl FnOnce() -> StrColumn) -> Arc<StrColumn> {
        if let Some((_, values)) = self.converted.iter().find(|(known, _)| same_buffers(known, array)) {
            return values.clone();
        }
        if self.converted.len() == Self::MAX_KEPT {
            self.converted.remove(0);
        }
        let values = Arc::new(convert());
        self.converted.push((array.clone(), values.clone()));
        values
    }
}

/// Whether two arrays are views of the very same buffers (so the same
/// values): arrow rebuilds each batch's array objects, but not its buffers.
fn same_buffers(a: &ArrayRef, b: &ArrayRef) -> bool {
    let (a, b) = (a.to_data(), b.to_data());
    let same = |x: &arrow_buffer::Buffer, y: &arrow_buffer::Buffer| x.as_ptr() == y.as_ptr() && x.len() == y.len();
    a.data_type() == b.data_type()
        && a.len() == b.len()
        && a.offset() == b.offset()
        && a.buffers().len() == b.buffers().len()
        && a.buffers().iter().zip(b.buffers()).all(|(x, y)| same(x, y))
        && match (a.nulls(), b.nulls()) {
            (None, None) => true,
            (Some(x), Some(y)) => same(x.buffer(), y.buffer()) && x.offset() == y.offset(),
            _ => false,
        }
}

/// A column-wide view of a string column.
#[derive(Debug, Clone, Copy)]
struct Summary {
    /// No row is null or empty.
    every_row_present: bool,
    /// No value is longer than [`MAX_FIELD_BYTES`].
    lengths_ok: bool,
}

impl Summary {
    fn of_offsets<O: Copy + Into<i64>>(offsets: &[O], no_nulls: bool) -> Self {
        let (mut min, mut max) = (i64::MAX, 0);
        for pair in offsets.windows(2) {
            let len = pair[1].into() - pair[0].into();
            min = min.min(len);
            max = max.max(len);
        }
        Summary { every_row_present: no_nulls && min > 0, lengths_ok: max <= MAX_FIELD_BYTES as i64 }
    }
}

/// A typed view of the time column.
enum TimeSource<'a> {
    /// Integers: the number rule, exactly.
    Int {
        values: Ints<'a>,
        nulls: Option<&'a NullBuffer>,
    },
    /// Floats: the number rule.
    Float {
        values: &'a [f64],
        nulls: Option<&'a NullBuffer>,
    },
    Float32 {
        values: &'a [f32],
        nulls: Option<&'a NullBuffer>,
    },
    /// An exact instant in `unit`: no seconds-or-milliseconds guess.
    Timestamp {
        values: &'a [i64],
        nulls: Option<&'a NullBuffer>,
        unit: TimeUnit,
    },
    Text(StrSource<'a>),
}

impl<'a> TimeSource<'a> {
    fn new(array: &'a dyn Array) -> Self {
        let nulls = array.nulls();
        match array.data_type() {
            DataType::Timestamp(unit, _) => {
                let values = match unit {
                    TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
                    TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().values(),
                    TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().values(),
                    TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().values(),
                };
                TimeSource::Timestamp { values, nulls, unit: *unit }
            }
            DataType::Float64 => TimeSource::Float { values: array.as_primitive::<Float64Type>().values(), nulls },
            DataType::Float32 => TimeSource::Float32 { values: array.as_primitive::<Float32Type>().values(), nulls },
            _ => match Ints::new(array) {
                Some(values) => TimeSource::Int { values, nulls },
                None => TimeSource::Text(StrSource::new(Some(array))),
            },
        }
    }

    /// Every row's time in ms when all are valid numbers or timestamps (the
    /// common case, in one tight loop); `None` otherwise.
    fn all_times(&self) -> Option<Vec<i64>> {
        let no_nulls = |nulls: &Option<&NullBuffer>| nulls.is_none_or(|n| n.null_count() == 0);
        match self {
            TimeSource::Int { values, nulls } if no_nulls(nulls) => match values {
                Ints::I64(v) => v.iter().map(|&v| number_rule_ms(v)).collect(),
                Ints::I32(v) => v.iter().map(|&v| number_rule_ms(v.into())).collect(),
                Ints::U64(v) => v.iter().map(|&v| i64::try_from(v).ok().and_then(number_rule_ms)).collect(),
                _ => None,
            },
            TimeSource::Float { values, nulls } if no_nulls(nulls) => {
                values.iter().map(|&v| parse_event_time_number(v).ok()).collect()
            }
            TimeSource::Timestamp { values, nulls, unit } if no_nulls(nulls) => {
                let in_range = |ms: i64| (EVENT_TIME_MIN_MS..=EVENT_TIME_MAX_MS).contains(&ms).then_some(ms);
                match unit {
                    TimeUnit::Second => values.iter().map(|&v| v.checked_mul(1000).and_then(in_range)).collect(),
                    TimeUnit::Millisecond => values.iter().map(|&v| in_range(v)).collect(),
                    TimeUnit::Microsecond => values.iter().map(|&v| in_range(v.div_euclid(1000))).collect(),
                    TimeUnit::Nanosecond => values.iter().map(|&v| in_range(v.div_euclid(1_000_000))).collect(),
                }
            }
            _ => None,
        }
    }

    /// The time of row `i` in ms; `Ok(None)` for a null or blank value.
    #[inline]
    fn time_ms(&self, i: usize, field: &str) -> Result<Option<i64>, ReadErrorKind> {
        let null = |nulls: &Option<&NullBuffer>| nulls.is_some_and(|n| n.is_null(i));
        let result = match self {
            TimeSource::Int { values, nulls } => {
                if null(nulls) {
                    return Ok(None);
                }
                match values.get(i) {
                    Value::Int(v) => parse_event_time_int(v),
                    Value::UInt(v) => parse_event_time_u64(v),
                    Value::Null | Value::Str(_) => return Ok(None),
                }
            }
            TimeSource::Float { values, nulls } => {
                if null(nulls) {
                    return Ok(None);
                }
                parse_event_time_number(values[i])
            }
            TimeSource::Float32 { values, nulls } => {
                if null(nulls) {
                    return Ok(None);
                }
                parse_event_time_number(f64::from(values[i]))
            }
            TimeSource::Timestamp { values, nulls, unit } => {
                if null(nulls) {
                    return Ok(None);
                }
                let v = values[i];
                let (ms, unit_name) = match unit {
                    TimeUnit::Second => (v.saturating_mul(1000), "s"),
                    TimeUnit::Millisecond => (v, "ms"),
                    TimeUnit::Microsecond => (v.div_euclid(1000), "us"),
                    TimeUnit::Nanosecond => (v.div_euclid(1_000_000), "ns"),
                };
                check_instant_ms(ms, format_args!("timestamp {v} {unit_name}"))
            }
            TimeSource::Text(source) => match source.value(i) {
                Value::Null => return Ok(None),
                Value::Str(s) => {
                    check_len(field, s)?;
                    if s.trim().is_empty() {
                        return Ok(None);
                    }
                    parse_event_time(s)
                }
                Value::Int(v) => parse_event_time_int(v),
                Value::UInt(v) => parse_event_time_u64(v),
            },
        };
        result.map(Some).map_err(ReadErrorKind::InvalidTime)
    }
}

/// Checks row `i` one value at a time; returns its time.
fn check_row(
    fields: &FieldNames,
    i: usize,
    strings: [&StrSource<'_>; 5],
    time: &TimeSource<'_>,
) -> Result<i64, ReadErrorKind> {
    let [user_id, device_id, event_type, insert_id, page] = strings;
    let user = user_id.optional(&fields.user_id, i)?;
    let device = device_id.optional(&fields.device_id, i)?;
    if matches!((user, device), (Value::Null, Value::Null)) {
        return Err(missing_user(fields));
    }
    match event_type.value(i) {
        Value::Null => return Err(ReadErrorKind::MissingField(fields.event_type.clone())),
        Value::Str("") => return Err(ReadErrorKind::EmptyField(fields.event_type.clone())),
        Value::Str(s) => check_len(&fields.event_type, s)?,
        Value::Int(_) | Value::UInt(_) => {}
    }
    let ms = time.time_ms(i, &fields.time)?.ok_or_else(|| ReadErrorKind::MissingField(fields.time.clone()))?;
    insert_id.optional(&fields.insert_id, i)?;
    page.optional(&fields.page, i)?;
    Ok(ms)
}

/// Converts one batch into a chunk; bad rows are skipped (counted in
/// `skips`) or returned as the error.
fn decode_batch(
    plan: &Plan,
    batch: RecordBatch,
    first_row: u64,
    skips: &mut Skips,
    dictionaries: &mut Dictionaries,
) -> Result<EventChunk, ReadError> {
    let fields = &*plan.fields;
    let column = |name: &str| batch.column_by_name(name).map(|a| a.as_ref());
    let user_id = StrSource::new(column(&fields.user_id));
    let device_id = StrSource::new(column(&fields.device_id));
    let event_type = StrSource::new(column(&fields.event_type));
    let insert_id = StrSource::new(column(&fields.insert_id));
    let page = StrSource::new(column(&fields.page));
    let passive: Option<&BooleanArray> = column(&fields.passive).map(|a| a.as_boolean());
    let Some(time_array) = column(&fields.time) else {
        return Err(plan.error(None, ReadErrorKind::MissingColumn(fields.time.clone())));
    };
    let time = TimeSource::new(time_array);

    let rows = batch.num_rows();
    // The common case: column-wide checks prove every row valid.
    let quick = {
        let (user, device) = (user_id.summary(), device_id.summary());
        let event = event_type.summary();
        let all_ok = (user.every_row_present || device.every_row_present)
            && user.lengths_ok
            && device.lengths_ok
            && event.every_row_present
            && event.lengths_ok
            && insert_id.summary().lengths_ok
            && page.summary().lengths_ok;
        if all_ok { time.all_times() } else { None }
    };
    let bulk = quick.is_some();
    // Indexes of the rows kept, only once a row has been dropped.
    let mut kept: Option<Vec<usize>> = None;
    let time_ms = match quick {
        Some(time_ms) => time_ms,
        None => {
            let mut time_ms = Vec::with_capacity(rows);
            for i in 0..rows {
                match check_row(fields, i, [&user_id, &device_id, &event_type, &insert_id, &page], &time) {
                    Ok(ms) => {
                        time_ms.push(ms);
                        if let Some(kept) = &mut kept {
                            kept.push(i);
                        }
                    }
                    Err(kind) => {
                        skips.absorb(plan.error(Some(first_row + i as u64 + 1), kind))?;
                        kept.get_or_insert_with(|| (0..i).collect());
                    }
                }
            }
            time_ms
        }
    };
    let kept = kept.as_deref();
    let n = time_ms.len();
    let mut chunk = EventChunk {
        user_id: StrColumn::with_capacity(n, 0),
        device_id: StrColumn::with_capacity(n, 0),
        event_type: StrColumn::with_capacity(n, 0),
        time_ms,
        insert_id: StrColumn::with_capacity(n, 0),
        page: StrColumn::with_capacity(n, 0),
        passive: Vec::with_capacity(n),
        source_line: Vec::with_capacity(n),
    };
    user_id.append(&mut chunk.user_id, kept, rows, bulk, dictionaries);
    device_id.append(&mut chunk.device_id, kept, rows, bulk, dictionaries);
    event_type.append(&mut chunk.event_type, kept, rows, bulk, dictionaries);
    // Insert ids are the largest column (36-byte ids in the benchmark data) and
    // unique, so never dictionary-encoded: when every row is kept, the column
    // takes over Arrow's buffers below instead of copying them.
    let take_insert_ids = bulk && kept.is_none() && matches!(insert_id, StrSource::Utf8(_));
    if !take_insert_ids {
        insert_id.append(&mut chunk.insert_id, kept, rows, bulk, dictionaries);
    }
    page.append(&mut chunk.page, kept, rows, bulk, dictionaries);
    let passive_of = |i: usize| passive.is_some_and(|p| p.is_valid(i) && p.value(i));
    match kept {
        None => {
            chunk.passive.extend((0..rows).map(passive_of));
            chunk.source_line.extend((0..rows as u64).map(|i| first_row + i + 1));
        }
        Some(kept) => {
            chunk.passive.extend(kept.iter().map(|&i| passive_of(i)));
            chunk.source_line.extend(kept.iter().map(|&i| first_row + i as u64 + 1));
        }
    }
    if take_insert_ids {
        let index = batch.schema().index_of(&fields.insert_id).expect("the insert id column was read above");
        let (_, mut columns, _) = batch.into_parts();
        chunk.insert_id = take_utf8(columns.swap_remove(index));
    }
    Ok(chunk)
}

/// A plain UTF-8 array's rows as a column, taking over its values buffer when
/// nothing else holds it (the reader's batches are dropped once decoded), else
/// copying it.
fn take_utf8(array: ArrayRef) -> StrColumn {
    let strings = GenericStringArray::<i32>::from(array.to_data());
    drop(array);
    let (offsets, values, nulls) = strings.into_parts();
    let is_valid = |i: usize| nulls.as_ref().is_none_or(|nulls| nulls.is_valid(i));
    // A sliced array's offsets start past 0 (its buffer holds other rows): copied.
    let (first, offsets) = (offsets[0], offsets.inner().as_ref());
    let taken = match values.into_vec::<u8>() {
        Ok(bytes) if first == 0 => StrColumn::from_utf8_buffer(bytes, offsets, is_valid).map_err(Buffer::from_vec),
        Ok(bytes) => Err(Buffer::from_vec(bytes)),
        Err(shared) => Err(shared),
    };
    taken.unwrap_or_else(|values| {
        let mut column = StrColumn::with_capacity(offsets.len().saturating_sub(1), 0);
        column.extend_utf8(values.as_slice(), offsets, is_valid);
        column
    })
}
