//! The live engine: events arrive in any order and in any batches; sessions and
//! every change to them come out.
//!
//! Per user the engine keeps *islands*: maximal runs of active events whose
//! consecutive gaps are below the join distance (the timeout, or with platform
//! rules the largest window any event can have), plus the passive events that
//! fall in `[first active, last active + join distance)`. Islands are the unit
//! of change: a new active event can only join, extend or merge the (at most
//! two) islands within a join distance of it, and the sessions inside an island
//! (more than one with a maximum length, a midnight split, or platform windows
//! shorter than the join distance) depend on that island's events alone. An
//! island is rescanned with the same fold as the batch kernel, or, when events
//! arrive in time order, the fold simply continues. That is why the result after
//! any arrival order equals a sort and one scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::config::{ConfigError, EventClass, Hold, LiveConfig, Window};
use crate::ids::{InsertIdSet, insert_key, session_uid, tiebreak};
use crate::key::UserKey;
use crate::scan::{EndReason, ScanState, Span, Step};

const HOUR_MS: i64 = 60 * 60 * 1_000;
const NO_SPAN: u32 = u32::MAX;

/// One event as the live engine takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub user: UserKey,
    /// The device the event came from, if known; used for the user-change end reason.
    pub device_id: Option<Arc<str>>,
    pub event_type: Arc<str>,
    /// The page or screen, if the event has one.
    pub page: Option<Arc<str>>,
    pub time_ms: i64,
    pub class: EventClass,
    pub insert_id: Option<Arc<str>>,
    /// The client SDK's own session id, if it sent one; only splits sessions
    /// with [`crate::SessionRules::with_client_session_splits`].
    pub client_session_id: Option<Arc<str>>,
    /// The platform (`web`, `ios`, ...), if known: picks the rules of
    /// [`crate::SessionRules::with_platform`].
    pub platform: Option<Arc<str>>,
}

/// A session's current state, as published in changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: UserKey,
    /// Numeric id: the start in epoch ms (unique per user).
    pub session_id: i64,
    /// Globally unique id (UUIDv7 carrying the start).
    pub session_uid: Uuid,
    pub start_ms: i64,
    /// The last active event's time.
    pub end_ms: i64,
    /// The last event's time, passive events included (see
    /// [`crate::BatchSession::last_event_ms`]).
    pub last_event_ms: i64,
    /// Active and passive events.
    pub event_count: u64,
    /// Time in the foreground: the length minus the time after background
    /// events (equal to the length without lifecycle events).
    pub active_ms: i64,
    pub entry_event_type: Arc<str>,
    pub entry_page: Option<Arc<str>>,
    pub exit_event_type: Arc<str>,
    pub exit_page: Option<Arc<str>>,
    /// `None` while the session can still be extended by new activity.
    pub end_reason: Option<EndReason>,
    /// True once `end + timeout <= now`.
    pub concluded: bool,
    /// Engine-wide change sequence number of the latest change to this record:
    /// of two records with the same session id, the higher revision is current.
    pub revision: u64,
}

impl SessionRecord {
    pub fn length_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }

    /// Equal apart from the revision.
    fn same_state(&self, other: &SessionRecord) -> bool {
        SessionRecord { revision: 0, ..self.clone() } == SessionRecord { revision: 0, ..other.clone() }
    }
}

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new session.
    Started,
    /// A session gained events, or its end reason changed.
    Amended,
    /// A session can no longer be extended by new activity (`end + timeout <= now`).
    /// The record is stamped with its last activity (`end_ms`), not with `now`.
    Concluded,
    /// The session no longer exists: a late event moved its start or merged it
    /// into the session with this id (the record is the last state it had).
    Superseded { by_session_id: i64, by_session_uid: Uuid },
}

/// One change, with the `now` at which the engine raised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub kind: ChangeKind,
    pub record: SessionRecord,
    pub raised_at_ms: i64,
}

