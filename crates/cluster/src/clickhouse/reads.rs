//! Reads behind a cluster's query role (`serve --role query`): the query
//! API's figures computed where the data is. Every shard aggregates its own
//! users; a user lives on one shard, so per-shard counts, sums and even
//! distinct-user counts add up exactly, and percentiles are taken from the
//! merged per-second length counts, as the single binary's board index does
//! (same nearest-rank rule, same whole-second truncation). The answers equal
//! the single binary's for the same sessions; `tests/cluster` checks that.
//!
//! Like the rest of this module, only SQL that 18.16 and current releases
//! both run: 18.16 lambdas cannot read a row's other columns, so "a session
//! holding an event of type T" is an `ARRAY JOIN` of each user's event times.

use std::collections::HashMap;

use ::clickhouse::Row;
use futures_util::future::try_join_all;
use serde::Deserialize;
use sessionizer_engine::UserKey;
use sessionizer_store::{
    BoardFigures, CohortFilter, DayFigures, SESSIONS_PER_USER_BUCKETS, SessionFilter, StoredEvent, StoredSession,
};

use super::{
    ClickHouseStore, CountRow, EVENTS_TABLE, EventRow, SESSIONS_TABLE, SessionRow, UserRow, VERSIONS_TABLE, columns,
    quote, user_columns, user_key_of,
};
use crate::ClusterError;

const DAY_MS: i64 = 86_400_000;

/// Rows an export reads per step from each shard (bounds the memory of an
/// export, whatever its length: a step's rows and their users' sessions).
pub const EXPORT_PAGE_ROWS: usize = 10_000;

/// A position in a project's change feed: per partition, the last version read.
pub type FeedCursor = std::collections::BTreeMap<u32, u64>;

/// One change of the feed: a session version, with what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub partition: u32,
    pub version: u64,
    /// `started`, `amended`, `concluded` or `superseded`.
    pub kind: &'static str,
    /// The session's state after the change (its last state, for `superseded`).
    pub session: StoredSession,
    /// When the worker wrote it (epoch ms).
    pub changed_ms: i64,
}

/// A session version's identity: (partition, user kind, user key, session id).
type VersionKey = (u32, u8, String, i64);

fn version_key(row: &SessionRow) -> VersionKey {
    (row.partition, row.user_kind, row.user_key.clone(), row.session_id)
}

/// The changes of `rows` (in version order), each against the version before
/// it (`previous` holds the one before the first of each session, if any). A
/// version that changes nothing (written again by a replay) is no change.
fn feed_changes(rows: Vec<SessionRow>, mut previous: HashMap<VersionKey, SessionRow>) -> Vec<FeedChange> {
    let mut changes = Vec::new();
    for row in rows {
        let key = version_key(&row);
        let before = previous.get(&key);
        let session = row.to_stored();
        let kind = match before {
            _ if row.superseded != 0 => "superseded",
            None => "started",
            Some(before) if before.superseded != 0 => "started",
            Some(before) if row.concluded != 0 && before.concluded == 0 => "concluded",
            Some(_) => "amended",
        };
        let unchanged = before.is_some_and(|before| {
            before.superseded == row.superseded && (row.superseded != 0 || before.to_stored().same_state(&session))
        });
        if !unchanged {
            changes.push(FeedChange {
                partition: row.partition,
                version: row.version,
                kind,
                session,
                changed_ms: row.changed_ms,
            });
        }
        previous.insert(key, row);
    }
    changes
}

/// An exported event's session: its id and uid.
pub type EventSession = Option<(i64, uuid::Uuid)>;

/// The sessions a figure covers: a project's current sessions starting on
/// days `from_day..=to_day` (days since 1970-01-01 in `time_zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow<'a> {
    pub project: i64,
    /// An IANA zone name (checked when the project's settings were set).
    pub time_zone: &'a str,
    pub from_day: i32,
    pub to_day: i32,
}

/// Which figures a route needs (each part is one query per shard; what is
/// not asked for stays zero): `days` per-day counts, sums and users, and the
/// range's total length; `lengths` the session count, percentiles, length
/// buckets and single-event sessions; `users` distinct users, sessions per
/// user and the project's open sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FigureParts {
    pub days: bool,
    pub lengths: bool,
    pub users: bool,
}

impl FigureParts {
    pub const ALL: FigureParts = FigureParts { days: true, lengths: true, users: true };
}

#[derive(Debug, Deserialize, Row)]
struct DayRow {
    day: i32,
    sessions: u64,
    total_length_ms: i64,
    users: u64,
}

#[derive(Debug, Deserialize, Row)]
struct SecondsRow {
    seconds: i64,
    sessions: u64,
    single_event: u64,
}

#[derive(Debug, Deserialize, Row)]
struct BelowRow {
    below: Vec<u64>,
}

#[derive(Debug, Deserialize, Row)]
struct PerUserRow {
    sessions: u64,
    users: u64,
}

#[derive(Debug, Deserialize, Row)]
struct SampledUserRow {
    user_kind: u8,
    user_key: String,
    events: u64,
    hash: u64,
}

#[derive(Debug, Deserialize, Row)]
struct RangeRow {
    first: i64,
    last: i64,
    sessions: u64,
}

