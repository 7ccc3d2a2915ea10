//! The ClickHouse side of a cluster: events and session versions, each
//! partition on one shard (`partition % shards`), so a user's events and
//! sessions sit together and every per-user read goes to one server.
//!
//! # Why the schema looks like this
//!
//! Workers write idempotently: a replay after a crash writes the same rows
//! again, and a session changes by writing a new version. ClickHouse has no
//! unique keys, so both tables are `ReplacingMergeTree`s whose sorting key is
//! the identity of a row, and every read uses `FINAL`, which collapses rows of
//! equal key at query time (merges happen in the background, whenever). Filters
//! on columns outside the key that must see the *current* version (like
//! `superseded`) sit in an outer query over the `FINAL` one, so the newest
//! version is picked first and filtered after.
//!
//! - `events_local`: key `(partition, project, user_kind, user_key, event_key)`.
//!   The partition is a fixed function of (project, user) and leads the key so
//!   a worker's scan of its partition reads one range. Of rows with the same
//!   key, the one with the lowest JetStream sequence wins (the `first_seen`
//!   version column is `bitNot(seq)`), like the embedded store's "first insert
//!   id wins", and independent of the order replays arrive in. Parts are split
//!   by calendar month of the event time, so the worker's rebuild scan from a
//!   recent floor skips old months. (A row is only collapsed with a duplicate
//!   whose month is read too: a client that re-sends an insert id with a time
//!   in another month gets both rows in a time-bounded scan, as the worker's
//!   engine saw both.)
//! - `sessions_local`: `ReplacingMergeTree(version)` with key
//!   `(partition, project, user_kind, user_key, session_id)`: the highest
//!   version is the current state, and `superseded = 1` marks a session that no
//!   longer exists.
//!
//! Only SQL that runs on ClickHouse 18.16 (Debian's, used by the tests) and on
//! current releases (checked through chDB, `tests/cluster/chdb_dialect.py`):
//! no query parameters (values are inlined through [`quote`] and integer
//! formatting), no window functions, no `DateTime64`, no `LowCardinality`.
//! Inserts go through the client's `RowBinary` writer with validation off,
//! which 18.16 understands.

use std::collections::HashSet;
use std::sync::Arc;

use ::clickhouse::{Client, Row};
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use sessionizer_engine::UserKey;
use sessionizer_store::{NewEvent, StoredEvent, StoredSession};
use uuid::Uuid;

use crate::ClusterError;

mod reads;
pub use reads::{DayWindow, EXPORT_PAGE_ROWS, EventSession, FeedChange, FeedCursor, FigureParts};

/// Every session version ever written, in order: the change feed (an
/// append-only copy of `sessions_local`'s inserts, kept by [`VERSIONS_VIEW`]).
pub const VERSIONS_TABLE: &str = "session_versions_local";
/// The materialized view that copies each insert into `sessions_local` to [`VERSIONS_TABLE`].
pub const VERSIONS_VIEW: &str = "session_versions_mv";

/// The table of events on every shard.
pub const EVENTS_TABLE: &str = "events_local";
/// The table of session versions on every shard.
pub const SESSIONS_TABLE: &str = "sessions_local";

/// The longest database name accepted: ClickHouse keeps a database as a
/// directory, so the name must stay well inside file-name limits.
const MAX_DATABASE_NAME_LEN: usize = 64;

/// The most bytes of inlined values in one `IN (...)` list. ClickHouse refuses
/// queries longer than `max_query_size` (256 KiB by default, on every version),
/// so longer lists are split into several queries, with room left for the
/// rest of the statement.
const MAX_IN_LIST_BYTES: usize = 128 * 1024;

/// `user_kind` of a session key that is a user id (same as the embedded store).
pub const USER_KIND_USER: u8 = 0;
/// `user_kind` of a session key that is a device id.
pub const USER_KIND_DEVICE: u8 = 1;

/// One event as stored in ClickHouse (immutable once written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Row)]
pub struct EventRow {
    pub project: i64,
    pub partition: u32,
    /// JetStream sequence of the message that carried it: orders events of equal time like the embedded store's seq.
    pub seq: u64,
    /// The dedup key: the insert id, or an id the ingest node generated for an event without one.
    pub event_key: String,
    /// 0 = user id, 1 = device id (the session key; same as the embedded store).
    pub user_kind: u8,
    pub user_key: String,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub event_type: String,
    pub time_ms: i64,
    pub insert_id: Option<String>,
    pub page: Option<String>,
    pub passive: u8,
    pub properties: Option<String>,
    pub client_session_id: Option<String>,
    pub platform: Option<String>,
    pub ip: Option<String>,
    pub received_ms: i64,
}

impl EventRow {
    /// The row of an event carried by the JetStream message `seq`.
    ///
    /// # Panics
    /// If the event names neither a user nor a device; ingest validates that.
    pub fn new(project: i64, partition: u32, seq: u64, event_key: &str, event: &NewEvent) -> EventRow {
        let (user_kind, user_key) = user_columns(&event.user_key());
        EventRow {
            project,
            partition,
            seq,
            event_key: event_key.to_string(),
            user_kind,
            user_key,
            user_id: event.user_id.clone(),
            device_id: event.device_id.clone(),
            event_type: event.event_type.clone(),
            time_ms: event.time_ms,
            insert_id: event.insert_id.clone(),
            page: event.page.clone(),
            passive: u8::from(event.passive),
            properties: event.properties.clone(),
            client_session_id: event.client_session_id.clone(),
            platform: event.platform.clone(),
            ip: event.ip.clone(),
            received_ms: event.received_ms,
        }
    }

    /// The event as the store crate's type, with the JetStream sequence as its
    /// position (sequences stay far below `i64::MAX`; larger ones saturate).
    pub fn to_stored(&self) -> StoredEvent {
        StoredEvent {
            seq: i64::try_from(self.seq).unwrap_or(i64::MAX),
            event: NewEvent {
                user_id: self.user_id.clone(),
                device_id: self.device_id.clone(),
                event_type: self.event_type.clone(),
                time_ms: self.time_ms,
                insert_id: self.insert_id.clone(),
                page: self.page.clone(),
                passive: self.passive != 0,
                properties: self.properties.clone(),
                client_session_id: self.client_session_id.clone(),
                platform: self.platform.clone(),
                ip: self.ip.clone(),
                received_ms: self.received_ms,
            },
        }
    }
}

