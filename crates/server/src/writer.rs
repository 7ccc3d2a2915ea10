//! Ingestion's two threads.
//!
//! * The acknowledging thread (`Acknowledger`) groups concurrent ingestion
//!   requests, deduplicates their insert ids, appends the new events to the
//!   ingest log (`sessionizer_store::IngestLog`) in one durable commit (group
//!   commit) and only then answers the requests. An append writes a few
//!   sequential pages, whatever the events' users or insert ids.
//! * The applying thread (`Writer`) owns the main database's write connection
//!   and one live engine per project. It reads what was logged, in large
//!   batches, feeds the engine, and stores the events (ordered by user) and
//!   the sessions' changes in one transaction, which also records the last log
//!   position applied; it concludes sessions as the server clock passes them.
//!   For a large batch, a scoped helper thread feeds the engines while the
//!   applying thread inserts the events: the two are independent.
//!   Batches grow with the load, and with them the events sharing each index
//!   page written.
//!
//! Dedup is exact: an insert id is a duplicate when the log holds it and it
//! may not be applied yet (`PendingInsertIds`, bounded by
//! `MAX_UNAPPLIED_EVENTS`) or when the main database's index holds it.
//! Reads wait until every event acknowledged before them is applied
//! (`AppliedWatch`), so they see what they were told was stored.
//!
//! The engine is pure; the applying thread is its imperative shell. It reads
//! the clock, feeds the engine and writes what the engine says.
//!
//! Restart: the engine's state is rebuilt by replaying the stored events that
//! can still touch live sessions (from the earliest start of any session whose
//! last event is within a timeout before the lateness horizon), in time order;
//! then the log rows after the last applied position are applied as usual.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use sessionizer_engine::{
    Assignment, ChangeKind, Event, EventClassifier, LiveConfig, SessionChange, SessionRules, Sessionizer, UserKey,
};
use sessionizer_store::{
    IngestLog, LogReader, NewEvent, Project, Store, StoreError, StoredEvent, StoredSession, sessionize_stored,
};
use tokio::sync::{oneshot, watch};

use crate::ApplyBatching;
use crate::error::ApiError;
use crate::limits::{
    MAX_APPLY_BATCH_EVENTS, MAX_GROUP_EVENTS, MAX_GROUP_REQUESTS, MAX_READ_CATCH_UP_MS, MAX_UNAPPLIED_EVENTS,
    MAX_WRITE_QUEUE_REQUESTS,
};
use crate::metrics::Metrics;

/// How often the writer concludes sessions and looks for settings changes.
const TICK: Duration = Duration::from_millis(500);
/// Events fed to the engine per call during a replay.
const REPLAY_CHUNK_EVENTS: usize = 10_000;
/// Bound on the steps that move a replay's start back past sessions spanning
/// it (see `Writer::load`).
const MAX_REPLAY_FLOOR_STEPS: usize = 64;
/// Bound on the time from an event's arrival to its acknowledgement that
/// conclusions allow for while events wait to be applied (see `Writer::tick`).
const ACK_MARGIN_MS: i64 = 1_000;
/// The writer thread's nice value (0 is the default, 19 the lowest priority).
#[cfg(target_os = "linux")]
const WRITER_NICE: i32 = 10;
/// How often a read waiting for events to be applied looks for a failure to apply them.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);
/// Applied log rows are deleted from the log once this many have gathered,
/// in the transaction of the next append.
const LOG_TRIM_ROWS: i64 = 8_192;
/// Batches at least this large are stored and sessionized on two threads at once.
const PARALLEL_APPLY_MIN_EVENTS: usize = 1_000;

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
    /// Applying logged events to the main database failed for good (not a
    /// full disk): reads that need them cannot be served until a restart.
    applying_stopped: AtomicBool,
    /// Applying logged events fails for a full disk and is being retried:
    /// reads that need them answer 503 at once until it succeeds.
    applying_blocked: AtomicBool,
}

