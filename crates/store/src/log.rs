//! The ingest log: the write-optimised front of the store.
//!
//! An acknowledged event is first appended to `log_events` in its own SQLite
//! database (`LOG_FILE`, WAL, `synchronous = FULL`): a rowid table with no
//! index, so a group commit writes a few sequential pages whatever the events'
//! users or insert ids. Moving the events into `events` (with its indexes) and
//! updating the sessions happens afterwards, in large batches ordered by user
//! ([`crate::Batch::insert_logged_events`]), where many events share each index
//! page that the batch writes.
//!
//! Exactly once: the main database records the last log position it applied
//! (`log_applied`, in the same transaction as the events), so a crash between
//! applying and trimming the log re-applies nothing. Log positions become the
//! events' `seq`, so arrival order is kept.
//!
//! Two files, two write locks: appending to the log never waits for a batch
//! being applied to the main database.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    DB_FILE, EVENT_INSERT_COLUMNS, EVENT_INSERT_VALUES, NewEvent, StoreError, StoredEvent, bind_event, event_of_row,
    insert_id_stored, placeholders,
};

/// The ingest log's database file inside the data directory.
pub const LOG_FILE: &str = "ingest-log.db";

const LOG_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS log_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project INTEGER NOT NULL,
        user_kind INTEGER NOT NULL,
        user_key TEXT NOT NULL,
        user_id TEXT,
        device_id TEXT,
        event_type TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        insert_id TEXT,
        page TEXT,
        passive INTEGER NOT NULL,
        properties TEXT,
        received_ms INTEGER NOT NULL,
        client_session_id TEXT,
        platform TEXT,
        ip TEXT
    );
";

/// The appending side of the ingest log, with a read-only connection to the
/// main database for dedup probes. One per data directory (the server's
/// acknowledging thread).
#[derive(Debug)]
pub struct IngestLog {
    log: Connection,
    main: Connection,
}

/// An insert id the log holds that may not be applied yet: the dedup filter
/// in front of the main database's index is rebuilt from these at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedInsertId {
    pub seq: i64,
    pub project: i64,
    pub insert_id: String,
}

impl IngestLog {
    /// Opens (creating if needed) the log of the store in `dir`, which must
    /// already exist (`Store::open` creates and migrates it). Drops the log
    /// rows the main database has applied.
    pub fn open(dir: &Path) -> Result<IngestLog, StoreError> {
        let main = Connection::open_with_flags(
            dir.join(DB_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        main.busy_timeout(std::time::Duration::from_secs(10))?;
        main.pragma_update(None, "cache_size", -65_536)?;
        let log = open_log_connection(dir)?;
        let ingest_log = IngestLog { log, main };
        let applied = ingest_log.applied_seq()?;
        // New positions continue after every stored event's (events stored
        // without the log numbered themselves; a lost log file restarts after them).
        let floor: i64 = ingest_log.main.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| row.get(0))?;
        let floor = floor.max(applied);
        let tx = ingest_log.log.unchecked_transaction()?;
        tx.execute("DELETE FROM log_events WHERE seq <= ?1", params![applied])?;
        let next: Option<i64> = tx
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'log_events'", [], |row| row.get(0))
            .optional()?;
        match next {
            Some(seq) if seq >= floor => {}
            Some(_) => {
                tx.execute("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'log_events'", params![floor])?;
            }
            None => {
                tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('log_events', ?1)", params![floor])?;
            }
        }
        tx.commit()?;
        Ok(ingest_log)
    }

    /// The last log position the main database has applied.
    pub fn applied_seq(&self) -> Result<i64, StoreError> {
        applied_seq(&self.main)
    }

    /// The insert ids of the log rows after `after`, in log order.
    pub fn insert_ids_after(&self, after: i64) -> Result<Vec<LoggedInsertId>, StoreError> {
        let mut statement = self.log.prepare_cached(
            "SELECT seq, project, insert_id FROM log_events WHERE seq > ?1 AND insert_id IS NOT NULL ORDER BY seq",
        )?;
        let rows = statement.query_map(params![after], |row| {
            Ok(LoggedInsertId { seq: row.get(0)?, project: row.get(1)?, insert_id: row.get(2)? })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The last position appended to the log (0 for none).
    pub fn last_seq(&self) -> Result<i64, StoreError> {
        Ok(self.log.query_row("SELECT coalesce(max(seq), 0) FROM log_events", [], |row| row.get(0))?)
    }

    /// For each `(project, insert_id)`, whether the main database holds an
    /// event with it; one read snapshot for all, begun when this is called.
    pub fn stored_in_main(&mut self, keys: &[(i64, &str)]) -> Result<Vec<bool>, StoreError> {
        let tx = self.main.transaction()?;
        let mut found = Vec::with_capacity(keys.len());
        for (project, insert_id) in keys {
            found.push(insert_id_stored(&tx, *project, insert_id)?);
        }
        tx.finish()?;
        Ok(found)
    }

    /// Appends `events` in one transaction, durable (fsync) on return, after
    /// dropping the rows at or before `trim_through` (already applied).
    /// Returns the log position of each event, in order.
    pub fn append(&mut self, events: &[(i64, &NewEvent)], trim_through: Option<i64>) -> Result<Vec<i64>, StoreError> {
        let tx = self.log.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(seq) = trim_through {
            tx.execute("DELETE FROM log_events WHERE seq <= ?1", params![seq])?;
        }
        let mut positions = Vec::with_capacity(events.len());
        {
            let mut statement = tx.prepare_cached(&format!(
                "INSERT INTO log_events ({EVENT_INSERT_COLUMNS}) VALUES ({})",
                placeholders(1, EVENT_INSERT_VALUES)
            ))?;
            for (project, event) in events {
                bind_event(&mut statement, 1, *project, &event.user_key(), event)?;
                statement.raw_execute()?;
                positions.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(positions)
    }
}

/// A connection to the log database, created with its table if missing.
pub(crate) fn open_log_connection(dir: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(dir.join(LOG_FILE))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL + FULL: an append returns only once its frames are fsync'd.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(LOG_SCHEMA)?;
    Ok(conn)
}

pub(crate) fn applied_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT seq FROM log_applied", [], |row| row.get(0))?)
}

/// The applying side's view of the ingest log: reads what the acknowledging
/// side appended (a connection of its own, so reading never holds the log's
/// write lock).
#[derive(Debug)]
pub struct LogReader {
    log: Connection,
}

impl LogReader {
    /// Opens the log of the store in `dir` (created by [`IngestLog::open`] if missing).
    pub fn open(dir: &Path) -> Result<LogReader, StoreError> {
        Ok(LogReader { log: open_log_connection(dir)? })
    }

    /// At most `limit` log rows after position `after`, in log order, each
    /// with its project.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
        let mut statement = self.log.prepare_cached(
            "SELECT seq, user_id, device_id, event_type, time_ms, insert_id, page, passive, properties, \
             received_ms, client_session_id, platform, ip, project FROM log_events WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit as i64], |row| Ok((row.get(13)?, event_of_row(row)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
