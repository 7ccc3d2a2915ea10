//! The parallel writer of sessions and events: every row at once, formatted on several
//! threads and written in order, so the bytes do not depend on the thread
//! count. NDJSON and CSV are formatted in blocks of rows; Parquet row groups
//! are encoded in parallel with arrow's `ArrowColumnWriter`, each column from
//! an Arrow array built row by row from the row group's rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use super::{EventRow, Row, SessionRow, WriteError, csv_error, write_csv_row, write_json_row};
use crate::read::FileFormat;

/// Writes `count` sessions, session `i` being `row(i)`, to `path` in the
/// format of its extension, or NDJSON to standard output for `None` or `-`.
/// Rows are formatted (and, for Parquet, encoded) on up to `threads` threads,
/// each calling `row` for its own rows; the bytes are the same as
/// [`crate::create_session_writer`]'s for the same rows, whatever the thread
/// count.
pub fn write_session_rows<'a>(
    path: Option<&Path>,
    count: usize,
    row: &(dyn Fn(usize) -> SessionRow<'a> + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    write_rows(path, count, row, threads)
}

/// [`write_session_rows`] for events: the same bytes as
/// [`crate::create_event_writer`]'s for the same rows.
pub fn write_event_rows<'a>(
    path: Option<&Path>,
    count: usize,
    row: &(dyn Fn(usize) -> EventRow<'a> + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    write_rows(path, count, row, threads)
}

