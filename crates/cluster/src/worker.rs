//! A sessionizer worker: holds leases on partitions, consumes their events
//! from JetStream, runs the live engine (one per partition and project) and
//! writes events and session versions to ClickHouse.
//!
//! Effectively once: a batch's events and sessions are written before the
//! batch is acknowledged to JetStream. After a crash the next owner of the
//! partition rebuilds the engine from the events ClickHouse holds (as the
//! single binary rebuilds from its store) and gets the unacknowledged messages
//! again; those already stored are recognised by their dedup key and skipped,
//! and rows written twice collapse in ClickHouse (ReplacingMergeTree).
//!
//! Ownership: a lease per partition in the KV bucket `sessionizer_leases`,
//! taken and renewed by compare-and-set on the entry's revision, so at most
//! one worker holds a partition at a time; each worker takes at most its fair
//! share (partitions / live workers), so partitions spread over the workers
//! and move to the others when one stops renewing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sessionizer_engine::{Assignment, EventClassifier, LiveConfig, SessionChange, SessionRules, Sessionizer, UserKey};
use sessionizer_store::{StoredSession, sessionize_stored};

use crate::catalog::CatalogProject;
use crate::clickhouse::{ClickHouseStore, EventRow, SessionRow};
use crate::nats::STREAM_NAME;
use crate::{Cluster, ClusterError, EVENT_SUBJECT_PREFIX, EventMessage, nats_error};

/// Messages fetched from one partition at a time (a fetch cycle over every
/// owned partition holds at most partitions × this, besides what waits to be flushed).
pub const DEFAULT_BATCH_EVENTS: usize = 1_000;
/// Unacknowledged messages a partition's consumer lets out at once.
const MAX_ACK_PENDING: i64 = 50_000;
/// Rows of a partition's history read per page while rebuilding its engine.
const REPLAY_PAGE_EVENTS: usize = 10_000;
/// Bound on the steps that move a replay's start back past sessions spanning it.
const MAX_REPLAY_FLOOR_STEPS: usize = 64;
/// How often the worker concludes sessions and re-reads the catalog.
const TICK: Duration = Duration::from_millis(500);
/// Pause after a failed load or batch before trying again.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// A flush at the latest this long after the oldest unwritten message was
/// taken, or once this many events wait: ClickHouse gets a few large inserts,
/// not one small insert per partition and fetch.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
const FLUSH_EVENTS: usize = 20_000;
/// A processing loop that has not gone round for this long is stuck: longer
/// than any bounded call it makes (ClickHouse 120 s, a fetch 5 s, NATS requests 10 s),
/// so only a call that never returns trips it.
const STUCK_AFTER: Duration = Duration::from_secs(150);
/// Longest wait for a fetch's answer (see [`fetch`]).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Users re-sessionized per step when a project's settings change (bounds
/// the memory of a step: these users' events and sessions).
const RESESSIONIZE_PAGE_USERS: usize = 1_000;
/// Pause when no owned partition had anything to do.
const IDLE_PAUSE: Duration = Duration::from_millis(20);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique among the cluster's workers (e.g. host name and process id).
    pub worker_id: String,
    pub batch_events: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    worker: String,
    expires_ms: i64,
}

/// A lease this worker holds: the KV revision of its entry, and until when the
/// worker may still write for the partition (a margin before the entry
/// expires, after which another worker may take it).
#[derive(Debug, Clone, Copy)]
struct HeldLease {
    revision: u64,
    writable_until_ms: i64,
}

/// The leases this worker holds, by partition.
type Held = Arc<Mutex<BTreeMap<u32, HeldLease>>>;

/// The partitions this worker may write for now: held, and within the margin
/// of their lease. A worker cut off from NATS stops writing for a partition
/// before another can take it, so a stale flush never lands over the new
/// owner's rows (only an insert already in flight at the deadline can, which
/// takes milliseconds against a margin of a third of the lease).
fn writable(held: &Held) -> std::collections::BTreeSet<u32> {
    let now = now_ms();
    held.lock()
        .expect("lease lock")
        .iter()
        .filter(|(_, lease)| lease.writable_until_ms > now)
        .map(|(&p, _)| p)
        .collect()
}

/// The partition a stream message was published to (`sessionizer.events.<p>`).
fn message_partition(message: &async_nats::jetstream::Message) -> Option<u32> {
    message.subject.as_str().strip_prefix(EVENT_SUBJECT_PREFIX).and_then(|p| p.parse().ok())
}
/// When the processing loop last went round (epoch ms): leases are renewed only
/// while it does, so a stuck worker lets its partitions go to the others.
type Heartbeat = Arc<std::sync::atomic::AtomicI64>;