impl ClickHouseStore {
    /// `session_id, length_ms, event_count, concluded, user_kind, user_key,
    /// day` of the window's current sessions. A session's start is a function
    /// of its key (a session that starts earlier is another session, and the
    /// old one is superseded), so the inner filter on it (a day either side,
    /// whatever the zone's offset) runs before `FINAL`, the exact day filter
    /// after it.
    fn sql_window_sessions(&self, window: &DayWindow<'_>) -> String {
        let zone = quote(window.time_zone);
        let (from_ms, to_ms) = ((i64::from(window.from_day) - 1) * DAY_MS, (i64::from(window.to_day) + 2) * DAY_MS);
        format!(
            "SELECT session_id, length_ms, event_count, concluded, user_kind, user_key, \
             toInt32(toDate(toDateTime(intDiv(start_ms, 1000)), {zone})) AS day FROM (\
             SELECT session_id, start_ms, end_ms - start_ms AS length_ms, event_count, concluded, user_kind, user_key, \
             superseded FROM {} FINAL WHERE project = {} AND start_ms >= {from_ms} AND start_ms < {to_ms}\
             ) WHERE superseded = 0 AND day >= {} AND day <= {}",
            self.table(SESSIONS_TABLE),
            window.project,
            window.from_day,
            window.to_day,
        )
    }

    fn sql_figures_by_day(&self, window: &DayWindow<'_>) -> String {
        format!(
            "SELECT day, toUInt64(count()) AS sessions, toInt64(sum(length_ms)) AS total_length_ms, \
             toUInt64(uniqExact(user_kind, user_key)) AS users FROM ({}) GROUP BY day ORDER BY day",
            self.sql_window_sessions(window)
        )
    }

    fn sql_figures_by_second(&self, window: &DayWindow<'_>) -> String {
        format!(
            "SELECT toInt64(intDiv(greatest(length_ms, 0), 1000)) AS seconds, toUInt64(count()) AS sessions, \
             toUInt64(countIf(event_count = 1)) AS single_event FROM ({}) GROUP BY seconds ORDER BY seconds",
            self.sql_window_sessions(window)
        )
    }

    /// Sessions shorter than each bound (not empty: `[]` has no element type on 18.16).
    fn sql_figures_below(&self, window: &DayWindow<'_>, bounds_ms: &[i64]) -> String {
        let counts: Vec<String> =
            bounds_ms.iter().map(|bound| format!("toUInt64(countIf(length_ms < {bound}))")).collect();
        format!("SELECT [{}] AS below FROM ({})", counts.join(", "), self.sql_window_sessions(window))
    }

    fn sql_figures_per_user(&self, window: &DayWindow<'_>) -> String {
        format!(
            "SELECT sessions, toUInt64(count()) AS users FROM (\
             SELECT toUInt64(count()) AS sessions FROM ({}) GROUP BY user_kind, user_key\
             ) GROUP BY sessions ORDER BY sessions",
            self.sql_window_sessions(window)
        )
    }

    fn sql_open_sessions(&self, project: i64) -> String {
        format!(
            "SELECT toUInt64(count()) AS n FROM (SELECT concluded, superseded FROM {} FINAL WHERE project = {project}) \
             WHERE superseded = 0 AND concluded = 0",
            self.table(SESSIONS_TABLE)
        )
    }

    fn sql_cohort(&self, window: &DayWindow<'_>, filter: &CohortFilter) -> String {
        let max = filter.max_length_ms.map_or(String::new(), |max| format!(" AND length_ms <= {max}"));
        format!(
            "SELECT user_kind, user_key FROM ({}) WHERE length_ms >= {}{max} \
             GROUP BY user_kind, user_key HAVING count() >= {} ORDER BY user_kind, user_key",
            self.sql_window_sessions(window),
            filter.min_length_ms,
            filter.min_sessions.max(1),
        )
    }

    fn sql_start_range(&self, project: i64) -> String {
        format!(
            "SELECT toInt64(min(start_ms)) AS first, toInt64(max(start_ms)) AS last, toUInt64(count()) AS sessions \
             FROM (SELECT start_ms, superseded FROM {} FINAL WHERE project = {project}) WHERE superseded = 0",
            self.table(SESSIONS_TABLE)
        )
    }

