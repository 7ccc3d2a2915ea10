//! The single writer: owns the store's write connection and one live engine
//! per project, groups concurrent ingestion requests into one durable commit
//! (group commit), and concludes sessions as the server clock passes them.
//!
//! The engine is pure; this thread is its imperative shell. It reads the clock,
//! feeds the engine, writes what the engine says to the store in the same
//! transaction as the events, and only then answers the requests.
//!
//! Restart: the engine's state is rebuilt by replaying the stored events that
//! can still touch live sessions (from the earliest start of any session whose
//! last event is within a timeout before the lateness horizon), in time order.
//! Finding that start costs two index seeks, not a scan of every session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use sessionizer_engine::{
    Assignment, ChangeKind, Event, EventClassifier, LiveConfig, SessionChange, SessionRules, Sessionizer, UserKey,
};
use sessionizer_store::{NewEvent, Project, Store, StoreError, StoredSession, sessionize_stored};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::limits::{MAX_GROUP_EVENTS, MAX_GROUP_REQUESTS, MAX_WRITE_QUEUE_REQUESTS};
use crate::metrics::Metrics;

/// How often the writer concludes sessions and looks for settings changes.
const TICK: Duration = Duration::from_millis(500);
/// Events fed to the engine per call during a replay.
const REPLAY_CHUNK_EVENTS: usize = 10_000;
/// Bound on the steps that move a replay's start back past sessions spanning
/// it (see `Writer::load`).
const MAX_REPLAY_FLOOR_STEPS: usize = 64;

/// What the writer reports back for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub accepted: u64,
    pub duplicates: u64,
}

pub(crate) struct WriteRequest {
    pub(crate) project: i64,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<Ingested, ApiError>>,
}

/// State shared with the HTTP side.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The engines are loaded: writes can be served.
    pub(crate) ready: AtomicBool,
    /// A write failed in a way that leaves durability in doubt (e.g. fsync):
    /// no more acknowledgements until a restart.
    pub(crate) poisoned: AtomicBool,
}

/// The HTTP side's end of the writer.
#[derive(Debug, Clone)]
pub(crate) struct WriterHandle {
    sender: SyncSender<WriteRequest>,
    pub(crate) health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl WriterHandle {
    /// Queues a request; fails at once when the queue is full or the writer is gone.
    pub(crate) fn submit(&self, request: WriteRequest) -> Result<(), ApiError> {
        if self.health.poisoned.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(
                "a storage write failed; restart the server after checking the disk".into(),
            ));
        }
        match self.sender.try_send(request) {
            Ok(()) => {
                self.metrics.write_queue_depth.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(ApiError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ApiError::Unavailable("the server is shutting down".into())),
        }
    }
}