/// Why an event was handed back to the caller instead of sessionized here.
/// The caller (the store) resolves it against history later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferReason {
    /// Older than `now - lateness horizon`.
    BeyondHorizon,
    /// Older than history this user's state had to evict to stay within its bound.
    BeforeEvictedHistory,
    /// The user's open activity alone fills `max_events_per_user`.
    UserStateFull,
    /// The engine already tracks `max_users` users.
    TooManyUsers,
}

/// What became of one ingested event, in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// In this session (as of the end of this ingest call).
    Session {
        session_id: i64,
        session_uid: Uuid,
    },
    /// An excluded event type: no session.
    Excluded,
    /// A passive event with no session open within the timeout: no session (yet).
    NoOpenSession,
    /// Its insert id was already seen: ignored.
    Duplicate,
    Deferred(DeferReason),
}

/// The result of one [`Sessionizer::ingest`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub assignments: Vec<Assignment>,
    pub changes: Vec<SessionChange>,
}

#[derive(Debug, Clone)]
struct Point {
    time_ms: i64,
    /// Passive flag in the top bit (active sorts first), tiebreak below.
    order: u64,
    device_id: Option<Arc<str>>,
    event_type: Arc<str>,
    page: Option<Arc<str>>,
    /// [`crate::client_session_key`] of the event's client session id, 0 for none.
    client_session: u64,
    /// How long its session stays open after it, if it is active.
    window: Window,
    /// Index into the island's spans, or `NO_SPAN`.
    span: u32,
}

impl Point {
    fn active(&self) -> bool {
        self.order >> 63 == 0
    }

    fn sort_key(&self) -> (i64, u64) {
        (self.time_ms, self.order)
    }
}

#[derive(Debug, Clone, Default)]
struct Island {
    /// Sorted by `sort_key`.
    points: Vec<Point>,
    first_active_ms: i64,
    last_active_ms: i64,
    /// Spans closed by a split, with the reason; the open one is in `scan`.
    closed: Vec<(Span, EndReason)>,
    scan: ScanState,
    /// The records last published for this island's sessions.
    records: Vec<SessionRecord>,
    /// Points were inserted out of order: the fold must restart.
    needs_rescan: bool,
}

impl Island {
    fn span_count(&self) -> usize {
        self.closed.len() + usize::from(self.scan.open_span().is_some())
    }

    /// The spans in order, matching `records` one to one once built.
    fn spans(&self) -> impl Iterator<Item = &Span> {
        self.closed.iter().map(|(span, _)| span).chain(self.scan.open_span())
    }

    /// The earliest time at which a session of the island that is not
    /// concluded yet will be.
    fn next_conclusion_ms(&self) -> Option<i64> {
        let spans = self.spans().zip(&self.records);
        spans.filter(|(_, record)| !record.concluded).map(|(span, _)| span.open_until_ms()).min()
    }
}

#[derive(Debug, Default)]
struct UserState {
    /// Sorted by first active time; disjoint.
    islands: Vec<Island>,
    /// Passive events outside every island, sorted by `sort_key`.
    orphans: Vec<Point>,
    /// Events before this time are deferred: history before it was evicted.
    floor_ms: i64,
    /// Wake-up time scheduled in `Sessionizer::wakeups`, if any.
    wake_ms: Option<i64>,
}

impl UserState {
    fn point_count(&self) -> usize {
        self.orphans.len() + self.islands.iter().map(|island| island.points.len()).sum::<usize>()
    }
}

/// The live, incremental sessionizer. Deterministic, synchronous and pure:
/// time only enters through the `now_ms` arguments.
#[derive(Debug)]
pub struct Sessionizer {
    config: LiveConfig,
    now_ms: i64,
    users: HashMap<UserKey, UserState>,
    /// For each device, its active events' times and users, sorted by time.
    devices: HashMap<Arc<str>, Vec<(i64, UserKey)>>,
    /// `now` at the last sweep of `devices`.
    devices_swept_ms: i64,
    seen: InsertIdSet,
    /// Insert keys by the hour of their event, to forget them past the horizon.
    seen_by_hour: BTreeMap<i64, Vec<u128>>,
    /// (time, user) pairs at which a user needs concluding or evicting.
    wakeups: BTreeSet<(i64, UserKey)>,
    last_revision: u64,
}

