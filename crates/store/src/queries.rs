//! Reads behind the query API: filtered session pages, one session with its
//! events and history, the change feed, session exports, and the snapshot
//! and change tail that keep the in-memory [`Board`] in step with the store.

use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};
use sessionizer_engine::{EventClass, UserKey};
use uuid::Uuid;

use crate::board::{Board, BoardChange, BoardSession};
use crate::{
    EVENT_COLUMNS, SESSION_COLUMNS, Store, StoreError, StoredEvent, StoredSession, event_of_row, query_events,
    query_sessions, session_of_row, uid_head, user_kind, user_of,
};

/// Rows read per step while loading the board (bounds the statement's work
/// between checks; the board itself holds every session).
const BOARD_CHANGES_PAGE: usize = 100_000;

/// Which sessions a page of `GET /v1/sessions` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Sessions starting at or after this.
    pub from_ms: i64,
    /// Sessions starting before this.
    pub to_ms: i64,
    pub min_length_ms: Option<i64>,
    pub max_length_ms: Option<i64>,
    pub user: Option<UserKey>,
    /// Sessions holding at least one event of this type.
    pub event_type: Option<String>,
    /// Resume after this session (the last of the previous page).
    pub after: Option<SessionCursor>,
    /// Newest first (else oldest first); ties broken by user.
    pub newest_first: bool,
}

/// A position in the order of sessions (by start, then user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    pub start_ms: i64,
    pub user: UserKey,
}

/// One recorded change to a session: a row of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub seq: i64,
    /// `started`, `amended`, `concluded` or `superseded`.
    pub kind: String,
    pub user: UserKey,
    pub session_id: i64,
    pub session_uid: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub last_event_ms: i64,
    pub event_count: u64,
    pub end_reason: Option<String>,
    /// Whether the session was concluded after this change.
    pub concluded: bool,
    /// For `superseded`: the session that took this one's events, if any.
    pub superseded_by: Option<String>,
    pub raised_at_ms: i64,
}

/// A session's changes: a seek of `session_changes_uid_head`, whose entries
/// are in `seq` order for equal heads, so nothing is sorted.
pub(crate) const SESSION_HISTORY_WHERE: &str =
    "project = ?1 AND session_uid_head = ?2 AND session_uid = ?3 ORDER BY seq LIMIT ?4";

const CHANGE_COLUMNS: &str = "SELECT seq, kind, user_kind, user_key, session_id, session_uid, start_ms, end_ms, \
                              last_event_ms, event_count, end_reason, coalesce(concluded, end_reason IS NOT NULL), \
                              superseded_by, raised_at_ms FROM session_changes";

fn change_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeRecord> {
    Ok(ChangeRecord {
        seq: row.get(0)?,
        kind: row.get(1)?,
        user: user_of(row.get(2)?, row.get(3)?),
        session_id: row.get(4)?,
        session_uid: row.get(5)?,
        start_ms: row.get(6)?,
        end_ms: row.get(7)?,
        last_event_ms: row.get(8)?,
        event_count: row.get::<_, i64>(9)? as u64,
        end_reason: row.get(10)?,
        concluded: row.get(11)?,
        superseded_by: row.get(12)?,
        raised_at_ms: row.get(13)?,
    })
}

