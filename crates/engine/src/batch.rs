//! The batch kernel: all events at once, sorted by user and time, scanned once.
//!
//! This is what `sessionizer sessionize` and rebuilds run. It takes columns of
//! already-interned values (users and devices as dense `u32` indices), so it
//! never touches a string and runs at memory speed.

use std::ops::Range;

use crate::config::{EventClass, SessionRules, Window};
use crate::scan::{EndReason, ScanState, Span, Step};

/// Marks an event with no device in [`BatchEvents::device`].
pub const NO_DEVICE: u32 = u32::MAX;
/// No user seen yet (user indices are below `MAX_BATCH_EVENTS`).
const NO_USER: u32 = u32::MAX;
/// Marks an event in no session in [`BatchSessions::event_session`].
pub const NO_SESSION: u32 = u32::MAX;
/// The batch kernel indexes events with `u32`: at most this many per call.
pub const MAX_BATCH_EVENTS: usize = u32::MAX as usize - 1;

/// Columns of events, one row per event; all slices have the same length
/// (`device` may also be empty, meaning no event has a device).
#[derive(Clone, Copy)]
pub struct BatchEvents<'a> {
    /// Dense index of the event's [`crate::UserKey`], below `user_count`.
    pub user: &'a [u32],
    pub user_count: u32,
    /// Dense index of the event's device, or [`NO_DEVICE`]; empty when no
    /// event has a device (then no session ends by a user change).
    pub device: &'a [u32],
    pub time_ms: &'a [i64],
    pub class: &'a [EventClass],
    /// Each row's [`crate::client_session_key`] (0 for none), used only with
    /// client-session splits; may be empty when no row has one.
    pub client_session: &'a [u64],
    /// Each row's [`SessionRules::window_of`]; may be empty when the rules
    /// have no platform rules (every event then has the plain timeout).
    pub window: &'a [Window],
    /// [`crate::tiebreak`] of a row. Called only for events that share their
    /// user, time and class with another (rare with millisecond times), so the
    /// caller need not hash every event.
    pub tiebreak: &'a (dyn Fn(u32) -> u64 + Sync),
}

impl std::fmt::Debug for BatchEvents<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchEvents").field("rows", &self.user.len()).field("user_count", &self.user_count).finish()
    }
}

/// One session found by the batch kernel; events are referred to by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSession {
    pub user: u32,
    pub start_ms: i64,
    /// The last active event's time.
    pub end_ms: i64,
    /// The last event's time, passive events included (`>= end_ms`): the
    /// session's events are exactly the user's non-excluded events in
    /// `[start_ms, last_event_ms]`, which lets a store find an event's session
    /// by its time alone.
    pub last_event_ms: i64,
    /// Active and passive events.
    pub event_count: u64,
    /// Row of the first event.
    pub entry_event: u32,
    /// Row of the last active event.
    pub exit_event: u32,
    pub end_reason: EndReason,
    /// The window of the last active event: the session is over once `end_ms
    /// + window.length_ms` has passed.
    pub window: Window,
    /// Time in the foreground (the length minus the time after background events).
    pub active_ms: i64,
}

impl BatchSession {
    pub fn length_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// The kernel's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSessions {
    /// Ordered by user index, then start.
    pub sessions: Vec<BatchSession>,
    /// For each input row, the index of its session in `sessions`, or [`NO_SESSION`]
    /// (excluded events, and passive events with no session to join).
    /// Empty unless [`BatchOptions::assign_events`] asked for it.
    pub event_session: Vec<u32>,
    /// Passive events with no session to join.
    pub passive_without_session: u64,
}

/// What the batch kernel computes besides the sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOptions {
    /// Fill [`BatchSessions::event_session`]. Costs a random write per event,
    /// so callers that do not export events skip it.
    pub assign_events: bool,
}

/// Sort key of one included event: time and class packed into one integer
/// (`time_ms << 1 | passive`), so sorting compares one `u64`. Event times are
/// at least 0 and far below 2⁶², which every reader guarantees.
#[derive(Clone, Copy)]
struct SortKey {
    time_class: u64,
    row: u32,
}

impl SortKey {
    fn time_ms(self) -> i64 {
        (self.time_class >> 1) as i64
    }