impl Sessionizer {
    pub fn new(config: LiveConfig) -> Result<Sessionizer, ConfigError> {
        config.validate()?;
        Ok(Sessionizer {
            config,
            now_ms: i64::MIN,
            users: HashMap::new(),
            devices: HashMap::new(),
            devices_swept_ms: i64::MIN,
            seen: InsertIdSet::default(),
            seen_by_hour: BTreeMap::new(),
            wakeups: BTreeSet::new(),
            last_revision: 0,
        })
    }

    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// The largest `now` seen so far; `now` never goes backwards.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Every session currently held, in (user, start) order.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let mut records: Vec<SessionRecord> = self
            .users
            .values()
            .flat_map(|user| user.islands.iter().flat_map(|island| island.records.iter().cloned()))
            .collect();
        records.sort_by(|a, b| (&a.user, a.start_ms).cmp(&(&b.user, b.start_ms)));
        records
    }

    /// Sessions held that are not concluded yet (for metrics).
    pub fn open_session_count(&self) -> usize {
        let records = self.users.values().flat_map(|user| &user.islands).flat_map(|island| &island.records);
        records.filter(|record| !record.concluded).count()
    }

    /// The number of users and events held, for metrics and bound checks.
    pub fn state_size(&self) -> (usize, usize) {
        (self.users.len(), self.users.values().map(UserState::point_count).sum())
    }

    /// Sessionizes `events` as of `now_ms`, then concludes and evicts what is due.
    pub fn ingest(&mut self, events: Vec<Event>, now_ms: i64) -> IngestOutcome {
        self.now_ms = self.now_ms.max(now_ms);
        let mut outcome = IngestOutcome { assignments: Vec::with_capacity(events.len()), ..Default::default() };
        let mut by_user: HashMap<UserKey, Vec<(usize, Point)>> = HashMap::new();
        let mut device_marks: Vec<(Arc<str>, i64, UserKey)> = Vec::new();
        let mut new_users = 0;
        for (index, event) in events.into_iter().enumerate() {
            let admitted_in_call = by_user.contains_key(&event.user);
            let assignment = self.admit(&event, new_users, admitted_in_call);
            outcome.assignments.push(assignment.unwrap_or(Assignment::NoOpenSession));
            if assignment.is_some() {
                continue;
            }
            if event.class == EventClass::Active
                && let Some(device_id) = &event.device_id
            {
                device_marks.push((device_id.clone(), event.time_ms, event.user.clone()));
            }
            let window = self.config.rules.window_of(event.platform.as_deref(), &event.event_type);
            let point = Point {
                window,
                time_ms: event.time_ms,
                order: (u64::from(event.class == EventClass::Passive) << 63)
                    | (tiebreak(&event.event_type, event.page.as_deref(), event.insert_id.as_deref()) >> 1),
                device_id: event.device_id,
                event_type: event.event_type,
                page: event.page,
                client_session: event.client_session_id.as_deref().map_or(0, crate::ids::client_session_key),
                span: NO_SPAN,
            };
            if !admitted_in_call && !self.users.contains_key(&event.user) {
                new_users += 1;
            }
            by_user.entry(event.user).or_default().push((index, point));
        }

        // Device marks first: records built below read them for end reasons.
        let mut refresh: Vec<(UserKey, i64)> = Vec::new();
        for (device_id, time_ms, user) in device_marks {
            self.mark_device(device_id, time_ms, user, &mut refresh);
        }
        let mut by_user: Vec<(UserKey, Vec<(usize, Point)>)> = by_user.into_iter().collect();
        by_user.sort_by(|a, b| a.0.cmp(&b.0));
        for (user, points) in by_user {
            self.ingest_user(&user, points, &mut outcome);
        }
        refresh.sort();
        refresh.dedup();
        for (user, time_ms) in refresh {
            self.refresh_at(&user, time_ms, &mut outcome.changes);
        }
        self.advance_into(self.now_ms, &mut outcome.changes);
        outcome
    }

    /// Concludes the sessions whose `end + timeout <= now_ms` and evicts state
    /// beyond the lateness horizon.
    pub fn advance(&mut self, now_ms: i64) -> Vec<SessionChange> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut changes = Vec::new();
        self.advance_into(self.now_ms, &mut changes);
        changes
    }

    /// Decides what happens to an event before it touches any state: `Some` when
    /// it will not be sessionized here.
    /// `new_users` are users not yet in the state but already admitted in this
    /// call, so one call cannot overshoot `max_users`.
    fn admit(&mut self, event: &Event, new_users: usize, admitted_in_call: bool) -> Option<Assignment> {
        if event.class == EventClass::Excluded {
            return Some(Assignment::Excluded);
        }
        // Older than the horizon, but within the timeout of an island still
        // held (a long session that began before the horizon): the engine has
        // what it needs, and handing it to the store would split the truth.
        if event.time_ms < self.horizon_floor_ms() && !self.touches_held_island(event) {
            return Some(Assignment::Deferred(DeferReason::BeyondHorizon));
        }
        match self.users.get(&event.user) {
            Some(user) if event.time_ms < user.floor_ms => {
                return Some(Assignment::Deferred(DeferReason::BeforeEvictedHistory));
            }
            None if !admitted_in_call && self.users.len() + new_users >= self.config.max_users => {
                return Some(Assignment::Deferred(DeferReason::TooManyUsers));
            }
            _ => {}
        }
        if let Some(insert_id) = &event.insert_id {
            let key = insert_key(insert_id);
            if !self.seen.insert(key) {
                return Some(Assignment::Duplicate);
            }
            self.seen_by_hour.entry(event.time_ms.div_euclid(HOUR_MS)).or_default().push(key);
        }
        None
    }

    /// Whether an event falls within the timeout before (or inside) one of its
    /// user's held islands. Held islands all end within the timeout of the
    /// horizon floor, so for an event older than the floor only the start counts.
    fn touches_held_island(&self, event: &Event) -> bool {
        let timeout_ms = self.join_distance_ms();
        self.users.get(&event.user).and_then(|user| user.islands.first()).is_some_and(|island| {
            event.time_ms > island.first_active_ms.saturating_sub(timeout_ms)
                && event.time_ms < island.last_active_ms.saturating_add(timeout_ms)
        })
    }

    /// Events before this are beyond the lateness horizon.
    fn horizon_floor_ms(&self) -> i64 {
        self.now_ms.saturating_sub(self.config.lateness_horizon_ms)
    }

    /// Islands are runs of active events closer than this (the largest window).
    fn join_distance_ms(&self) -> i64 {
        self.config.rules.join_distance_ms()
    }

    fn ingest_user(&mut self, key: &UserKey, mut points: Vec<(usize, Point)>, outcome: &mut IngestOutcome) {
        points.sort_by_key(|(_, point)| point.sort_key());
        let max_points = self.config.max_events_per_user;
        let now_ms = self.now_ms;
        let timeout_ms = self.join_distance_ms();
        let mut user = self.users.remove(key).unwrap_or_default();
        let mut old_records: Vec<SessionRecord> = Vec::new();
        let mut touched_first_ms: Vec<i64> = Vec::new();
        let mut accepted: Vec<(usize, i64, u64)> = Vec::new();
        for (index, point) in points {
            if user.point_count() >= max_points && !evict_for_room(&mut user, now_ms, timeout_ms) {
                outcome.assignments[index] = Assignment::Deferred(DeferReason::UserStateFull);
                continue;
            }
            if point.time_ms < user.floor_ms {
                outcome.assignments[index] = Assignment::Deferred(DeferReason::BeforeEvictedHistory);
                continue;
            }
            accepted.push((index, point.time_ms, point.order));
            let first_ms = place_point(&mut user, point, timeout_ms, &self.config.rules, &mut old_records);
            touched_first_ms.push(first_ms);
        }
        // Rebuild the touched islands' records and publish the differences.
        let mut new_records: Vec<SessionRecord> = Vec::new();
        for island in user.islands.iter_mut() {
            let touched =
                touched_first_ms.iter().any(|&ms| island.first_active_ms <= ms && ms <= island.last_active_ms);
            if !touched && !island.needs_rescan {
                continue;
            }
            if island.needs_rescan {
                rescan(island, &self.config.rules);
            }
            island.records = self.build_records(key, island);
            new_records.extend(island.records.iter().cloned());
        }
        self.publish(&mut user, old_records, new_records, &mut outcome.changes);
        for (index, time_ms, order) in accepted {
            outcome.assignments[index] = assignment_of(&user, time_ms, order);
        }
        self.schedule(key, &mut user);
        if !user.islands.is_empty() || !user.orphans.is_empty() {
            self.users.insert(key.clone(), user);
        }
    }

    /// Records for every span of an island, with end reasons and conclusion as of now.
    fn build_records(&self, key: &UserKey, island: &Island) -> Vec<SessionRecord> {
        let mut records = Vec::with_capacity(island.span_count());
        let spans = island.closed.iter().map(|&(span, reason)| (span, Some(reason)));
        let open = island.scan.open_span().map(|&span| (span, None));
        for (span, reason) in spans.chain(open) {
            let entry = &island.points[span.entry_pos];
            let exit = &island.points[span.exit_pos];
            let concluded = span.open_until_ms() <= self.now_ms;
            // A span closed by a gap inside the island (a window shorter than
            // the join distance) may still end by user change.
            let end_reason = match reason {
                Some(EndReason::Inactivity) => Some(self.inactivity_reason(key, exit, span.window)),
                Some(reason) => Some(reason),
                None if concluded => Some(self.inactivity_reason(key, exit, span.window)),
                None => None,
            };
            records.push(SessionRecord {
                user: key.clone(),
                session_id: span.start_ms,
                session_uid: session_uid(&self.config.project, key, span.start_ms),
                start_ms: span.start_ms,
                end_ms: span.end_ms,
                last_event_ms: span.last_event_ms,
                event_count: span.event_count,
                active_ms: span.active_ms,
                entry_event_type: entry.event_type.clone(),
                entry_page: entry.page.clone(),
                exit_event_type: exit.event_type.clone(),
                exit_page: exit.page.clone(),
                end_reason,
                concluded,
                revision: 0,
            });
        }
        records
    }

    /// Why a session ends when no activity follows its last active event
    /// within its window: backgrounded or dead app with lifecycle rules, else
    /// inactivity, or user change when another user was active on the device
    /// of the session's last event within the window after it (see the batch kernel).
    fn inactivity_reason(&self, key: &UserKey, exit: &Point, window: Window) -> EndReason {
        if window.hold != Hold::Inactivity {
            return EndReason::after(window.hold);
        }
        let Some(marks) = exit.device_id.as_ref().and_then(|device_id| self.devices.get(device_id)) else {
            return EndReason::Inactivity;
        };
        let next = marks.partition_point(|(time_ms, _)| *time_ms <= exit.time_ms);
        match marks.get(next) {
            Some((time_ms, other)) if time_ms - exit.time_ms < window.length_ms && other != key => {
                EndReason::UserChange
            }
            _ => EndReason::Inactivity,
        }
    }

    /// Compares the old and new records of the touched islands and emits changes.
    fn publish(
        &mut self,
        user: &mut UserState,
        old_records: Vec<SessionRecord>,
        new_records: Vec<SessionRecord>,
        changes: &mut Vec<SessionChange>,
    ) {
        let old_by_id: HashMap<i64, &SessionRecord> = old_records.iter().map(|r| (r.session_id, r)).collect();
        let mut published: HashMap<i64, u64> = HashMap::new();
        for record in &new_records {
            let old = old_by_id.get(&record.session_id);
            if let Some(old) = old
                && old.same_state(record)
            {
                published.insert(record.session_id, old.revision);
                continue;
            }
            let content_changed = old.is_none_or(|old| {
                !SessionRecord { concluded: old.concluded, end_reason: old.end_reason, ..record.clone() }
                    .same_state(old)
            });
            let kind = match old {
                None => Some(ChangeKind::Started),
                Some(_) if content_changed => Some(ChangeKind::Amended),
                Some(old) if old.end_reason != record.end_reason && old.concluded == record.concluded => {
                    Some(ChangeKind::Amended)
                }
                Some(_) => None,
            };
            let mut revision = 0;
            if let Some(kind) = kind {
                revision = self.emit(kind, record, changes);
            }
            if record.concluded && old.is_none_or(|old| !old.concluded) {
                revision = self.emit(ChangeKind::Concluded, record, changes);
            }
            published.insert(record.session_id, revision);
        }
        for old in &old_records {
            if published.contains_key(&old.session_id) {
                continue;
            }
            let successor = new_records
                .iter()
                .filter(|new| new.start_ms <= old.start_ms)
                .max_by_key(|new| new.start_ms)
                .or_else(|| new_records.iter().min_by_key(|new| new.start_ms));
            if let Some(successor) = successor {
                let kind = ChangeKind::Superseded {
                    by_session_id: successor.session_id,
                    by_session_uid: successor.session_uid,
                };
                self.emit(kind, old, changes);
            }
        }
        for island in user.islands.iter_mut() {
            for record in island.records.iter_mut() {
                if let Some(&revision) = published.get(&record.session_id)
                    && record.revision == 0
                {
                    record.revision = revision;
                }
            }
        }
    }

    fn emit(&mut self, kind: ChangeKind, record: &SessionRecord, changes: &mut Vec<SessionChange>) -> u64 {
        self.last_revision += 1;
        let record = SessionRecord { revision: self.last_revision, ..record.clone() };
        changes.push(SessionChange { kind, record, raised_at_ms: self.now_ms });
        self.last_revision
    }

    /// Records an active event on a device, and lists the sessions whose end
    /// reason it may change: those ending on this device within a window before it.
    fn mark_device(&mut self, device_id: Arc<str>, time_ms: i64, user: UserKey, refresh: &mut Vec<(UserKey, i64)>) {
        let timeout_ms = self.join_distance_ms();
        let marks = self.devices.entry(device_id).or_default();
        let at = marks.partition_point(|(t, _)| *t <= time_ms);
        let earlier = marks.partition_point(|(t, _)| *t <= time_ms - timeout_ms);
        for (t, other) in &marks[earlier..at] {
            if *other != user && *t < time_ms {
                refresh.push((other.clone(), *t));
            }
        }
        marks.insert(at, (time_ms, user));
    }

    /// Rebuilds the records of the island of `user` holding `time_ms`.
    fn refresh_at(&mut self, key: &UserKey, time_ms: i64, changes: &mut Vec<SessionChange>) {
        let Some(mut user) = self.users.remove(key) else { return };
        let found = user.islands.iter().position(|i| i.first_active_ms <= time_ms && time_ms <= i.last_active_ms);
        if let Some(index) = found {
            let old = user.islands[index].records.clone();
            let new = self.build_records(key, &user.islands[index]);
            user.islands[index].records = new.clone();
            self.publish(&mut user, old, new, changes);
        }
        self.users.insert(key.clone(), user);
    }

    fn schedule(&mut self, key: &UserKey, user: &mut UserState) {
        let wake_ms = next_wake_ms(user, self.join_distance_ms(), self.config.lateness_horizon_ms);
        if wake_ms.is_some() && wake_ms != user.wake_ms {
            if let Some(old) = user.wake_ms {
                self.wakeups.remove(&(old, key.clone()));
            }
            if let Some(wake_ms) = wake_ms {
                self.wakeups.insert((wake_ms, key.clone()));
            }
            user.wake_ms = wake_ms;
        }
    }

    fn advance_into(&mut self, now_ms: i64, changes: &mut Vec<SessionChange>) {
        while let Some((wake_ms, key)) = self.wakeups.first().cloned() {
            if wake_ms > now_ms {
                break;
            }
            self.wakeups.pop_first();
            let Some(mut user) = self.users.remove(&key) else { continue };
            user.wake_ms = None;
            self.conclude_user(&key, &mut user, changes);
            evict_beyond_horizon(&mut user, self.horizon_floor_ms(), self.join_distance_ms());
            self.schedule(&key, &mut user);
            if !user.islands.is_empty() || !user.orphans.is_empty() {
                self.users.insert(key, user);
            }
        }
        self.forget_old_insert_ids();
        self.sweep_devices();
    }

    fn conclude_user(&mut self, key: &UserKey, user: &mut UserState, changes: &mut Vec<SessionChange>) {
        let now_ms = self.now_ms;
        let due: Vec<usize> = (0..user.islands.len())
            .filter(|&i| user.islands[i].next_conclusion_ms().is_some_and(|ms| ms <= now_ms))
            .collect();
        for index in due {
            let old = user.islands[index].records.clone();
            let new = self.build_records(key, &user.islands[index]);
            user.islands[index].records = new.clone();
            self.publish(user, old, new, changes);
        }
    }

    fn forget_old_insert_ids(&mut self) {
        let floor_hour = self.horizon_floor_ms().div_euclid(HOUR_MS);
        while let Some(entry) = self.seen_by_hour.first_entry() {
            // An hour's keys go once the whole hour is before the horizon.
            if *entry.key() >= floor_hour {
                break;
            }
            for key in entry.remove() {
                self.seen.remove(key);
            }
        }
    }

    /// Device marks are needed while a session ending within a timeout before them
    /// may still change; sweep them once per hour of `now`, which bounds the work.
    fn sweep_devices(&mut self) {
        if self.now_ms.saturating_sub(self.devices_swept_ms) < HOUR_MS {
            return;
        }
        self.devices_swept_ms = self.now_ms;
        let floor_ms = self.horizon_floor_ms().saturating_sub(self.join_distance_ms());
        self.devices.retain(|_, marks| {
            marks.retain(|(time_ms, _)| *time_ms >= floor_ms);
            !marks.is_empty()
        });
    }
}

