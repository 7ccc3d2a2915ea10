//! sessionizer's durable storage: projects and their keys, every accepted
//! event, and the sessions derived from them, in one SQLite database.
//!
//! Events are the source of truth; sessions are a derived, mutable table
//! that [`Store::rebuild_project`] can always recompute from the events.
//! An event's session is not stored on the event: it is the session of the
//! same user whose `[start_ms, last_event_ms]` holds the event's time (the
//! engine guarantees that no other non-excluded event falls in that range),
//! found by an as-of lookup. Late events that merge or move sessions so never
//! rewrite event rows.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL`, so a
//! committed [`Batch`] is on disk when `commit` returns. Callers group many
//! requests into one batch (group commit) and acknowledge only after it.

pub mod board;
mod check;
mod keys;
mod log;
mod queries;
mod rebuild;
mod schema;
mod settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use sessionizer_engine::{ChangeKind, Event, EventClass, EventClassifier, SessionChange, SessionRecord, UserKey};
use uuid::Uuid;

pub use board::{Board, BoardFigures, BoardSession, CohortFilter, DayFigures, SESSIONS_PER_USER_BUCKETS};
pub use check::{CheckReport, MAX_CHECK_PROBLEMS, check_data_dir};
pub use keys::{KeyHash, KeyRole, MAX_KEY_BYTES, constant_time_eq, generate as generate_key, hash_key, random_hex};
pub use log::{IngestLog, LOG_FILE, LogReader, LoggedInsertId};
pub use queries::{ChangeRecord, SessionCursor, SessionFilter};
pub use rebuild::sessionize_stored;
pub use settings::{PlatformSettings, ProjectSettings, SESSION_SOURCES};

/// The database file inside the data directory.
pub const DB_FILE: &str = "sessionizer.db";

/// Longest project name accepted.
pub const MAX_PROJECT_NAME_BYTES: usize = 200;

/// Sessions whose last event is at least this long after their start are in
/// the partial index `sessions_long` (schema v5), which finds the long sessions
/// still reaching the replay floor at start-up. Only such sessions pay for an
/// index write when they are amended: most sessions are shorter.
const LONG_SESSION_MS: i64 = 60 * 60 * 1000;
/// The sessions of `earliest_start_of_sessions_ending_since` that start at or
/// after `?2` (`?3 - LONG_SESSION_MS`): a walk of `sessions_start` in start order.
const REPLAY_FLOOR_RECENT_SQL: &str = "SELECT start_ms FROM sessions WHERE project = ?1 AND start_ms >= ?2 \
                                       AND last_event_ms >= ?3 ORDER BY start_ms LIMIT 1";
/// The long ones, from `sessions_long`. Its condition is spelled exactly as in
/// the index's definition: SQLite uses a partial index only then.
const REPLAY_FLOOR_LONG_SQL: &str = "SELECT min(start_ms) FROM sessions WHERE project = ?1 \
                                     AND last_event_ms >= ?2 AND last_event_ms - start_ms >= 3600000";

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database was written by a newer sessionizer (schema version {found}, this build knows {known})")]
    NewerSchema { found: i64, known: i64 },
    #[error("storage error: {0}")]
    Sqlite(String),
    #[error("invalid project settings: {0}")]
    InvalidSettings(String),
    #[error("invalid project name: {0}")]
    InvalidName(String),
    #[error("no project {0:?}")]
    UnknownProject(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match error.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull(error.to_string()),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(error.to_string()),
            _ => StoreError::Sqlite(error.to_string()),
        }
    }
}

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Internal id, used in every table.
    pub id: i64,
    /// Public id, shown to users (`prj_` and 16 hex digits).
    pub public_id: String,
    pub name: String,
    pub settings: ProjectSettings,
    pub created_ms: i64,
}

/// A freshly created project with its keys, which are shown only this once.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub project: Project,
    pub write_key: String,
    pub read_key: String,
}

/// A stored key (its hash only).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub hash: KeyHash,
    pub project_id: i64,
    pub role: KeyRole,
    pub revoked: bool,
}

/// One event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub event_type: String,
    pub time_ms: i64,
    pub insert_id: Option<String>,
    pub page: Option<String>,
    /// Marked passive by the client (background activity).
    pub passive: bool,
    /// The event's properties as a JSON object, if any.
    pub properties: Option<String>,
    /// The client SDK's own session id, kept as sent (sessions are derived on the server).
    pub client_session_id: Option<String>,
    /// The platform the event came from (`web`, `ios`, `android`, ...), if known.
    pub platform: Option<String>,
    /// The client's IP address, when the SDK asked the server to record it.
    pub ip: Option<String>,
    /// Server time when it was accepted.
    pub received_ms: i64,
}