/// One version of a session. The row with the highest `version` for
/// (project, user_kind, user_key, session_id) is current; `superseded = 1` means the session no longer exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Row)]
pub struct SessionRow {
    pub project: i64,
    pub partition: u32,
    pub user_kind: u8,
    pub user_key: String,
    pub session_id: i64,
    /// Hyphenated UUID text.
    pub session_uid: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub last_event_ms: i64,
    pub event_count: u64,
    pub active_ms: i64,
    /// `""` while open.
    pub end_reason: String,
    pub concluded: u8,
    pub entry_event_type: String,
    pub entry_page: Option<String>,
    pub exit_event_type: String,
    pub exit_page: Option<String>,
    pub superseded: u8,
    pub version: u64,
    pub changed_ms: i64,
}

impl SessionRow {
    pub fn new(
        project: i64,
        partition: u32,
        session: &StoredSession,
        superseded: bool,
        version: u64,
        changed_ms: i64,
    ) -> SessionRow {
        let (user_kind, user_key) = user_columns(&session.user);
        SessionRow {
            project,
            partition,
            user_kind,
            user_key,
            session_id: session.session_id,
            session_uid: session.session_uid.hyphenated().to_string(),
            start_ms: session.start_ms,
            end_ms: session.end_ms,
            last_event_ms: session.last_event_ms,
            event_count: session.event_count,
            active_ms: session.active_ms,
            end_reason: session.end_reason.clone().unwrap_or_default(),
            concluded: u8::from(session.concluded),
            entry_event_type: session.entry_event_type.clone(),
            entry_page: session.entry_page.clone(),
            exit_event_type: session.exit_event_type.clone(),
            exit_page: session.exit_page.clone(),
            superseded: u8::from(superseded),
            version,
            changed_ms,
        }
    }

    /// The session as the store crate's type: the revision is the version
    /// (saturating at `i64::MAX`), an empty end reason is an open session. A
    /// `session_uid` that is not a UUID (never written by this module) reads as
    /// the nil UUID.
    pub fn to_stored(&self) -> StoredSession {
        StoredSession {
            user: user_key_of(self.user_kind, &self.user_key),
            session_id: self.session_id,
            session_uid: Uuid::parse_str(&self.session_uid).unwrap_or(Uuid::nil()),
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            last_event_ms: self.last_event_ms,
            event_count: self.event_count,
            active_ms: self.active_ms,
            end_reason: (!self.end_reason.is_empty()).then(|| self.end_reason.clone()),
            concluded: self.concluded != 0,
            entry_event_type: self.entry_event_type.clone(),
            entry_page: self.entry_page.clone(),
            exit_event_type: self.exit_event_type.clone(),
            exit_page: self.exit_page.clone(),
            revision: i64::try_from(self.version).unwrap_or(i64::MAX),
        }
    }
}

/// `(user_kind, user_key)` of a session key.
fn user_columns(user: &UserKey) -> (u8, String) {
    match user {
        UserKey::User(id) => (USER_KIND_USER, id.to_string()),
        UserKey::Device(id) => (USER_KIND_DEVICE, id.to_string()),
    }
}

/// The session key of `(user_kind, user_key)`; any kind but a user id is a device id.
fn user_key_of(kind: u8, key: &str) -> UserKey {
    if kind == USER_KIND_USER { UserKey::User(Arc::from(key)) } else { UserKey::Device(Arc::from(key)) }
}

/// A ClickHouse string literal holding `value` exactly: backslash and single
/// quote are escaped (the two characters that end or alter a literal), and
/// control characters that would make a statement hard to read in logs are
/// written as escapes. Every other character, including any Unicode, stands
/// as itself. Identical on every ClickHouse version.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A nullable string literal: `NULL` or [`quote`].
fn quote_opt(value: Option<&str>) -> String {
    value.map_or_else(|| "NULL".to_string(), quote)
}

/// The column list of a row type, in its field order (`RowBinary` is positional).
fn columns<T: Row>() -> String {
    T::COLUMN_NAMES.join(", ")
}

/// Splits inlined literals into `IN (...)` lists that each stay under
/// [`MAX_IN_LIST_BYTES`] (a single longer literal gets a list of its own).
fn in_lists(literals: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut lists = Vec::new();
    let mut current = String::new();
    for literal in literals {
        if !current.is_empty() && current.len() + literal.len() + 2 > MAX_IN_LIST_BYTES {
            lists.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str(", ");
        }
        current.push_str(&literal);
    }
    if !current.is_empty() {
        lists.push(current);
    }
    lists
}

/// A shard URL for messages: without any `user:password@` part.
fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// One ClickHouse server holding the partitions `p` with `p % shards == index`.
#[derive(Clone, Debug)]
struct Shard {
    /// For messages (credentials removed).
    url: String,
    client: Client,
}

/// Longest a call to a shard may take (a statement, a read, a whole insert):
/// a shard that hangs without closing its connection fails the call, and the
/// worker rebuilds and retries, instead of stalling its partitions for ever.
pub const SHARD_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Shard {
    fn error(&self, operation: &str, error: ::clickhouse::error::Error) -> ClusterError {
        ClusterError::ClickHouse(format!("{operation} on shard {}: {error}", self.url))
    }

    /// Runs `call` within [`SHARD_CALL_TIMEOUT`].
    async fn bounded<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        tokio::time::timeout(SHARD_CALL_TIMEOUT, call).await.unwrap_or_else(|_| {
            Err(ClusterError::ClickHouse(format!(
                "{operation} on shard {}: no answer within {} s",
                self.url,
                SHARD_CALL_TIMEOUT.as_secs()
            )))
        })
    }

    async fn execute(&self, operation: &str, sql: &str) -> Result<(), ClusterError> {
        self.bounded(operation, async {
            self.client.query_raw(sql).execute().await.map_err(|e| self.error(operation, e))
        })
        .await
    }

    async fn fetch_all<T>(&self, operation: &str, sql: &str) -> Result<Vec<T>, ClusterError>
    where
        T: ::clickhouse::RowOwned + ::clickhouse::RowRead,
    {
        self.bounded(operation, async {
            self.client.query_raw(sql).fetch_all::<T>().await.map_err(|e| self.error(operation, e))
        })
        .await
    }

    async fn insert<T>(&self, operation: &str, table: &str, rows: &[T]) -> Result<(), ClusterError>
    where
        T: ::clickhouse::RowWrite + ::clickhouse::RowOwned + Serialize,
    {
        if rows.is_empty() {
            return Ok(());
        }
        self.bounded(operation, async {
            let mut insert = self.client.insert_unescaped::<T>(table).await.map_err(|e| self.error(operation, e))?;
            for row in rows {
                insert.write(row).await.map_err(|e| self.error(operation, e))?;
            }
            insert.end().await.map_err(|e| self.error(operation, e))
        })
        .await
    }
}