impl Store {
    /// A page of a project's sessions matching `filter`, in start order
    /// (then user), at most `limit`.
    pub fn sessions_page(
        &self,
        project: i64,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError> {
        let mut sql = format!("{SESSION_COLUMNS} WHERE project = ?1 AND start_ms >= ?2 AND start_ms < ?3");
        let mut values: Vec<Value> = vec![project.into(), filter.from_ms.into(), filter.to_ms.into()];
        let mut bind = |sql: &mut String, clause: &str, value: Value| {
            values.push(value);
            sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
        };
        if let Some(min) = filter.min_length_ms {
            bind(&mut sql, " AND end_ms - start_ms >= ?", min.into());
        }
        if let Some(max) = filter.max_length_ms {
            bind(&mut sql, " AND end_ms - start_ms <= ?", max.into());
        }
        if let Some(user) = &filter.user {
            bind(&mut sql, " AND user_kind = ?", user_kind(user).into());
            bind(&mut sql, " AND user_key = ?", user.id().to_string().into());
        }
        if let Some(event_type) = &filter.event_type {
            bind(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM events e WHERE e.project = sessions.project \
                 AND e.user_kind = sessions.user_kind AND e.user_key = sessions.user_key \
                 AND e.time_ms >= sessions.start_ms AND e.time_ms <= sessions.last_event_ms AND e.event_type = ?)",
                event_type.clone().into(),
            );
        }
        let (beyond, direction) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if let Some(cursor) = &filter.after {
            bind(&mut sql, &format!(" AND (start_ms {beyond} ?"), cursor.start_ms.into());
            bind(&mut sql, " OR (start_ms = ?", cursor.start_ms.into());
            bind(&mut sql, &format!(" AND (user_kind, user_key) {beyond} (?"), user_kind(&cursor.user).into());
            bind(&mut sql, ", ?)))", cursor.user.id().to_string().into());
        }
        bind(
            &mut sql,
            &format!(" ORDER BY start_ms {direction}, user_kind {direction}, user_key {direction} LIMIT ?"),
            (limit as i64).into(),
        );
        query_sessions(&self.conn, &sql, params_from_iter(values))
    }

    /// The session with this uid, if it exists (superseded sessions do not).
    pub fn session_by_uid(&self, project: i64, session_uid: &str) -> Result<Option<StoredSession>, StoreError> {
        let mut statement =
            self.conn.prepare_cached(&format!("{SESSION_COLUMNS} WHERE project = ?1 AND session_uid = ?2"))?;
        statement.query_row(params![project, session_uid], session_of_row).optional()?.transpose()
    }