impl NewEvent {
    /// The session key: the user id, else the device id.
    ///
    /// # Panics
    /// If neither is set; callers validate that first.
    pub fn user_key(&self) -> UserKey {
        UserKey::from_ids(self.user_id.as_deref(), self.device_id.as_deref()).expect("validated: a user or device id")
    }

    /// The event as the live engine takes it, classified by `classifier`.
    pub fn engine_event(&self, classifier: &EventClassifier) -> Event {
        Event {
            user: self.user_key(),
            device_id: self.device_id.as_deref().filter(|d| !d.is_empty()).map(Arc::from),
            event_type: Arc::from(self.event_type.as_str()),
            page: self.page.as_deref().map(Arc::from),
            time_ms: self.time_ms,
            class: classifier.classify(&self.event_type, self.passive),
            insert_id: self.insert_id.as_deref().map(Arc::from),
            client_session_id: self.client_session_id.as_deref().map(Arc::from),
            platform: self.platform.as_deref().map(Arc::from),
        }
    }
}

/// A stored event, with its position in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: NewEvent,
}

/// A session as stored: the engine's record plus the store's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub user: UserKey,
    pub session_id: i64,
    pub session_uid: Uuid,
    pub start_ms: i64,
    pub end_ms: i64,
    pub last_event_ms: i64,
    pub event_count: u64,
    /// Time in the foreground (see [`sessionizer_engine::SessionRecord::active_ms`]);
    /// sessions stored before schema 4 read as their length.
    pub active_ms: i64,
    /// `None` while the session is open.
    pub end_reason: Option<String>,
    pub concluded: bool,
    pub entry_event_type: String,
    pub entry_page: Option<String>,
    pub exit_event_type: String,
    pub exit_page: Option<String>,
    /// Sequence number of the change that wrote this state (increasing over the
    /// project's whole life, across restarts and rebuilds).
    pub revision: i64,
}

impl StoredSession {
    pub fn length_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }

    pub fn from_record(record: &SessionRecord) -> StoredSession {
        StoredSession {
            user: record.user.clone(),
            session_id: record.session_id,
            session_uid: record.session_uid,
            start_ms: record.start_ms,
            end_ms: record.end_ms,
            last_event_ms: record.last_event_ms,
            event_count: record.event_count,
            active_ms: record.active_ms,
            end_reason: record.end_reason.map(|r| r.as_str().to_string()),
            concluded: record.concluded,
            entry_event_type: record.entry_event_type.to_string(),
            entry_page: record.entry_page.as_deref().map(str::to_string),
            exit_event_type: record.exit_event_type.to_string(),
            exit_page: record.exit_page.as_deref().map(str::to_string),
            revision: 0,
        }
    }

    /// Equal apart from the revision.
    pub fn same_state(&self, other: &StoredSession) -> bool {
        StoredSession { revision: 0, ..self.clone() } == StoredSession { revision: 0, ..other.clone() }
    }
}

/// App usage of one user (the seeds' "App Usage").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUsage {
    pub session_count: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub total_length_ms: i64,
}

/// Kind of a recorded session change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredChangeKind {
    Started,
    Amended,
    Concluded,
    /// The session no longer exists (merged into another, moved, or removed by a rebuild).
    Superseded,
}

impl StoredChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredChangeKind::Started => "started",
            StoredChangeKind::Amended => "amended",
            StoredChangeKind::Concluded => "concluded",
            StoredChangeKind::Superseded => "superseded",
        }
    }
}

fn user_kind(user: &UserKey) -> i64 {
    match user {
        UserKey::User(_) => 0,
        UserKey::Device(_) => 1,
    }
}

fn user_of(kind: i64, id: String) -> UserKey {
    if kind == 0 { UserKey::User(Arc::from(id)) } else { UserKey::Device(Arc::from(id)) }
}

/// Receives each exported event with its session (numeric id and uid).
pub type ExportVisitor<'a> = dyn FnMut(&StoredEvent, Option<(i64, Uuid)>) -> Result<(), StoreError> + 'a;