/// Puts one point into the user's islands or orphans. Records the published
/// state of every island it touches (once) in `old_records`, and returns the
/// first active time of the island it landed in (or its own time).
fn place_point(
    user: &mut UserState,
    point: Point,
    timeout_ms: i64,
    rules: &crate::config::SessionRules,
    old_records: &mut Vec<SessionRecord>,
) -> i64 {
    let time_ms = point.time_ms;
    if !point.active() {
        let host =
            user.islands.iter().position(|i| i.first_active_ms <= time_ms && time_ms < i.last_active_ms + timeout_ms);
        match host {
            Some(index) => {
                let island = &mut user.islands[index];
                old_records.append(&mut island.records);
                insert_point(island, point, rules);
                return island.first_active_ms;
            }
            None => {
                let at = user.orphans.partition_point(|p| p.sort_key() <= point.sort_key());
                user.orphans.insert(at, point);
                return time_ms;
            }
        }
    }
    // Islands within a timeout of the new active event: at most two, adjacent.
    let first = user.islands.partition_point(|i| i.last_active_ms + timeout_ms <= time_ms);
    let mut last = first;
    while last < user.islands.len() && user.islands[last].first_active_ms - timeout_ms < time_ms {
        last += 1;
    }
    let mut island = if first == last {
        user.islands.insert(first, Island { first_active_ms: time_ms, last_active_ms: time_ms, ..Default::default() });
        std::mem::take(&mut user.islands[first])
    } else {
        let mut merged: Vec<Island> = user.islands.drain(first..last).collect();
        user.islands.insert(first, Island::default());
        let mut island = merged.remove(0);
        for other in merged {
            old_records.extend(other.records);
            island.points.extend(other.points);
            island.last_active_ms = other.last_active_ms;
            island.needs_rescan = true;
        }
        island
    };
    old_records.append(&mut island.records);
    island.first_active_ms = island.first_active_ms.min(time_ms);
    island.last_active_ms = island.last_active_ms.max(time_ms);
    insert_point(&mut island, point, rules);
    // Adopt the orphans the island's range now covers.
    let range_end_ms = island.last_active_ms + timeout_ms;
    let from = user.orphans.partition_point(|p| p.time_ms < island.first_active_ms);
    let to = user.orphans.partition_point(|p| p.time_ms < range_end_ms);
    if from < to {
        island.points.extend(user.orphans.drain(from..to));
        island.needs_rescan = true;
    }
    let first_ms = island.first_active_ms;
    user.islands[first] = island;
    first_ms
}