/// How far ingestion has come: the last log position acknowledged, and the
/// last one applied to the main database.
#[derive(Debug)]
struct Progress {
    logged: AtomicI64,
    applied: watch::Sender<i64>,
    /// A read waits for events to be applied: apply now, whatever the batch's size.
    read_waiting: AtomicBool,
    /// Ingestion has stopped: apply what is left, conclude what is due, stop.
    stopping: AtomicBool,
    /// Batches the writer has tried to apply, successfully or not.
    apply_attempts: AtomicU64,
}

/// The HTTP side's end of the writer.
#[derive(Debug, Clone)]
pub(crate) struct WriterHandle {
    sender: SyncSender<WriteRequest>,
    pub(crate) health: Arc<Health>,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
}

impl WriterHandle {
    /// Whether the ingest log holds `MAX_UNAPPLIED_EVENTS` events not applied
    /// yet: new requests would be refused (503) by the acknowledging thread.
    pub(crate) fn backlogged(&self) -> bool {
        let applied = *self.progress.applied.borrow();
        (self.progress.logged.load(Ordering::Relaxed) - applied) as usize >= MAX_UNAPPLIED_EVENTS
    }

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

/// What reads wait on: every event acknowledged before a read began is
/// applied to the main database before the read looks at it.
#[derive(Debug, Clone)]
pub(crate) struct AppliedWatch {
    progress: Arc<Progress>,
    health: Arc<Health>,
    wake: SyncSender<()>,
}

impl AppliedWatch {
    /// Returns once the events acknowledged so far are applied; 503 after
    /// `MAX_READ_CATCH_UP_MS`, or at once while applying cannot proceed.
    pub(crate) async fn caught_up(&self) -> Result<(), ApiError> {
        let target = self.progress.logged.load(Ordering::Acquire);
        let mut applied = self.progress.applied.subscribe();
        if *applied.borrow_and_update() >= target {
            return Ok(());
        }
        let attempts_before = self.progress.apply_attempts.load(Ordering::Acquire);
        self.progress.read_waiting.store(true, Ordering::Release);
        wake_writer(&self.wake);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(MAX_READ_CATCH_UP_MS);
        loop {
            if self.health.applying_stopped.load(Ordering::Acquire) {
                return Err(ApiError::ReadBehind(
                    "a storage write failed; acknowledged events wait in the ingest log until a restart".into(),
                ));
            }
            // Blocked, and still after a try made since this read asked (space may have returned).
            if self.health.applying_blocked.load(Ordering::Acquire)
                && self.progress.apply_attempts.load(Ordering::Acquire) > attempts_before
            {
                return Err(ApiError::ReadBehind(
                    "the disk is full; acknowledged events wait in the ingest log until space returns".into(),
                ));
            }
            // Short waits, so that a failure to apply is noticed while waiting.
            let step = (tokio::time::Instant::now() + CATCH_UP_POLL).min(deadline);
            match tokio::time::timeout_at(step, applied.wait_for(|&applied| applied >= target)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => return Err(ApiError::ReadBehind("the writer stopped".into())),
                Err(_) if step >= deadline => {
                    return Err(ApiError::ReadBehind("acknowledged events are still being applied".into()));
                }
                Err(_) => {}
            }
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

/// Wakes the writer thread. A full channel already holds a wake-up; a closed
/// one means the writer has stopped, and there is no one left to wake.
fn wake_writer(wake: &SyncSender<()>) {
    match wake.try_send(()) {
        Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
    }
}

/// The writer applies in bursts that keep a core busy for up to a second.
/// At a lower priority (`WRITER_NICE`), the threads that answer requests run
/// first when the cores are short and the writer takes the rest, as storage
/// engines do with their compaction threads; the backlog bound
/// (`MAX_UNAPPLIED_EVENTS`) keeps it from falling behind for good.
fn lower_this_threads_priority() {
    // On Linux the nice value belongs to the thread: this one only.
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_NICE) {
        tracing::debug!(%error, "cannot lower the writer thread's priority");
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Starts the two threads; returns the handle for ingestion, the watch for
/// reads and the acknowledging thread, which joins the applying one when the
/// last handle is dropped and both have finished their work.
pub(crate) fn start(
    store: Store,
    log: IngestLog,
    log_reader: LogReader,
    metrics: Arc<Metrics>,
    queue_requests: usize,
    batching: ApplyBatching,
) -> Result<(WriterHandle, AppliedWatch, std::thread::JoinHandle<()>), crate::ServeError> {
    let queue_requests = queue_requests.clamp(1, MAX_WRITE_QUEUE_REQUESTS);
    let (sender, receiver) = std::sync::mpsc::sync_channel(queue_requests);
    let health = Arc::new(Health::default());
    let applied = store.applied_log_seq()?;
    let logged = log.last_seq()?.max(applied);
    let mut pending = PendingInsertIds::default();
    for logged in log.insert_ids_after(applied)? {
        pending.insert(logged.project, logged.insert_id.into_boxed_str(), logged.seq);
    }
    let progress = Arc::new(Progress {
        logged: AtomicI64::new(logged),
        applied: watch::Sender::new(applied),
        read_waiting: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        apply_attempts: AtomicU64::new(0),
    });
    metrics.unapplied_events.store(logged - applied, Ordering::Relaxed);
    let handle = WriterHandle { sender, health: health.clone(), metrics: metrics.clone(), progress: progress.clone() };
    // Capacity 1: a wake-up is a flag, and the applier reads the log itself.
    let (wake, woken) = std::sync::mpsc::sync_channel(1);
    let watch = AppliedWatch { progress: progress.clone(), health: health.clone(), wake: wake.clone() };
    let writer = Writer {
        store,
        log: log_reader,
        engines: HashMap::new(),
        metrics: metrics.clone(),
        health: health.clone(),
        progress: progress.clone(),
        applied,
        failing: false,
        unapplied_since: None,
        batching,
    };
    let applier = std::thread::Builder::new().name("sessionizer-writer".into()).spawn(move || writer.run(&woken))?;
    let acknowledger = Acknowledger { log, pending, trimmed_through: applied, progress, health, metrics, wake };
    let thread = std::thread::Builder::new()
        .name("sessionizer-log".into())
        .spawn(move || acknowledger.run(&receiver, applier))?;
    Ok((handle, watch, thread))
}

/// The insert ids appended to the log and perhaps not applied yet, with
/// their log positions. Entries applied since are dropped in bulk, once they
/// may be half of the set (amortised O(1) per event); until then they still
/// answer correctly (an applied insert id is a duplicate too).
#[derive(Debug, Default)]
struct PendingInsertIds {
    /// Per project (so a lookup borrows the id instead of building a key).
    positions: HashMap<i64, HashMap<Box<str>, i64>>,
    len: usize,
    pruned_through: i64,
}

impl PendingInsertIds {
    fn contains(&self, project: i64, insert_id: &str) -> bool {
        self.positions.get(&project).is_some_and(|ids| ids.contains_key(insert_id))
    }

    fn insert(&mut self, project: i64, insert_id: Box<str>, seq: i64) {
        if self.positions.entry(project).or_default().insert(insert_id, seq).is_none() {
            self.len += 1;
        }
    }

    /// Drops the entries at or before `applied` when they may be many.
    fn prune(&mut self, applied: i64) {
        let applied_since = applied - self.pruned_through;
        if applied_since > 0 && applied_since as usize >= self.len / 2 {
            for ids in self.positions.values_mut() {
                ids.retain(|_, seq| *seq > applied);
            }
            self.positions.retain(|_, ids| !ids.is_empty());
            self.len = self.positions.values().map(HashMap::len).sum();
            self.pruned_through = applied;
        }
    }
}

/// The acknowledging thread: dedup, append to the log, answer.
struct Acknowledger {
    log: IngestLog,
    pending: PendingInsertIds,
    /// Log rows at or before this position are deleted.
    trimmed_through: i64,
    progress: Arc<Progress>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    wake: SyncSender<()>,
}

impl Acknowledger {
    fn run(mut self, receiver: &Receiver<WriteRequest>, applier: std::thread::JoinHandle<()>) {
        while let Ok(first) = receiver.recv() {
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
            self.log_group(group, events);
        }
        // Every handle is gone: the applier applies what is left and stops
        // (reads may still hold a wake-up sender, so it is told, not left to
        // notice the channel closing).
        self.progress.stopping.store(true, Ordering::Release);
        wake_writer(&self.wake);
        if applier.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
        tracing::info!("ingestion stopped");
    }

    fn log_group(&mut self, group: Vec<WriteRequest>, events: usize) {
        if self.health.poisoned.load(Ordering::Acquire) {
            for request in group {
                let error =
                    ApiError::Unavailable("a storage write failed; restart the server after checking the disk".into());
                drop(request.reply.send(Err(error)));
            }
            return;
        }
        let started = Instant::now();
        let applied = *self.progress.applied.borrow();
        let logged = self.progress.logged.load(Ordering::Relaxed);
        if (logged - applied) as usize + events > MAX_UNAPPLIED_EVENTS {
            // Nothing of these requests is written: the client retries later.
            for request in group {
                drop(request.reply.send(Err(ApiError::Busy)));
            }
            return;
        }
        self.pending.prune(applied);
        match self.append(&group, applied) {
            Ok(results) => {
                self.metrics.commits.fetch_add(1, Ordering::Relaxed);
                self.metrics.commit_latency.observe(started.elapsed());
                let logged = self.progress.logged.load(Ordering::Relaxed);
                self.metrics.unapplied_events.store(logged - applied, Ordering::Relaxed);
                wake_writer(&self.wake);
                for (request, result) in group.into_iter().zip(results) {
                    self.metrics.ingested_events.fetch_add(result.accepted, Ordering::Relaxed);
                    self.metrics.duplicate_events.fetch_add(result.duplicates, Ordering::Relaxed);
                    // A client that went away still had its events stored.
                    drop(request.reply.send(Ok(result)));
                }
            }
            Err(error) => {
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
                }
            }
        }
    }

    /// Deduplicates the group's events and appends the new ones to the log in
    /// one durable commit; returns each request's counts.
    fn append(&mut self, group: &[WriteRequest], applied: i64) -> Result<Vec<Ingested>, StoreError> {
        // The pending set is consulted before the main database's snapshot is
        // taken: an insert id missing from it was applied before that, so the
        // snapshot holds it.
        let mut in_group: HashSet<(i64, &str)> = HashSet::new();
        let mut probes: Vec<(i64, &str)> = Vec::new();
        // Per event: new, duplicate, or the index of its probe.
        enum Verdict {
            New,
            Duplicate,
            Probe(usize),
        }
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(group.iter().map(|r| r.events.len()).sum());
        for request in group {
            for event in &request.events {
                let verdict = match event.insert_id.as_deref() {
                    None => Verdict::New,
                    Some(id) if self.pending.contains(request.project, id) => Verdict::Duplicate,
                    Some(id) if !in_group.insert((request.project, id)) => Verdict::Duplicate,
                    Some(id) => {
                        probes.push((request.project, id));
                        Verdict::Probe(probes.len() - 1)
                    }
                };
                verdicts.push(verdict);
            }
        }
        let stored = self.log.stored_in_main(&probes)?;
        let mut results = Vec::with_capacity(group.len());
        let mut fresh: Vec<(i64, &NewEvent)> = Vec::with_capacity(verdicts.len());
        let mut verdicts = verdicts.into_iter();
        for request in group {
            let mut result = Ingested { accepted: 0, duplicates: 0 };
            for event in &request.events {
                let new = match verdicts.next().expect("one verdict per event") {
                    Verdict::New => true,
                    Verdict::Duplicate => false,
                    Verdict::Probe(index) => !stored[index],
                };
                if new {
                    result.accepted += 1;
                    fresh.push((request.project, event));
                } else {
                    result.duplicates += 1;
                }
            }
            results.push(result);
        }
        if fresh.is_empty() {
            return Ok(results);
        }
        let trim = (applied - self.trimmed_through >= LOG_TRIM_ROWS).then_some(applied);
        let positions = self.log.append(&fresh, trim)?;
        if let Some(trimmed) = trim {
            self.trimmed_through = trimmed;
        }
        for ((project, event), seq) in fresh.iter().zip(&positions) {
            if let Some(id) = &event.insert_id {
                self.pending.insert(*project, Box::from(id.as_str()), *seq);
            }
        }
        if let Some(&last) = positions.last() {
            self.progress.logged.store(last, Ordering::Release);
        }
        Ok(results)
    }
}

/// The applying thread: the main database's only writer.
struct Writer {
    store: Store,
    log: LogReader,
    engines: HashMap<i64, ProjectEngine>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    progress: Arc<Progress>,
    /// The last log position applied.
    applied: i64,
    /// Applying failed (disk full) and is being retried; logged once.
    failing: bool,
    /// Since when logged events have been waiting to be applied.
    unapplied_since: Option<Instant>,
    /// When to apply them (`serve --apply-batch-events`, `--apply-delay`).
    batching: ApplyBatching,
}

impl Writer {
    fn run(mut self, woken: &Receiver<()>) {
        lower_this_threads_priority();
        if let Err(error) = self.load_all() {
            tracing::error!(%error, "cannot load the live state; not accepting writes");
            self.health.applying_stopped.store(true, Ordering::Release);
            self.health.poisoned.store(true, Ordering::Release);
        }
        // Ready before applying what was acknowledged before a restart and
        // not applied yet: acknowledging does not depend on it, and reads
        // wait for it (`AppliedWatch`).
        self.health.ready.store(true, Ordering::Release);
        let mut last_tick = Instant::now();
        self.apply_logged(&mut last_tick, true);
        loop {
            let mut wait = TICK.saturating_sub(last_tick.elapsed());
            if let Some(since) = self.unapplied_since {
                wait = wait.min(self.batching.max_delay().saturating_sub(since.elapsed()));
            }
            let woke = woken.recv_timeout(wait);
            let stopping =
                self.progress.stopping.load(Ordering::Acquire) || woke == Err(RecvTimeoutError::Disconnected);
            // Larger batches share more index pages: wait for the batch
            // size, unless a read is waiting, the oldest has waited the
            // delay, or ingestion is stopping. (A tick meanwhile concludes
            // only what no waiting event can extend.)
            let unapplied = self.progress.logged.load(Ordering::Acquire) - self.applied;
            if unapplied > 0 && self.unapplied_since.is_none() {
                self.unapplied_since = Some(Instant::now());
            }
            let read_waiting = self.progress.read_waiting.swap(false, Ordering::AcqRel);
            let waited = self.unapplied_since.is_some_and(|since| since.elapsed() >= self.batching.max_delay());
            if stopping || read_waiting || waited || unapplied >= self.batching.min_events() as i64 {
                self.apply_logged(&mut last_tick, stopping || read_waiting || waited);
            }
            if stopping {
                break;
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

    /// Applies the logged events in batches (or until applying fails),
    /// concluding sessions between batches when a tick is due. With `drain`,
    /// until none is left; otherwise while at least the batch size
    /// are, so that the few logged during a batch wait for more.
    fn apply_logged(&mut self, last_tick: &mut Instant, drain: bool) {
        while !self.health.applying_stopped.load(Ordering::Acquire) {
            let started = Instant::now();
            let applied = self.apply_batch();
            if applied.is_ok() && self.failing {
                tracing::info!("applying logged events again");
                self.failing = false;
                self.health.applying_blocked.store(false, Ordering::Release);
            }
            match applied {
                Ok(0) => {
                    self.progress.apply_attempts.fetch_add(1, Ordering::AcqRel);
                    self.unapplied_since = None;
                    break;
                }
                Ok(_) => {
                    self.progress.apply_attempts.fetch_add(1, Ordering::AcqRel);
                    if last_tick.elapsed() >= TICK {
                        self.tick();
                        *last_tick = Instant::now();
                    }
                    let unapplied = self.progress.logged.load(Ordering::Acquire) - self.applied;
                    if unapplied == 0 {
                        self.unapplied_since = None;
                        break;
                    }
                    if !drain && unapplied < self.batching.min_events() as i64 {
                        // What is left was logged after this batch began.
                        self.unapplied_since = Some(started);
                        break;
                    }
                }
                Err(error) => {
                    // The engines may have moved ahead of the store: reload them.
                    // The events are safe in the log and are applied again.
                    let disk_full = matches!(error, StoreError::DiskFull(_));
                    if !disk_full {
                        tracing::error!(%error, "cannot apply logged events; not accepting writes");
                        self.health.applying_stopped.store(true, Ordering::Release);
                        self.health.poisoned.store(true, Ordering::Release);
                    } else if !self.failing {
                        tracing::error!(%error, "cannot apply logged events; retrying");
                        self.failing = true;
                        self.health.applying_blocked.store(true, Ordering::Release);
                    }
                    if disk_full && let Err(error) = self.load_all() {
                        tracing::error!(%error, "cannot reload the live state; not accepting writes");
                        self.health.applying_stopped.store(true, Ordering::Release);
                        self.health.poisoned.store(true, Ordering::Release);
                    }
                    self.progress.apply_attempts.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
        }
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

    /// Applies the next batch of logged events (at most
    /// `MAX_APPLY_BATCH_EVENTS`): stores them, sessionizes them and writes the
    /// session changes, in one transaction with the position applied.
    /// Returns how many events it applied.
    fn apply_batch(&mut self) -> Result<usize, StoreError> {
        // Sessionized as of when the rows were read: an event logged later
        // arrived later, as on a server that sessionized each request as it
        // came. A full batch leaves earlier arrivals behind: as of its last row's.
        let read_at_ms = now_ms();
        let rows = self.log.events_after(self.applied, MAX_APPLY_BATCH_EVENTS)?;
        let Some((_, last)) = rows.last() else { return Ok(0) };
        let through = last.seq;
        let now =
            if rows.len() == MAX_APPLY_BATCH_EVENTS { read_at_ms.min(last.event.received_ms) } else { read_at_ms };
        let started = Instant::now();
        // Projects created since the last load.
        let missing: HashSet<i64> =
            rows.iter().map(|(project, _)| *project).filter(|p| !self.engines.contains_key(p)).collect();
        if !missing.is_empty() {
            for project in self.store.projects()?.into_iter().filter(|p| missing.contains(&p.id)) {
                self.load(project)?;
            }
        }
        if let Some((project_id, _)) = rows.iter().find(|(project, _)| !self.engines.contains_key(project)) {
            return Err(StoreError::UnknownProject(project_id.to_string()));
        }
        let batch = self.store.batch()?;
        // Storing the events (SQLite) and sessionizing them (the engines, in
        // memory) are independent: on two cores at once when the batch is
        // large enough to pay for a thread. If storing fails, the engines have
        // moved ahead of the store, as when writing the changes fails: the
        // caller reloads them and the events are applied again from the log.
        let engines = &mut self.engines;
        let (inserted, sessionized) = if rows.len() >= PARALLEL_APPLY_MIN_EVENTS {
            std::thread::scope(|scope| {
                let sessionizing = scope.spawn(|| {
                    lower_this_threads_priority();
                    sessionize_rows(engines, &rows, now)
                });
                let inserted = batch.insert_logged_events(&rows, through);
                (inserted, sessionizing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            })
        } else {
            (batch.insert_logged_events(&rows, through), sessionize_rows(engines, &rows, now))
        };
        inserted?;
        for Sessionized { project_id, changes, deferred } in sessionized {
            let project = &self.engines[&project_id];
            for change in &changes {
                batch.apply_change(project_id, change)?;
            }
            // Events the engine's horizon no longer covers: the store resolves
            // them by re-sessionizing the user's history.
            for user in &deferred {
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
        self.applied = through;
        // The gauge first: a read released by the watch sees it current.
        let logged = self.progress.logged.load(Ordering::Relaxed);
        self.metrics.unapplied_events.store(logged - through, Ordering::Relaxed);
        self.progress.applied.send_replace(through);
        self.metrics.apply_latency.observe(started.elapsed());
        Ok(rows.len())
    }

    /// Concludes due sessions and applies settings changed by `sessionizer project set`.
    fn tick(&mut self) {
        if self.health.poisoned.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = self.reload_changed_settings() {
            tracing::error!(%error, "cannot apply changed project settings");
        }
        // Events acknowledged but not applied yet may extend sessions: conclude
        // only what was due before the oldest of them arrived (with a margin
        // for the time between its arrival and its acknowledgement).
        let now = match self.unapplied_since {
            Some(since) => now_ms() - since.elapsed().as_millis() as i64 - ACK_MARGIN_MS,
            None => now_ms(),
        };
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

/// What one project's engine made of a batch of logged events.
struct Sessionized {
    project_id: i64,
    /// The net change of each session, in user order.
    changes: Vec<SessionChange>,
    /// Users with events the engine deferred, for the store to re-sessionize.
    deferred: Vec<UserKey>,
}

/// Feeds a batch of logged events to their projects' engines (each row's
/// project must have one). Memory only: it runs beside the batch's inserts.
fn sessionize_rows(
    engines: &mut HashMap<i64, ProjectEngine>,
    rows: &[(i64, StoredEvent)],
    now_ms: i64,
) -> Vec<Sessionized> {
    let mut fresh: HashMap<i64, Vec<Event>> = HashMap::new();
    for (project_id, stored) in rows {
        let classifier = &engines[project_id].classifier;
        fresh.entry(*project_id).or_default().push(stored.event.engine_event(classifier));
    }
    fresh
        .into_iter()
        .map(|(project_id, events)| {
            let engine = &mut engines.get_mut(&project_id).expect("every row's project has an engine").engine;
            let users: Vec<UserKey> = events.iter().map(|e| e.user.clone()).collect();
            let outcome = engine.ingest(events, now_ms);
            let mut changes = coalesce(outcome.changes);
            // In user order, as the events were stored: consecutive upserts
            // share the sessions table's pages. Stable, so each user's changes
            // keep their order (a merge's superseded session before the survivor).
            changes.sort_by(|a, b| a.record.user.cmp(&b.record.user));
            let mut deferred: Vec<UserKey> = outcome
                .assignments
                .iter()
                .zip(users)
                .filter(|(assignment, _)| matches!(assignment, Assignment::Deferred(_)))
                .map(|(_, user)| user)
                .collect();
            deferred.sort();
            deferred.dedup();
            Sessionized { project_id, changes, deferred }
        })
        .collect()
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
    fn pending_insert_ids_are_per_project_and_pruned_once_applied() {
        let mut pending = PendingInsertIds::default();
        for seq in 1..=10 {
            pending.insert(1, format!("id{seq}").into(), seq);
        }
        pending.insert(2, "id1".into(), 11);
        assert!(pending.contains(1, "id3") && pending.contains(2, "id1"));
        assert!(!pending.contains(2, "id3") && !pending.contains(3, "id1"));
        // Too few applied to be worth a sweep: kept (still duplicates either way).
        pending.prune(2);
        assert_eq!(pending.len, 11);
        assert!(pending.contains(1, "id1"));
        // Half or more applied: swept down to the unapplied ones.
        pending.prune(9);
        assert_eq!(pending.len, 2);
        assert!(!pending.contains(1, "id9") && pending.contains(1, "id10") && pending.contains(2, "id1"));
        pending.prune(11);
        assert_eq!((pending.len, pending.positions.len()), (0, 0));
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