    /// The events of a session in time order: the user's events from its
    /// start to its last event that are not excluded (`classify`), at most `limit`.
    pub fn session_events(
        &self,
        project: i64,
        session: &StoredSession,
        classify: &dyn Fn(&str, bool) -> EventClass,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "{EVENT_COLUMNS} WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 AND time_ms >= ?4 \
             AND time_ms <= ?5 ORDER BY time_ms, seq"
        ))?;
        let user = &session.user;
        let rows = statement.query_map(
            params![project, user_kind(user), user.id(), session.start_ms, session.last_event_ms],
            event_of_row,
        )?;
        let mut events = Vec::new();
        for row in rows {
            let event = row?;
            if classify(&event.event.event_type, event.event.passive) != EventClass::Excluded {
                events.push(event);
                if events.len() >= limit {
                    break;
                }
            }
        }
        Ok(events)
    }

    /// Every recorded change of the session with this uid, oldest first, at most `limit`.
    pub fn session_history(
        &self,
        project: i64,
        session_uid: &Uuid,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!("{CHANGE_COLUMNS} WHERE {SESSION_HISTORY_WHERE}"))?;
        let rows = statement
            .query_map(params![project, uid_head(session_uid), session_uid.to_string(), limit as i64], change_of_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The project's changes after `after_seq`, oldest first, at most `limit`.
    pub fn changes_page(&self, project: i64, after_seq: i64, limit: usize) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!("{CHANGE_COLUMNS} WHERE project = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))?;
        let rows = statement.query_map(params![project, after_seq, limit as i64], change_of_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Earliest and latest session start of a project.
    pub fn session_start_range(&self, project: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let range: (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT min(start_ms), max(start_ms) FROM sessions WHERE project = ?1",
            [project],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(range.0.zip(range.1))
    }

    /// Visits the sessions starting in `[from_ms, to_ms)`, by start; returns how many.
    pub fn export_sessions(
        &self,
        project: i64,
        from_ms: i64,
        to_ms: i64,
        visit: &mut dyn FnMut(&StoredSession) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "{SESSION_COLUMNS} WHERE project = ?1 AND start_ms >= ?2 AND start_ms < ?3 ORDER BY start_ms"
        ))?;
        let mut rows = statement.query(params![project, from_ms, to_ms])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            visit(&session_of_row(row)??)?;
            count += 1;
        }
        Ok(count)
    }

    /// Every user's events of a project in `[from_ms, to_ms)`, for the users
    /// given, each user's in time order.
    pub fn events_of_users(
        &self,
        project: i64,
        users: &[&UserKey],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "{EVENT_COLUMNS} WHERE project = ?1 AND user_kind = ?2 AND user_key = ?3 AND time_ms >= ?4 \
             AND time_ms < ?5 ORDER BY time_ms, seq"
        );
        let mut events = Vec::new();
        for user in users {
            events.extend(query_events(
                &self.conn,
                &sql,
                params![project, user_kind(user), user.id(), from_ms, to_ms],
            )?);
        }
        Ok(events)
    }

    /// A board of every session, with each project's time zone, as of one
    /// consistent snapshot (one read transaction).
    pub fn load_board(&self) -> Result<Board, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut board = Board::default();
        for project in self.projects()? {
            board.set_project_time_zone(project.id, &project.settings.time_zone);
        }
        board.set_applied_seq(self.last_change_seq()?);
        let mut statement = tx.prepare(
            "SELECT project, user_kind, user_key, session_id, end_ms - start_ms, event_count, concluded \
             FROM sessions ORDER BY project, user_kind, user_key, session_id",
        )?;
        let mut rows = statement.query([])?;
        // Rows come grouped by user: one key allocation per user, not per session.
        let mut current: Option<(i64, UserKey)> = None;
        while let Some(row) = rows.next()? {
            let kind: i64 = row.get(1)?;
            let key = row.get_ref(2)?.as_str().map_err(|e| StoreError::Corrupt(format!("a user key: {e}")))?;
            let same = current.as_ref().is_some_and(|(k, user)| *k == kind && user.id() == key);
            if !same {
                let user = if kind == 0 { UserKey::User(Arc::from(key)) } else { UserKey::Device(Arc::from(key)) };
                current = Some((kind, user));
            }
            let user = current.as_ref().map(|(_, user)| user.clone()).expect("set above");
            board.load(&BoardSession {
                project: row.get(0)?,
                user,
                session_id: row.get(3)?,
                length_ms: row.get(4)?,
                event_count: row.get::<_, i64>(5)? as u64,
                concluded: row.get(6)?,
            });
        }
        drop(rows);
        drop(statement);
        tx.commit()?;
        Ok(board)
    }

    /// Brings `board` up to date: project time zones, then every change
    /// recorded after the board's `applied_seq`. Returns how many were applied.
    pub fn catch_up_board(&self, board: &mut Board) -> Result<u64, StoreError> {
        for project in self.projects()? {
            board.set_project_time_zone(project.id, &project.settings.time_zone);
        }
        let mut applied = 0;
        loop {
            let mut statement = self.conn.prepare_cached(
                "SELECT seq, project, kind, user_kind, user_key, session_id, end_ms - start_ms, event_count, \
                 coalesce(concluded, end_reason IS NOT NULL) FROM session_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let changes = statement
                .query_map(params![board.applied_seq(), BOARD_CHANGES_PAGE as i64], |row| {
                    let kind: String = row.get(2)?;
                    Ok(BoardChange {
                        seq: row.get(0)?,
                        removed: kind == "superseded",
                        session: BoardSession {
                            project: row.get(1)?,
                            user: user_of(row.get(3)?, row.get(4)?),
                            session_id: row.get(5)?,
                            length_ms: row.get(6)?,
                            event_count: row.get::<_, i64>(7)? as u64,
                            concluded: row.get(8)?,
                        },
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for change in &changes {
                board.apply(change);
            }
            applied += changes.len() as u64;
            if changes.len() < BOARD_CHANGES_PAGE {
                return Ok(applied);
            }
        }
    }
}