struct ProjectEngine {
    project: CatalogProject,
    rules: SessionRules,
    classifier: EventClassifier,
    engine: Sessionizer,
}

struct Partition {
    consumer: PullConsumer,
    engines: HashMap<i64, ProjectEngine>,
    /// Per project with changed settings: the settings revision this
    /// partition's stored sessions follow (absent: 0, the creation's).
    applied: HashMap<i64, u64>,
}

/// One worker process.
#[derive(Debug)]
pub struct Worker {
    cluster: Cluster,
    store: ClickHouseStore,
    options: WorkerOptions,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Worker {
    pub fn new(cluster: Cluster, options: WorkerOptions) -> Result<Worker, ClusterError> {
        let store = ClickHouseStore::from_config(&cluster.config)?;
        if options.worker_id.is_empty()
            || !options.worker_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ClusterError::Catalog(format!(
                "a worker id is letters, digits, '-' and '_', got {:?}",
                options.worker_id
            )));
        }
        Ok(Worker { cluster, store, options })
    }

    /// Runs until `shutdown` resolves; then releases its leases so other workers take over at once.
    /// NATS or ClickHouse unreachable (at start, or while loading the catalog)
    /// is waited out, one attempt per [`FAILURE_PAUSE`]; a configuration that
    /// cannot work (another partition count, an uninitialised cluster) is an error.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<(), ClusterError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let leases = loop {
            let attempt = async {
                self.cluster.check_partitions().await?;
                self.cluster.leases().await
            };
            match attempt.await {
                Ok(leases) => break leases,
                Err(error) if transient(&error) => {
                    tracing::warn!(%error, "cannot reach the cluster yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(FAILURE_PAUSE) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                }
                Err(error) => return Err(error),
            }
        };
        let held: Held = Arc::default();
        let heartbeat: Heartbeat = Arc::new(std::sync::atomic::AtomicI64::new(now_ms()));
        let lease_task = tokio::spawn(keep_leases(
            leases.clone(),
            self.cluster.config.clone(),
            self.options.worker_id.clone(),
            held.clone(),
            heartbeat.clone(),
        ));
        let supervised = async {
            loop {
                match self.process(held.clone(), heartbeat.clone()).await {
                    Err(error) if transient(&error) => {
                        tracing::warn!(%error, "worker loop stopped; restarting it");
                        tokio::time::sleep(FAILURE_PAUSE).await;
                    }
                    other => return other,
                }
            }
        };
        let result = tokio::select! {
            result = supervised => result,
            () = &mut shutdown => Ok(()),
        };
        lease_task.abort();
        release_all(&leases, &self.options.worker_id, &held).await;
        result
    }

    async fn process(&self, held: Held, heartbeat: Heartbeat) -> Result<(), ClusterError> {
        let catalog = self.cluster.catalog().await?;
        let mut projects: HashMap<i64, CatalogProject> =
            catalog.projects().await?.into_iter().map(|p| (p.id, p)).collect();
        let mut partitions: BTreeMap<u32, Partition> = BTreeMap::new();
        let mut last_tick = tokio::time::Instant::now();
        let mut version = 0u64;
        let mut pending = Pending::default();
        loop {
            heartbeat.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
            let wanted: Vec<u32> = writable(&held).into_iter().collect();
            if partitions.keys().any(|p| !wanted.contains(p)) {
                // A lost partition's rows must not be written after its new owner
                // took it: `flush_or_reset` hands its messages back instead.
                self.flush_or_reset(&mut pending, &mut partitions, &mut version, &held).await;
                partitions.retain(|p, _| wanted.contains(p));
            }
            for p in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = partitions.entry(p) {
                    match self.load_partition(p, &mut projects, &catalog, &mut version, &heartbeat).await {
                        Ok(loaded) => {
                            tracing::info!(partition = p, worker = %self.options.worker_id, "partition taken");
                            slot.insert(loaded);
                        }
                        Err(error) => {
                            tracing::error!(partition = p, %error, "cannot load the partition; retrying");
                            tokio::time::sleep(FAILURE_PAUSE).await;
                        }
                    }
                }
            }
            // Fetch from every owned partition at once.
            let batch_events = self.options.batch_events;
            let fetched = futures_util::future::join_all(
                partitions
                    .iter()
                    .map(|(&p, partition)| async move { (p, fetch(p, &partition.consumer, batch_events).await) }),
            )
            .await;
            let mut busy = false;
            let mut unreachable = Vec::new();
            for (p, messages) in fetched {
                let messages = match messages {
                    Ok(messages) => messages,
                    Err(error) => {
                        // A consumer handle can stay dead after its leader moved (seen
                        // as 503s for minutes after a NATS node restart): bind again.
                        tracing::warn!(partition = p, %error, "cannot fetch; binding the partition again");
                        unreachable.push(p);
                        continue;
                    }
                };
                busy |= messages.len() >= batch_events;
                if messages.is_empty() {
                    continue;
                }
                let partition = partitions.get_mut(&p).expect("fetched from an owned partition");
                if let Err(error) =
                    self.sessionize(p, partition, messages, &mut projects, &catalog, &mut version, &mut pending).await
                {
                    // The engines may hold events that will not be written: rebuild from what is stored.
                    tracing::error!(partition = p, %error, "batch failed: rebuilding the state");
                    self.flush_or_reset(&mut pending, &mut partitions, &mut version, &held).await;
                    partitions.remove(&p);
                    tokio::time::sleep(FAILURE_PAUSE).await;
                }
            }
            if !unreachable.is_empty() {
                self.flush_or_reset(&mut pending, &mut partitions, &mut version, &held).await;
                for p in &unreachable {
                    partitions.remove(p);
                }
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
            let tick = last_tick.elapsed() >= TICK;
            if tick {
                last_tick = tokio::time::Instant::now();
                // New projects, and changed settings.
                match catalog.projects().await {
                    Ok(list) => projects = list.into_iter().map(|p| (p.id, p)).collect(),
                    Err(error) => tracing::warn!(%error, "cannot re-read the catalog"),
                }
                let stale: Vec<(u32, i64)> = partitions
                    .iter()
                    .flat_map(|(&p, partition)| {
                        projects
                            .values()
                            .filter(|project| {
                                project.settings_revision > partition.applied.get(&project.id).copied().unwrap_or(0)
                            })
                            .map(move |project| (p, project.id))
                    })
                    .collect();
                if !stale.is_empty() {
                    // What is pending was sessionized with the old settings: store it
                    // first, so the re-sessionizing sees it.
                    self.flush_or_reset(&mut pending, &mut partitions, &mut version, &held).await;
                    for (p, project) in stale {
                        let Some(entry) = projects.get(&project) else { continue };
                        match self.apply_settings(p, entry, &catalog, &mut version, (&heartbeat, &held)).await {
                            // The engines still follow the old settings: rebuilt at the next turn.
                            Ok(()) => drop(partitions.remove(&p)),
                            Err(error) => {
                                tracing::error!(partition = p, project, %error, "cannot apply changed settings; retrying");
                                tokio::time::sleep(FAILURE_PAUSE).await;
                            }
                        }
                    }
                    continue;
                }
                let now = now_ms();
                for (&p, partition) in &mut partitions {
                    for (&project, engine) in &mut partition.engines {
                        let changes = engine.engine.advance(now);
                        push_session_rows(&mut pending.sessions, project, p, &changes, &mut version, now);
                    }
                }
            }
            if tick
                || pending.events.len() >= FLUSH_EVENTS
                || pending.since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
            {
                self.flush_or_reset(&mut pending, &mut partitions, &mut version, &held).await;
            }
            if !busy {
                tokio::time::sleep(IDLE_PAUSE).await;
            }
        }
    }

    /// Writes what is pending (events, then the sessions of deferred users,
    /// then session versions) and acknowledges its messages. On a failure the
    /// messages are handed back (nak) and every partition's state is rebuilt
    /// from what ClickHouse holds.
    async fn flush_or_reset(
        &self,
        pending: &mut Pending,
        partitions: &mut BTreeMap<u32, Partition>,
        version: &mut u64,
        held: &Held,
    ) {
        let mut taken = std::mem::take(pending);
        // What belongs to partitions this worker may no longer write for is
        // not written: their messages go back to the stream for the new owner.
        let allowed = writable(held);
        let lost = |p: u32| !allowed.contains(&p);
        if taken.events.iter().any(|row| lost(row.partition))
            || taken.sessions.iter().any(|row| lost(row.partition))
            || taken.messages.iter().any(|m| message_partition(m).is_none_or(lost))
        {
            taken.events.retain(|row| !lost(row.partition));
            taken.sessions.retain(|row| !lost(row.partition));
            taken.deferred.retain(|(p, _, _)| !lost(*p));
            let (keep, hand_back): (Vec<_>, Vec<_>) =
                taken.messages.into_iter().partition(|m| message_partition(m).is_some_and(|p| !lost(p)));
            taken.messages = keep;
            tracing::warn!(messages = hand_back.len(), "lease expired before the flush: handing messages back");
            hand_back_all(&hand_back).await;
            // Those engines hold what will not be written: rebuilt if the partition comes back.
            partitions.retain(|p, _| !lost(*p));
        }
        if taken.messages.is_empty() && taken.sessions.is_empty() {
            return;
        }
        if let Err(error) =
            self.flush(taken.events, taken.sessions, taken.deferred, &taken.messages, partitions, version).await
        {
            tracing::error!(%error, "cannot store a batch: rebuilding every partition's state");
            hand_back_all(&taken.messages).await;
            partitions.clear();
        }
    }

    async fn flush(
        &self,
        events: Vec<EventRow>,
        mut sessions: Vec<SessionRow>,
        deferred: Vec<(u32, i64, UserKey)>,
        messages: &[async_nats::jetstream::Message],
        partitions: &BTreeMap<u32, Partition>,
        version: &mut u64,
    ) -> Result<(), ClusterError> {
        self.store.insert_events_routed(&events).await?;
        // Events the engine's horizon no longer covers: re-sessionize the user's stored history.
        let now = now_ms();
        for (p, project, user) in deferred {
            let Some(engine) = partitions.get(&p).and_then(|partition| partition.engines.get(&project)) else {
                continue;
            };
            let events = self.store.user_events(project, p, &user).await?;
            let fresh: Vec<StoredSession> =
                sessionize_stored(&engine.project.public_id, &events, &engine.rules, &engine.classifier, now)
                    .into_iter()
                    .filter(|s| s.user == user)
                    .collect();
            let stored = self.store.sessions_of_user(project, p, &user).await?;
            sessions.extend(reconciling_rows((project, p), &fresh, stored, version, now));
        }
        self.store.insert_sessions_routed(&sessions).await?;
        // Everything is stored: acknowledge each message. A lost acknowledgement
        // only means a redelivery, which the dedup keys make harmless.
        for message in messages {
            message.ack().await.map_err(|e| ClusterError::Nats(format!("ack failed: {e}")))?;
        }
        Ok(())
    }

    fn engine_for<'a>(
        engines: &'a mut HashMap<i64, ProjectEngine>,
        projects: &HashMap<i64, CatalogProject>,
        project: i64,
    ) -> Result<Option<&'a mut ProjectEngine>, ClusterError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = engines.entry(project) {
            let Some(entry) = projects.get(&project) else { return Ok(None) };
            let (rules, classifier) = entry.settings.compile()?;
            let config = LiveConfig::new(entry.public_id.clone(), rules.clone());
            let engine = Sessionizer::new(config).map_err(|e| ClusterError::Catalog(e.to_string()))?;
            slot.insert(ProjectEngine { project: entry.clone(), rules, classifier, engine });
        }
        Ok(engines.get_mut(&project))
    }

    /// Re-sessionizes a project's whole stored history in one partition with
    /// its current settings (as the single binary does when settings change),
    /// user by user in pages, writing the sessions that differ and superseding
    /// those that no longer exist; then records the settings revision as
    /// applied. Idempotent: an interrupted run is done again by whoever holds
    /// the partition next.
    async fn apply_settings(
        &self,
        p: u32,
        project: &CatalogProject,
        catalog: &crate::Catalog,
        version: &mut u64,
        (heartbeat, held): (&Heartbeat, &Held),
    ) -> Result<(), ClusterError> {
        let (rules, classifier) = project.settings.compile()?;
        let mut after: Option<UserKey> = None;
        let (mut users_done, mut written) = (0usize, 0usize);
        loop {
            // Long work is progress: the leases stay.
            heartbeat.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
            let users = self.store.partition_users(p, project.id, after.as_ref(), RESESSIONIZE_PAGE_USERS).await?;
            let Some(last) = users.last().cloned() else { break };
            let (events, stored) = self.store.users_history(p, project.id, &users).await?;
            let now = now_ms();
            let fresh = sessionize_stored(&project.public_id, &events, &rules, &classifier, now);
            let rows = reconciling_rows((project.id, p), &fresh, stored, version, now);
            if !writable(held).contains(&p) {
                // The lease ran out during the work: the next owner does it again.
                return Err(ClusterError::LeaseLost(p));
            }
            self.store.insert_sessions(p, &rows).await?;
            users_done += users.len();
            written += rows.len();
            if users.len() < RESESSIONIZE_PAGE_USERS {
                break;
            }
            after = Some(last);
        }
        catalog.set_applied_revision(project.id, p, project.settings_revision).await?;
        tracing::info!(
            partition = p,
            project = %project.public_id,
            revision = project.settings_revision,
            users = users_done,
            session_rows = written,
            "changed settings applied"
        );
        Ok(())
    }

    /// Binds the partition's consumer and rebuilds its engines from the events
    /// ClickHouse holds that can still touch live sessions.
    async fn load_partition(
        &self,
        p: u32,
        projects: &mut HashMap<i64, CatalogProject>,
        catalog: &crate::Catalog,
        version: &mut u64,
        heartbeat: &Heartbeat,
    ) -> Result<Partition, ClusterError> {
        let stream = self.cluster.jetstream().get_stream(STREAM_NAME).await.map_err(nats_error)?;
        let name = format!("partition_{p}");
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{EVENT_SUBJECT_PREFIX}{p}"),
                    // Explicit, never All: acknowledging a later message must not
                    // acknowledge an earlier one a dead owner left unprocessed.
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_millis(self.cluster.config.ack_wait_ms),
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ClusterError::Nats(format!("cannot bind the consumer of partition {p}: {e}")))?;
        let now = now_ms();
        let mut engines = HashMap::new();
        // The widest floor any project needs (the same reasoning as the single binary's writer).
        let floor = projects
            .values()
            .filter_map(|project| project.settings.compile().ok())
            .map(|(rules, _)| {
                now.saturating_sub(LiveConfig::new("", rules.clone()).lateness_horizon_ms)
                    .saturating_sub(rules.join_distance_ms())
            })
            .min()
            .unwrap_or(now);
        let mut from =
            self.store.earliest_start_of_sessions_ending_since(p, floor).await?.map_or(floor, |s| s.min(floor));
        for _ in 0..MAX_REPLAY_FLOOR_STEPS {
            match self.store.earliest_start_of_sessions_ending_since(p, from).await? {
                Some(start) if start < from => from = start,
                _ => break,
            }
        }
        let mut after = (i64::MIN, 0u64);
        let mut replay_now = i64::MIN;
        let mut replayed = 0usize;
        loop {
            // A long replay is progress: the leases stay.
            heartbeat.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
            let page = self.store.partition_events_page(p, from, after, REPLAY_PAGE_EVENTS).await?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else { break };
            after = (last.time_ms, last.seq);
            replay_now = replay_now.max(first.time_ms.min(now));
            replayed += page.len();
            let mut by_project: HashMap<i64, Vec<_>> = HashMap::new();
            for row in &page {
                by_project.entry(row.project).or_default().push(row.to_stored().event);
            }
            if by_project.keys().any(|project| !projects.contains_key(project)) {
                *projects = catalog.projects().await?.into_iter().map(|p| (p.id, p)).collect();
            }
            for (project, events) in by_project {
                let Some(engine) = Self::engine_for(&mut engines, projects, project)? else {
                    return Err(missing_project(project));
                };
                let events = events.iter().map(|e| e.engine_event(&engine.classifier)).collect();
                drop(engine.engine.ingest(events, replay_now));
            }
        }
        // Reconcile ClickHouse with the rebuilt state: the previous owner may have
        // stored a batch's events but not its sessions, and sessions concluded
        // while nobody owned the partition. Every session starting at or after
        // `from` is whole in the replay (no stored session spans `from`), so the
        // replay's sessions are the truth there: write those that differ and
        // supersede stored ones the replay does not have.
        let mut stored: HashMap<i64, Vec<StoredSession>> = HashMap::new();
        for (project, session) in self.store.partition_sessions_since(p, from).await? {
            stored.entry(project).or_default().push(session);
        }
        let mut rows = Vec::new();
        for (&project, engine) in &mut engines {
            drop(engine.engine.advance(now));
            let fresh: Vec<StoredSession> = engine
                .engine
                .sessions()
                .iter()
                .filter(|record| record.start_ms >= from)
                .map(StoredSession::from_record)
                .collect();
            let stored = stored.remove(&project).unwrap_or_default();
            rows.extend(reconciling_rows((project, p), &fresh, stored, version, now));
        }
        // Stored sessions of projects the replay had no event of.
        for (project, gone) in stored {
            rows.extend(reconciling_rows((project, p), &[], gone, version, now));
        }
        self.store.insert_sessions(p, &rows).await?;
        let mut applied = HashMap::new();
        for project in projects.values().filter(|project| project.settings_revision > 0) {
            applied.insert(project.id, catalog.applied_revision(project.id, p).await?);
        }
        tracing::info!(partition = p, replay_from_ms = from, replayed, "partition state rebuilt");
        Ok(Partition { consumer, engines, applied })
    }

    /// Sessionizes one partition's fetched messages into `pending` (rows to
    /// write, messages to acknowledge once written). Redelivered messages whose
    /// events are already stored are skipped; unreadable ones are never acknowledged.
    #[allow(clippy::too_many_arguments, reason = "the worker loop's state, passed apart to keep borrows separate")]
    async fn sessionize(
        &self,
        p: u32,
        partition: &mut Partition,
        messages: Vec<async_nats::jetstream::Message>,
        projects: &mut HashMap<i64, CatalogProject>,
        catalog: &crate::Catalog,
        version: &mut u64,
        pending: &mut Pending,
    ) -> Result<(), ClusterError> {
        let now = now_ms();
        let mut decoded: Vec<(u64, bool, EventMessage)> = Vec::with_capacity(messages.len());
        let mut readable = Vec::with_capacity(messages.len());
        for message in messages {
            let info = message.info().map_err(nats_error)?;
            match EventMessage::decode(&message.payload) {
                Ok(event) => {
                    decoded.push((info.stream_sequence, info.delivered > 1, event));
                    readable.push(message);
                }
                Err(error) => {
                    // Never acknowledged: it stays in the stream (redelivered, logged
                    // again) until a worker that can read it takes it; no event is dropped.
                    tracing::error!(partition = p, seq = info.stream_sequence, %error, "a message this worker cannot read");
                }
            }
        }
        if decoded.iter().any(|(_, _, m)| !projects.contains_key(&m.project)) {
            *projects = catalog.projects().await?.into_iter().map(|p| (p.id, p)).collect();
        }
        let mut redelivered: HashMap<i64, Vec<String>> = HashMap::new();
        for (_, again, message) in &decoded {
            if *again {
                redelivered.entry(message.project).or_default().push(message.event_key.clone());
            }
        }
        let mut already_stored: HashSet<(i64, String)> = HashSet::new();
        for (project, keys) in redelivered {
            for key in self.store.existing_event_keys(project, p, &keys).await? {
                already_stored.insert((project, key));
            }
        }
        let mut by_project: BTreeMap<i64, Vec<(u64, EventMessage)>> = BTreeMap::new();
        for (seq, _, message) in decoded {
            if already_stored.contains(&(message.project, message.event_key.clone())) {
                // Stored by an attempt that may have stopped before its sessions
                // were written. Within the horizon, rebuilding the state from
                // ClickHouse wrote them (`load_partition`); beyond it, the user's
                // history is re-sessionized again (idempotent).
                let horizon_ms = partition
                    .engines
                    .get(&message.project)
                    .map_or(sessionizer_engine::DEFAULT_LATENESS_HORIZON_MS, |e| e.engine.config().lateness_horizon_ms);
                if message.time_ms < now.saturating_sub(horizon_ms) {
                    pending.deferred.push((p, message.project, message.event().user_key()));
                }
                continue;
            }
            by_project.entry(message.project).or_default().push((seq, message));
        }
        if by_project.keys().any(|project| !projects.contains_key(project)) {
            return Err(missing_project(*by_project.keys().find(|p| !projects.contains_key(p)).expect("checked")));
        }
        for (project, messages) in &by_project {
            let engine = Self::engine_for(&mut partition.engines, projects, *project)?.expect("checked above");
            let new_events: Vec<_> = messages.iter().map(|(_, m)| m.event()).collect();
            let events = new_events.iter().map(|e| e.engine_event(&engine.classifier)).collect();
            let outcome = engine.engine.ingest(events, now);
            for ((assignment, (seq, message)), event) in outcome.assignments.iter().zip(messages).zip(&new_events) {
                match assignment {
                    Assignment::Duplicate => continue,
                    Assignment::Deferred(_) => pending.deferred.push((p, *project, event.user_key())),
                    _ => {}
                }
                pending.events.push(EventRow::new(*project, p, *seq, &message.event_key, event));
            }
            push_session_rows(&mut pending.sessions, *project, p, &outcome.changes, version, now);
        }
        pending.deferred.sort();
        pending.deferred.dedup();
        pending.messages.extend(readable);
        pending.since.get_or_insert_with(tokio::time::Instant::now);
        Ok(())
    }
}

