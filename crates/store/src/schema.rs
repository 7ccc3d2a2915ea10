//! The database schema and its migrations, numbered by `PRAGMA user_version`.

use rusqlite::Connection;

use crate::StoreError;

/// One step of the schema: SQL, or code for what SQL cannot compute.
enum Migration {
    Sql(&'static str),
    Code(fn(&Connection) -> Result<(), StoreError>),
}

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[Migration] = &[
    // 1: projects, keys, events, sessions, session changes.
    Migration::Sql(
        "
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        public_id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        settings TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        key_hash BLOB PRIMARY KEY,
        project INTEGER NOT NULL REFERENCES projects(id),
        role TEXT NOT NULL CHECK (role IN ('write', 'read')),
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    -- The event log: the source of truth. seq orders arrival.
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        project INTEGER NOT NULL,
        user_kind INTEGER NOT NULL,   -- 0: user_key is a user id; 1: a device id
        user_key TEXT NOT NULL,
        user_id TEXT,
        device_id TEXT,
        event_type TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        insert_id TEXT,
        page TEXT,
        passive INTEGER NOT NULL,
        properties TEXT,
        received_ms INTEGER NOT NULL
    );
    -- Dedup: one event per (project, insert_id), forever.
    CREATE UNIQUE INDEX events_insert_id ON events (project, insert_id) WHERE insert_id IS NOT NULL;
    CREATE INDEX events_user_time ON events (project, user_kind, user_key, time_ms);
    CREATE INDEX events_time ON events (project, time_ms);
    CREATE INDEX events_device ON events (project, device_id) WHERE device_id IS NOT NULL;
    -- Derived from events; can always be rebuilt.
    CREATE TABLE sessions (
        project INTEGER NOT NULL,
        user_kind INTEGER NOT NULL,
        user_key TEXT NOT NULL,
        session_id INTEGER NOT NULL,  -- the start, in epoch ms
        session_uid TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        last_event_ms INTEGER NOT NULL,
        event_count INTEGER NOT NULL,
        end_reason TEXT,
        concluded INTEGER NOT NULL,
        entry_event_type TEXT NOT NULL,
        entry_page TEXT,
        exit_event_type TEXT NOT NULL,
        exit_page TEXT,
        revision INTEGER NOT NULL,
        PRIMARY KEY (project, user_kind, user_key, session_id)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_start ON sessions (project, start_ms);
    -- Every change to a session, in order; seq is the session's revision.
    CREATE TABLE session_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project INTEGER NOT NULL,
        kind TEXT NOT NULL,
        user_kind INTEGER NOT NULL,
        user_key TEXT NOT NULL,
        session_id INTEGER NOT NULL,
        session_uid TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        last_event_ms INTEGER NOT NULL,
        event_count INTEGER NOT NULL,
        end_reason TEXT,
        superseded_by TEXT,
        raised_at_ms INTEGER NOT NULL
    );
    ",
    ),
    // 2: what SDKs send besides the event: their own session id, the platform, the client address.
    Migration::Sql(
        "
    ALTER TABLE events ADD COLUMN client_session_id TEXT;
    ALTER TABLE events ADD COLUMN platform TEXT;
    ALTER TABLE events ADD COLUMN ip TEXT;
    ",
    ),
    // 3: the query API: whether a change left the session concluded (the board
    // counts open sessions from the change feed), the feed per project, and
    // sessions and their history by uid.
    Migration::Sql(
        "
    ALTER TABLE session_changes ADD COLUMN concluded INTEGER;
    UPDATE session_changes SET concluded = (kind = 'concluded' OR end_reason IS NOT NULL);
    CREATE INDEX session_changes_project ON session_changes (project, seq);
    CREATE INDEX session_changes_uid ON session_changes (project, session_uid);
    CREATE INDEX sessions_uid ON sessions (project, session_uid);
    ",
    ),
    // 4: time in the foreground (app lifecycle rules). NULL in rows written
    // before: those sessions had no lifecycle rules, so it is their length,
    // which readers substitute; no rewrite of existing rows. (Version 4 in
    // databases already written: it must stay before the index.)
    Migration::Sql(
        "
    ALTER TABLE sessions ADD COLUMN active_ms INTEGER;
    ALTER TABLE session_changes ADD COLUMN active_ms INTEGER;
    ",
    ),
    // 5: where the writer's replay begins at start-up without scanning every
    // session: the sessions at least an hour long (`LONG_SESSION_MS`), by last
    // event. Partial, so amending a shorter session writes no entry here.
    Migration::Sql(
        "
    CREATE INDEX sessions_long ON sessions (project, last_event_ms, start_ms)
        WHERE last_event_ms - start_ms >= 3600000;
    ",
    ),
    // 6: the ingest log (log.rs): the last log position applied to this
    // database, committed with the events it moved. Log positions continue
    // after the events already stored.
    Migration::Sql(
        "
    CREATE TABLE log_applied (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        seq INTEGER NOT NULL
    );
    INSERT INTO log_applied (id, seq) VALUES (0, (SELECT coalesce(max(seq), 0) FROM events));
    ",
    ),
    // 7: the two indexes written at random places by every event and every
    // session change keyed by 64-bit integers instead of 36-byte text:
    // deduplication by a hash of the insert id (`insert_id_stored`; not
    // unique, as hashes may collide: the ids are compared), and a session's
    // history by the head of its uid (`uid_head`).
    Migration::Code(integer_keys),
];