    /// A page of `GET /v1/sessions` on one shard (see [`SessionFilter`]).
    fn sql_sessions_page(&self, project: i64, filter: &SessionFilter, limit: usize) -> String {
        // The start is a function of the key (see `sql_window_sessions`).
        let mut key_filter = format!("project = {project}");
        if filter.from_ms != i64::MIN {
            key_filter.push_str(&format!(" AND start_ms >= {}", filter.from_ms));
        }
        if filter.to_ms != i64::MAX {
            key_filter.push_str(&format!(" AND start_ms < {}", filter.to_ms));
        }
        if let Some(user) = &filter.user {
            key_filter.push_str(&format!(" AND {}", Self::user_filter(project, user)));
        }
        let mut current = String::from("superseded = 0");
        if let Some(min) = filter.min_length_ms {
            current.push_str(&format!(" AND end_ms - start_ms >= {min}"));
        }
        if let Some(max) = filter.max_length_ms {
            current.push_str(&format!(" AND end_ms - start_ms <= {max}"));
        }
        let (beyond, direction) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if let Some(cursor) = &filter.after {
            let (kind, key) = user_columns(&cursor.user);
            current.push_str(&format!(
                " AND (start_ms {beyond} {start} OR (start_ms = {start} AND (user_kind {beyond} {kind} \
                 OR (user_kind = {kind} AND user_key {beyond} {key}))))",
                start = cursor.start_ms,
                key = quote(&key),
            ));
        }
        if let Some(event_type) = &filter.event_type {
            // The sessions holding an event of the type: each user's event
            // times of that type, unrolled against the user's sessions.
            current.push_str(&format!(
                " AND (user_kind, user_key, session_id) IN (\
                 SELECT user_kind, user_key, session_id FROM (\
                 SELECT user_kind, user_key, session_id, start_ms, last_event_ms, times FROM (\
                 SELECT user_kind, user_key, session_id, start_ms, last_event_ms, superseded FROM {sessions} FINAL \
                 WHERE {key_filter}) AS user_sessions ANY INNER JOIN (\
                 SELECT user_kind, user_key, groupArray(time_ms) AS times FROM {events} FINAL \
                 WHERE project = {project} AND event_type = {event_type} AND time_ms >= {from} \
                 GROUP BY user_kind, user_key) AS user_times USING (user_kind, user_key) WHERE superseded = 0\
                 ) ARRAY JOIN times AS event_time WHERE event_time >= start_ms AND event_time <= last_event_ms)",
                sessions = self.table(SESSIONS_TABLE),
                events = self.table(EVENTS_TABLE),
                event_type = quote(event_type),
                from = filter.from_ms.max(i64::MIN + 1),
            ));
        }
        let columns = columns::<SessionRow>();
        format!(
            "SELECT {columns} FROM (SELECT {columns} FROM {} FINAL WHERE {key_filter}) WHERE {current} \
             ORDER BY start_ms {direction}, user_kind {direction}, user_key {direction} LIMIT {limit}",
            self.table(SESSIONS_TABLE)
        )
    }

    fn sql_session_by_uid(&self, project: i64, session_uid: &str) -> String {
        // The uid is a function of the key (project, user, start), so every
        // version of a session carries it: filtering before `FINAL` is safe.
        self.sql_current_sessions(
            &format!("project = {project} AND session_uid = {}", quote(session_uid)),
            "start_ms, session_id",
        )
    }