/// Inserts a point; continues the fold if it comes after every point already
/// there, and otherwise leaves the island for a rescan.
fn insert_point(island: &mut Island, mut point: Point, rules: &crate::config::SessionRules) {
    let in_order = island.points.last().is_none_or(|last| last.sort_key() <= point.sort_key());
    if !in_order || island.needs_rescan {
        island.needs_rescan = true;
        island.points.push(point);
        return;
    }
    point.span = fold_step(island, rules, &point);
    island.points.push(point);
}

/// One step of the fold; returns the span index of the stepped point.
fn fold_step(island: &mut Island, rules: &crate::config::SessionRules, point: &Point) -> u32 {
    match island.scan.step(rules, point.time_ms, point.active(), point.client_session, point.window) {
        Step::Opened(closed) => {
            if let Some(closed) = closed {
                island.closed.push(closed);
            }
            island.closed.len() as u32
        }
        Step::Joined => island.closed.len() as u32,
        Step::Orphan => NO_SPAN,
    }
}

fn rescan(island: &mut Island, rules: &crate::config::SessionRules) {
    island.points.sort_by_key(Point::sort_key);
    island.scan = ScanState::default();
    island.closed.clear();
    island.needs_rescan = false;
    let mut points = std::mem::take(&mut island.points);
    for point in &mut points {
        point.span = fold_step(island, rules, point);
    }
    island.points = points;
}

