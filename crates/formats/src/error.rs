//! Read and write errors. A read error always names its file, and its line
//! (or Parquet row) when it is about one event.

use crate::time::TimeError;

/// An error reading events, tied to a file and, for a bad event, its 1-based
/// line (NDJSON, CSV) or row (Parquet).
///
/// Displays as `path:line: message`, or `path: message` without a line.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {kind}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ReadError {
    /// The file as given, `<stdin>` for standard input.
    pub path: String,
    /// The 1-based line (NDJSON, CSV) or row (Parquet) of the bad event.
    pub line: Option<u64>,
    pub kind: ReadErrorKind,
}

impl ReadError {
    /// Whether the error is about one event (which `skip_invalid` may skip),
    /// rather than about the whole input.
    pub fn is_row_error(&self) -> bool {
        self.kind.is_row_error()
    }
}

/// What went wrong. Field and column names in messages are the configured
/// names (see `FieldNames`), so they match the user's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadErrorKind {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("line is longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("line is not a JSON object")]
    NotAnObject,
    #[error("duplicate field \"{0}\"")]
    DuplicateField(String),
    #[error("missing field \"{0}\"")]
    MissingField(String),
    #[error("field \"{0}\" is empty")]
    EmptyField(String),
    #[error("no user: neither \"{user_id}\" nor \"{device_id}\" is set to a non-empty value")]
    MissingUser { user_id: String, device_id: String },
    #[error("invalid time: {0}")]
    InvalidTime(TimeError),
    #[error("field \"{field}\" must be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("field \"{field}\" is longer than {limit} bytes")]
    FieldTooLong { field: String, limit: usize },
    #[error("CSV error: {0}")]
    Csv(String),
    #[error("Parquet error: {0}")]
    Parquet(String),
    #[error(
        "unknown file format \"{0}\": supported extensions are .ndjson, .jsonl, .json, .csv, .parquet and .pq (\"-\" reads NDJSON from standard input)"
    )]
    UnknownFormat(String),
    #[error("missing required column \"{0}\"")]
    MissingColumn(String),
    #[error("missing user column: need \"{user_id}\" or \"{device_id}\"")]
    MissingUserColumn { user_id: String, device_id: String },
    #[error("column \"{0}\" appears more than once")]
    DuplicateColumn(String),
}

impl ReadErrorKind {
    /// Whether the error is about one event rather than the whole input.
    pub fn is_row_error(&self) -> bool {
        !matches!(
            self,
            Self::Io(_)
                | Self::Parquet(_)
                | Self::UnknownFormat(_)
                | Self::MissingColumn(_)
                | Self::MissingUserColumn { .. }
                | Self::DuplicateColumn(_)
        )
    }
}

/// An error writing sessions or events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Includes a closed pipe (`EPIPE`) on standard output: the caller decides
    /// whether that is an error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("CSV error: {0}")]
    Csv(String),
    #[error("Parquet error: {0}")]
    Parquet(String),
    #[error(
        "unknown output format \"{0}\": supported extensions are .ndjson, .jsonl, .json, .csv, .parquet and .pq (\"-\" writes NDJSON to standard output)"
    )]
    UnknownFormat(String),
}

impl WriteError {
    /// Whether this is a closed pipe on the output (e.g. `| head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