    fn sql_session_events(
        &self,
        project: i64,
        partition: u32,
        session: &StoredSession,
        excluded_event_types: &[&str],
        limit: usize,
    ) -> String {
        let excluded = if excluded_event_types.is_empty() {
            String::new()
        } else {
            let types: Vec<String> = excluded_event_types.iter().map(|t| quote(t)).collect();
            format!(" AND event_type NOT IN ({})", types.join(", "))
        };
        format!(
            "SELECT {} FROM {} FINAL WHERE partition = {partition} AND {} AND time_ms >= {} AND time_ms <= {}{excluded} \
             ORDER BY time_ms, seq LIMIT {limit}",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE),
            Self::user_filter(project, &session.user),
            session.start_ms,
            session.last_event_ms,
        )
    }

    /// Events of `[from_ms, to_ms)` after `after` (time, stream sequence), in that order.
    fn sql_events_page(
        &self,
        project: i64,
        (from_ms, to_ms): (i64, i64),
        after: Option<(i64, u64)>,
        limit: usize,
    ) -> String {
        let after = after.map_or(String::new(), |(time, seq)| {
            format!(" AND (time_ms > {time} OR (time_ms = {time} AND seq > {seq}))")
        });
        format!(
            "SELECT {} FROM {} FINAL WHERE project = {project} AND time_ms >= {from_ms} AND time_ms < {to_ms}{after} \
             ORDER BY time_ms, seq LIMIT {limit}",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE)
        )
    }

    /// Current sessions of the users in `in_list` (`(user_kind, user_key)`
    /// tuples) that start before `to_ms` and last until `from_ms` or later.
    fn sql_sessions_overlapping(&self, project: i64, in_list: &str, (from_ms, to_ms): (i64, i64)) -> String {
        let columns = columns::<SessionRow>();
        format!(
            "SELECT {columns} FROM (SELECT {columns} FROM {} FINAL \
             WHERE project = {project} AND (user_kind, user_key) IN ({in_list}) AND start_ms < {to_ms}) \
             WHERE superseded = 0 AND last_event_ms >= {from_ms} ORDER BY user_kind, user_key, start_ms",
            self.table(SESSIONS_TABLE)
        )
    }

    /// The window's users with the events of their sessions there, in the
    /// order of a hash of their key, at most `limit`.
    fn sql_users_by_hash(&self, window: &DayWindow<'_>, limit: usize) -> String {
        format!(
            "SELECT user_kind, user_key, toUInt64(sum(event_count)) AS events, cityHash64(user_key) AS hash \
             FROM ({}) GROUP BY user_kind, user_key HAVING events > 0 ORDER BY hash, user_kind, user_key LIMIT {limit}",
            self.sql_window_sessions(window)
        )
    }

    fn sql_window_users(&self, window: &DayWindow<'_>) -> String {
        format!("SELECT toUInt64(uniqExact(user_kind, user_key)) AS n FROM ({})", self.sql_window_sessions(window))
    }

    /// Events of `[from_ms, to_ms)` of the users in `in_list` (`(user_kind, user_key)` tuples).
    fn sql_events_of_users(&self, project: i64, in_list: &str, (from_ms, to_ms): (i64, i64)) -> String {
        format!(
            "SELECT {} FROM {} FINAL WHERE project = {project} AND (user_kind, user_key) IN ({in_list}) \
             AND time_ms >= {from_ms} AND time_ms < {to_ms} ORDER BY user_kind, user_key, time_ms, seq",
            columns::<EventRow>(),
            self.table(EVENTS_TABLE)
        )
    }

    /// The first `limit` session versions of a project after `cursor`, in version order.
    fn sql_feed_page(&self, project: i64, cursor: &FeedCursor, limit: usize) -> String {
        let mut after: Vec<String> =
            cursor.iter().map(|(p, v)| format!("(partition = {p} AND version > {v})")).collect();
        if !cursor.is_empty() {
            let seen: Vec<String> = cursor.keys().map(u32::to_string).collect();
            after.push(format!("partition NOT IN ({})", seen.join(", ")));
        }
        let after = if after.is_empty() { String::new() } else { format!(" AND ({})", after.join(" OR ")) };
        format!(
            "SELECT {} FROM {} WHERE project = {project}{after} ORDER BY version, partition LIMIT {limit}",
            columns::<SessionRow>(),
            self.table(VERSIONS_TABLE)
        )
    }

    /// The latest version at or before the cursor of each session in `in_list`
    /// (`(partition, user_kind, user_key, session_id)` tuples).
    fn sql_feed_previous(&self, project: i64, in_list: &str, cursor: &FeedCursor) -> String {
        let bounds: Vec<String> = cursor.iter().map(|(p, v)| format!("(partition = {p} AND version <= {v})")).collect();
        format!(
            "SELECT {} FROM {} WHERE project = {project} AND (partition, user_kind, user_key, session_id) IN ({in_list}) \
             AND ({}) ORDER BY version DESC LIMIT 1 BY partition, user_kind, user_key, session_id",
            columns::<SessionRow>(),
            self.table(VERSIONS_TABLE),
            if bounds.is_empty() { "0".to_string() } else { bounds.join(" OR ") },
        )
    }

    /// Every version of one session, in order.
    fn sql_session_versions(&self, project: i64, session_uid: &str, limit: usize) -> String {
        format!(
            "SELECT {} FROM {} WHERE project = {project} AND session_uid = {} ORDER BY version LIMIT {limit}",
            columns::<SessionRow>(),
            self.table(VERSIONS_TABLE),
            quote(session_uid)
        )
    }

    /// [`ClickHouseStore::fetch_everywhere`] when there is a statement; no rows otherwise.
    async fn fetch_everywhere_if<T>(&self, operation: &str, sql: Option<&str>) -> Result<Vec<Vec<T>>, ClusterError>
    where
        T: ::clickhouse::RowOwned + ::clickhouse::RowRead,
    {
        match sql {
            Some(sql) => self.fetch_everywhere(operation, sql).await,
            None => Ok(Vec::new()),
        }
    }

    /// Runs `sql` on every shard at once.
    async fn fetch_everywhere<T>(&self, operation: &str, sql: &str) -> Result<Vec<Vec<T>>, ClusterError>
    where
        T: ::clickhouse::RowOwned + ::clickhouse::RowRead,
    {
        try_join_all(self.shards.iter().map(|shard| shard.fetch_all::<T>(operation, sql))).await
    }

    /// Every board figure of the window, with the length distribution over
    /// `bounds_ms` (increasing, positive), as the single binary's board index
    /// computes them.
    pub async fn board_figures(
        &self,
        window: &DayWindow<'_>,
        bounds_ms: &[i64],
        parts: FigureParts,
    ) -> Result<BoardFigures, ClusterError> {
        let day_count = (window.to_day - window.from_day + 1).max(0) as usize;
        let wanted = |wanted: bool, sql: String| wanted.then_some(sql);
        let by_day_sql = wanted(parts.days, self.sql_figures_by_day(window));
        let by_second_sql = wanted(parts.lengths, self.sql_figures_by_second(window));
        let per_user_sql = wanted(parts.users, self.sql_figures_per_user(window));
        let open_sql = wanted(parts.users, self.sql_open_sessions(window.project));
        // Bounds in whole seconds are answered from the per-second counts (as
        // the board index does); others need a count of their own.
        let whole_seconds = bounds_ms.iter().all(|&b| b > 0 && b % 1_000 == 0);
        let below_sql = wanted(parts.lengths && !whole_seconds, self.sql_figures_below(window, bounds_ms));
        let (by_day, by_second, per_user, open, below) = tokio::try_join!(
            self.fetch_everywhere_if::<DayRow>("reading sessions per day", by_day_sql.as_deref()),
            self.fetch_everywhere_if::<SecondsRow>("reading session lengths", by_second_sql.as_deref()),
            self.fetch_everywhere_if::<PerUserRow>("reading sessions per user", per_user_sql.as_deref()),
            self.fetch_everywhere_if::<CountRow>("counting open sessions", open_sql.as_deref()),
            self.fetch_everywhere_if::<BelowRow>("reading the length distribution", below_sql.as_deref()),
        )?;
        let mut days = vec![DayFigures::default(); day_count];
        let mut total_length_ms = 0i64;
        for row in by_day.into_iter().flatten() {
            let Some(day) = usize::try_from(row.day - window.from_day).ok().and_then(|i| days.get_mut(i)) else {
                continue;
            };
            day.sessions += row.sessions;
            day.total_length_ms += row.total_length_ms;
            day.users += row.users;
            total_length_ms += row.total_length_ms;
        }
        // Per-second counts of all shards, merged in order of length.
        let mut seconds: Vec<(i64, u64)> = Vec::new();
        let mut single_event_sessions = 0;
        for row in by_second.into_iter().flatten() {
            seconds.push((row.seconds, row.sessions));
            single_event_sessions += row.single_event;
        }
        seconds.sort_unstable();
        let sessions: u64 = if parts.lengths {
            seconds.iter().map(|&(_, n)| n).sum()
        } else {
            days.iter().map(|day| day.sessions).sum()
        };
        let mut sessions_per_user = [0u64; SESSIONS_PER_USER_BUCKETS.len()];
        let mut users = 0;
        for row in per_user.into_iter().flatten() {
            let bucket =
                SESSIONS_PER_USER_BUCKETS.iter().position(|&(_, low, high)| (low..=high).contains(&row.sessions));
            if let Some(bucket) = bucket {
                sessions_per_user[bucket] += row.users;
                users += row.users;
            }
        }
        let mut length_buckets = vec![0u64; bounds_ms.len() + 1];
        let mut below_all = vec![0u64; bounds_ms.len()];
        if below_sql.is_some() {
            for row in below.into_iter().flatten() {
                for (total, shard) in below_all.iter_mut().zip(row.below) {
                    *total += shard;
                }
            }
        } else {
            // Lengths under a bound of whole seconds are those under its seconds.
            for (total, &bound) in below_all.iter_mut().zip(bounds_ms) {
                *total = seconds.iter().take_while(|&&(s, _)| s < bound / 1_000).map(|&(_, n)| n).sum();
            }
        }
        let mut below_previous = 0;
        for (bucket, &below) in length_buckets.iter_mut().zip(&below_all) {
            *bucket = below - below_previous;
            below_previous = below;
        }
        length_buckets[bounds_ms.len()] = sessions - below_previous;
        Ok(BoardFigures {
            from_day: window.from_day,
            days,
            length_buckets,
            sessions,
            users,
            total_length_ms,
            median_length_ms: nearest_rank(&seconds, sessions, 50),
            p90_length_ms: nearest_rank(&seconds, sessions, 90),
            sessions_per_user,
            single_event_sessions,
            open_sessions: open.into_iter().flatten().map(|row| row.n).sum(),
        })
    }

    /// Users with at least `min_sessions` sessions in the window whose length
    /// is within the filter's bounds, sorted (the board index's order).
    pub async fn cohort(&self, window: &DayWindow<'_>, filter: &CohortFilter) -> Result<Vec<UserKey>, ClusterError> {
        let rows = self.fetch_everywhere::<UserRow>("reading a cohort", &self.sql_cohort(window, filter)).await?;
        let mut users: Vec<UserKey> =
            rows.into_iter().flatten().map(|row| user_key_of(row.user_kind, &row.user_key)).collect();
        users.sort();
        Ok(users)
    }

    /// The first and last session start of a project, if it has sessions.
    pub async fn session_start_range(&self, project: i64) -> Result<Option<(i64, i64)>, ClusterError> {
        let rows =
            self.fetch_everywhere::<RangeRow>("reading the session range", &self.sql_start_range(project)).await?;
        Ok(rows.into_iter().flatten().filter(|row| row.sessions > 0).fold(None, |range, row| match range {
            None => Some((row.first, row.last)),
            Some((first, last)) => Some((first.min(row.first), last.max(row.last))),
        }))
    }

    /// A page of sessions matching `filter`, in start order then user (as the
    /// single binary's `GET /v1/sessions`): each shard's first `limit`, merged.
    pub async fn sessions_page(
        &self,
        project: i64,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<StoredSession>, ClusterError> {
        let sql = self.sql_sessions_page(project, filter, limit);
        let rows = self.fetch_everywhere::<SessionRow>("reading a page of sessions", &sql).await?;
        let mut sessions: Vec<StoredSession> = rows.into_iter().flatten().map(|row| row.to_stored()).collect();
        sessions.sort_by(|a, b| {
            let order = (a.start_ms, &a.user).cmp(&(b.start_ms, &b.user));
            if filter.newest_first { order.reverse() } else { order }
        });
        sessions.truncate(limit);
        Ok(sessions)
    }

    /// The current session with this uid (hyphenated), if there is one.
    pub async fn session_by_uid(&self, project: i64, session_uid: &str) -> Result<Option<StoredSession>, ClusterError> {
        let sql = self.sql_session_by_uid(project, session_uid);
        let rows = self.fetch_everywhere::<SessionRow>("reading a session", &sql).await?;
        Ok(rows.into_iter().flatten().next().map(|row| row.to_stored()))
    }

    /// The stored events within a session's span (first to last event) but
    /// those of excluded types, at most `limit`, in time order.
    pub async fn session_events(
        &self,
        project: i64,
        partition: u32,
        session: &StoredSession,
        excluded_event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ClusterError> {
        let sql = self.sql_session_events(project, partition, session, excluded_event_types, limit);
        let rows: Vec<EventRow> = self.shard(partition).fetch_all("reading a session's events", &sql).await?;
        Ok(rows.iter().map(EventRow::to_stored).collect())
    }

    /// One step of an events export: the events of `[from_ms, to_ms)` after
    /// `after` (time, stream sequence), at most `limit`, in time order across
    /// shards, each with its session (none for an excluded event or one in no
    /// session), found as the single binary finds it: the user's session with
    /// the latest start at or before the event, if the event is not after its
    /// last event. Fewer than `limit` events end the export; the last event's
    /// (time, sequence) is the next `after`.
    pub async fn events_with_sessions(
        &self,
        project: i64,
        range: (i64, i64),
        after: Option<(i64, u64)>,
        limit: usize,
        excluded: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<(EventRow, EventSession)>, ClusterError> {
        let sql = self.sql_events_page(project, range, after, limit);
        let mut events: Vec<EventRow> =
            self.fetch_everywhere::<EventRow>("reading a page of events", &sql).await?.into_iter().flatten().collect();
        events.sort_by_key(|row| (row.time_ms, row.seq));
        events.truncate(limit);
        let Some(first_ms) = events.first().map(|row| row.time_ms) else { return Ok(Vec::new()) };
        let last_ms = events.last().map_or(first_ms, |row| row.time_ms);
        let mut users: Vec<(u8, &str)> = events.iter().map(|row| (row.user_kind, row.user_key.as_str())).collect();
        users.sort_unstable();
        users.dedup();
        let mut sessions: HashMap<(u8, String), Vec<SessionRow>> = HashMap::new();
        let literals = users.iter().map(|(kind, key)| format!("({kind}, {})", quote(key)));
        for list in super::in_lists(literals) {
            let sql = self.sql_sessions_overlapping(project, &list, (first_ms, last_ms.saturating_add(1)));
            let rows = self.fetch_everywhere::<SessionRow>("reading the sessions of exported events", &sql).await?;
            for row in rows.into_iter().flatten() {
                sessions.entry((row.user_kind, row.user_key.clone())).or_default().push(row);
            }
        }
        for list in sessions.values_mut() {
            list.sort_by_key(|row| row.start_ms);
        }
        Ok(events
            .into_iter()
            .map(|row| {
                let session = if excluded(&row.event_type) {
                    None
                } else {
                    sessions.get(&(row.user_kind, row.user_key.clone())).and_then(|list| {
                        let at_or_before = list.partition_point(|s| s.start_ms <= row.time_ms);
                        let session = list.get(at_or_before.checked_sub(1)?)?;
                        (row.time_ms <= session.last_event_ms).then(|| {
                            (
                                session.session_id,
                                uuid::Uuid::parse_str(&session.session_uid).unwrap_or(uuid::Uuid::nil()),
                            )
                        })
                    })
                };
                (row, session)
            })
            .collect())
    }

    /// A deterministic sample of the window's users for the timeout preview:
    /// the number of users in the window, and users in the order of a hash of
    /// their key (`cityHash64`, which every ClickHouse has) with the events of
    /// their sessions in the window, as many as keep the sum within
    /// `max_events`. Each shard sends at most `max_events` users (every user
    /// has an event), so the transfer is bounded whatever the project's size.
    pub async fn sample_users(
        &self,
        window: &DayWindow<'_>,
        max_events: usize,
    ) -> Result<(u64, Vec<(UserKey, u64)>), ClusterError> {
        let (users_sql, count_sql) = (self.sql_users_by_hash(window, max_events), self.sql_window_users(window));
        let (users, counts) = tokio::try_join!(
            self.fetch_everywhere::<SampledUserRow>("sampling users", &users_sql),
            self.fetch_everywhere::<CountRow>("counting users", &count_sql),
        )?;
        let mut users: Vec<SampledUserRow> = users.into_iter().flatten().collect();
        users.sort_by(|a, b| (a.hash, a.user_kind, &a.user_key).cmp(&(b.hash, b.user_kind, &b.user_key)));
        let mut budget = 0u64;
        let sampled = users
            .into_iter()
            .take_while(|row| {
                budget += row.events;
                budget <= max_events as u64
            })
            .map(|row| (user_key_of(row.user_kind, &row.user_key), row.events))
            .collect();
        Ok((counts.into_iter().flatten().map(|row| row.n).sum(), sampled))
    }

    /// The events of `[from_ms, to_ms)` of these users, each user's in time order.
    pub async fn events_of_users(
        &self,
        project: i64,
        users: &[UserKey],
        range: (i64, i64),
    ) -> Result<Vec<StoredEvent>, ClusterError> {
        let mut events = Vec::new();
        let literals = users.iter().map(|user| {
            let (kind, key) = user_columns(user);
            format!("({kind}, {})", quote(&key))
        });
        for list in super::in_lists(literals) {
            let sql = self.sql_events_of_users(project, &list, range);
            let rows = self.fetch_everywhere::<EventRow>("reading users' events", &sql).await?;
            events.extend(rows.into_iter().flatten().map(|row| row.to_stored()));
        }
        Ok(events)
    }

    /// A page of a project's change feed after `cursor`: each session version
    /// the workers wrote, in version order within each partition, with the
    /// kind of change it made (a version that changed nothing, written again
    /// by a replay, is left out). Returns the changes and the cursor after the
    /// `limit` versions read (which moves on even when they were all replays).
    pub async fn changes_page(
        &self,
        project: i64,
        cursor: &FeedCursor,
        limit: usize,
    ) -> Result<(Vec<FeedChange>, FeedCursor), ClusterError> {
        let sql = self.sql_feed_page(project, cursor, limit);
        let mut rows: Vec<SessionRow> =
            self.fetch_everywhere::<SessionRow>("reading the change feed", &sql).await?.into_iter().flatten().collect();
        rows.sort_by_key(|row| (row.version, row.partition));
        rows.truncate(limit);
        let mut next = cursor.clone();
        for row in &rows {
            next.insert(row.partition, row.version);
        }
        let mut keys: Vec<VersionKey> = rows.iter().map(version_key).collect();
        keys.sort();
        keys.dedup();
        let literals = keys.iter().map(|(p, kind, key, id)| format!("({p}, {kind}, {}, {id})", quote(key)));
        let mut previous = HashMap::new();
        if !cursor.is_empty() {
            for list in super::in_lists(literals) {
                let sql = self.sql_feed_previous(project, &list, cursor);
                for row in
                    self.fetch_everywhere::<SessionRow>("reading earlier versions", &sql).await?.into_iter().flatten()
                {
                    previous.insert(version_key(&row), row);
                }
            }
        }
        Ok((feed_changes(rows, previous), next))
    }

    /// The changes of one session (by uid), at most `limit` versions read.
    pub async fn session_changes(
        &self,
        project: i64,
        session_uid: &str,
        limit: usize,
    ) -> Result<Vec<FeedChange>, ClusterError> {
        let sql = self.sql_session_versions(project, session_uid, limit);
        let mut rows: Vec<SessionRow> = self
            .fetch_everywhere::<SessionRow>("reading a session's versions", &sql)
            .await?
            .into_iter()
            .flatten()
            .collect();
        rows.sort_by_key(|row| row.version);
        Ok(feed_changes(rows, HashMap::new()))
    }

    /// The read statements of the query role on the dialect check's sample
    /// data (see [`ClickHouseStore::dialect_checks`]), with their answers.
    pub(super) fn read_dialect_checks(
        &self,
        project: i64,
        t0: i64,
        hostile: &UserKey,
        check: impl Fn(String, Option<super::Expectation>) -> super::DialectCheck,
    ) -> Vec<super::DialectCheck> {
        use super::Expectation;
        let day = t0.div_euclid(DAY_MS) as i32;
        let window = DayWindow { project, time_zone: "Asia/Tokyo", from_day: day, to_day: day + 1 };
        let all = SessionFilter { from_ms: i64::MIN, to_ms: i64::MAX, ..SessionFilter::default() };
        let (t0_text, t2_text) = (t0.to_string(), (t0 + 90_000_000).to_string());
        let cohort =
            CohortFilter { from_day: day, to_day: day + 1, min_sessions: 1, min_length_ms: 0, max_length_ms: None };
        vec![
            // The hostile user's session 1 on 2024-01-31 (Tokyo), the device's session 5 on 2024-02-01.
            check(self.sql_figures_by_day(&window), Some(Expectation::new("day", &["19753", "19754"]))),
            check(self.sql_figures_by_second(&window), Some(Expectation::new("sessions", &["2"]))),
            check(self.sql_figures_below(&window, &[60_000, 60_001]), Some(Expectation::new("below", &["[0,2]"]))),
            check(self.sql_figures_per_user(&window), Some(Expectation::new("users", &["2"]))),
            check(self.sql_open_sessions(project), Some(Expectation::new("n", &["1"]))),
            check(self.sql_cohort(&window, &cohort), Some(Expectation::new("user_kind", &["0", "1"]))),
            check(self.sql_start_range(project), Some(Expectation::new("last", &[&t2_text]))),
            check(self.sql_sessions_page(project, &all, 10), Some(Expectation::new("start_ms", &[&t0_text, &t2_text]))),
            check(
                self.sql_sessions_page(project, &SessionFilter { newest_first: true, ..all.clone() }, 1),
                Some(Expectation::new("session_id", &["5"])),
            ),
            check(
                self.sql_sessions_page(
                    project,
                    &SessionFilter { event_type: Some("click".into()), min_length_ms: Some(1), ..all.clone() },
                    10,
                ),
                Some(Expectation::new("session_id", &["1"])),
            ),
            check(
                self.sql_sessions_page(
                    project,
                    &SessionFilter {
                        after: Some(sessionizer_store::SessionCursor { start_ms: t0, user: hostile.clone() }),
                        ..all.clone()
                    },
                    10,
                ),
                Some(Expectation::new("session_id", &["5"])),
            ),
            check(
                self.sql_session_by_uid(project, "12345678-9abc-def0-1234-56789abcdef5"),
                Some(Expectation::new("session_id", &["5"])),
            ),
            check(self.sql_users_by_hash(&window, 1), Some(Expectation::new("events", &["2"]))),
            check(self.sql_window_users(&window), Some(Expectation::new("n", &["2"]))),
            check(
                self.sql_events_of_users(project, &format!("(1, 'dev-1'), (0, {})", quote(hostile.id())), (t0, t0 + 1)),
                Some(Expectation::new("event_type", &["open"])),
            ),
            // The sample's versions 10, 11, 11 (a replay), 12, 13 and 14, all copied by the view.
            check(
                self.sql_feed_page(project, &FeedCursor::new(), 10),
                Some(Expectation::new("version", &["10", "11", "11", "12", "13", "14"])),
            ),
            check(
                self.sql_feed_page(project, &FeedCursor::from([(3, 12), (4, 99)]), 10),
                Some(Expectation::new("version", &["13", "14"])),
            ),
            check(
                self.sql_feed_previous(
                    project,
                    &format!("(3, 0, {}, 1), (3, 0, {}, 2)", quote(hostile.id()), quote(hostile.id())),
                    &FeedCursor::from([(3, 12)]),
                ),
                Some(Expectation::new("version", &["12", "11"])),
            ),
            check(
                self.sql_session_versions(project, "12345678-9abc-def0-1234-56789abcdef1", 10),
                Some(Expectation::new("version", &["10", "11", "11"])),
            ),
            check(
                self.sql_events_page(project, (t0, t0 + 100_000_000), None, 10),
                Some(Expectation::new("time_ms", &[&t0_text, &(t0 + 60_000).to_string(), &t2_text])),
            ),
            check(
                self.sql_events_page(project, (t0, t0 + 100_000_000), Some((t0 + 60_000, 2)), 10),
                Some(Expectation::new("seq", &["3"])),
            ),
            check(
                self.sql_sessions_overlapping(
                    project,
                    &format!("({}, {}), (1, 'dev-1')", super::USER_KIND_USER, quote(hostile.id())),
                    (t0 + 60_000, t0 + 60_001),
                ),
                Some(Expectation::new("session_id", &["1"])),
            ),
        ]
    }
}

/// The nearest-rank `percent` percentile of per-second length counts (sorted
/// by length), in ms: the rule of the single binary's board index.
fn nearest_rank(seconds: &[(i64, u64)], count: u64, percent: u64) -> Option<i64> {
    if count == 0 {
        return None;
    }
    let rank = (percent * count).div_ceil(100).max(1);
    let mut seen = 0u64;
    for &(length_seconds, n) in seconds {
        seen += n;
        if seen >= rank {
            return Some(length_seconds * 1_000);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(session_id: i64, version: u64, concluded: bool, superseded: bool, event_count: u64) -> SessionRow {
        let session = StoredSession {
            user: UserKey::User("u".into()),
            session_id,
            session_uid: uuid::Uuid::nil(),
            start_ms: session_id,
            end_ms: session_id + 10,
            last_event_ms: session_id + 10,
            event_count,
            active_ms: 10,
            end_reason: concluded.then(|| "inactivity".to_string()),
            concluded,
            entry_event_type: "a".into(),
            entry_page: None,
            exit_event_type: "a".into(),
            exit_page: None,
            revision: 0,
        };
        SessionRow::new(1, 3, &session, superseded, version, 0)
    }

    #[test]
    fn feed_kinds_follow_each_session_s_versions() {
        let rows = vec![
            version(100, 1, false, false, 1),
            version(100, 2, false, false, 2),
            // A replay of version 2's state: no change.
            version(100, 3, false, false, 2),
            version(100, 4, true, false, 2),
            version(200, 5, false, false, 1),
            version(200, 6, false, true, 1),
            version(200, 7, false, true, 1),
            // The same session again after it was superseded.
            version(200, 8, false, false, 3),
        ];
        let kinds: Vec<(i64, u64, &str)> = feed_changes(rows.clone(), HashMap::new())
            .iter()
            .map(|c| (c.session.session_id, c.version, c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (100, 1, "started"),
                (100, 2, "amended"),
                (100, 4, "concluded"),
                (200, 5, "started"),
                (200, 6, "superseded"),
                (200, 8, "started")
            ]
        );
        // A page that starts later: the earlier versions come as `previous`.
        let previous = HashMap::from([(version_key(&rows[1]), rows[1].clone())]);
        let kinds: Vec<(u64, &str)> =
            feed_changes(rows[2..4].to_vec(), previous).iter().map(|c| (c.version, c.kind)).collect();
        assert_eq!(kinds, [(4, "concluded")]);
    }

    #[test]
    fn nearest_rank_follows_the_board_rule() {
        let seconds = [(1, 2), (5, 1), (90, 1)];
        assert_eq!(nearest_rank(&seconds, 4, 50), Some(1_000));
        assert_eq!(nearest_rank(&seconds, 4, 90), Some(90_000));
        assert_eq!(nearest_rank(&seconds, 4, 75), Some(5_000));
        assert_eq!(nearest_rank(&[], 0, 50), None);
        assert_eq!(nearest_rank(&[(7, 1)], 1, 1), Some(7_000));
    }
}