    fn active(self) -> bool {
        self.time_class & 1 == 0
    }
}

/// Sessionizes every event at once. The result depends only on the set of
/// events, never on their row order.
///
/// The same as [`sessionize_users`] over all users followed by
/// [`label_user_changes`]; a caller may instead run `sessionize_users` on
/// disjoint user ranges in parallel and label the concatenated sessions.
///
/// # Panics
/// If the columns have different lengths, a user index is out of range, or
/// there are more than [`MAX_BATCH_EVENTS`] rows: callers build these columns.
pub fn sessionize_batch(events: &BatchEvents<'_>, rules: &SessionRules, options: BatchOptions) -> BatchSessions {
    let mut result = sessionize_users(events, rules, options, 0..events.user_count);
    label_user_changes(events, &mut result.sessions);
    result
}

/// Sessionizes the events of the users in `users` only (other rows are left in
/// no session), without the user-change labels, which need every user's
/// sessions: see [`label_user_changes`].
///
/// # Panics
/// As [`sessionize_batch`], and if `users` reaches past `user_count`.
pub fn sessionize_users(
    events: &BatchEvents<'_>,
    rules: &SessionRules,
    options: BatchOptions,
    users: Range<u32>,
) -> BatchSessions {
    let row_count = events.user.len();
    assert!(row_count <= MAX_BATCH_EVENTS, "too many events for one batch");
    assert_eq!(events.time_ms.len(), row_count);
    assert_eq!(events.class.len(), row_count);
    assert!(events.device.is_empty() || events.device.len() == row_count);
    assert!(users.end <= events.user_count, "user range past user_count");

    let (keys, offsets) = group_by_user(events, users.clone());
    let event_session = if options.assign_events { vec![NO_SESSION; row_count] } else { Vec::new() };
    let mut result = BatchSessions { sessions: Vec::new(), event_session, passive_without_session: 0 };
    for (local, user) in users.enumerate() {
        let segment = &keys[offsets[local]..offsets[local + 1]];
        if !segment.is_empty() {
            scan_user(user, segment, rules, events, &mut result);
        }
    }
    result
}

/// Counting sort of the included events of `users` by user, then a sort of each
/// user's events by (time, class), then by tiebreak within runs of equal (time,
/// class). Arrival order is usually close to time order, which the adaptive sort
/// exploits. Returns the keys and, for the `i`-th user of the range, its segment
/// `offsets[i]..offsets[i + 1]`.
fn group_by_user(events: &BatchEvents<'_>, users: Range<u32>) -> (Vec<SortKey>, Vec<usize>) {
    let user_count = users.len();
    let local = |user: u32| users.contains(&user).then(|| (user - users.start) as usize);
    let mut offsets = vec![0usize; user_count + 1];
    for (row, &user) in events.user.iter().enumerate() {
        if let Some(local) = local(user)
            && events.class[row] != EventClass::Excluded
        {
            offsets[local + 1] += 1;
        }
    }
    for user in 0..user_count {
        offsets[user + 1] += offsets[user];
    }
    let mut keys = vec![SortKey { time_class: 0, row: 0 }; offsets[user_count]];
    let mut cursor = offsets.clone();
    for (row, &user) in events.user.iter().enumerate() {
        let class = events.class[row];
        let Some(local) = local(user) else { continue };
        if class == EventClass::Excluded {
            continue;
        }
        let time_ms = events.time_ms[row];
        assert!((0..1 << 62).contains(&time_ms), "event time out of range: {time_ms}");
        let slot = &mut cursor[local];
        keys[*slot] =
            SortKey { time_class: ((time_ms as u64) << 1) | u64::from(class == EventClass::Passive), row: row as u32 };
        *slot += 1;
    }
    for user in 0..user_count {
        let segment = &mut keys[offsets[user]..offsets[user + 1]];
        segment.sort_by_key(|key| key.time_class);
        order_ties(segment, events.tiebreak);
    }
    (keys, offsets)
}

