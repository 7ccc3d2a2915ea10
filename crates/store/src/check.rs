//! Integrity check of a data directory (`sessionizer check`): SQLite's own
//! `PRAGMA integrity_check`, which walks every page of every table and index
//! and cross-checks indexes against their tables.
//!
//! What it can see: any damage to the structure of the file (page headers,
//! cell pointers, free lists, overflow chains) and any disagreement between a
//! table and its indexes. What it cannot: SQLite keeps no checksum of a row, so
//! a flipped byte inside a stored value that no index covers reads back as a
//! different, well-formed value.

use std::path::Path;

use rusqlite::Connection;

use crate::{LOG_FILE, Store, StoreError};

/// Most problems listed (SQLite stops looking after this many).
pub const MAX_CHECK_PROBLEMS: usize = 100;

/// What [`check_data_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// SQLite's findings, at most [`MAX_CHECK_PROBLEMS`]; empty when the data is intact.
    pub problems: Vec<String>,
    /// Pages in the database; `None` when the file is too damaged to say.
    pub pages: Option<i64>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Runs `PRAGMA integrity_check` on this connection's snapshot.
    pub fn integrity_check(&self) -> Result<CheckReport, StoreError> {
        integrity_check(&self.conn)
    }
}

/// Checks the database in `dir` without writing to it (a running server may keep
/// using it: the check reads one consistent snapshot).
///
/// A file too damaged to open at all is a report with that one problem, not an
/// error: only a missing directory or database, or an I/O failure, is an error.
/// The ingest log (`LOG_FILE`), when there is one, is checked too; its
/// problems are prefixed with "ingest log: ".
pub fn check_data_dir(dir: &Path) -> Result<CheckReport, StoreError> {
    let store = Store::open_reader(dir);
    let result = store.and_then(|store| store.integrity_check());
    let mut report = match result {
        Err(StoreError::Corrupt(message)) => CheckReport { problems: vec![message], pages: None },
        other => other?,
    };
    let log = dir.join(LOG_FILE);
    if log.exists() {
        let checked = Connection::open_with_flags(&log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(StoreError::from)
            .and_then(|conn| integrity_check(&conn));
        let problems = match checked {
            Ok(log_report) => log_report.problems,
            Err(StoreError::Corrupt(message)) => vec![message],
            Err(error) => return Err(error),
        };
        report.problems.extend(problems.into_iter().map(|problem| format!("ingest log: {problem}")));
    }
    Ok(report)
}

fn integrity_check(conn: &Connection) -> Result<CheckReport, StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    let mut statement = conn.prepare(&format!("PRAGMA integrity_check({MAX_CHECK_PROBLEMS})"))?;
    let mut rows = statement.query([])?;
    let mut problems = Vec::new();
    while let Some(row) = rows.next()? {
        let line: String = row.get(0)?;
        if line != "ok" {
            problems.push(line);
        }
    }
    Ok(CheckReport { problems, pages: Some(pages) })
}