/// Hands messages back to the stream (nak) for redelivery, to this worker or the next owner.
async fn hand_back_all(messages: &[async_nats::jetstream::Message]) {
    for message in messages {
        if let Err(error) = message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak failed (the message comes again after the ack wait)");
        }
    }
}

/// Fetches what is waiting on a partition (no waiting for more).
/// Bounded, because a fetch from a consumer whose leader is being re-elected
/// may get no answer at all, and one silent partition must not stall the others.
async fn fetch(
    p: u32,
    consumer: &PullConsumer,
    max: usize,
) -> Result<Vec<async_nats::jetstream::Message>, ClusterError> {
    let fetched = async {
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| ClusterError::Nats(format!("cannot fetch from partition {p}: {e}")))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| ClusterError::Nats(format!("partition {p}: {e}")))?);
        }
        Ok(messages)
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetched).await.unwrap_or_else(|_| {
        Err(ClusterError::Nats(format!("partition {p}: no answer to a fetch within {} s", FETCH_TIMEOUT.as_secs())))
    })
}

/// Rows and messages waiting for the next flush.
#[derive(Default)]
struct Pending {
    events: Vec<EventRow>,
    sessions: Vec<SessionRow>,
    deferred: Vec<(u32, i64, UserKey)>,
    messages: Vec<async_nats::jetstream::Message>,
    /// When the oldest unflushed message was taken.
    since: Option<tokio::time::Instant>,
}