/// Orders runs of equal (time, class) by the events' content hash, so entry and
/// exit events do not depend on row order.
fn order_ties(segment: &mut [SortKey], tiebreak: &(dyn Fn(u32) -> u64 + Sync)) {
    let mut start = 0;
    while start < segment.len() {
        let mut end = start + 1;
        while end < segment.len() && segment[end].time_class == segment[start].time_class {
            end += 1;
        }
        if end - start > 1 {
            segment[start..end].sort_by_cached_key(|key| (tiebreak(key.row), key.row));
        }
        start = end;
    }
}

fn scan_user(user: u32, keys: &[SortKey], rules: &SessionRules, events: &BatchEvents<'_>, result: &mut BatchSessions) {
    let mut state = ScanState::default();
    let plain = rules.plain_window();
    let session_of = |span: Span, end_reason: EndReason| BatchSession {
        user,
        start_ms: span.start_ms,
        end_ms: span.end_ms,
        last_event_ms: span.last_event_ms,
        event_count: span.event_count,
        entry_event: keys[span.entry_pos].row,
        exit_event: keys[span.exit_pos].row,
        end_reason,
        window: span.window,
        active_ms: span.active_ms,
    };
    for &key in keys {
        let client = events.client_session.get(key.row as usize).copied().unwrap_or(0);
        let window = events.window.get(key.row as usize).copied().unwrap_or(plain);
        match state.step(rules, key.time_ms(), key.active(), client, window) {
            Step::Opened(closed) => {
                if let Some((span, reason)) = closed {
                    result.sessions.push(session_of(span, reason));
                }
                if let Some(slot) = result.event_session.get_mut(key.row as usize) {
                    *slot = result.sessions.len() as u32;
                }
            }
            Step::Joined => {
                if let Some(slot) = result.event_session.get_mut(key.row as usize) {
                    *slot = result.sessions.len() as u32;
                }
            }
            Step::Orphan => result.passive_without_session += 1,
        }
    }
    if let Some(&span) = state.open_span() {
        result.sessions.push(session_of(span, EndReason::after(span.window.hold)));
    }
}

/// A session that ended by inactivity ends by user change instead when another
/// user's active event happened on the device of its last event within the
/// session's window after it. Needs every user's sessions (a device is shared across users).
pub fn label_user_changes(events: &BatchEvents<'_>, sessions: &mut [BatchSession]) {
    if events.device.is_empty() {
        return;
    }
    let active_on_device = |row: usize| events.device[row] != NO_DEVICE && events.class[row] == EventClass::Active;
    // Only a device with active events of two users or more can see a user
    // change (a user's own event within the window would have continued the
    // session), and most devices have one user: keep the times of the shared
    // ones only, rather than sorting one entry per event. Indexed by device
    // (`BatchEvents::device` indices are dense), grown as devices appear.
    let mut first_user: Vec<u32> = Vec::new();
    let mut shared: Vec<bool> = Vec::new();
    for row in (0..events.device.len()).filter(|&row| active_on_device(row)) {
        let (device, user) = (events.device[row] as usize, events.user[row]);
        if device >= first_user.len() {
            first_user.resize(device + 1, NO_USER);
            shared.resize(device + 1, false);
        }
        if first_user[device] == NO_USER {
            first_user[device] = user;
        } else if first_user[device] != user {
            shared[device] = true;
        }
    }
    let mut device_times: Vec<(u32, i64)> = (0..events.device.len())
        .filter(|&row| active_on_device(row) && shared[events.device[row] as usize])
        .map(|row| (events.device[row], events.time_ms[row]))
        .collect();
    if device_times.is_empty() {
        return;
    }
    device_times.sort_unstable();
    for session in sessions.iter_mut().filter(|session| session.end_reason == EndReason::Inactivity) {
        let device = events.device[session.exit_event as usize];
        if device == NO_DEVICE || !shared.get(device as usize).copied().unwrap_or(false) {
            continue;
        }
        let next = device_times.partition_point(|&(d, t)| (d, t) <= (device, session.end_ms));
        if let Some(&(d, t)) = device_times.get(next)
            && d == device
            && t - session.end_ms < session.window.length_ms
        {
            // Within the timeout after `end_ms` this user had no active event (or
            // the session would have continued), so the event is another user's.
            session.end_reason = EndReason::UserChange;
        }
    }
}