/// Brings the schema to the newest version, in one transaction per step.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Brings the schema to version `target` (tests build older versions with it).
pub(crate) fn migrate_to(conn: &Connection, target: usize) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().take(target).skip(found as usize) {
        let version = version as i64 + 1;
        match migration {
            Migration::Sql(sql) => {
                conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"))?;
            }
            Migration::Code(step) => {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                let done = step(conn)
                    .and_then(|()| Ok(conn.execute_batch(&format!("PRAGMA user_version = {version}; COMMIT;"))?));
                if done.is_err() {
                    // The step failed inside its transaction: leave the database as it was.
                    drop(conn.execute_batch("ROLLBACK"));
                }
                done?;
            }
        }
    }
    Ok(())
}

/// Rows read per statement while filling a new column (bounds the memory of
/// a migration of any size).
pub(crate) const FILL_CHUNK_ROWS: usize = 50_000;

/// Version 7: fills `events.insert_hash` and `session_changes.session_uid_head`
/// for the stored rows, indexes them and drops the text indexes they replace.
fn integer_keys(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "ALTER TABLE events ADD COLUMN insert_hash INTEGER;
         ALTER TABLE session_changes ADD COLUMN session_uid_head INTEGER;",
    )?;
    fill_column(conn, "events", "insert_id", "insert_hash", |insert_id| Ok(crate::insert_hash(insert_id)))?;
    fill_column(conn, "session_changes", "session_uid", "session_uid_head", |uid| {
        Ok(crate::uid_head(&crate::parse_uid(uid)?))
    })?;
    conn.execute_batch(
        "CREATE INDEX events_insert_hash ON events (project, insert_hash) WHERE insert_hash IS NOT NULL;
         DROP INDEX events_insert_id;
         CREATE INDEX session_changes_uid_head ON session_changes (project, session_uid_head);
         DROP INDEX session_changes_uid;",
    )?;
    Ok(())
}

/// Sets `target` to `derive(source)` in every row of `table` (keyed by `seq`)
/// whose `source` is not NULL, in chunks of `FILL_CHUNK_ROWS`.
fn fill_column(
    conn: &Connection,
    table: &str,
    source: &str,
    target: &str,
    derive: impl Fn(&str) -> Result<i64, StoreError>,
) -> Result<(), StoreError> {
    let mut select = conn.prepare(&format!(
        "SELECT seq, {source} FROM {table} WHERE seq > ?1 AND {source} IS NOT NULL ORDER BY seq LIMIT ?2"
    ))?;
    let mut update = conn.prepare(&format!("UPDATE {table} SET {target} = ?1 WHERE seq = ?2"))?;
    let mut after = i64::MIN;
    loop {
        let chunk: Vec<(i64, String)> = select
            .query_map(rusqlite::params![after, FILL_CHUNK_ROWS as i64], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(&(last, _)) = chunk.last() else { break };
        for (seq, value) in &chunk {
            update.execute(rusqlite::params![derive(value)?, seq])?;
        }
        after = last;
    }
    Ok(())
}