/// The embedded store. One writer (`Store::open`) and any number of readers
/// (`Store::open_reader`) may use the same directory at once.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for writing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL + FULL: a commit returns only once its log frames are fsync'd.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoints run on the writer in the background of commits; a larger
        // auto-checkpoint keeps them rarer under sustained ingest.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.pragma_update(None, "cache_size", -262_144)?;
        schema::migrate(&conn)?;
        Ok(Store { conn })
    }

    /// Opens the store in `dir` for reading only; it must exist.
    pub fn open_reader(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::DataDir {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no sessionizer database here"),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        Ok(Store { conn })
    }

    // ---- projects and keys ----

    /// Creates a project with default settings and one write and one read key.
    pub fn create_project(&mut self, name: &str, now_ms: i64) -> Result<NewProject, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_PROJECT_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(StoreError::InvalidName(format!(
                "a project name is 1 to {MAX_PROJECT_NAME_BYTES} bytes of printable text, got {name:?}"
            )));
        }
        let settings = ProjectSettings::default();
        let public_id = format!("prj_{}", keys::random_hex(8)?);
        let write_key = keys::generate(KeyRole::Write)?;
        let read_key = keys::generate(KeyRole::Read)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO projects (public_id, name, settings, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![public_id, name, settings_json(&settings), now_ms],
        )?;
        let id = tx.last_insert_rowid();
        for (key, role) in [(&write_key, KeyRole::Write), (&read_key, KeyRole::Read)] {
            tx.execute(
                "INSERT INTO api_keys (key_hash, project, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash_key(key).as_slice(), id, role.as_str(), now_ms],
            )?;
        }
        tx.commit()?;
        Ok(NewProject {
            project: Project { id, public_id, name: name.to_string(), settings, created_ms: now_ms },
            write_key,
            read_key,
        })
    }

    pub fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let mut statement =
            self.conn.prepare("SELECT id, public_id, name, settings, created_ms FROM projects ORDER BY id")?;
        let rows = statement.query_map([], project_of_row)?;
        let mut projects = Vec::new();
        for row in rows {
            projects.push(row??);
        }
        Ok(projects)
    }

    /// The project with this public id (or name, when unique).
    pub fn project(&self, id_or_name: &str) -> Result<Project, StoreError> {
        let matching: Vec<Project> =
            self.projects()?.into_iter().filter(|p| p.public_id == id_or_name || p.name == id_or_name).collect();
        match <[Project; 1]>::try_from(matching) {
            Ok([project]) => Ok(project),
            Err(_) => Err(StoreError::UnknownProject(id_or_name.to_string())),
        }
    }

    /// Replaces a project's settings (after checking they compile). The caller
    /// re-sessionizes the project's history with [`Store::rebuild_project`].
    pub fn set_settings(&mut self, project: &Project, settings: &ProjectSettings) -> Result<(), StoreError> {
        settings.compile()?;
        self.conn
            .execute("UPDATE projects SET settings = ?1 WHERE id = ?2", params![settings_json(settings), project.id])?;
        Ok(())
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut statement = self.conn.prepare("SELECT key_hash, project, role, revoked_ms FROM api_keys")?;
        let rows = statement.query_map([], |row| {
            let hash: Vec<u8> = row.get(0)?;
            let role: String = row.get(2)?;
            let revoked: Option<i64> = row.get(3)?;
            Ok((hash, row.get::<_, i64>(1)?, role, revoked.is_some()))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (hash, project_id, role, revoked) = row?;
            let hash: KeyHash =
                hash.try_into().map_err(|_| StoreError::Corrupt("an API key hash is not 32 bytes".into()))?;
            let role =
                KeyRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("unknown key role {role:?}")))?;
            keys.push(ApiKey { hash, project_id, role, revoked });
        }
        Ok(keys)
    }

    /// Revokes a key; returns whether it existed.
    pub fn revoke_key(&mut self, key: &str, now_ms: i64) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE api_keys SET revoked_ms = ?1 WHERE key_hash = ?2 AND revoked_ms IS NULL",
            params![now_ms, hash_key(key).as_slice()],
        )?;
        Ok(changed > 0)
    }

    // ---- writing events and sessions ----

    /// Starts a write transaction; nothing is visible or durable before
    /// [`Batch::commit`].
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(Batch { tx })
    }

    /// The last ingest log position applied to this database.
    pub fn applied_log_seq(&self) -> Result<i64, StoreError> {
        log::applied_seq(&self.conn)
    }

    // ---- reading ----

    /// At most `limit` events of a project after the position `after`
    /// (`(time_ms, seq)`, exclusive) in `(time_ms, seq)` order: pages for a
    /// replay in bounded memory. Start with `(from_ms, i64::MIN)`.
    pub fn events_page(&self, project: i64, after: (i64, i64), limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        query_events(
            &self.conn,
            &format!(
                "{EVENT_COLUMNS} WHERE project = ?1 AND (time_ms > ?2 OR (time_ms = ?2 AND seq > ?3)) \
                 ORDER BY time_ms, seq LIMIT ?4"
            ),
            params![project, after.0, after.1, limit as i64],
        )
    }

    /// Every event of a project, in arrival order.
    pub fn all_events(&self, project: i64) -> Result<Vec<StoredEvent>, StoreError> {
        query_events(&self.conn, &format!("{EVENT_COLUMNS} WHERE project = ?1 ORDER BY seq"), params![project])
    }

    /// Every event of `user`, and every event of other users on the devices
    /// `user` used (what the user-change end reason looks at).
    pub fn user_neighbourhood_events(&self, project: i64, user: &UserKey) -> Result<Vec<StoredEvent>, StoreError> {
        user_neighbourhood_events(&self.conn, project, user)
    }

    /// Streams a project's events with `from_ms <= time_ms < to_ms` in time
    /// order, each with its session (`None` for excluded events and passive
    /// events outside every session). `classify` says which events are excluded.
    pub fn export_events(
        &self,
        project: i64,
        from_ms: i64,
        to_ms: i64,
        classify: &dyn Fn(&str, bool) -> EventClass,
        visit: &mut ExportVisitor<'_>,
    ) -> Result<u64, StoreError> {
        // The as-of lookup bounds `session_id`, not `start_ms` (equal: a
        // session's id is its start), so that it is one seek in the primary
        // key. Bounding `start_ms` lets SQLite 3.50 pick the `sessions_start`
        // index instead and scan every earlier session of the project for
        // each event: quadratic (6 s instead of 0.1 s for 20k events and 3k sessions).
        let sql = "SELECT e.seq, e.user_id, e.device_id, e.event_type, e.time_ms, e.insert_id, e.page, e.passive, \
             e.properties, e.received_ms, e.client_session_id, e.platform, e.ip, \
             s.session_id, s.session_uid, s.last_event_ms \
             FROM events e LEFT JOIN sessions s ON s.project = e.project AND s.user_kind = e.user_kind \
             AND s.user_key = e.user_key AND s.session_id = (SELECT max(session_id) FROM sessions x \
             WHERE x.project = e.project AND x.user_kind = e.user_kind AND x.user_key = e.user_key \
             AND x.session_id <= e.time_ms) \
             WHERE e.project = ?1 AND e.time_ms >= ?2 AND e.time_ms < ?3 ORDER BY e.time_ms, e.seq";
        let mut statement = self.conn.prepare_cached(sql)?;
        let mut rows = statement.query(params![project, from_ms, to_ms])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let event = event_of_row(row)?;
            let session_id: Option<i64> = row.get(13)?;
            let session_uid: Option<String> = row.get(14)?;
            let last_event_ms: Option<i64> = row.get(15)?;
            let in_session = classify(&event.event.event_type, event.event.passive) != EventClass::Excluded
                && last_event_ms.is_some_and(|last| event.event.time_ms <= last);
            let session = match (in_session, session_id, session_uid) {
                (true, Some(id), Some(uid)) => Some((id, parse_uid(&uid)?)),
                _ => None,
            };
            visit(&event, session)?;
            count += 1;
        }
        Ok(count)
    }

    /// The user's sessions, oldest first.
    pub fn sessions_of_user(&self, project: i64, user: &UserKey) -> Result<Vec<StoredSession>, StoreError> {
        sessions_of_user(&self.conn, project, user)
    }

    /// Every session of a project, by user then start.
    pub fn all_sessions(&self, project: i64) -> Result<Vec<StoredSession>, StoreError> {
        let sql = format!("{SESSION_COLUMNS} WHERE project = ?1 ORDER BY user_kind, user_key, start_ms");
        query_sessions(&self.conn, &sql, params![project])
    }

    /// Earliest start among the sessions whose last event is at or after
    /// `since_ms`: where a replay must begin to hold every such session whole.
    ///
    /// Two bounded seeks instead of a scan of every session (73 s at 10M): a
    /// session that starts at or after `since_ms - LONG_SESSION_MS` is found by
    /// walking `sessions_start` from there (it stops at the first match, and
    /// every session starting at or after `since_ms` matches); one that starts
    /// earlier and still reaches `since_ms` is longer than `LONG_SESSION_MS`,
    /// so it is in the partial index `sessions_long`.
    pub fn earliest_start_of_sessions_ending_since(
        &self,
        project: i64,
        since_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let recent: Option<i64> = self
            .conn
            .prepare_cached(REPLAY_FLOOR_RECENT_SQL)?
            .query_row(params![project, since_ms.saturating_sub(LONG_SESSION_MS), since_ms], |row| row.get(0))
            .optional()?;
        let long: Option<i64> =
            self.conn.prepare_cached(REPLAY_FLOOR_LONG_SQL)?.query_row(params![project, since_ms], |row| row.get(0))?;
        Ok(recent.into_iter().chain(long).min())
    }

    /// Session count, first and last use and total time of one user; `None`
    /// when the user has no session.
    pub fn user_usage(&self, project: i64, user: &UserKey) -> Result<Option<UserUsage>, StoreError> {
        let usage = self
            .conn
            .query_row(
                "SELECT count(*), min(start_ms), max(last_event_ms), sum(end_ms - start_ms) FROM sessions \
                 WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3",
                params![project, user_kind(user), user.id()],
                |row| {
                    let count: i64 = row.get(0)?;
                    Ok((count > 0).then(|| -> rusqlite::Result<UserUsage> {
                        Ok(UserUsage {
                            session_count: count as u64,
                            first_seen_ms: row.get(1)?,
                            last_seen_ms: row.get(2)?,
                            total_length_ms: row.get(3)?,
                        })
                    }))
                },
            )
            .optional()?
            .flatten()
            .transpose()?;
        Ok(usage)
    }

    /// Number of events stored for a project.
    pub fn event_count(&self, project: i64) -> Result<u64, StoreError> {
        let count: i64 =
            self.conn.query_row("SELECT count(*) FROM events WHERE project = ?1", [project], |row| row.get(0))?;
        Ok(count as u64)
    }

    /// Highest change sequence number so far (0 before any change).
    pub fn last_change_seq(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT coalesce(max(seq), 0) FROM session_changes", [], |row| row.get(0))?)
    }

    /// Re-sessionizes a project's whole history from its events and replaces
    /// its sessions, recording each difference as a change. Returns the
    /// number of sessions.
    pub fn rebuild_project(&mut self, project: &Project, now_ms: i64) -> Result<usize, StoreError> {
        let (rules, classifier) = project.settings.compile()?;
        let events = self.all_events(project.id)?;
        let sessions = sessionize_stored(&project.public_id, &events, &rules, &classifier, now_ms);
        let old = self.all_sessions(project.id)?;
        let batch = self.batch()?;
        let count = sessions.len();
        batch.replace_sessions(project.id, old, sessions, now_ms)?;
        batch.commit()?;
        Ok(count)
    }
}