/// Failures that pass: an engine unreachable for a while.
fn transient(error: &ClusterError) -> bool {
    matches!(error, ClusterError::Nats(_) | ClusterError::ClickHouse(_))
}

/// Events of a project the catalog does not have (even after re-reading it):
/// the batch is not acknowledged, and is taken again once the catalog has it.
fn missing_project(project: i64) -> ClusterError {
    ClusterError::Catalog(format!("events of project {project}, which the catalog does not have"))
}

/// A session version number: increasing within a worker and, because it
/// follows the clock in microseconds, past any version an earlier owner of
/// the partition wrote (a lease moves only after it expired).
fn next_version(version: &mut u64) -> u64 {
    let clock = u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(0);
    *version = (*version + 1).max(clock);
    *version
}

/// The last state of each session the changes touched, as rows to write.
fn push_session_rows(
    rows: &mut Vec<SessionRow>,
    project: i64,
    partition: u32,
    changes: &[SessionChange],
    version: &mut u64,
    now: i64,
) {
    let mut last: HashMap<(UserKey, i64), (&SessionChange, usize)> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        last.insert((change.record.user.clone(), change.record.session_id), (change, index));
    }
    let mut finals: Vec<(&SessionChange, usize)> = last.into_values().collect();
    finals.sort_by_key(|(_, index)| *index);
    for (change, _) in finals {
        let superseded = matches!(change.kind, sessionizer_engine::ChangeKind::Superseded { .. });
        let session = StoredSession::from_record(&change.record);
        rows.push(SessionRow::new(project, partition, &session, superseded, next_version(version), now));
    }
}

