//! The read side of a cluster's query node (`serve --role query`): the query
//! API's routes answered from ClickHouse instead of the embedded store. The
//! routes parse and shape their answers exactly as on the single binary
//! (`query.rs` branches on [`crate::ReadSource`] only where data is fetched);
//! this module holds what differs: the project catalog, read from NATS and
//! cached, and the mapping of cluster errors to answers.
//!
//! Consistency: a query sees what the workers have written to ClickHouse: an
//! acknowledged event shows once a worker flushed it (every 200 ms while
//! events flow), where a single binary's query sees it at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use futures_util::Stream;
pub(crate) use sessionizer_cluster::clickhouse::FigureParts;
use sessionizer_cluster::clickhouse::{ClickHouseStore, DayWindow, EXPORT_PAGE_ROWS, FeedChange, FeedCursor};
use sessionizer_cluster::{Catalog, ClusterError};
use sessionizer_engine::UserKey;
use sessionizer_formats::{FileFormat, session_writer_to, stored_event_writer_to};
use sessionizer_store::{
    BoardFigures, ChangeRecord, CohortFilter, Project, SessionCursor, SessionFilter, StoredEvent, StoredSession,
};
use tokio::sync::Semaphore;

use crate::auth::Keys;
use crate::error::ApiError;
pub(crate) use crate::feed_cursor::{decode_feed_cursor, encode_feed_cursor};
use crate::limits::MAX_CONCURRENT_READS;
use crate::reads::{export_stream, write_exported_event, write_stored_session};

/// How often the catalog (projects, settings, keys) is read again.
const CATALOG_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A query node's view of the cluster.
#[derive(Debug)]
pub(crate) struct ClusterReads {
    store: ClickHouseStore,
    partitions: u32,
    projects: RwLock<HashMap<i64, Project>>,
    /// One per read in progress, exports included until their last byte (as
    /// the embedded store's readers): bounds the queries a node sends ClickHouse.
    permits: Arc<Semaphore>,
}

/// Pages of the change feed read at most per request while they hold only
/// replayed versions (no change), before answering with none and the cursor moved on.
const MAX_FEED_PAGES_PER_REQUEST: usize = 10;

/// A feed change as the single binary's change record: `seq` is the version
/// (microseconds of the writing worker's clock, increasing within a
/// partition), `raised_at_ms` the time it was written; a cluster does not know
/// which session took a superseded one's events.
fn change_record(change: &FeedChange) -> ChangeRecord {
    let session = &change.session;
    ChangeRecord {
        seq: i64::try_from(change.version).unwrap_or(i64::MAX),
        kind: change.kind.to_string(),
        user: session.user.clone(),
        session_id: session.session_id,
        session_uid: session.session_uid.to_string(),
        start_ms: session.start_ms,
        end_ms: session.end_ms,
        last_event_ms: session.last_event_ms,
        event_count: session.event_count,
        end_reason: session.end_reason.clone(),
        concluded: session.concluded,
        superseded_by: None,
        raised_at_ms: change.changed_ms,
    }
}

/// A cluster error as an answer: storage unreachable is 503 (logged once, with
/// the detail); anything else is a server fault.
fn answer(error: ClusterError) -> ApiError {
    match error {
        ClusterError::ClickHouse(detail) | ClusterError::Nats(detail) => ApiError::StorageUnavailable(detail),
        other => ApiError::Internal(other.to_string()),
    }
}