/// One write transaction: events, session changes, then `commit`.
#[derive(Debug)]
pub struct Batch<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Batch<'_> {
    /// Stores an event unless its `(project, insert_id)` is already stored;
    /// returns whether it was new.
    pub fn insert_event(&self, project: i64, event: &NewEvent) -> Result<bool, StoreError> {
        if let Some(insert_id) = &event.insert_id
            && insert_id_stored(&self.tx, project, insert_id)?
        {
            return Ok(false);
        }
        let mut statement = self.tx.prepare_cached(&format!(
            "INSERT INTO events (insert_hash, {EVENT_INSERT_COLUMNS}) VALUES (?1, {})",
            placeholders(2, EVENT_INSERT_VALUES)
        ))?;
        statement.raw_bind_parameter(1, event.insert_id.as_deref().map(insert_hash))?;
        bind_event(&mut statement, 2, project, &event.user_key(), event)?;
        statement.raw_execute()?;
        Ok(true)
    }

    /// Stores events read from the ingest log ([`LogReader::events_after`]),
    /// in user order so that consecutive inserts share index pages, keeping
    /// their log positions as `seq`, and records `through` as the last log
    /// position applied, in this transaction. The log's writer deduplicated
    /// them against `events` already (`IngestLog::stored_in_main`), exactly:
    /// no index checks it again here, as `insert_hash` may repeat.
    pub fn insert_logged_events(&self, events: &[(i64, StoredEvent)], through: i64) -> Result<(), StoreError> {
        let users: Vec<UserKey> = events.iter().map(|(_, stored)| stored.event.user_key()).collect();
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            let key = |i: usize| (events[i].0, user_kind(&users[i]), users[i].id(), events[i].1.event.time_ms);
            key(a).cmp(&key(b))
        });
        let mut statement = self.tx.prepare_cached(&format!(
            "INSERT INTO events (seq, insert_hash, {EVENT_INSERT_COLUMNS}) VALUES (?1, ?2, {})",
            placeholders(3, EVENT_INSERT_VALUES)
        ))?;
        for index in order {
            let (project, stored) = &events[index];
            statement.raw_bind_parameter(1, stored.seq)?;
            statement.raw_bind_parameter(2, stored.event.insert_id.as_deref().map(insert_hash))?;
            bind_event(&mut statement, 3, *project, &users[index], &stored.event)?;
            statement.raw_execute()?;
        }
        self.tx.execute("UPDATE log_applied SET seq = ?1", params![through])?;
        Ok(())
    }

    /// Applies a change that a replay after a restart produced, to a session
    /// the store holds, unless it would leave the table as it is; costs a
    /// lookup per change. A session the store lacks is skipped: every replayed
    /// event's session is stored (events and changes commit together), so it
    /// can only be a fragment of one that began before the replay.
    pub fn apply_replayed_change(&self, project: i64, change: &SessionChange) -> Result<(), StoreError> {
        let session = StoredSession::from_record(&change.record);
        let Some(stored) = self.session(project, &session.user, session.session_id)? else {
            return Ok(());
        };
        let no_op = match change.kind {
            ChangeKind::Superseded { .. } => false,
            _ => stored.same_state(&session),
        };
        if no_op { Ok(()) } else { self.apply_change(project, change) }
    }

    /// Applies one engine change to the sessions table and records it.
    pub fn apply_change(&self, project: i64, change: &SessionChange) -> Result<(), StoreError> {
        let session = StoredSession::from_record(&change.record);
        let (kind, by) = match change.kind {
            ChangeKind::Started => (StoredChangeKind::Started, None),
            ChangeKind::Amended => (StoredChangeKind::Amended, None),
            ChangeKind::Concluded => (StoredChangeKind::Concluded, None),
            ChangeKind::Superseded { by_session_uid, .. } => (StoredChangeKind::Superseded, Some(by_session_uid)),
        };
        self.write_change(project, kind, &session, by, change.raised_at_ms)
    }

    fn write_change(
        &self,
        project: i64,
        kind: StoredChangeKind,
        session: &StoredSession,
        superseded_by: Option<Uuid>,
        raised_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut record = self.tx.prepare_cached(
            "INSERT INTO session_changes (project, kind, user_kind, user_key, session_id, session_uid, start_ms, \
             end_ms, last_event_ms, event_count, end_reason, superseded_by, raised_at_ms, concluded, active_ms, \
             session_uid_head) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        record.execute(params![
            project,
            kind.as_str(),
            user_kind(&session.user),
            session.user.id(),
            session.session_id,
            session.session_uid.to_string(),
            session.start_ms,
            session.end_ms,
            session.last_event_ms,
            session.event_count as i64,
            session.end_reason,
            superseded_by.map(|uid| uid.to_string()),
            raised_at_ms,
            session.concluded,
            session.active_ms,
            uid_head(&session.session_uid),
        ])?;
        let revision = self.tx.last_insert_rowid();
        if kind == StoredChangeKind::Superseded {
            let mut delete = self.tx.prepare_cached(
                "DELETE FROM sessions WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 AND session_id = ?4",
            )?;
            delete.execute(params![project, user_kind(&session.user), session.user.id(), session.session_id])?;
        } else {
            let mut upsert = self.tx.prepare_cached(
                // An upsert, not `INSERT OR REPLACE`: an amendment updates the row in
                // place and leaves the start and uid indexes alone (a replace
                // deletes and re-inserts every index entry). The start and the
                // uid follow from the key (the id is the start), so they never change.
                "INSERT INTO sessions (project, user_kind, user_key, session_id, session_uid, start_ms, \
                 end_ms, last_event_ms, event_count, end_reason, concluded, entry_event_type, entry_page, \
                 exit_event_type, exit_page, revision, active_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
                 ON CONFLICT (project, user_kind, user_key, session_id) DO UPDATE SET \
                 end_ms = excluded.end_ms, \
                 last_event_ms = excluded.last_event_ms, event_count = excluded.event_count, \
                 end_reason = excluded.end_reason, concluded = excluded.concluded, \
                 entry_event_type = excluded.entry_event_type, entry_page = excluded.entry_page, \
                 exit_event_type = excluded.exit_event_type, exit_page = excluded.exit_page, \
                 revision = excluded.revision, active_ms = excluded.active_ms",
            )?;
            upsert.execute(params![
                project,
                user_kind(&session.user),
                session.user.id(),
                session.session_id,
                session.session_uid.to_string(),
                session.start_ms,
                session.end_ms,
                session.last_event_ms,
                session.event_count as i64,
                session.end_reason,
                session.concluded,
                session.entry_event_type,
                session.entry_page,
                session.exit_event_type,
                session.exit_page,
                revision,
                session.active_ms,
            ])?;
        }
        Ok(())
    }

    /// Replaces `old` sessions by `new` ones, recording only the differences:
    /// new ids are started, changed ones amended (or concluded), vanished ones superseded.
    pub fn replace_sessions(
        &self,
        project: i64,
        old: Vec<StoredSession>,
        new: Vec<StoredSession>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut old_by_id: std::collections::HashMap<(UserKey, i64), StoredSession> =
            old.into_iter().map(|s| ((s.user.clone(), s.session_id), s)).collect();
        for session in &new {
            let kind = match old_by_id.remove(&(session.user.clone(), session.session_id)) {
                None => StoredChangeKind::Started,
                Some(previous) if previous.same_state(session) => continue,
                Some(previous)
                    if session.concluded && !previous.concluded && previous.event_count == session.event_count =>
                {
                    StoredChangeKind::Concluded
                }
                Some(_) => StoredChangeKind::Amended,
            };
            self.write_change(project, kind, session, None, now_ms)?;
        }
        for (_, gone) in old_by_id {
            self.write_change(project, StoredChangeKind::Superseded, &gone, None, now_ms)?;
        }
        Ok(())
    }

    /// Makes everything in this batch durable (fsync) and visible.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }

    /// One stored session, inside this transaction.
    pub fn session(&self, project: i64, user: &UserKey, session_id: i64) -> Result<Option<StoredSession>, StoreError> {
        let mut statement = self.tx.prepare_cached(&format!(
            "{SESSION_COLUMNS} WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 AND session_id = ?4"
        ))?;
        let found =
            statement.query_row(params![project, user_kind(user), user.id(), session_id], session_of_row).optional()?;
        found.transpose()
    }

    /// See [`Store::sessions_of_user`]; inside this transaction.
    pub fn sessions_of_user(&self, project: i64, user: &UserKey) -> Result<Vec<StoredSession>, StoreError> {
        sessions_of_user(&self.tx, project, user)
    }

    /// See [`Store::user_neighbourhood_events`]; inside this transaction.
    pub fn user_neighbourhood_events(&self, project: i64, user: &UserKey) -> Result<Vec<StoredEvent>, StoreError> {
        user_neighbourhood_events(&self.tx, project, user)
    }
}