/// The versions that make what ClickHouse holds for some sessions of a project
/// in a partition equal `fresh`: each fresh session whose stored state differs
/// (or that is not stored), and a superseding version of each stored session
/// `fresh` does not have.
fn reconciling_rows(
    (project, partition): (i64, u32),
    fresh: &[StoredSession],
    stored: Vec<StoredSession>,
    version: &mut u64,
    now: i64,
) -> Vec<SessionRow> {
    let mut stored: HashMap<(UserKey, i64), StoredSession> =
        stored.into_iter().map(|s| ((s.user.clone(), s.session_id), s)).collect();
    let mut rows = Vec::new();
    for session in fresh {
        match stored.remove(&(session.user.clone(), session.session_id)) {
            Some(previous) if previous.same_state(session) => {}
            _ => rows.push(SessionRow::new(project, partition, session, false, next_version(version), now)),
        }
    }
    for gone in stored.values() {
        rows.push(SessionRow::new(project, partition, gone, true, next_version(version), now));
    }
    rows
}

/// Takes, renews and gives up partition leases every third of the lease TTL.
async fn keep_leases(
    leases: kv::Store,
    config: crate::ClusterConfig,
    worker: String,
    held: Held,
    heartbeat: Heartbeat,
) {
    let period = Duration::from_millis(config.lease_ttl_ms / 3);
    loop {
        let stuck_ms = now_ms() - heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        if stuck_ms > STUCK_AFTER.as_millis() as i64 {
            // The processing loop is stuck (a call that never returns): stop
            // renewing, so the partitions move to a worker that makes progress.
            tracing::error!(stuck_ms, worker, "the worker loop is stuck; giving up its partitions");
            release_all_leases(&leases, &held).await;
        } else if let Err(error) = lease_round(&leases, &config, &worker, &held).await {
            tracing::warn!(%error, "lease round failed");
        }
        tokio::time::sleep(period).await;
    }
}

