//! The parallel session writer: every session at once, formatted on several
//! threads and written in order, so the bytes do not depend on the thread
//! count. NDJSON and CSV are formatted in blocks of rows; Parquet row groups
//! are encoded in parallel with arrow's `ArrowColumnWriter`, each column from
//! an Arrow array built straight from the row group's rows.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{Row, SessionRow, WriteError, csv_error, write_csv_row, write_json_row};
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
    match path.filter(|path| *path != Path::new("-")) {
        None => write_text(Box::new(std::io::stdout()), Text::Ndjson, count, row, threads),
        Some(path) => {
            let format =
                FileFormat::from_path(path).map_err(|_| WriteError::UnknownFormat(path.display().to_string()))?;
            session_rows_to(format, Box::new(File::create(path)?), count, row, threads)
        }
    }
}

/// [`write_session_rows`] in `format` to any byte sink.
pub fn session_rows_to<'a>(
    format: FileFormat,
    out: Box<dyn Write + Send>,
    count: usize,
    row: &(dyn Fn(usize) -> SessionRow<'a> + Sync),
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

/// Rows formatted by one task: enough to amortise a task, few enough that a
/// wave of blocks stays a few megabytes.
const TEXT_BLOCK_ROWS: usize = 16 * 1024;

fn write_text<'a>(
    mut out: Box<dyn Write + Send>,
    text: Text,
    count: usize,
    row: &(dyn Fn(usize) -> SessionRow<'a> + Sync),
    threads: usize,
) -> Result<(), WriteError> {
    if text == Text::Csv {
        let mut header = csv::Writer::from_writer(Vec::new());
        header.write_record(SessionRow::COLUMNS.iter().map(|(name, _)| name)).map_err(csv_error)?;
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
    in_waves(count.div_ceil(TEXT_BLOCK_ROWS), threads, render, |bytes| Ok(out.write_all(&bytes?)?))?;
    out.flush()?;
    Ok(())
}

/// Computes `make(i)` for `i` in `0..count`, `threads` at a time on scoped
/// threads, and hands each result to `take` in order: the output follows the
/// input order, and memory holds one wave of results.
fn in_waves<T: Send>(
    count: usize,
    threads: usize,
    make: impl Fn(usize) -> T + Sync,
    mut take: impl FnMut(T) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let mut start = 0;
    while start < count {
        let wave = start..(start + threads).min(count);
        start = wave.end;
        let results: Vec<T> = if wave.len() == 1 {
            vec![make(wave.start)]
        } else {
            std::thread::scope(|scope| {
                let make = &make;
                let handles: Vec<_> = wave.map(|i| scope.spawn(move || make(i))).collect();
                handles.into_iter().map(|handle| handle.join().expect("formatting thread panicked")).collect()
            })
        };
        for result in results {
            take(result)?;
        }
    }
    Ok(())
}

#[cfg(feature = "parquet")]
mod parquet_rows {
    //! Parquet: each row group is one task (its rows gathered once, then
    //! every column built and encoded); a wave of `threads` row groups is
    //! encoded at once, then appended to the file in order.

    use std::io::Write;
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray, UInt64Array};
    use arrow_schema::SchemaRef;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, compute_leaves};

    use super::super::parquet_out::{ROW_GROUP_ROWS, parquet_error, schema_and_properties};
    use super::{Row, SessionRow, WriteError, in_waves};

    pub(super) fn write<'a>(
        out: Box<dyn Write + Send>,
        count: usize,
        row: &(dyn Fn(usize) -> SessionRow<'a> + Sync),
        threads: usize,
    ) -> Result<(), WriteError> {
        let (schema, properties) = schema_and_properties(SessionRow::COLUMNS);
        // Through `ArrowWriter` so the file carries the Arrow schema, as the row writer's does.
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(properties)).map_err(parquet_error)?;
        let (mut file, factory) = writer.into_serialized_writer().map_err(parquet_error)?;
        let groups = count.div_ceil(ROW_GROUP_ROWS);
        let encode = |group: usize| -> Result<Vec<ArrowColumnChunk>, WriteError> {
            let writers = factory.create_column_writers(group).map_err(parquet_error)?;
            let rows: Vec<SessionRow<'a>> =
                (group * ROW_GROUP_ROWS..((group + 1) * ROW_GROUP_ROWS).min(count)).map(row).collect();
            writers
                .into_iter()
                .enumerate()
                .map(|(column, writer)| encode_chunk(writer, &schema, column, &rows))
                .collect()
        };
        in_waves(groups, threads, encode, |chunks| {
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
        rows: &[SessionRow<'_>],
    ) -> Result<ArrowColumnChunk, WriteError> {
        for leaf in compute_leaves(schema.field(column), &column_array(column, rows)).map_err(parquet_error)? {
            writer.write(&leaf).map_err(parquet_error)?;
        }
        writer.close().map_err(parquet_error)
    }

    /// The column at `index` in [`SessionRow::COLUMNS`] of `rows`.
    fn column_array<'a>(index: usize, rows: &[SessionRow<'a>]) -> ArrayRef {
        let optional = |field: fn(&SessionRow<'a>) -> Option<&'a str>| -> ArrayRef {
            Arc::new(rows.iter().map(field).collect::<StringArray>())
        };
        let required = |field: fn(&SessionRow<'a>) -> &'a str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(field)))
        };
        let int = |field: fn(&SessionRow<'a>) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(field)))
        };
        match SessionRow::COLUMNS[index].0 {
            "user_id" => optional(|r| r.user_id),
            "device_id" => optional(|r| r.device_id),
            "session_id" => int(|r| r.session_id),
            "session_uid" => required(|r| r.session_uid),
            "start_ms" => int(|r| r.start_ms),
            "end_ms" => int(|r| r.end_ms),
            "length_ms" => int(|r| r.length_ms),
            "active_ms" => int(|r| r.active_ms),
            "event_count" => Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.event_count))),
            "end_reason" => required(|r| r.end_reason),
            "entry_event_type" => required(|r| r.entry_event_type),
            "entry_page" => optional(|r| r.entry_page),
            "exit_event_type" => required(|r| r.exit_event_type),
            "exit_page" => optional(|r| r.exit_page),
            other => unreachable!("SessionRow has no column {other}"),
        }
    }
}