/// `(start, count)`: the earliest start among matching sessions and how many
/// there are (the minimum of no rows is 0 in ClickHouse, so the count tells).
#[derive(Debug, Deserialize, Row)]
struct EarliestRow {
    start: i64,
    sessions: u64,
}

/// One stored session key.
#[derive(Debug, Deserialize, Row)]
struct SessionKeyRow {
    user_kind: u8,
    user_key: String,
    session_id: i64,
}

/// A single count.
#[derive(Debug, Deserialize, Row)]
struct CountRow {
    n: u64,
}

/// One user key.
#[derive(Debug, Deserialize, Row)]
struct UserRow {
    user_kind: u8,
    user_key: String,
}

/// A single event key.
#[derive(Debug, Deserialize, Row)]
struct EventKeyRow {
    event_key: String,
}

/// One statement of the dialect check, with what it must return on sample data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DialectCheck {
    pub sql: String,
    /// For queries with a known answer: the number of result rows and the values
    /// of one column in order, as `TabSeparated` text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
}

/// What a dialect-check query must return (see [`DialectCheck`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    pub rows: usize,
    pub column: String,
    pub values: Vec<String>,
}

impl Expectation {
    fn new(column: &str, values: &[&str]) -> Expectation {
        Expectation {
            rows: values.len(),
            column: column.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Checks `TabSeparatedWithNames` output; `Err` says what differs.
    pub fn check(&self, tsv_with_names: &str) -> Result<(), String> {
        let mut lines = tsv_with_names.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let Some(index) = header.iter().position(|name| *name == self.column) else {
            return Err(format!("no column {:?} in the header {header:?}", self.column));
        };
        let values: Vec<&str> = lines.map(|line| line.split('\t').nth(index).unwrap_or_default()).collect();
        if values.len() != self.rows || values != self.values {
            return Err(format!(
                "expected {} rows with {} = {:?}, got {:?}",
                self.rows, self.column, self.values, values
            ));
        }
        Ok(())
    }
}

/// The ClickHouse side of a cluster: one or more shards (HTTP URLs); partition p lives on shard p % shards.
#[derive(Clone, Debug)]
pub struct ClickHouseStore {
    shards: Vec<Shard>,
    database: String,
}

impl ClickHouseStore {
    /// A store over these shards (`http://host:8123` each; the order is the
    /// shard numbering and must stay the same for the cluster's life). Connects
    /// lazily: nothing is sent until the first call.
    pub fn new(
        shard_urls: &[String],
        database: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<ClickHouseStore, ClusterError> {
        if shard_urls.is_empty() {
            return Err(ClusterError::ClickHouse("no shard URLs: at least one ClickHouse server is needed".into()));
        }
        // The name is inlined into every statement (identifiers cannot be
        // escaped the same way on every version), so only plain names pass.
        if database.is_empty()
            || database.len() > MAX_DATABASE_NAME_LEN
            || !database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ClusterError::ClickHouse(format!(
                "database name {database:?}: 1 to {MAX_DATABASE_NAME_LEN} letters, digits and '_'"
            )));
        }
        let mut shards = Vec::with_capacity(shard_urls.len());
        for url in shard_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ClusterError::ClickHouse(format!(
                    "shard URL {:?}: expected http://host:port or https://host:port",
                    display_url(url)
                )));
            }
            // Validation off: it needs `RowBinaryWithNamesAndTypes` and settings
            // that servers before 22.x lack; the row types are checked by tests.
            let mut client = Client::default().with_url(url.as_str()).with_validation(false);
            if let Some(user) = user {
                client = client.with_user(user);
            }
            if let Some(password) = password {
                client = client.with_password(password);
            }
            shards.push(Shard { url: display_url(url), client });
        }
        Ok(ClickHouseStore { shards, database: database.to_string() })
    }

    /// The store a cluster's configuration names (`clickhouse_*` keys).
    pub fn from_config(config: &crate::ClusterConfig) -> Result<ClickHouseStore, ClusterError> {
        ClickHouseStore::new(
            &config.clickhouse_shards,
            &config.clickhouse_database,
            config.clickhouse_user.as_deref(),
            config.clickhouse_password.as_deref(),
        )
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard holding a partition: `partition % shards`.
    pub fn shard_of(&self, partition: u32) -> usize {
        partition as usize % self.shards.len()
    }

    /// The configured database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    fn shard(&self, partition: u32) -> &Shard {
        &self.shards[self.shard_of(partition)]
    }

    /// `` `database`.`table` `` (the database name is validated in [`ClickHouseStore::new`]).
    fn table(&self, table: &str) -> String {
        format!("`{}`.`{table}`", self.database)
    }

    // ---- Statements (one function each, shared by the calls and the dialect check) ----

    fn sql_create_database(&self) -> String {
        format!("CREATE DATABASE IF NOT EXISTS `{}`", self.database)
    }

    fn sql_create_events(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             project Int64, \
             partition UInt32, \
             seq UInt64, \
             event_key String, \
             user_kind UInt8, \
             user_key String, \
             user_id Nullable(String), \
             device_id Nullable(String), \
             event_type String, \
             time_ms Int64, \
             insert_id Nullable(String), \
             page Nullable(String), \
             passive UInt8, \
             properties Nullable(String), \
             client_session_id Nullable(String), \
             platform Nullable(String), \
             ip Nullable(String), \
             received_ms Int64, \
             first_seen UInt64 MATERIALIZED bitNot(seq)\
             ) ENGINE = ReplacingMergeTree(first_seen) \
             PARTITION BY toYYYYMM(toDateTime(intDiv(time_ms, 1000), 'UTC')) \
             ORDER BY (partition, project, user_kind, user_key, event_key)",
            self.table(EVENTS_TABLE)
        )
    }

    fn sql_create_sessions(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             project Int64, \
             partition UInt32, \
             user_kind UInt8, \
             user_key String, \
             session_id Int64, \
             session_uid String, \
             start_ms Int64, \
             end_ms Int64, \
             last_event_ms Int64, \
             event_count UInt64, \
             active_ms Int64, \
             end_reason String, \
             concluded UInt8, \
             entry_event_type String, \
             entry_page Nullable(String), \
             exit_event_type String, \
             exit_page Nullable(String), \
             superseded UInt8, \
             version UInt64, \
             changed_ms Int64\
             ) ENGINE = ReplacingMergeTree(version) \
             ORDER BY (partition, project, user_kind, user_key, session_id)",
            self.table(SESSIONS_TABLE)
        )
    }

    /// The change feed's table: the columns of `sessions_local`, append-only,
    /// ordered for reading a project's partitions by version.
    fn sql_create_versions(&self) -> String {
        let create_sessions = self.sql_create_sessions();
        let columns_start = create_sessions.find('(').expect("a column list");
        let columns_end = create_sessions.find(") ENGINE").expect("a column list");
        format!(
            "CREATE TABLE IF NOT EXISTS {} {} ENGINE = MergeTree \
             PARTITION BY toYYYYMM(toDateTime(intDiv(changed_ms, 1000), 'UTC')) \
             ORDER BY (project, partition, version)",
            self.table(VERSIONS_TABLE),
            &create_sessions[columns_start..=columns_end],
        )
    }

    fn sql_create_versions_view(&self) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {} TO {} AS SELECT {} FROM {}",
            self.table(VERSIONS_VIEW),
            self.table(VERSIONS_TABLE),
            columns::<SessionRow>(),
            self.table(SESSIONS_TABLE)
        )
    }

    /// `project = .. AND user_kind = .. AND user_key = ..` of one user.
    fn user_filter(project: i64, user: &UserKey) -> String {
        let (kind, key) = user_columns(user);
        format!("project = {project} AND user_kind = {kind} AND user_key = {}", quote(&key))
    }

    fn sql_partition_events_page(&self, partition: u32, from_ms: i64, after: (i64, u64), limit: usize) -> String {
        let (after_time, after_seq) = after;
        format!(
            "SELECT {} FROM {} FINAL \
             WHERE partition = {partition} AND time_ms >= {from_ms} \
             AND (time_ms > {after_time} OR (time_ms = {after_time} AND seq > {after_seq})) \
             ORDER BY time_ms, seq LIMIT {limit}",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE)
        )
    }

    fn sql_earliest_start(&self, partition: u32, since_ms: i64) -> String {
        format!(
            "SELECT min(start_ms) AS start, count() AS sessions FROM (\
             SELECT start_ms, end_ms, superseded FROM {} FINAL WHERE partition = {partition}\
             ) WHERE superseded = 0 AND end_ms >= {since_ms}",
            self.table(SESSIONS_TABLE)
        )
    }

    /// Current, not superseded sessions matching `key_filter` (key columns only,
    /// applied before `FINAL` picks versions), in `order`.
    fn sql_current_sessions(&self, key_filter: &str, order: &str) -> String {
        let columns = columns::<SessionRow>();
        format!(
            "SELECT {columns} FROM (SELECT {columns} FROM {} FINAL WHERE {key_filter}) \
             WHERE superseded = 0 ORDER BY {order}",
            self.table(SESSIONS_TABLE)
        )
    }

    fn sql_sessions_of_user(&self, project: i64, partition: u32, user: &UserKey) -> String {
        self.sql_current_sessions(
            &format!("partition = {partition} AND {}", Self::user_filter(project, user)),
            "start_ms, session_id",
        )
    }

    fn sql_partition_sessions_since(&self, partition: u32, from_ms: i64) -> String {
        let columns = columns::<SessionRow>();
        format!(
            "SELECT {columns} FROM (SELECT {columns} FROM {} FINAL WHERE partition = {partition}) \
             WHERE superseded = 0 AND start_ms >= {from_ms} \
             ORDER BY project, user_kind, user_key, start_ms, session_id",
            self.table(SESSIONS_TABLE)
        )
    }

    fn sql_project_sessions(&self, project: i64) -> String {
        self.sql_current_sessions(&format!("project = {project}"), "user_kind, user_key, start_ms, session_id")
    }

    fn sql_user_events(&self, project: i64, partition: u32, user: &UserKey) -> String {
        format!(
            "SELECT {} FROM {} FINAL WHERE partition = {partition} AND {} ORDER BY time_ms, seq",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE),
            Self::user_filter(project, user)
        )
    }

    /// Stored session keys among `in_list` (a list of `(user_kind, user_key, session_id)` tuples).
    fn sql_stored_session_keys(&self, project: i64, partition: u32, in_list: &str) -> String {
        format!(
            "SELECT user_kind, user_key, session_id FROM {} FINAL \
             WHERE partition = {partition} AND project = {project} \
             AND (user_kind, user_key, session_id) IN ({in_list}) \
             ORDER BY user_kind, user_key, session_id",
            self.table(SESSIONS_TABLE)
        )
    }

    /// Stored event keys among `in_list` (quoted keys). No `FINAL`: only existence matters.
    fn sql_existing_event_keys(&self, project: i64, partition: u32, in_list: &str) -> String {
        format!(
            "SELECT DISTINCT event_key FROM {} WHERE partition = {partition} AND project = {project} \
             AND event_key IN ({in_list}) ORDER BY event_key",
            self.table(EVENTS_TABLE)
        )
    }

    /// A page of the users with events of a project in a partition, after `after`, in key order.
    fn sql_partition_users(&self, partition: u32, project: i64, after: Option<(u8, &str)>, limit: usize) -> String {
        let after = after.map_or(String::new(), |(kind, key)| {
            format!(" AND (user_kind > {kind} OR (user_kind = {kind} AND user_key > {}))", quote(key))
        });
        format!(
            "SELECT DISTINCT user_kind, user_key FROM {} WHERE partition = {partition} AND project = {project}{after} \
             ORDER BY user_kind, user_key LIMIT {limit}",
            self.table(EVENTS_TABLE)
        )
    }

    /// All events of the users in `in_list` (`(user_kind, user_key)` tuples), each user's in time order.
    fn sql_partition_users_events(&self, partition: u32, project: i64, in_list: &str) -> String {
        format!(
            "SELECT {} FROM {} FINAL WHERE partition = {partition} AND project = {project} \
             AND (user_kind, user_key) IN ({in_list}) ORDER BY user_kind, user_key, time_ms, seq",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE)
        )
    }

    fn sql_partition_users_sessions(&self, partition: u32, project: i64, in_list: &str) -> String {
        self.sql_current_sessions(
            &format!("partition = {partition} AND project = {project} AND (user_kind, user_key) IN ({in_list})"),
            "user_kind, user_key, start_ms",
        )
    }

    fn sql_project_event_count(&self, project: i64) -> String {
        format!("SELECT count() AS n FROM {} FINAL WHERE project = {project}", self.table(EVENTS_TABLE))
    }

    // ---- Calls ----

    /// `CREATE DATABASE` / tables `IF NOT EXISTS` on every shard (idempotent;
    /// an existing table is left as it is, whatever its columns).
    pub async fn init_schema(&self) -> Result<(), ClusterError> {
        let statements = [
            self.sql_create_database(),
            self.sql_create_events(),
            self.sql_create_sessions(),
            self.sql_create_versions(),
            self.sql_create_versions_view(),
        ];
        try_join_all(self.shards.iter().map(|shard| async {
            for sql in &statements {
                shard.execute("creating the schema", sql).await?;
            }
            Ok::<(), ClusterError>(())
        }))
        .await?;
        Ok(())
    }

    /// Writes events of one partition to its shard, in one `INSERT`.
    /// Idempotent: writing the same rows twice changes no query result. (An
    /// `INSERT` that fails midway may have stored some rows; retrying it is
    /// the remedy, and harmless.)
    pub async fn insert_events(&self, partition: u32, rows: &[EventRow]) -> Result<(), ClusterError> {
        debug_assert!(rows.iter().all(|r| r.partition == partition), "rows of another partition");
        self.shard(partition).insert("inserting events", &self.table(EVENTS_TABLE), rows).await
    }

    /// Writes session versions of one partition to its shard, in one `INSERT`
    /// (idempotent like [`ClickHouseStore::insert_events`]).
    pub async fn insert_sessions(&self, partition: u32, rows: &[SessionRow]) -> Result<(), ClusterError> {
        debug_assert!(rows.iter().all(|r| r.partition == partition), "rows of another partition");
        self.shard(partition).insert("inserting sessions", &self.table(SESSIONS_TABLE), rows).await
    }

    /// Events of any partitions, each to its partition's shard: one `INSERT` per
    /// shard, the shards in parallel (a worker's whole flush, so ClickHouse gets
    /// few large inserts rather than one small insert per partition).
    pub async fn insert_events_routed(&self, rows: &[EventRow]) -> Result<(), ClusterError> {
        let table = self.table(EVENTS_TABLE);
        let by_shard = self.by_shard(rows, |row| row.partition);
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .map(|(shard, rows)| self.shards[shard].insert("inserting events", &table, rows)),
        )
        .await?;
        Ok(())
    }

    /// Session versions of any partitions, each to its partition's shard (see
    /// [`ClickHouseStore::insert_events_routed`]).
    pub async fn insert_sessions_routed(&self, rows: &[SessionRow]) -> Result<(), ClusterError> {
        let table = self.table(SESSIONS_TABLE);
        let by_shard = self.by_shard(rows, |row| row.partition);
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .map(|(shard, rows)| self.shards[shard].insert("inserting sessions", &table, rows)),
        )
        .await?;
        Ok(())
    }

    fn by_shard<T: Clone>(&self, rows: &[T], partition: impl Fn(&T) -> u32) -> Vec<Vec<T>> {
        let mut by_shard = vec![Vec::new(); self.shards.len()];
        for row in rows {
            by_shard[self.shard_of(partition(row))].push(row.clone());
        }
        by_shard
    }

    /// Deduplicated events of one partition with (time_ms, seq) > after and time_ms >= from_ms,
    /// ordered by (time_ms, seq), at most `limit` (paging for the worker's state rebuild).
    pub async fn partition_events_page(
        &self,
        partition: u32,
        from_ms: i64,
        after: (i64, u64),
        limit: usize,
    ) -> Result<Vec<EventRow>, ClusterError> {
        let sql = self.sql_partition_events_page(partition, from_ms, after, limit);
        self.shard(partition).fetch_all("reading a page of partition events", &sql).await
    }

    /// The earliest start of current (not superseded) sessions of the partition whose end_ms >= since_ms.
    pub async fn earliest_start_of_sessions_ending_since(
        &self,
        partition: u32,
        since_ms: i64,
    ) -> Result<Option<i64>, ClusterError> {
        let sql = self.sql_earliest_start(partition, since_ms);
        let rows: Vec<EarliestRow> =
            self.shard(partition).fetch_all("reading the earliest session start", &sql).await?;
        Ok(rows.first().filter(|row| row.sessions > 0).map(|row| row.start))
    }

    /// Current, not superseded sessions of the partition that start at or after
    /// `from_ms`, with their project, ordered by (project, user, start).
    pub async fn partition_sessions_since(
        &self,
        partition: u32,
        from_ms: i64,
    ) -> Result<Vec<(i64, StoredSession)>, ClusterError> {
        let sql = self.sql_partition_sessions_since(partition, from_ms);
        let rows: Vec<SessionRow> = self.shard(partition).fetch_all("reading partition sessions", &sql).await?;
        Ok(rows.iter().map(|row| (row.project, row.to_stored())).collect())
    }

    /// Current, not superseded sessions of one user, ordered by start.
    pub async fn sessions_of_user(
        &self,
        project: i64,
        partition: u32,
        user: &UserKey,
    ) -> Result<Vec<StoredSession>, ClusterError> {
        let sql = self.sql_sessions_of_user(project, partition, user);
        let rows: Vec<SessionRow> = self.shard(partition).fetch_all("reading a user's sessions", &sql).await?;
        Ok(rows.iter().map(SessionRow::to_stored).collect())
    }

    /// All the user's deduplicated events, ordered by (time, seq).
    pub async fn user_events(
        &self,
        project: i64,
        partition: u32,
        user: &UserKey,
    ) -> Result<Vec<StoredEvent>, ClusterError> {
        let sql = self.sql_user_events(project, partition, user);
        let rows: Vec<EventRow> = self.shard(partition).fetch_all("reading a user's events", &sql).await?;
        Ok(rows.iter().map(EventRow::to_stored).collect())
    }

    /// Which of these sessions exist (current rows, superseded or not): used to
    /// write a replayed change only for stored sessions. One query per
    /// [`MAX_IN_LIST_BYTES`] of keys.
    pub async fn stored_session_keys(
        &self,
        project: i64,
        partition: u32,
        keys: &[(UserKey, i64)],
    ) -> Result<HashSet<(UserKey, i64)>, ClusterError> {
        let literals = keys.iter().map(|(user, id)| {
            let (kind, key) = user_columns(user);
            format!("({kind}, {}, {id})", quote(&key))
        });
        let mut found = HashSet::new();
        for list in in_lists(literals) {
            let sql = self.sql_stored_session_keys(project, partition, &list);
            let rows: Vec<SessionKeyRow> = self.shard(partition).fetch_all("looking up stored sessions", &sql).await?;
            found.extend(rows.into_iter().map(|row| (user_key_of(row.user_kind, &row.user_key), row.session_id)));
        }
        Ok(found)
    }

    /// [`ClickHouseStore::stored_session_keys`] for the sessions of one user.
    pub async fn stored_session_ids(
        &self,
        project: i64,
        partition: u32,
        user: &UserKey,
        ids: &[i64],
    ) -> Result<HashSet<i64>, ClusterError> {
        let keys: Vec<(UserKey, i64)> = ids.iter().map(|id| (user.clone(), *id)).collect();
        Ok(self.stored_session_keys(project, partition, &keys).await?.into_iter().map(|(_, id)| id).collect())
    }

    /// Which of these event keys of the project are stored in the partition
    /// (redelivered messages whose events a previous attempt already wrote).
    /// One query per [`MAX_IN_LIST_BYTES`] of keys.
    pub async fn existing_event_keys(
        &self,
        project: i64,
        partition: u32,
        keys: &[String],
    ) -> Result<Vec<String>, ClusterError> {
        let mut found = Vec::new();
        for list in in_lists(keys.iter().map(|key| quote(key))) {
            let sql = self.sql_existing_event_keys(project, partition, &list);
            let rows: Vec<EventKeyRow> = self.shard(partition).fetch_all("looking up stored events", &sql).await?;
            found.extend(rows.into_iter().map(|row| row.event_key));
        }
        Ok(found)
    }

    /// Every current, not superseded session of a project on every shard,
    /// ordered by (user_kind, user_key, start_ms, session_id): for tests and the query role.
    pub async fn project_sessions(&self, project: i64) -> Result<Vec<StoredSession>, ClusterError> {
        let sql = self.sql_project_sessions(project);
        let per_shard = try_join_all(
            self.shards.iter().map(|shard| shard.fetch_all::<SessionRow>("reading a project's sessions", &sql)),
        )
        .await?;
        let mut rows: Vec<SessionRow> = per_shard.into_iter().flatten().collect();
        rows.sort_by(|a, b| {
            (a.user_kind, &a.user_key, a.start_ms, a.session_id).cmp(&(
                b.user_kind,
                &b.user_key,
                b.start_ms,
                b.session_id,
            ))
        });
        Ok(rows.iter().map(SessionRow::to_stored).collect())
    }

    /// A page of the users of a project in a partition (those with stored
    /// events), after `after`, in key order, at most `limit`.
    pub async fn partition_users(
        &self,
        partition: u32,
        project: i64,
        after: Option<&UserKey>,
        limit: usize,
    ) -> Result<Vec<UserKey>, ClusterError> {
        let after = after.map(user_columns);
        let sql =
            self.sql_partition_users(partition, project, after.as_ref().map(|(k, key)| (*k, key.as_str())), limit);
        let rows: Vec<UserRow> = self.shard(partition).fetch_all("listing a partition's users", &sql).await?;
        Ok(rows.iter().map(|row| user_key_of(row.user_kind, &row.user_key)).collect())
    }

    /// Every stored event and current session of these users of a project in a partition.
    pub async fn users_history(
        &self,
        partition: u32,
        project: i64,
        users: &[UserKey],
    ) -> Result<(Vec<StoredEvent>, Vec<StoredSession>), ClusterError> {
        let literals = users.iter().map(|user| {
            let (kind, key) = user_columns(user);
            format!("({kind}, {})", quote(&key))
        });
        let (mut events, mut sessions) = (Vec::new(), Vec::new());
        let shard = self.shard(partition);
        for list in in_lists(literals) {
            let rows: Vec<EventRow> = shard
                .fetch_all("reading users' events", &self.sql_partition_users_events(partition, project, &list))
                .await?;
            events.extend(rows.iter().map(EventRow::to_stored));
            let rows: Vec<SessionRow> = shard
                .fetch_all("reading users' sessions", &self.sql_partition_users_sessions(partition, project, &list))
                .await?;
            sessions.extend(rows.iter().map(SessionRow::to_stored));
        }
        Ok((events, sessions))
    }

    /// Deduplicated event count of a project over all shards.
    pub async fn project_event_count(&self, project: i64) -> Result<u64, ClusterError> {
        let sql = self.sql_project_event_count(project);
        let per_shard =
            try_join_all(self.shards.iter().map(|shard| shard.fetch_all::<CountRow>("counting events", &sql))).await?;
        Ok(per_shard.into_iter().flatten().map(|row| row.n).sum())
    }

    // ---- Dialect check ----

    /// Every statement this module sends (DDL and each query with sample values
    /// inlined), for the chDB dialect check.
    pub fn dialect_check_statements(&self) -> Vec<String> {
        self.dialect_checks().into_iter().map(|check| check.sql).collect()
    }

    /// [`ClickHouseStore::dialect_check_statements`] with the answers known
    /// from the sample rows they insert, as a JSON array of
    /// `{"sql": ..., "expect": {"rows", "column", "values"}?}`: the input of
    /// `tests/cluster/chdb_dialect.py`. Run in order on an empty server.
    pub fn dialect_check_json(&self) -> String {
        serde_json::to_string_pretty(&self.dialect_checks()).unwrap_or_else(|_| "[]".to_string())
    }

    /// The statements of the dialect check, in order, on sample data: two users
    /// (one with hostile characters), a duplicate event with a later sequence,
    /// an identical replay, a newer session version and a superseded session.
    pub fn dialect_checks(&self) -> Vec<DialectCheck> {
        const PROJECT: i64 = 7;
        const PARTITION: u32 = 3;
        let hostile = UserKey::User(Arc::from("o'brien \\ \"ü\" \n\t;-- ?{x:String}"));
        let device = UserKey::Device(Arc::from("dev-1"));
        let event = |user: &UserKey, event_type: &str, time_ms: i64, insert_id: &str| NewEvent {
            user_id: user.user_id().map(str::to_string),
            device_id: user.device_id().map(str::to_string),
            event_type: event_type.to_string(),
            time_ms,
            insert_id: Some(insert_id.to_string()),
            page: Some("/a'b\\c".to_string()),
            passive: false,
            properties: Some(r#"{"k":"v'\\"}"#.to_string()),
            client_session_id: None,
            platform: Some("web".to_string()),
            ip: None,
            received_ms: time_ms + 5,
        };
        // 2024-01-31 and 2024-02-01: two monthly parts.
        let t0 = 1_706_700_000_000;
        let events = [
            EventRow::new(PROJECT, PARTITION, 1, "k1", &event(&hostile, "open", t0, "k1")),
            EventRow::new(PROJECT, PARTITION, 2, "k2", &event(&hostile, "click", t0 + 60_000, "k2")),
            EventRow::new(PROJECT, PARTITION, 3, "k3", &event(&device, "open", t0 + 90_000_000, "k3")),
            // The same key again with a later sequence (a retry past the stream's dedup window): seq 2 wins.
            EventRow::new(PROJECT, PARTITION, 9, "k2", &event(&hostile, "click", t0 + 60_000, "k2")),
            // An identical replay.
            EventRow::new(PROJECT, PARTITION, 1, "k1", &event(&hostile, "open", t0, "k1")),
        ];
        let session = |user: &UserKey, session_id: i64, start_ms: i64| StoredSession {
            user: user.clone(),
            session_id,
            session_uid: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0 + session_id as u128),
            start_ms,
            end_ms: start_ms + 60_000,
            last_event_ms: start_ms + 60_000,
            event_count: 2,
            active_ms: 60_000,
            end_reason: None,
            concluded: false,
            entry_event_type: "open".to_string(),
            entry_page: Some("/a'b\\c".to_string()),
            exit_event_type: "click".to_string(),
            exit_page: None,
            revision: 0,
        };
        let mut concluded = session(&hostile, 1, t0);
        concluded.end_reason = Some("inactivity".to_string());
        concluded.concluded = true;
        let sessions = [
            SessionRow::new(PROJECT, PARTITION, &session(&hostile, 1, t0), false, 10, t0),
            SessionRow::new(PROJECT, PARTITION, &concluded, false, 11, t0),
            SessionRow::new(PROJECT, PARTITION, &session(&hostile, 2, t0 + 10), false, 12, t0),
            SessionRow::new(PROJECT, PARTITION, &session(&hostile, 2, t0 + 10), true, 13, t0),
            SessionRow::new(PROJECT, PARTITION, &session(&device, 5, t0 + 90_000_000), false, 14, t0),
            // An identical replay of a version.
            SessionRow::new(PROJECT, PARTITION, &concluded, false, 11, t0),
        ];
        let (hostile_kind, hostile_key) = user_columns(&hostile);
        let check = |sql: String, expect: Option<Expectation>| DialectCheck { sql, expect };
        let t0_text = t0.to_string();
        let t1_text = (t0 + 60_000).to_string();
        let t2_text = (t0 + 90_000_000).to_string();
        let mut checks = vec![
            check(self.sql_create_database(), None),
            check(self.sql_create_events(), None),
            check(self.sql_create_sessions(), None),
            check(self.sql_create_versions(), None),
            check(self.sql_create_versions_view(), None),
            // Idempotent DDL.
            check(self.sql_create_database(), None),
            check(self.sql_create_events(), None),
            check(self.sql_create_sessions(), None),
            check(self.sql_create_versions(), None),
            check(self.sql_create_versions_view(), None),
            check(self.sql_insert_values(EVENTS_TABLE, &events.iter().map(event_values).collect::<Vec<_>>()), None),
            check(
                self.sql_insert_values(SESSIONS_TABLE, &sessions.iter().map(session_values).collect::<Vec<_>>()),
                None,
            ),
            check(self.sql_project_event_count(PROJECT), Some(Expectation::new("n", &["3"]))),
            check(
                self.sql_partition_events_page(PARTITION, t0, (i64::MIN, 0), 2),
                Some(Expectation::new("seq", &["1", "2"])),
            ),
            check(
                self.sql_partition_events_page(PARTITION, t0, (t0 + 60_000, 2), 1000),
                Some(Expectation::new("time_ms", &[&t2_text])),
            ),
            check(
                self.sql_user_events(PROJECT, PARTITION, &hostile),
                Some(Expectation::new("time_ms", &[&t0_text, &t1_text])),
            ),
            check(self.sql_earliest_start(PARTITION, t0), Some(Expectation::new("sessions", &["2"]))),
            check(self.sql_earliest_start(PARTITION, t0 + 60_000), Some(Expectation::new("start", &[&t0_text]))),
            check(self.sql_earliest_start(PARTITION, i64::MAX), Some(Expectation::new("sessions", &["0"]))),
            check(self.sql_sessions_of_user(PROJECT, PARTITION, &hostile), Some(Expectation::new("version", &["11"]))),
            check(self.sql_partition_sessions_since(PARTITION, t0), Some(Expectation::new("session_id", &["1", "5"]))),
            check(self.sql_project_sessions(PROJECT), Some(Expectation::new("session_id", &["1", "5"]))),
            check(
                self.sql_stored_session_keys(
                    PROJECT,
                    PARTITION,
                    &format!(
                        "({hostile_kind}, {key}, 1), ({hostile_kind}, {key}, 2), ({hostile_kind}, {key}, 3)",
                        key = quote(&hostile_key)
                    ),
                ),
                Some(Expectation::new("session_id", &["1", "2"])),
            ),
            check(
                self.sql_existing_event_keys(PROJECT, PARTITION, "'k1', 'k3', 'nope'"),
                Some(Expectation::new("event_key", &["k1", "k3"])),
            ),
            check(
                self.sql_partition_users(PARTITION, PROJECT, None, 10),
                Some(Expectation::new("user_kind", &["0", "1"])),
            ),
            check(
                self.sql_partition_users(PARTITION, PROJECT, Some((hostile_kind, &hostile_key)), 10),
                Some(Expectation::new("user_key", &["dev-1"])),
            ),
            check(
                self.sql_partition_users_events(
                    PARTITION,
                    PROJECT,
                    &format!("({hostile_kind}, {})", quote(&hostile_key)),
                ),
                Some(Expectation::new("seq", &["1", "2"])),
            ),
            check(
                self.sql_partition_users_sessions(PARTITION, PROJECT, "(1, 'dev-1'), (0, 'nobody')"),
                Some(Expectation::new("session_id", &["5"])),
            ),
        ];
        checks.extend(self.read_dialect_checks(PROJECT, t0, &hostile, check));
        checks
    }

    /// `INSERT INTO table (columns) VALUES ...` with inlined rows (only for the
    /// dialect check; the calls insert `RowBinary`).
    fn sql_insert_values(&self, table: &str, rows: &[String]) -> String {
        let columns = if table == EVENTS_TABLE { columns::<EventRow>() } else { columns::<SessionRow>() };
        format!("INSERT INTO {} ({columns}) VALUES {}", self.table(table), rows.join(", "))
    }
}