/// One project's live state.
struct ProjectEngine {
    project: Project,
    rules: SessionRules,
    classifier: EventClassifier,
    engine: Sessionizer,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Starts the writer thread; returns its handle and the thread.
pub(crate) fn start(
    store: Store,
    metrics: Arc<Metrics>,
    queue_requests: usize,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let queue_requests = queue_requests.clamp(1, MAX_WRITE_QUEUE_REQUESTS);
    let (sender, receiver) = std::sync::mpsc::sync_channel(queue_requests);
    let health = Arc::new(Health::default());
    let handle = WriterHandle { sender, health: health.clone(), metrics: metrics.clone() };
    let thread = std::thread::Builder::new()
        .name("sessionizer-writer".into())
        .spawn(move || Writer { store, engines: HashMap::new(), metrics, health }.run(&receiver))?;
    Ok((handle, thread))
}

struct Writer {
    store: Store,
    engines: HashMap<i64, ProjectEngine>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<WriteRequest>) {
        if let Err(error) = self.load_all() {
            tracing::error!(%error, "cannot load the live state; not accepting writes");
            self.health.poisoned.store(true, Ordering::Release);
        }
        self.health.ready.store(true, Ordering::Release);
        let mut last_tick = Instant::now();
        loop {
            match receiver.recv_timeout(TICK) {
                Ok(first) => {
                    let mut group = vec![first];
                    let mut events = group[0].events.len();
                    while group.len() < MAX_GROUP_REQUESTS && events < MAX_GROUP_EVENTS {
                        match receiver.try_recv() {
                            Ok(request) => {
                                events += request.events.len();
                                group.push(request);
                            }
                            Err(_) => break,
                        }
                    }
                    self.metrics.write_queue_depth.fetch_sub(group.len() as i64, Ordering::Relaxed);
                    self.write_group(group);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= TICK {
                self.tick();
                last_tick = Instant::now();
            }
        }
        // Shutting down: conclude what is due so the store is current.
        self.tick();
        tracing::info!("writer stopped");
    }

    /// Loads every project's engine from the store.
    fn load_all(&mut self) -> Result<(), StoreError> {
        self.engines.clear();
        for project in self.store.projects()? {
            self.load(project)?;
        }
        self.update_gauges();
        Ok(())
    }

    /// Builds a project's engine by replaying the stored events that can
    /// still touch live sessions, then concludes what is due now.
    fn load(&mut self, project: Project) -> Result<(), StoreError> {
        let started = Instant::now();
        let (rules, classifier) = project.settings.compile()?;
        let config = LiveConfig::new(project.public_id.clone(), rules.clone());
        let horizon_ms = config.lateness_horizon_ms;
        let mut engine = Sessionizer::new(config).map_err(|e| StoreError::InvalidSettings(e.to_string()))?;
        let now = now_ms();
        // An event inside the horizon can still extend or merge a session whose
        // last event is within the timeout before the horizon: replay from the
        // earliest start of those, so the engine holds each of them whole. Two
        // index seeks (schema v5), whatever the history's size.
        let floor = now.saturating_sub(horizon_ms).saturating_sub(rules.join_distance_ms());
        let mut from =
            self.store.earliest_start_of_sessions_ending_since(project.id, floor)?.map_or(floor, |s| s.min(floor));
        // Another session may span `from` (begun before it, ended after it but
        // before the floor): replayed from the middle, it would come out as a
        // fragment. Move back until no stored session spans the start (a few
        // steps at most in practice; each is two index seeks).
        for _ in 0..MAX_REPLAY_FLOOR_STEPS {
            match self.store.earliest_start_of_sessions_ending_since(project.id, from)? {
                Some(start) if start < from => from = start,
                _ => break,
            }
        }
        let floor_found_ms = started.elapsed().as_millis() as u64;
        let mut replayed = 0;
        let mut replay_now = i64::MIN;
        // In pages, so memory stays bounded whatever the history.
        let mut after = (from, i64::MIN);
        loop {
            let page = self.store.events_page(project.id, after, REPLAY_CHUNK_EVENTS)?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else { break };
            after = (last.event.time_ms, last.seq);
            replayed += page.len();
            // Pages are in time order and `now` is the page's first event: no
            // replayed event is ever older than the horizon, so none is deferred.
            replay_now = replay_now.max(first.event.time_ms.min(now));
            let events = page.iter().map(|e| e.event.engine_event(&classifier)).collect();
            // The store already holds what these events did.
            drop(engine.ingest(events, replay_now));
        }
        let changes = engine.advance(now);
        if !changes.is_empty() {
            let batch = self.store.batch()?;
            for change in &changes {
                // Sessions that concluded while the server was down (some may
                // already be stored as concluded); never a fragment the replay
                // made of a session begun before it, if the steps above ran out.
                batch.apply_replayed_change(project.id, change)?;
            }
            batch.commit()?;
        }
        tracing::info!(
            project = %project.public_id,
            replay_from_ms = from,
            replayed,
            floor_found_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "live state loaded"
        );
        self.engines.insert(project.id, ProjectEngine { project, rules, classifier, engine });
        Ok(())
    }

    fn write_group(&mut self, group: Vec<WriteRequest>) {
        let started = Instant::now();
        // Projects created since the last load.
        let missing: HashSet<i64> = group.iter().map(|r| r.project).filter(|p| !self.engines.contains_key(p)).collect();
        if !missing.is_empty() {
            let loaded = self.store.projects().and_then(|projects| {
                for project in projects.into_iter().filter(|p| missing.contains(&p.id)) {
                    self.load(project)?;
                }
                Ok(())
            });
            if let Err(error) = loaded {
                return self.fail_group(group, error);
            }
        }
        let now = now_ms();
        let outcome = self.apply_group(&group, now);
        match outcome {
            Ok(results) => {
                self.metrics.commits.fetch_add(1, Ordering::Relaxed);
                self.metrics.commit_latency.observe(started.elapsed());
                for (request, result) in group.into_iter().zip(results) {
                    self.metrics.ingested_events.fetch_add(result.accepted, Ordering::Relaxed);
                    self.metrics.duplicate_events.fetch_add(result.duplicates, Ordering::Relaxed);
                    // A client that went away still had its events stored.
                    drop(request.reply.send(Ok(result)));
                }
            }
            Err(error) => self.fail_group(group, error),
        }
    }

    /// Answers every request of a failed group. The engines may have moved
    /// ahead of the store: reload them from it. Errors other than a full disk
    /// leave durability in doubt (an fsync may have failed): stop acknowledging.
    fn fail_group(&mut self, group: Vec<WriteRequest>, error: StoreError) {
        let disk_full = matches!(error, StoreError::DiskFull(_));
        tracing::error!(%error, requests = group.len(), "a write failed; nothing of these requests was acknowledged");
        for request in group {
            // A failed commit (an fsync error) may have left the batch on disk:
            // the outcome is unknown (500), not "nothing stored" (503). A retry
            // with the same insert ids is safe either way.
            let answer = if disk_full { ApiError::DiskFull } else { ApiError::WriteOutcomeUnknown };
            drop(request.reply.send(Err(answer)));
        }
        if !disk_full {
            self.health.poisoned.store(true, Ordering::Release);
            return;
        }
        if let Err(error) = self.load_all() {
            tracing::error!(%error, "cannot reload the live state after a failed write; not accepting writes");
            self.health.poisoned.store(true, Ordering::Release);
        }
    }

    /// Stores the group's events, sessionizes them, applies the session
    /// changes and commits, all in one transaction.
    fn apply_group(&mut self, group: &[WriteRequest], now: i64) -> Result<Vec<Ingested>, StoreError> {
        let batch = self.store.batch()?;
        let mut results = Vec::with_capacity(group.len());
        let mut fresh: HashMap<i64, Vec<Event>> = HashMap::new();
        for request in group {
            let Some(project) = self.engines.get(&request.project) else {
                return Err(StoreError::UnknownProject(request.project.to_string()));
            };
            let mut result = Ingested { accepted: 0, duplicates: 0 };
            for event in &request.events {
                if batch.insert_event(request.project, event)? {
                    result.accepted += 1;
                    fresh.entry(request.project).or_default().push(event.engine_event(&project.classifier));
                } else {
                    result.duplicates += 1;
                }
            }
            results.push(result);
        }
        for (project_id, events) in fresh {
            let project = self.engines.get_mut(&project_id).expect("checked above");
            let users: Vec<UserKey> = events.iter().map(|e| e.user.clone()).collect();
            let outcome = project.engine.ingest(events, now);
            for change in coalesce(outcome.changes) {
                batch.apply_change(project_id, &change)?;
            }
            // Events the engine's horizon no longer covers: the store resolves
            // them by re-sessionizing the user's history.
            let mut deferred: Vec<&UserKey> = outcome
                .assignments
                .iter()
                .zip(&users)
                .filter(|(assignment, _)| matches!(assignment, Assignment::Deferred(_)))
                .map(|(_, user)| user)
                .collect();
            deferred.sort();
            deferred.dedup();
            for user in deferred {
                let events = batch.user_neighbourhood_events(project_id, user)?;
                let sessions: Vec<StoredSession> =
                    sessionize_stored(&project.project.public_id, &events, &project.rules, &project.classifier, now)
                        .into_iter()
                        .filter(|s| &s.user == user)
                        .collect();
                let old = batch.sessions_of_user(project_id, user)?;
                batch.replace_sessions(project_id, old, sessions, now)?;
            }
        }
        batch.commit()?;
        Ok(results)
    }

    /// Concludes due sessions and applies settings changed by `sessionizer project set`.
    fn tick(&mut self) {
        if self.health.poisoned.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = self.reload_changed_settings() {
            tracing::error!(%error, "cannot apply changed project settings");
        }
        let now = now_ms();
        let mut all = Vec::new();
        for (&project_id, project) in &mut self.engines {
            let changes = project.engine.advance(now);
            if !changes.is_empty() {
                all.push((project_id, changes));
            }
        }
        if !all.is_empty() {
            let written = self.store.batch().and_then(|batch| {
                for (project_id, changes) in &all {
                    for change in changes {
                        batch.apply_change(*project_id, change)?;
                    }
                }
                batch.commit()
            });
            if let Err(error) = written {
                tracing::error!(%error, "cannot record concluded sessions");
                if !matches!(error, StoreError::DiskFull(_)) {
                    self.health.poisoned.store(true, Ordering::Release);
                } else if let Err(error) = self.load_all() {
                    tracing::error!(%error, "cannot reload the live state");
                    self.health.poisoned.store(true, Ordering::Release);
                }
            }
        }
        self.update_gauges();
    }

    /// A project whose settings changed in the store is re-sessionized from
    /// its history and its engine reloaded.
    fn reload_changed_settings(&mut self) -> Result<(), StoreError> {
        let projects = self.store.projects()?;
        for project in projects {
            let changed = self.engines.get(&project.id).is_some_and(|e| e.project.settings != project.settings);
            if changed {
                tracing::info!(project = %project.public_id, "settings changed: re-sessionizing the project's history");
                self.store.rebuild_project(&project, now_ms())?;
                self.load(project)?;
            }
        }
        Ok(())
    }

    fn update_gauges(&self) {
        let (mut users, mut events, mut open) = (0, 0, 0);
        for project in self.engines.values() {
            let (u, e) = project.engine.state_size();
            users += u;
            events += e;
            open += project.engine.open_session_count();
        }
        self.metrics.engine_users.store(users as u64, Ordering::Relaxed);
        self.metrics.engine_events.store(events as u64, Ordering::Relaxed);
        self.metrics.open_sessions.store(open as u64, Ordering::Relaxed);
    }
}

/// The net effect of a group's changes, one per session: what was in the
/// store before the group and what is after it are all that anyone can see
/// (the group commits atomically), so intermediate states are not written.
/// A session started and superseded within the group leaves no trace; one
/// that existed before and changed keeps its last kind and state.
fn coalesce(changes: Vec<SessionChange>) -> Vec<SessionChange> {
    if changes.len() < 2 {
        return changes;
    }
    let key = |change: &SessionChange| (change.record.user.clone(), change.record.session_id);
    // For each session: whether its first change in the group started it, and its last change.
    let mut net: HashMap<(UserKey, i64), (bool, usize)> = HashMap::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        let started = matches!(change.kind, ChangeKind::Started);
        net.entry(key(change)).and_modify(|(_, last)| *last = index).or_insert((started, index));
    }
    let mut kept: Vec<(usize, bool)> = net.into_values().map(|(started, last)| (last, started)).collect();
    kept.sort_unstable();
    let mut changes: Vec<Option<SessionChange>> = changes.into_iter().map(Some).collect();
    kept.into_iter()
        .filter_map(|(index, started_here)| {
            let mut change = changes[index].take().expect("each index kept once");
            match change.kind {
                ChangeKind::Superseded { .. } if started_here => None,
                ChangeKind::Superseded { .. } => Some(change),
                _ if started_here => {
                    change.kind = ChangeKind::Started;
                    Some(change)
                }
                // Superseded earlier in the group and started again: for the store, a new state of a stored row.
                ChangeKind::Started => {
                    change.kind = ChangeKind::Amended;
                    Some(change)
                }
                _ => Some(change),
            }
        })
        .collect()
}

/// The engine's view of a stored event.
#[cfg(test)]
mod tests {
    use sessionizer_engine::{SessionRecord, session_uid};

