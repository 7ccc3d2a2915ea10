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
use std::sync::{Arc, RwLock};

use sessionizer_cluster::clickhouse::{ClickHouseStore, DayWindow};
use sessionizer_cluster::{Catalog, ClusterError};
use sessionizer_engine::UserKey;
use sessionizer_store::{BoardFigures, CohortFilter, Project, SessionFilter, StoredEvent, StoredSession};

use crate::auth::Keys;
use crate::error::ApiError;

/// How often the catalog (projects, settings, keys) is read again.
const CATALOG_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A query node's view of the cluster.
#[derive(Debug)]
pub(crate) struct ClusterReads {
    store: ClickHouseStore,
    partitions: u32,
    projects: RwLock<HashMap<i64, Project>>,
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
        let reads = ClusterReads { store, partitions, projects: RwLock::default() };
        reads.replace_projects(projects);
        reads
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

    pub(crate) async fn figures(
        &self,
        project: &Project,
        (from_day, to_day): (i32, i32),
        bounds_ms: &[i64],
    ) -> Result<BoardFigures, ApiError> {
        let window = DayWindow { project: project.id, time_zone: &project.settings.time_zone, from_day, to_day };
        self.store.board_figures(&window, bounds_ms).await.map_err(answer)
    }

    pub(crate) async fn cohort(&self, project: &Project, filter: &CohortFilter) -> Result<Vec<UserKey>, ApiError> {
        let window = DayWindow {
            project: project.id,
            time_zone: &project.settings.time_zone,
            from_day: filter.from_day,
            to_day: filter.to_day,
        };
        self.store.cohort(&window, filter).await.map_err(answer)
    }

    pub(crate) async fn session_start_range(&self, project: i64) -> Result<Option<(i64, i64)>, ApiError> {
        self.store.session_start_range(project).await.map_err(answer)
    }

    pub(crate) async fn sessions_page(
        &self,
        project: i64,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<StoredSession>, ApiError> {
        self.store.sessions_page(project, filter, limit).await.map_err(answer)
    }

    /// Every current session of one user, in start order (one shard).
    pub(crate) async fn sessions_of_user(&self, project: i64, user: &UserKey) -> Result<Vec<StoredSession>, ApiError> {
        let partition = sessionizer_cluster::partition_of(project, user, self.partitions);
        self.store.sessions_of_user(project, partition, user).await.map_err(answer)
    }

    pub(crate) async fn session_by_uid(&self, project: i64, uid: &str) -> Result<Option<StoredSession>, ApiError> {
        self.store.session_by_uid(project, uid).await.map_err(answer)
    }

    pub(crate) async fn session_events(
        &self,
        project: i64,
        session: &StoredSession,
        excluded_event_types: &[&str],
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ApiError> {
        let partition = sessionizer_cluster::partition_of(project, &session.user, self.partitions);
        self.store.session_events(project, partition, session, excluded_event_types, limit).await.map_err(answer)
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