/// An event row as a `VALUES` tuple.
fn event_values(row: &EventRow) -> String {
    format!(
        "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        row.project,
        row.partition,
        row.seq,
        quote(&row.event_key),
        row.user_kind,
        quote(&row.user_key),
        quote_opt(row.user_id.as_deref()),
        quote_opt(row.device_id.as_deref()),
        quote(&row.event_type),
        row.time_ms,
        quote_opt(row.insert_id.as_deref()),
        quote_opt(row.page.as_deref()),
        row.passive,
        quote_opt(row.properties.as_deref()),
        quote_opt(row.client_session_id.as_deref()),
        quote_opt(row.platform.as_deref()),
        quote_opt(row.ip.as_deref()),
        row.received_ms,
    )
}

/// A session row as a `VALUES` tuple.
fn session_values(row: &SessionRow) -> String {
    format!(
        "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        row.project,
        row.partition,
        row.user_kind,
        quote(&row.user_key),
        row.session_id,
        quote(&row.session_uid),
        row.start_ms,
        row.end_ms,
        row.last_event_ms,
        row.event_count,
        row.active_ms,
        quote(&row.end_reason),
        row.concluded,
        quote(&row.entry_event_type),
        quote_opt(row.entry_page.as_deref()),
        quote(&row.exit_event_type),
        quote_opt(row.exit_page.as_deref()),
        row.superseded,
        row.version,
        row.changed_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes [`quote`] the way ClickHouse's lexer reads a literal.
    fn unquote(literal: &str) -> String {
        let inner = literal.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).expect("quoted");
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            assert_ne!(c, '\'', "an unescaped quote would end the literal early: {literal}");
            if c == '\\' {
                match chars.next().expect("a dangling backslash would escape the closing quote") {
                    '0' => out.push('\0'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    other => out.push(other),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn quote_escapes_hostile_strings() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("o'brien"), r"'o\'brien'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
        assert_eq!(quote("\\'"), r"'\\\''");
        assert_eq!(quote("x\ny\0"), r"'x\ny\0'");
        for hostile in [
            "'",
            "\\",
            "\\'",
            "'\\",
            "''; DROP TABLE events_local; --",
            "\\'); DROP DATABASE x; --",
            "ü 😀 \u{202e} \u{feff}",
            "tab\tnew\nline\rcr\0nul",
            "?{x:String} ?fields `backtick` \"dq\"",
            "\\\\\\",
        ] {
            let quoted = quote(hostile);
            assert_eq!(unquote(&quoted), hostile, "{quoted}");
        }
    }

    #[test]
    fn in_lists_respect_the_bound() {
        assert!(in_lists(Vec::<String>::new()).is_empty());
        let literals: Vec<String> = (0..20_000).map(|i| quote(&format!("key-{i:08}"))).collect();
        let lists = in_lists(literals.clone());
        assert!(lists.len() > 1);
        assert!(lists.iter().all(|list| list.len() <= MAX_IN_LIST_BYTES));
        let joined: Vec<String> = lists.iter().flat_map(|l| l.split(", ").map(str::to_string)).collect();
        assert_eq!(joined, literals);
        let big = "x".repeat(MAX_IN_LIST_BYTES + 10);
        assert_eq!(in_lists(vec![big.clone(), "'a'".into()]), vec![big, "'a'".to_string()]);
    }

    #[test]
    fn store_validates_its_configuration() {
        let urls = vec!["http://127.0.0.1:8123".to_string(), "http://u:secret@127.0.0.1:8124/".to_string()];
        let store = ClickHouseStore::new(&urls, "sessionizer_1", Some("u"), Some("p")).unwrap();
        assert_eq!(store.shard_count(), 2);
        assert_eq!(store.shard_of(0), 0);
        assert_eq!(store.shard_of(7), 1);
        assert!(!format!("{store:?}").contains("secret"));
        assert_eq!(store.shards[1].url, "http://127.0.0.1:8124/");
        assert!(ClickHouseStore::new(&[], "db", None, None).is_err());
        for bad in ["", "a-b", "a`b", "db; DROP", "ü", &"x".repeat(65)] {
            assert!(ClickHouseStore::new(&urls, bad, None, None).is_err(), "{bad:?}");
        }
        assert!(ClickHouseStore::new(&["127.0.0.1:8123".to_string()], "db", None, None).is_err());
    }

    #[test]
    fn row_types_round_trip() {
        let event = NewEvent {
            user_id: None,
            device_id: Some("d".into()),
            event_type: "t".into(),
            time_ms: 5,
            insert_id: None,
            page: Some("/p".into()),
            passive: true,
            properties: None,
            client_session_id: Some("c".into()),
            platform: None,
            ip: Some("1.2.3.4".into()),
            received_ms: 6,
        };
        let row = EventRow::new(1, 2, 42, "key", &event);
        assert_eq!((row.user_kind, row.user_key.as_str(), row.passive), (USER_KIND_DEVICE, "d", 1));
        assert_eq!(row.to_stored(), StoredEvent { seq: 42, event: event.clone() });
        let session = StoredSession {
            user: UserKey::User(Arc::from("u")),
            session_id: 3,
            session_uid: Uuid::from_u128(99),
            start_ms: 1,
            end_ms: 2,
            last_event_ms: 2,
            event_count: 4,
            active_ms: 1,
            end_reason: Some("inactivity".into()),
            concluded: true,
            entry_event_type: "a".into(),
            entry_page: None,
            exit_event_type: "b".into(),
            exit_page: Some("/x".into()),
            revision: 17,
        };
        let row = SessionRow::new(1, 2, &session, false, 17, 100);
        assert_eq!(row.session_uid, "00000000-0000-0000-0000-000000000063");
        assert_eq!(row.to_stored(), session);
        let open = StoredSession { end_reason: None, concluded: false, ..session };
        let row = SessionRow::new(1, 2, &open, true, 17, 100);
        assert_eq!(row.end_reason, "");
        assert_eq!(row.to_stored(), open);
    }

    #[test]
    fn column_lists_follow_the_tables() {
        let store = ClickHouseStore::new(&["http://127.0.0.1:1".to_string()], "db", None, None).unwrap();
        // Every row column is declared, in the same order (RowBinary is positional).
        for (ddl, names) in [
            (store.sql_create_events(), EventRow::COLUMN_NAMES),
            (store.sql_create_sessions(), SessionRow::COLUMN_NAMES),
            (store.sql_create_versions(), SessionRow::COLUMN_NAMES),
        ] {
            let body = &ddl[ddl.find('(').unwrap() + 1..ddl.find(") ENGINE").unwrap()];
            let declared: Vec<&str> = body.split(", ").map(|c| c.split(' ').next().unwrap()).collect();
            let stored: Vec<&str> = declared.iter().copied().filter(|c| *c != "first_seen").collect();
            assert_eq!(stored, names);
        }
    }

    #[test]
    fn expectations_check_tsv() {
        let expect = Expectation::new("b", &["2", "4"]);
        assert_eq!(expect.check("a\tb\n1\t2\n3\t4\n"), Ok(()));
        assert!(expect.check("a\tb\n1\t2\n").is_err());
        assert!(expect.check("a\tc\n1\t2\n3\t4\n").is_err());
        assert!(expect.check("a\tb\n1\t2\n3\t5\n").is_err());
    }
}