fn write_rows<R: Row>(
    path: Option<&Path>,
    count: usize,
    row: &(dyn Fn(usize) -> R + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    match path.filter(|path| *path != Path::new("-")) {
        None => write_text(Box::new(std::io::stdout()), Text::Ndjson, count, row, threads),
        Some(path) => {
            let format =
                FileFormat::from_path(path).map_err(|_| WriteError::UnknownFormat(path.display().to_string()))?;
            rows_to(format, Box::new(File::create(path)?), count, row, threads)
        }
    }
}

/// [`write_rows`] in `format` to any byte sink.
fn rows_to<R: Row>(
    format: FileFormat,
    out: Box<dyn Write + Send>,
    count: usize,
    row: &(dyn Fn(usize) -> R + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    let threads = threads.max(1);
    match format {
        FileFormat::Ndjson => write_text(out, Text::Ndjson, count, row, threads),
        FileFormat::Csv => write_text(out, Text::Csv, count, row, threads),
        #[cfg(feature = "parquet")]
        FileFormat::Parquet => parquet_rows::write(out, count, row, threads),
        #[cfg(not(feature = "parquet"))]
        FileFormat::Parquet => {
            Err(WriteError::Parquet("this build has no Parquet support (cargo feature \"parquet\")".to_owned()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Ndjson,
    Csv,
}

/// Rows formatted by one task: enough to amortise a task, few enough that
/// the blocks in flight stay a few megabytes.
const TEXT_BLOCK_ROWS: usize = 16 * 1024;

fn write_text<R: Row>(
    mut out: Box<dyn Write + Send>,
    text: Text,
    count: usize,
    row: &(dyn Fn(usize) -> R + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    if text == Text::Csv {
        let mut header = csv::Writer::from_writer(Vec::new());
        header.write_record(R::COLUMNS.iter().map(|(name, _)| name)).map_err(csv_error)?;
        out.write_all(&header.into_inner().map_err(|e| WriteError::Io(e.into_error()))?)?;
    }
    let render = |block: usize| -> Result<Vec<u8>, WriteError> {
        let rows = block * TEXT_BLOCK_ROWS..((block + 1) * TEXT_BLOCK_ROWS).min(count);
        match text {
            Text::Ndjson => {
                let mut buffer = Vec::with_capacity(rows.len() * 512);
                for i in rows {
                    write_json_row(&mut buffer, &row(i))?;
                }
                Ok(buffer)
            }
            Text::Csv => {
                let mut writer = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 384));
                for i in rows {
                    write_csv_row(&mut writer, &row(i))?;
                }
                writer.into_inner().map_err(|e| WriteError::Io(e.into_error()))
            }
        }
    };
    in_order(count.div_ceil(TEXT_BLOCK_ROWS), threads, render, |bytes| Ok(out.write_all(&bytes?)?))?;
    out.flush()?;
    Ok(())
}

/// Computes `make(i)` for `i` in `0..count` on `threads` scoped threads, each
/// taking the next index as soon as it is free, and hands each result to
/// `take` in order on the calling thread: the output follows the input order,
/// and at most `IN_FLIGHT_PER_THREAD × threads` results wait in memory.
/// (Waves of `threads` tasks, joined before the next, left a thread idle
/// whenever the tasks were uneven or did not divide among the threads.)
fn in_order<T: Send>(
    count: usize,
    threads: usize,
    make: impl Fn(usize) -> T + Sync,
    mut take: impl FnMut(T) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    if threads <= 1 || count <= 1 {
        return (0..count).try_for_each(|i| take(make(i)));
    }
    let window = IN_FLIGHT_PER_THREAD * threads;
    let next = AtomicUsize::new(0);
    let state = Mutex::new(Pipeline { ready: BTreeMap::new(), taken: 0, stopped: false });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(count) {
            scope.spawn(|| {
                // A panic in `make` must not leave the consumer waiting for its result.
                let _stop_on_panic = StopOnPanic { state: &state, changed: &changed };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let mut pipeline = lock();
                    while i >= pipeline.taken + window && !pipeline.stopped {
                        pipeline = changed.wait(pipeline).unwrap_or_else(PoisonError::into_inner);
                    }
                    if pipeline.stopped {
                        break;
                    }
                    drop(pipeline);
                    let result = make(i);
                    lock().ready.insert(i, result);
                    changed.notify_all();
                }
            });
        }
        let mut outcome = Ok(());
        for i in 0..count {
            let mut pipeline = lock();
            let result = loop {
                if let Some(result) = pipeline.ready.remove(&i) {
                    break Some(result);
                }
                if pipeline.stopped {
                    break None;
                }
                pipeline = changed.wait(pipeline).unwrap_or_else(PoisonError::into_inner);
            };
            drop(pipeline);
            // `None`: a worker panicked; the scope re-raises its panic.
            let Some(result) = result else { break };
            outcome = take(result);
            let mut pipeline = lock();
            pipeline.taken = i + 1;
            pipeline.stopped |= outcome.is_err();
            drop(pipeline);
            changed.notify_all();
            if outcome.is_err() {
                break;
            }
        }
        outcome
    })
}

/// Tasks a thread of [`in_order`] may run ahead of the consumer.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// The state [`in_order`]'s threads share.
struct Pipeline<T> {
    /// Finished results not yet taken, by index.
    ready: BTreeMap<usize, T>,
    /// Results taken so far.
    taken: usize,
    /// The consumer failed or a worker panicked: no more work.
    stopped: bool,
}

/// Stops the pipeline when a worker unwinds.
struct StopOnPanic<'a, T> {
    state: &'a Mutex<Pipeline<T>>,
    changed: &'a Condvar,
}

impl<T> Drop for StopOnPanic<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.state.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
            self.changed.notify_all();
        }
    }
}

#[cfg(feature = "parquet")]
mod parquet_rows {
    //! Parquet: each row group is one task (its rows gathered once, then
    //! every column built and encoded), `threads` row groups encoded at once
    //! and appended to the file in order.

    use std::io::Write;

