//! Event and session file formats: NDJSON, CSV and Parquet.
//!
//! Readers turn files into [`EventChunk`]s: plain columns, no per-row allocation,
//! every row validated and every error tied to a file and a line (or row).
//! Writers turn borrowed [`SessionRow`]s and [`EventRow`]s into files.
//!
//! This crate knows file formats and nothing about session semantics: it never
//! decides what a session is. The CLI (and later the server's exports) compose it
//! with `sessionizer-engine`.
//!
//! # Layout
//! * `columns`: [`StrColumn`] and [`EventChunk`], the columnar form of events.
//! * `time`: parsing of event times (epoch ms, epoch s, ISO-8601).
//! * `read`: [`open_event_reader`] and the per-format readers.
//! * `write`: [`create_session_writer`], [`create_event_writer`], and the
//!   parallel [`write_session_rows`] and [`write_event_rows`].

mod columns;
mod error;
mod limits;
mod read;
mod time;
mod write;

pub use columns::{EventChunk, StrColumn};
pub use error::{ReadError, ReadErrorKind, WriteError};
pub use limits::{CHUNK_BYTES, CHUNK_ROWS, MAX_FIELD_BYTES, MAX_LINE_BYTES};
pub use read::{EventReader, FieldNames, FileFormat, ParsedEvent, ReadOptions, open_event_reader, parse_ndjson_line};
pub use time::{
    EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS, TimeError, parse_event_time, parse_event_time_int, parse_event_time_number,
    parse_event_time_u64,
};
pub use write::{
    EventRow, EventSink, SessionRow, SessionSink, StoredEventRow, StoredEventSink, create_event_writer,
    create_session_writer, session_writer_to, stored_event_writer_to, write_event_rows, write_session_rows,
};