/// The columns an event is stored with, in `events` and in the ingest log's
/// `log_events` (each also has its `seq`), in the order [`bind_event`] binds them.
const EVENT_INSERT_COLUMNS: &str = "project, user_kind, user_key, user_id, device_id, event_type, time_ms, insert_id, \
                                    page, passive, properties, received_ms, client_session_id, platform, ip";
const EVENT_INSERT_VALUES: usize = 15;

/// What `events.insert_hash` holds for an insert id: its 64-bit hash (the
/// batch command's, `sessionizer_engine::insert_id_hash`), as SQLite's signed
/// integer. Stored, so it must never change.
pub(crate) fn insert_hash(insert_id: &str) -> i64 {
    sessionizer_engine::insert_id_hash(insert_id) as i64
}

/// Whether `events` holds `(project, insert_id)`: a seek of the hash index,
/// then the ids under that hash compared, so a collision never counts as a
/// duplicate.
pub(crate) fn insert_id_stored(conn: &Connection, project: i64, insert_id: &str) -> Result<bool, StoreError> {
    // `insert_hash = ?2` implies the partial index's `insert_hash IS NOT NULL`.
    let mut statement = conn.prepare_cached(INSERT_ID_PROBE_SQL)?;
    let mut rows = statement.query(params![project, insert_hash(insert_id)])?;
    while let Some(row) = rows.next()? {
        if row.get_ref(0)?.as_str().is_ok_and(|stored| stored == insert_id) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) const INSERT_ID_PROBE_SQL: &str = "SELECT insert_id FROM events WHERE project = ?1 AND insert_hash = ?2";

/// What `session_changes.session_uid_head` holds: the uid's first 64 bits,
/// its UUIDv7 start time (48 bits) then 16 of its other bits, as SQLite's
/// signed integer (positive until the year 6429, so ordered by start). The
/// index on it keeps the uid index's order by session start (changes land
/// among those of recent sessions) at a third of the size of the text.
pub(crate) fn uid_head(session_uid: &Uuid) -> i64 {
    session_uid.as_u64_pair().0 as i64
}

/// `?first, ?first+1, ...`: `count` numbered parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

/// Binds an event's `EVENT_INSERT_COLUMNS` to parameters `first..first + 15`.
fn bind_event(
    statement: &mut rusqlite::Statement<'_>,
    first: usize,
    project: i64,
    user: &UserKey,
    event: &NewEvent,
) -> rusqlite::Result<()> {
    statement.raw_bind_parameter(first, project)?;
    statement.raw_bind_parameter(first + 1, user_kind(user))?;
    statement.raw_bind_parameter(first + 2, user.id())?;
    statement.raw_bind_parameter(first + 3, &event.user_id)?;
    statement.raw_bind_parameter(first + 4, &event.device_id)?;
    statement.raw_bind_parameter(first + 5, &event.event_type)?;
    statement.raw_bind_parameter(first + 6, event.time_ms)?;
    statement.raw_bind_parameter(first + 7, &event.insert_id)?;
    statement.raw_bind_parameter(first + 8, &event.page)?;
    statement.raw_bind_parameter(first + 9, event.passive)?;
    statement.raw_bind_parameter(first + 10, &event.properties)?;
    statement.raw_bind_parameter(first + 11, event.received_ms)?;
    statement.raw_bind_parameter(first + 12, &event.client_session_id)?;
    statement.raw_bind_parameter(first + 13, &event.platform)?;
    statement.raw_bind_parameter(first + 14, &event.ip)
}

// Reads shared by `Store` and `Batch` (a transaction dereferences to its connection).

fn sessions_of_user(conn: &Connection, project: i64, user: &UserKey) -> Result<Vec<StoredSession>, StoreError> {
    let sql = format!("{SESSION_COLUMNS} WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 ORDER BY start_ms");
    query_sessions(conn, &sql, params![project, user_kind(user), user.id()])
}

fn user_neighbourhood_events(conn: &Connection, project: i64, user: &UserKey) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!(
        "{EVENT_COLUMNS} WHERE project = ?1 AND ((user_kind = ?2 AND user_key = ?3) OR device_id IN \
         (SELECT DISTINCT device_id FROM events WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 \
         AND device_id IS NOT NULL)) ORDER BY seq"
    );
    query_events(conn, &sql, params![project, user_kind(user), user.id()])
}