    use arrow_array::ArrayRef;
    use arrow_schema::SchemaRef;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, compute_leaves};

    use super::super::parquet_out::{Builders, ROW_GROUP_ROWS, parquet_error, schema_and_properties};
    use super::{Row, WriteError, in_order};

    pub(super) fn write<R: Row>(
        out: Box<dyn Write + Send>,
        count: usize,
        row: &(dyn Fn(usize) -> R + Sync),
        threads: usize,
    ) -> Result<(), WriteError> {
        let (schema, properties) = schema_and_properties(R::COLUMNS);
        // Through `ArrowWriter` so the file carries the Arrow schema, as the row writer's does.
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(properties)).map_err(parquet_error)?;
        let (mut file, factory) = writer.into_serialized_writer().map_err(parquet_error)?;
        let groups = count.div_ceil(ROW_GROUP_ROWS);
        let encode = |group: usize| -> Result<Vec<ArrowColumnChunk>, WriteError> {
            let writers = factory.create_column_writers(group).map_err(parquet_error)?;
            // Row by row into every column's builder: each row is built once
            // and visited while in cache.
            let mut builders = Builders::new(R::COLUMNS);
            for i in group * ROW_GROUP_ROWS..((group + 1) * ROW_GROUP_ROWS).min(count) {
                builders.push(&row(i))?;
            }
            writers
                .into_iter()
                .zip(builders.finish())
                .enumerate()
                .map(|(column, (writer, array))| encode_chunk(writer, &schema, column, &array))
                .collect()
        };
        in_order(groups, threads, encode, |chunks| {
            let mut row_group = file.next_row_group().map_err(parquet_error)?;
            for chunk in chunks? {
                chunk.append_to_row_group(&mut row_group).map_err(parquet_error)?;
            }
            row_group.close().map_err(parquet_error)?;
            Ok(())
        })?;
        let mut out = file.into_inner().map_err(parquet_error)?;
        out.flush()?;
        Ok(())
    }

    fn encode_chunk(
        mut writer: ArrowColumnWriter,
        schema: &SchemaRef,
        column: usize,
        array: &ArrayRef,
    ) -> Result<ArrowColumnChunk, WriteError> {
        for leaf in compute_leaves(schema.field(column), array).map_err(parquet_error)? {
            writer.write(&leaf).map_err(parquet_error)?;
        }
        writer.close().map_err(parquet_error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{IN_FLIGHT_PER_THREAD, WriteError, in_order};

    /// Uneven work: task `i` spins for a time that depends on `i`, then returns `i`.
    fn uneven(i: usize) -> usize {
        let spins = (i * 7919) % 5000;
        (0..spins).fold(i, |acc, x| std::hint::black_box(acc ^ x)) ^ (0..spins).fold(0, |acc, x| acc ^ x)
    }

    #[test]
    fn results_are_taken_in_order_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            for count in [0, 1, 2, 5, 64] {
                let mut taken = Vec::new();
                in_order(count, threads, uneven, |value| {
                    taken.push(value);
                    Ok(())
                })
                .unwrap();
                assert_eq!(taken, (0..count).collect::<Vec<_>>(), "threads {threads}, count {count}");
            }
        }
    }

    #[test]
    fn workers_run_at_most_a_window_ahead_of_the_consumer() {
        let threads = 3;
        let made = AtomicUsize::new(0);
        let mut taken = 0;
        in_order(
            200,
            threads,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i| {
                // Everything made so far was started below taken + window.
                assert!(made.load(Ordering::SeqCst) <= taken + IN_FLIGHT_PER_THREAD * threads + threads, "at {i}");
                taken += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(taken, 200);
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_work_and_is_returned() {
        let made = AtomicUsize::new(0);
        let result = in_order(
            10_000,
            2,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i| if i == 3 { Err(WriteError::Parquet("stop".to_owned())) } else { Ok(()) },
        );
        assert!(matches!(result, Err(WriteError::Parquet(message)) if message == "stop"));
        assert!(made.load(Ordering::SeqCst) < 100, "the workers stopped early");
    }

    #[test]
    fn a_panicking_task_panics_the_caller_instead_of_hanging_it() {
        let outcome = std::panic::catch_unwind(|| {
            in_order(
                50,
                2,
                |i| {
                    assert!(i != 7, "task 7 fails");
                    i
                },
                |_| Ok(()),
            )
        });
        assert!(outcome.is_err());
    }
}