fn assignment_of(user: &UserState, time_ms: i64, order: u64) -> Assignment {
    for island in &user.islands {
        let at = island.points.partition_point(|p| p.sort_key() < (time_ms, order));
        if let Some(point) = island.points.get(at)
            && point.sort_key() == (time_ms, order)
        {
            return match island.records.get(point.span as usize) {
                Some(record) => Assignment::Session { session_id: record.session_id, session_uid: record.session_uid },
                None => Assignment::NoOpenSession,
            };
        }
    }
    Assignment::NoOpenSession
}

/// When the user next needs attention: the earliest conclusion still to come, or
/// the time its oldest island or orphan leaves the horizon.
fn next_wake_ms(user: &UserState, timeout_ms: i64, horizon_ms: i64) -> Option<i64> {
    let conclude = user.islands.iter().filter_map(Island::next_conclusion_ms).min();
    let evict_island = user.islands.first().map(|island| island.last_active_ms + timeout_ms + horizon_ms);
    let evict_orphan = user.orphans.first().map(|point| point.time_ms + timeout_ms + horizon_ms);
    [conclude, evict_island, evict_orphan].into_iter().flatten().min()
}

/// Drops islands and orphans that no event inside the horizon can affect.
fn evict_beyond_horizon(user: &mut UserState, horizon_floor_ms: i64, timeout_ms: i64) {
    user.islands.retain(|island| island.last_active_ms + timeout_ms > horizon_floor_ms);
    user.orphans.retain(|point| point.time_ms + timeout_ms > horizon_floor_ms);
}

/// Makes room in a full user state by evicting its oldest concluded island.
/// Returns false if nothing can go (the user's open activity fills the bound).
fn evict_for_room(user: &mut UserState, now_ms: i64, timeout_ms: i64) -> bool {
    let Some(island) = user.islands.first() else { return false };
    if island.last_active_ms + timeout_ms > now_ms || user.islands.len() < 2 {
        return false;
    }
    let island = user.islands.remove(0);
    user.floor_ms = user.floor_ms.max(island.last_active_ms + timeout_ms);
    let floor_ms = user.floor_ms;
    user.orphans.retain(|point| point.time_ms >= floor_ms);
    true
}