async fn lease_round(
    leases: &kv::Store,
    config: &crate::ClusterConfig,
    worker: &str,
    held: &Held,
) -> Result<(), ClusterError> {
    let now = now_ms();
    let ttl = config.lease_ttl_ms as i64;
    let value = |expires_ms| {
        Bytes::from(serde_json::to_vec(&Lease { worker: worker.to_string(), expires_ms }).expect("serializes"))
    };
    // Heartbeat, then count the live workers for the fair share.
    leases.put(format!("worker.{worker}"), value(now + ttl)).await.map_err(nats_error)?;
    let mut alive = 0u32;
    let keys: Vec<String> = {
        let mut stream = leases.keys().await.map_err(nats_error)?;
        let mut keys = Vec::new();
        while let Some(key) = stream.next().await {
            keys.push(key.map_err(nats_error)?);
        }
        keys
    };
    for key in keys.iter().filter(|k| k.starts_with("worker.")) {
        if let Some(bytes) = leases.get(key.as_str()).await.map_err(nats_error)?
            && serde_json::from_slice::<Lease>(&bytes).is_ok_and(|l| l.expires_ms > now)
        {
            alive += 1;
        }
    }
    let fair = config.partitions.div_ceil(alive.max(1)) as usize;
    for p in 0..config.partitions {
        let key = format!("partition.{p}");
        let entry = leases.entry(key.as_str()).await.map_err(nats_error)?;
        let mine = held.lock().expect("lease lock").get(&p).map(|lease| lease.revision);
        let current = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<Lease>(&e.value).ok().map(|lease| (lease, e.revision)));
        match (mine, current) {
            (Some(revision), Some((lease, entry_revision))) if lease.worker == worker && entry_revision == revision => {
                let owned = held.lock().expect("lease lock").len();
                if owned > fair {
                    // More than our share: hand it back so a newer worker can take it.
                    if leases.delete_expect_revision(key.as_str(), Some(revision)).await.is_ok() {
                        held.lock().expect("lease lock").remove(&p);
                        tracing::info!(partition = p, worker, "partition released to rebalance");
                    }
                    continue;
                }
                match leases.update(key.as_str(), value(now + ttl), revision).await {
                    Ok(new_revision) => {
                        let lease = HeldLease { revision: new_revision, writable_until_ms: now + ttl - ttl / 3 };
                        held.lock().expect("lease lock").insert(p, lease);
                    }
                    Err(error) => {
                        tracing::warn!(partition = p, %error, "lease renewal failed: partition dropped");
                        held.lock().expect("lease lock").remove(&p);
                    }
                }
            }
            (Some(_), _) => {
                tracing::warn!(partition = p, worker, "lease lost: partition dropped");
                held.lock().expect("lease lock").remove(&p);
            }
            (None, current) => {
                if held.lock().expect("lease lock").len() >= fair {
                    continue;
                }
                let taken = match (&entry, current) {
                    (_, Some((lease, _))) if lease.expires_ms > now => continue,
                    (_, Some((_, revision))) => leases.update(key.as_str(), value(now + ttl), revision).await.ok(),
                    (Some(entry), None) => leases.update(key.as_str(), value(now + ttl), entry.revision).await.ok(),
                    (None, None) => leases.create(key.as_str(), value(now + ttl)).await.ok(),
                };
                if let Some(revision) = taken {
                    let lease = HeldLease { revision, writable_until_ms: now + ttl - ttl / 3 };
                    held.lock().expect("lease lock").insert(p, lease);
                }
            }
        }
    }
    Ok(())
}

/// Gives up every lease at shutdown so other workers take over at once.
async fn release_all(leases: &kv::Store, worker: &str, held: &Held) {
    release_all_leases(leases, held).await;
    if let Err(error) = leases.delete(format!("worker.{worker}")).await {
        tracing::warn!(%error, "cannot remove the worker's heartbeat");
    }
}

/// Deletes every lease this worker holds (compare-and-set: never another's).
async fn release_all_leases(leases: &kv::Store, held: &Held) {
    let partitions: Vec<(u32, HeldLease)> =
        std::mem::take(&mut *held.lock().expect("lease lock")).into_iter().collect();
    for (p, HeldLease { revision, .. }) in partitions {
        if let Err(error) = leases.delete_expect_revision(format!("partition.{p}"), Some(revision)).await {
            tracing::warn!(partition = p, %error, "cannot release a lease (it expires by itself)");
        }
    }
}