impl ClusterReads {
    pub(crate) fn new(store: ClickHouseStore, partitions: u32, projects: Vec<Project>) -> ClusterReads {
        let reads = ClusterReads {
            store,
            partitions,
            projects: RwLock::default(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
        };
        reads.replace_projects(projects);
        reads
    }

    /// Runs one read within the bound on reads in progress.
    async fn bounded<T>(&self, read: impl Future<Output = Result<T, ClusterError>>) -> Result<T, ApiError> {
        let _permit = self.export_permit().await?;
        read.await.map_err(answer)
    }

    fn replace_projects(&self, projects: Vec<Project>) {
        let by_id = projects.into_iter().map(|p| (p.id, p)).collect();
        *self.projects.write().unwrap_or_else(|p| p.into_inner()) = by_id;
    }

    /// The project a read key may read, with its settings.
    pub(crate) fn project(&self, id: i64) -> Result<Project, ApiError> {
        let projects = self.projects.read().unwrap_or_else(|p| p.into_inner());
        projects.get(&id).cloned().ok_or_else(|| ApiError::NotFound("the key's project no longer exists".into()))
    }

    /// The board's figures that a route needs (`parts`; the rest stay zero).
    pub(crate) async fn figures(
        &self,
        project: &Project,
        (from_day, to_day): (i32, i32),
        bounds_ms: &[i64],
        parts: FigureParts,
    ) -> Result<BoardFigures, ApiError> {
        let window = DayWindow { project: project.id, time_zone: &project.settings.time_zone, from_day, to_day };
        self.bounded(self.store.board_figures(&window, bounds_ms, parts)).await
    }

    pub(crate) async fn cohort(&self, project: &Project, filter: &CohortFilter) -> Result<Vec<UserKey>, ApiError> {
        let window = DayWindow {
            project: project.id,
            time_zone: &project.settings.time_zone,
            from_day: filter.from_day,
            to_day: filter.to_day,
        };
        self.bounded(self.store.cohort(&window, filter)).await
    }

    /// The users of a project's sessions in the range, and a hash-ordered
    /// sample of them whose sessions there hold at most `max_events` events.
    pub(crate) async fn sample_users(
        &self,
        project: &Project,
        range: &crate::query::DayRange,
        max_events: usize,
    ) -> Result<(u64, Vec<UserKey>), ApiError> {
        let window = DayWindow {
            project: project.id,
            time_zone: &project.settings.time_zone,
            from_day: range.from_day,
            to_day: range.to_day,
        };
        let (total, sampled) = self.bounded(self.store.sample_users(&window, max_events)).await?;
        Ok((total, sampled.into_iter().map(|(user, _)| user).collect()))
    }

    pub(crate) async fn events_of_users(
        &self,
        project: i64,
        users: &[UserKey],
        range: (i64, i64),
    ) -> Result<Vec<StoredEvent>, ApiError> {
        self.bounded(self.store.events_of_users(project, users, range)).await
    }

    pub(crate) async fn session_start_range(&self, project: i64) -> Result<Option<(i64, i64)>, ApiError> {
        self.bounded(self.store.session_start_range(project)).await
    }

    pub(crate) async fn sessions_page(
        &self,
        project: i64,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<StoredSession>, ApiError> {
        self.bounded(self.store.sessions_page(project, filter, limit)).await
    }

    /// Every current session of one user, in start order (one shard).
    pub(crate) async fn sessions_of_user(&self, project: i64, user: &UserKey) -> Result<Vec<StoredSession>, ApiError> {
        let partition = sessionizer_cluster::partition_of(project, user, self.partitions);
        self.bounded(self.store.sessions_of_user(project, partition, user)).await
    }

    /// A page of the change feed after `cursor`, and the cursor after it.
    pub(crate) async fn changes_page(
        &self,
        project: i64,
        mut cursor: FeedCursor,
        limit: usize,
    ) -> Result<(Vec<ChangeRecord>, FeedCursor), ApiError> {
        if let Some(partition) = cursor.keys().find(|&&p| p >= self.partitions) {
            return Err(ApiError::BadRequest(format!(
                "the cursor names partition {partition}; this cluster has {} (it is not one this server gave out)",
                self.partitions
            )));
        }
        for _ in 0..MAX_FEED_PAGES_PER_REQUEST {
            let (changes, next) = self.bounded(self.store.changes_page(project, &cursor, limit)).await?;
            let moved = next != cursor;
            cursor = next;
            if !changes.is_empty() || !moved {
                return Ok((changes.iter().map(change_record).collect(), cursor));
            }
        }
        Ok((Vec::new(), cursor))
    }

    /// The changes of one session, oldest first.
    pub(crate) async fn session_changes(
        &self,
        project: i64,
        uid: &str,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, ApiError> {
        let changes = self.bounded(self.store.session_changes(project, uid, limit)).await?;
        Ok(changes.iter().map(change_record).collect())
    }

    pub(crate) async fn session_by_uid(&self, project: i64, uid: &str) -> Result<Option<StoredSession>, ApiError> {
        self.bounded(self.store.session_by_uid(project, uid)).await
    }

    pub(crate) async fn session_events(
        &self,
        project: i64,
        session: &StoredSession,
        excluded_event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ApiError> {
        let partition = sessionizer_cluster::partition_of(project, &session.user, self.partitions);
        self.bounded(self.store.session_events(project, partition, session, excluded_event_types, limit)).await
    }
}

impl ClusterReads {
    /// A permit of the bound on reads in progress; an export holds it until its last byte.
    async fn export_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.permits.clone().acquire_owned().await.map_err(|_| ApiError::Unavailable("shutting down".into()))
    }

    /// Streams the events of `[from_ms, to_ms)` with their sessions, in time
    /// order, [`EXPORT_PAGE_ROWS`] per shard at a time.
    pub(crate) async fn export_events(
        self: &Arc<Self>,
        project: i64,
        (from_ms, to_ms): (i64, i64),
        format: FileFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, ApiError> {
        let project = self.project(project)?;
        let (_, classifier) = project.settings.compile()?;
        let permit = self.export_permit().await?;
        let reads = self.clone();
        let runtime = tokio::runtime::Handle::current();
        Ok(export_stream(permit, move |out| {
            let mut sink = stored_event_writer_to(format, out).map_err(|e| e.to_string())?;
            let excluded =
                |event_type: &str| classifier.classify(event_type, false) == sessionizer_engine::EventClass::Excluded;
            let mut after = None;
            loop {
                let step =
                    reads.store.events_with_sessions(project.id, (from_ms, to_ms), after, EXPORT_PAGE_ROWS, &excluded);
                let page = runtime.block_on(step).map_err(|e| e.to_string())?;
                for (row, session) in &page {
                    write_exported_event(sink.as_mut(), &row.to_stored().event, *session).map_err(|e| e.to_string())?;
                }
                match page.last() {
                    Some((last, _)) if page.len() == EXPORT_PAGE_ROWS => after = Some((last.time_ms, last.seq)),
                    _ => break,
                }
            }
            sink.finish().map_err(|e| e.to_string())
        }))
    }

    /// Streams the sessions starting in `[from_ms, to_ms)`, by start (then user).
    pub(crate) async fn export_sessions(
        self: &Arc<Self>,
        project: i64,
        (from_ms, to_ms): (i64, i64),
        format: FileFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, ApiError> {
        let project = self.project(project)?;
        let permit = self.export_permit().await?;
        let reads = self.clone();
        let runtime = tokio::runtime::Handle::current();
        Ok(export_stream(permit, move |out| {
            let mut sink = session_writer_to(format, out).map_err(|e| e.to_string())?;
            let mut filter = SessionFilter { from_ms, to_ms, ..SessionFilter::default() };
            loop {
                let step = reads.store.sessions_page(project.id, &filter, EXPORT_PAGE_ROWS);
                let page = runtime.block_on(step).map_err(|e| e.to_string())?;
                for session in &page {
                    write_stored_session(sink.as_mut(), session).map_err(|e| e.to_string())?;
                }
                match page.last() {
                    Some(last) if page.len() == EXPORT_PAGE_ROWS => {
                        filter.after = Some(SessionCursor { start_ms: last.start_ms, user: last.user.clone() });
                    }
                    _ => break,
                }
            }
            sink.finish().map_err(|e| e.to_string())
        }))
    }
}

/// Keeps the key cache and the project cache in step with the catalog.
pub(crate) async fn refresh_from_catalog(keys: Arc<Keys>, reads: Arc<ClusterReads>, catalog: Catalog) {
    loop {
        tokio::time::sleep(CATALOG_REFRESH).await;
        match catalog.projects().await {
            Ok(projects) => {
                keys.replace(sessionizer_cluster::api_keys_of(&projects));
                reads.replace_projects(projects.iter().map(|p| p.project()).collect());
            }
            Err(error) => tracing::warn!(%error, "cannot refresh the catalog"),
        }
    }
}
