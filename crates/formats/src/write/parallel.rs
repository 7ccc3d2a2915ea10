//! The parallel session writer: every session at once, formatted on several
//! threads and written in order, so the bytes do not depend on the thread
//! count. NDJSON and CSV are formatted in blocks of rows; Parquet row groups
//! are encoded in parallel with arrow's `ArrowColumnWriter`, each column from
//! an Arrow array built row by row from the row group's rows.

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

    use arrow_array::ArrayRef;
    use arrow_schema::SchemaRef;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, compute_leaves};

    use super::super::parquet_out::{Builders, ROW_GROUP_ROWS, parquet_error, schema_and_properties};
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
            // Row by row into every column's builder: each row is built once
            // and visited while in cache.
            let mut builders = Builders::new(SessionRow::COLUMNS);
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
        array: &ArrayRef,
    ) -> Result<ArrowColumnChunk, WriteError> {
        for leaf in compute_leaves(schema.field(column), array).map_err(parquet_error)? {
            writer.write(&leaf).map_err(parquet_error)?;
        }
        writer.close().map_err(parquet_error)
    }
}
