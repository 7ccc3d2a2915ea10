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

use crate::{Store, StoreError};

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
pub fn check_data_dir(dir: &Path) -> Result<CheckReport, StoreError> {
    let store = Store::open_reader(dir);
    let result = store.and_then(|store| store.integrity_check());
    match result {
        Err(StoreError::Corrupt(message)) => Ok(CheckReport { problems: vec![message], pages: None }),
        other => other,
    }
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