fn query_events(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<StoredEvent>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, event_of_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn query_sessions(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredSession>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, session_of_row)?;
    let mut sessions = Vec::new();
    for row in rows {
        sessions.push(row??);
    }
    Ok(sessions)
}

const EVENT_COLUMNS: &str = "SELECT seq, user_id, device_id, event_type, time_ms, insert_id, page, passive, \
                             properties, received_ms, client_session_id, platform, ip FROM events";

const SESSION_COLUMNS: &str = "SELECT user_kind, user_key, session_id, session_uid, start_ms, end_ms, \
                               last_event_ms, event_count, end_reason, concluded, entry_event_type, entry_page, \
                               exit_event_type, exit_page, revision, coalesce(active_ms, end_ms - start_ms) \
                               FROM sessions";

fn event_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        event: NewEvent {
            user_id: row.get(1)?,
            device_id: row.get(2)?,
            event_type: row.get(3)?,
            time_ms: row.get(4)?,
            insert_id: row.get(5)?,
            page: row.get(6)?,
            passive: row.get(7)?,
            properties: row.get(8)?,
            received_ms: row.get(9)?,
            client_session_id: row.get(10)?,
            platform: row.get(11)?,
            ip: row.get(12)?,
        },
    })
}

fn session_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredSession, StoreError>> {
    let uid: String = row.get(3)?;
    let session_uid = match parse_uid(&uid) {
        Ok(uid) => uid,
        Err(error) => return Ok(Err(error)),
    };
    Ok(Ok(StoredSession {
        user: user_of(row.get(0)?, row.get(1)?),
        session_id: row.get(2)?,
        session_uid,
        start_ms: row.get(4)?,
        end_ms: row.get(5)?,
        last_event_ms: row.get(6)?,
        event_count: row.get::<_, i64>(7)? as u64,
        end_reason: row.get(8)?,
        concluded: row.get(9)?,
        entry_event_type: row.get(10)?,
        entry_page: row.get(11)?,
        exit_event_type: row.get(12)?,
        exit_page: row.get(13)?,
        revision: row.get(14)?,
        active_ms: row.get(15)?,
    }))
}

fn project_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Project, StoreError>> {
    let settings: String = row.get(3)?;
    let settings = match serde_json::from_str(&settings) {
        Ok(settings) => settings,
        Err(error) => return Ok(Err(StoreError::Corrupt(format!("project settings: {error}")))),
    };
    Ok(Ok(Project { id: row.get(0)?, public_id: row.get(1)?, name: row.get(2)?, settings, created_ms: row.get(4)? }))
}

fn parse_uid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("session uid {text:?} is not a UUID")))
}

fn settings_json(settings: &ProjectSettings) -> String {
    serde_json::to_string(settings).expect("settings serialize")
}

#[cfg(test)]
mod tests;