    use super::*;

    fn change(kind: ChangeKind, user: &str, start: i64, count: u64) -> SessionChange {
        let user = UserKey::User(user.into());
        SessionChange {
            kind,
            record: SessionRecord {
                session_uid: session_uid("p", &user, start),
                user,
                session_id: start,
                start_ms: start,
                end_ms: start,
                last_event_ms: start,
                event_count: count,
                active_ms: 0,
                entry_event_type: "e".into(),
                entry_page: None,
                exit_event_type: "e".into(),
                exit_page: None,
                end_reason: None,
                concluded: false,
                revision: 0,
            },
            raised_at_ms: 0,
        }
    }

    #[test]
    fn coalesce_keeps_the_net_effect_per_session() {
        let superseded = |user, start| {
            let by = session_uid("p", &UserKey::User("x".into()), 0);
            change(ChangeKind::Superseded { by_session_id: 0, by_session_uid: by }, user, start, 1)
        };
        let changes = vec![
            change(ChangeKind::Started, "a", 10, 1),
            change(ChangeKind::Amended, "b", 20, 5),
            change(ChangeKind::Amended, "a", 10, 2),
            change(ChangeKind::Started, "c", 30, 1),
            superseded("c", 30),
            superseded("d", 40),
            change(ChangeKind::Amended, "b", 20, 6),
            change(ChangeKind::Concluded, "b", 20, 6),
        ];
        let net: Vec<(String, i64, u64, &str)> = coalesce(changes)
            .iter()
            .map(|c| {
                let kind = match c.kind {
                    ChangeKind::Started => "started",
                    ChangeKind::Amended => "amended",
                    ChangeKind::Concluded => "concluded",
                    ChangeKind::Superseded { .. } => "superseded",
                };
                (c.record.user.id().to_string(), c.record.session_id, c.record.event_count, kind)
            })
            .collect();
        assert_eq!(
            net,
            [
                ("a".to_string(), 10, 2, "started"),
                ("d".to_string(), 40, 1, "superseded"),
                ("b".to_string(), 20, 6, "concluded"),
            ]
        );
    }
}
