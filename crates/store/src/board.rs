//! The board index: every session's start day, length and event count per
//! user, held in memory so that the sessions board (per-day counts and sums,
//! the length distribution, percentiles, distinct users, sessions per user)
//! is one pass over compact vectors instead of a scan of the sessions table.
//!
//! It is a materialised view of the session change log, never a source of
//! truth: [`Store::load_board`](crate::Store::load_board) fills it from a
//! consistent snapshot of the sessions table (with the change sequence number
//! the snapshot is at), and [`Store::board_changes`](crate::Store::board_changes)
//! feeds it every later change in order, so after a catch-up it equals the
//! sessions table exactly. Everything here is pure: no I/O, no clock.
//!
//! Memory: 24 bytes per session plus per user a key, a hash entry, a vector
//! header and the vector's spare capacity; measured, 52 bytes per session at
//! 10M sessions of 955k users (docs/benchmarks-board.md).
//!
//! Speed: the board's three endpoints ask for the same range one after the
//! other (or at once), so [`Board::figures`] keeps the last pass over a range
//! and answers any length distribution from its per-second length counts;
//! a pass over many sessions is split across threads by user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use sessionizer_engine::UserKey;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Percentiles are computed from lengths in whole seconds: a dense count per
/// second up to this length, a sorted list beyond it.
const DENSE_PERCENTILE_SECONDS: usize = 86_400;

/// Below this many sessions in a project a pass runs on the calling thread:
/// starting threads would cost more than they save.
const PARALLEL_PASS_MIN_SESSIONS: u64 = 200_000;

/// At most this many threads share a pass.
const MAX_PASS_THREADS: usize = 8;

/// A user's sessions up to this many are searched for a range's first day
/// by a forward scan rather than a binary search (see [`first_on_or_after`]).
const LINEAR_SEARCH_MAX_SESSIONS: usize = 64;

/// The labels and inclusive bounds of the sessions-per-user distribution.
pub const SESSIONS_PER_USER_BUCKETS: [(&str, u64, u64); 5] =
    [("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11+", 11, u64::MAX)];

/// One session as the board sees it: a change log row or a snapshot row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSession {
    pub project: i64,
    pub user: UserKey,
    /// The session's id: its start, in epoch ms.
    pub session_id: i64,
    pub length_ms: i64,
    pub event_count: u64,
    pub concluded: bool,
}

/// A change from the log: the session's new state, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardChange {
    pub seq: i64,
    pub session: BoardSession,
    /// The session no longer exists (merged, moved or rebuilt away).
    pub removed: bool,
}

/// The index of every project's sessions, as of change `applied_seq`.
#[derive(Debug, Default)]
pub struct Board {
    projects: HashMap<i64, ProjectBoard>,
    applied_seq: i64,
    /// Bumped by every change to what the board holds: a cached pass is
    /// valid only for the generation it was computed at.
    generation: u64,
    /// The last pass: held while a pass runs, so concurrent requests for the
    /// same range wait for it instead of repeating it.
    last_pass: Mutex<Option<(PassKey, Arc<Pass>)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassKey {
    project: i64,
    from_day: i32,
    to_day: i32,
    generation: u64,
}

/// Compact state of one session; `day` is the start's day in the project's
/// time zone (days since 1970-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Compact {
    start_ms: i64,
    length_ms: i64,
    day: i32,
    /// Event count, with [`OPEN_BIT`] set while the session is open.
    count_and_open: u32,
}

/// Set in `Compact::count_and_open` while the session is not concluded.
const OPEN_BIT: u32 = 1 << 31;

impl Compact {
    fn event_count(self) -> u32 {
        self.count_and_open & !OPEN_BIT
    }

    fn open(self) -> bool {
        self.count_and_open & OPEN_BIT != 0
    }
}

#[derive(Debug)]
struct UserSessions {
    user: UserKey,
    /// Sorted by start (a session's id is its start, unique per user).
    sessions: Vec<Compact>,
}

#[derive(Debug)]
struct ProjectBoard {
    time_zone: TimeZone,
    time_zone_name: String,
    by_user: HashMap<UserKey, u32>,
    users: Vec<UserSessions>,
    open_sessions: u64,
    sessions: u64,
}

impl ProjectBoard {
    fn new(time_zone_name: &str) -> ProjectBoard {
        ProjectBoard {
            time_zone: TimeZone::get(time_zone_name).unwrap_or(TimeZone::UTC),
            time_zone_name: time_zone_name.to_string(),
            by_user: HashMap::new(),
            users: Vec::new(),
            open_sessions: 0,
            sessions: 0,
        }
    }

    fn day_of(&self, ms: i64) -> i32 {
        day_in(&self.time_zone, ms)
    }

    fn upsert(&mut self, session: &BoardSession) {
        let index = match self.by_user.get(&session.user) {
            Some(&index) => index,
            None => {
                let index = self.users.len() as u32;
                self.users.push(UserSessions { user: session.user.clone(), sessions: Vec::new() });
                self.by_user.insert(session.user.clone(), index);
                index
            }
        };
        let open_flag = if session.concluded { 0 } else { OPEN_BIT };
        let compact = Compact {
            start_ms: session.session_id,
            length_ms: session.length_ms,
            day: self.day_of(session.session_id),
            count_and_open: (session.event_count.min(u64::from(!OPEN_BIT)) as u32) | open_flag,
        };
        let list = &mut self.users[index as usize].sessions;
        match list.binary_search_by_key(&compact.start_ms, |c| c.start_ms) {
            Ok(position) => {
                let previous = std::mem::replace(&mut list[position], compact);
                self.open_sessions -= u64::from(previous.open());
            }
            Err(position) => {
                list.insert(position, compact);
                self.sessions += 1;
            }
        }
        self.open_sessions += u64::from(compact.open());
    }

    fn remove(&mut self, user: &UserKey, session_id: i64) {
        let Some(&index) = self.by_user.get(user) else { return };
        let list = &mut self.users[index as usize].sessions;
        if let Ok(position) = list.binary_search_by_key(&session_id, |c| c.start_ms) {
            let removed = list.remove(position);
            self.sessions -= 1;
            self.open_sessions -= u64::from(removed.open());
        }
        // A user left without sessions keeps its slot: indexes stay stable,
        // and it is counted nowhere.
    }

    /// Returns whether the zone changed.
    fn set_time_zone(&mut self, name: &str) -> bool {
        if self.time_zone_name == name {
            return false;
        }
        self.time_zone = TimeZone::get(name).unwrap_or(TimeZone::UTC);
        self.time_zone_name = name.to_string();
        let time_zone = self.time_zone.clone();
        for user in &mut self.users {
            for session in &mut user.sessions {
                session.day = day_in(&time_zone, session.start_ms);
            }
        }
        true
    }
}

/// The day (since 1970-01-01) that `ms` falls on in `time_zone`.
pub fn day_in(time_zone: &TimeZone, ms: i64) -> i32 {
    let offset_ms = match Timestamp::from_millisecond(ms) {
        Ok(timestamp) => i64::from(time_zone.to_offset(timestamp).seconds()) * 1_000,
        Err(_) => 0,
    };
    (ms + offset_ms).div_euclid(DAY_MS) as i32
}

/// Figures of one project over an inclusive range of days.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardFigures {
    pub from_day: i32,
    /// Per day of the range, in order.
    pub days: Vec<DayFigures>,
    /// Sessions per length bucket: bucket `i` holds `bounds[i-1] <= length < bounds[i]`.
    pub length_buckets: Vec<u64>,
    pub sessions: u64,
    pub users: u64,
    pub total_length_ms: i64,
    /// Nearest-rank percentiles of the lengths, truncated to whole seconds.
    pub median_length_ms: Option<i64>,
    pub p90_length_ms: Option<i64>,
    /// Users per bucket of [`SESSIONS_PER_USER_BUCKETS`].
    pub sessions_per_user: [u64; SESSIONS_PER_USER_BUCKETS.len()],
    pub single_event_sessions: u64,
    /// Sessions of the project not concluded yet (whatever the range).
    pub open_sessions: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayFigures {
    pub sessions: u64,
    pub total_length_ms: i64,
    pub users: u64,
}

/// A user's sessions in a range, for cohorts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortFilter {
    pub from_day: i32,
    pub to_day: i32,
    pub min_sessions: u64,
    pub min_length_ms: i64,
    pub max_length_ms: Option<i64>,
}

impl Board {
    /// The sequence number of the last change applied.
    pub fn applied_seq(&self) -> i64 {
        self.applied_seq
    }

    /// Number of sessions held, over every project.
    pub fn session_count(&self) -> u64 {
        self.projects.values().map(|p| p.sessions).sum()
    }

    /// Makes sure `project` exists and buckets days in `time_zone` (recomputing
    /// every day when the zone changed).
    pub fn set_project_time_zone(&mut self, project: i64, time_zone: &str) {
        let mut created = false;
        let board = self.projects.entry(project).or_insert_with(|| {
            created = true;
            ProjectBoard::new(time_zone)
        });
        if board.set_time_zone(time_zone) || created {
            self.changed();
        }
    }

    /// Adds a session of the snapshot (before any change is applied).
    pub fn load(&mut self, session: &BoardSession) {
        self.projects.entry(session.project).or_insert_with(|| ProjectBoard::new("UTC")).upsert(session);
        self.changed();
    }

    /// Invalidates the cached pass.
    fn changed(&mut self) {
        self.generation += 1;
        // Free it now rather than at the next pass.
        *self.last_pass.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Marks the snapshot as taken at change `seq`.
    pub fn set_applied_seq(&mut self, seq: i64) {
        self.applied_seq = seq;
    }

    /// Applies one change of the log; changes at or before `applied_seq` are ignored.
    pub fn apply(&mut self, change: &BoardChange) {
        if change.seq <= self.applied_seq {
            return;
        }
        self.applied_seq = change.seq;
        let project = self.projects.entry(change.session.project).or_insert_with(|| ProjectBoard::new("UTC"));
        if change.removed {
            project.remove(&change.session.user, change.session.session_id);
        } else {
            project.upsert(&change.session);
        }
        self.changed();
    }

    /// Every board figure of `project` for days `from_day..=to_day`, with the
    /// length distribution over `bounds_ms` (increasing, positive).
    pub fn figures(&self, project: i64, from_day: i32, to_day: i32, bounds_ms: &[i64]) -> BoardFigures {
        let day_count = (to_day - from_day + 1).max(0) as usize;
        let Some(board) = self.projects.get(&project) else {
            return Pass::new(day_count).figures(from_day, bounds_ms);
        };
        let key = PassKey { project, from_day, to_day, generation: self.generation };
        let pass = {
            let mut last = self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
            match last.as_ref() {
                Some((cached, pass)) if *cached == key => pass.clone(),
                _ => {
                    let pass = Arc::new(board.pass(from_day, to_day));
                    *last = Some((key, pass.clone()));
                    pass
                }
            }
        };
        let mut figures = pass.figures(from_day, bounds_ms);
        figures.open_sessions = board.open_sessions;
        // Bounds the per-second counts cannot answer: one more (rare) pass.
        if !whole_seconds(bounds_ms) {
            figures.length_buckets = board.length_buckets(from_day, to_day, bounds_ms);
        }
        figures
    }

    /// Users matching a cohort filter: at least `min_sessions` sessions
    /// starting in the range with a length in `[min_length_ms, max_length_ms]`.
    pub fn cohort(&self, project: i64, filter: &CohortFilter) -> Vec<&UserKey> {
        let Some(board) = self.projects.get(&project) else { return Vec::new() };
        let mut users = Vec::new();
        for user in &board.users {
            let list = &user.sessions;
            let first = list.partition_point(|c| c.day < filter.from_day);
            let matching = list[first..]
                .iter()
                .take_while(|c| c.day <= filter.to_day)
                .filter(|c| {
                    c.length_ms >= filter.min_length_ms && filter.max_length_ms.is_none_or(|max| c.length_ms <= max)
                })
                .count() as u64;
            if matching >= filter.min_sessions.max(1) {
                users.push(&user.user);
            }
        }
        users.sort();
        users
    }

    /// Users with at least one session starting in the range, with the
    /// number of their sessions there (for sampling the timeout preview).
    pub fn users_in_range(&self, project: i64, from_day: i32, to_day: i32) -> Vec<(&UserKey, u64)> {
        let Some(board) = self.projects.get(&project) else { return Vec::new() };
        board
            .users
            .iter()
            .filter_map(|user| {
                let first = user.sessions.partition_point(|c| c.day < from_day);
                let events: u64 = user.sessions[first..]
                    .iter()
                    .take_while(|c| c.day <= to_day)
                    .map(|c| u64::from(c.event_count()))
                    .sum();
                (events > 0).then_some((&user.user, events))
            })
            .collect()
    }
}

/// Whether every bound is a positive whole number of seconds, so that
/// `length_ms < bound` is `seconds(length_ms) < bound / 1000` (lengths below
/// zero count as 0 s and fall below every positive bound either way).
fn whole_seconds(bounds_ms: &[i64]) -> bool {
    bounds_ms.iter().all(|&b| b > 0 && b % 1_000 == 0)
}

/// The index of the first session on or after `from_day` (sessions are in
/// start order). A pass's time goes mostly into reaching each user's list, a
/// cache miss per user; a binary search adds dependent misses (each probe
/// waits for the previous one), while a forward scan over a short list reads
/// consecutive lines the hardware prefetches.
fn first_on_or_after(list: &[Compact], from_day: i32) -> usize {
    if list.len() <= LINEAR_SEARCH_MAX_SESSIONS {
        list.iter().position(|c| c.day >= from_day).unwrap_or(list.len())
    } else {
        list.partition_point(|c| c.day < from_day)
    }
}

impl ProjectBoard {
    /// One pass over the sessions starting on days `from_day..=to_day`, split
    /// across threads by user when there are many sessions.
    fn pass(&self, from_day: i32, to_day: i32) -> Pass {
        let day_count = (to_day - from_day + 1).max(0) as usize;
        let threads = if self.sessions < PARALLEL_PASS_MIN_SESSIONS {
            1
        } else {
            std::thread::available_parallelism().map_or(1, usize::from).min(MAX_PASS_THREADS)
        };
        let users = &self.users[..];
        if threads <= 1 || users.len() < threads {
            let mut pass = Pass::new(day_count);
            pass.add_users(users, from_day, to_day);
            pass.finish();
            return pass;
        }
        // Equal shares of sessions, not of users: activity is skewed.
        let per_thread = self.sessions.div_ceil(threads as u64);
        let mut splits = Vec::with_capacity(threads + 1);
        splits.push(0);
        let mut seen = 0u64;
        for (index, user) in users.iter().enumerate() {
            seen += user.sessions.len() as u64;
            if seen >= per_thread * splits.len() as u64 && splits.len() < threads {
                splits.push(index + 1);
            }
        }
        splits.push(users.len());
        let mut pass = std::thread::scope(|scope| {
            let workers: Vec<_> = splits[1..splits.len() - 1]
                .iter()
                .zip(&splits[2..])
                .map(|(&start, &end)| {
                    scope.spawn(move || {
                        let mut part = Pass::new(day_count);
                        part.add_users(&users[start..end], from_day, to_day);
                        part
                    })
                })
                .collect();
            let mut pass = Pass::new(day_count);
            pass.add_users(&users[..splits[1]], from_day, to_day);
            for worker in workers {
                pass.merge(worker.join().expect("a board pass thread panicked"));
            }
            pass
        });
        pass.finish();
        pass
    }

    /// Sessions per length bucket over the range, for any bounds.
    fn length_buckets(&self, from_day: i32, to_day: i32, bounds_ms: &[i64]) -> Vec<u64> {
        let mut buckets = vec![0; bounds_ms.len() + 1];
        for user in &self.users {
            let first = user.sessions.partition_point(|c| c.day < from_day);
            for session in user.sessions[first..].iter().take_while(|c| c.day <= to_day) {
                buckets[bounds_ms.partition_point(|&b| b <= session.length_ms)] += 1;
            }
        }
        buckets
    }
}

/// What one pass over a range finds: every figure but the length
/// distribution, which comes from the per-second length counts.
#[derive(Debug)]
struct Pass {
    days: Vec<DayFigures>,
    sessions: u64,
    users: u64,
    total_length_ms: i64,
    sessions_per_user: [u64; SESSIONS_PER_USER_BUCKETS.len()],
    single_event_sessions: u64,
    seconds: LengthSeconds,
}

impl Pass {
    fn new(day_count: usize) -> Pass {
        Pass {
            days: vec![DayFigures::default(); day_count],
            sessions: 0,
            users: 0,
            total_length_ms: 0,
            sessions_per_user: [0; SESSIONS_PER_USER_BUCKETS.len()],
            single_event_sessions: 0,
            seconds: LengthSeconds::default(),
        }
    }

    fn add_users(&mut self, users: &[UserSessions], from_day: i32, to_day: i32) {
        for user in users {
            let list = &user.sessions;
            let first = first_on_or_after(list, from_day);
            let mut in_range = 0u64;
            let mut last_day = i32::MIN;
            for session in list[first..].iter().take_while(|c| c.day <= to_day) {
                let day = &mut self.days[(session.day - from_day) as usize];
                day.sessions += 1;
                day.total_length_ms += session.length_ms;
                if session.day != last_day {
                    day.users += 1;
                    last_day = session.day;
                }
                self.total_length_ms += session.length_ms;
                self.single_event_sessions += u64::from(session.event_count() == 1);
                self.seconds.add(session.length_ms);
                in_range += 1;
            }
            if in_range > 0 {
                self.users += 1;
                self.sessions += in_range;
                let bucket =
                    SESSIONS_PER_USER_BUCKETS.iter().position(|&(_, low, high)| (low..=high).contains(&in_range));
                self.sessions_per_user[bucket.expect("the buckets cover 1..")] += 1;
            }
        }
    }

    /// Adds the figures of a pass over other users of the same range.
    fn merge(&mut self, other: Pass) {
        for (day, theirs) in self.days.iter_mut().zip(&other.days) {
            day.sessions += theirs.sessions;
            day.total_length_ms += theirs.total_length_ms;
            day.users += theirs.users;
        }
        self.sessions += other.sessions;
        self.users += other.users;
        self.total_length_ms += other.total_length_ms;
        for (ours, theirs) in self.sessions_per_user.iter_mut().zip(other.sessions_per_user) {
            *ours += theirs;
        }
        self.single_event_sessions += other.single_event_sessions;
        self.seconds.merge(other.seconds);
    }

    fn finish(&mut self) {
        self.seconds.sort_long();
    }

    /// The figures, with length buckets over `bounds_ms` counted from the
    /// per-second lengths (exact for whole-second bounds; the caller
    /// recounts others). `open_sessions` is left for the caller.
    fn figures(&self, from_day: i32, bounds_ms: &[i64]) -> BoardFigures {
        let mut length_buckets = vec![0; bounds_ms.len() + 1];
        if whole_seconds(bounds_ms) {
            let mut below_previous = 0;
            for (bucket, &bound) in length_buckets.iter_mut().zip(bounds_ms) {
                let below = self.seconds.count_below((bound / 1_000) as u64);
                *bucket = below - below_previous;
                below_previous = below;
            }
            length_buckets[bounds_ms.len()] = self.sessions - below_previous;
        }
        BoardFigures {
            from_day,
            days: self.days.clone(),
            length_buckets,
            sessions: self.sessions,
            users: self.users,
            total_length_ms: self.total_length_ms,
            median_length_ms: self.seconds.percentile(self.sessions, 50),
            p90_length_ms: self.seconds.percentile(self.sessions, 90),
            sessions_per_user: self.sessions_per_user,
            single_event_sessions: self.single_event_sessions,
            open_sessions: 0,
        }
    }
}

/// Session lengths in whole seconds, for exact (to the second) percentiles
/// in one pass and bounded memory.
#[derive(Debug, Default)]
struct LengthSeconds {
    dense: Vec<u64>,
    long: Vec<i64>,
}

impl LengthSeconds {
    fn add(&mut self, length_ms: i64) {
        let seconds = length_ms.max(0) / 1_000;
        if (seconds as usize) < DENSE_PERCENTILE_SECONDS {
            if self.dense.is_empty() {
                self.dense = vec![0; DENSE_PERCENTILE_SECONDS];
            }
            self.dense[seconds as usize] += 1;
        } else {
            self.long.push(seconds);
        }
    }

    /// Sorts the lengths beyond the dense range: needed by the queries below.
    fn sort_long(&mut self) {
        self.long.sort_unstable();
    }

    fn merge(&mut self, other: LengthSeconds) {
        if self.dense.is_empty() {
            self.dense = other.dense;
        } else {
            for (ours, theirs) in self.dense.iter_mut().zip(other.dense) {
                *ours += theirs;
            }
        }
        self.long.extend(other.long);
    }

    /// Lengths under `seconds` (`long` sorted).
    fn count_below(&self, seconds: u64) -> u64 {
        let dense_end = (seconds as usize).min(self.dense.len());
        let dense: u64 = self.dense[..dense_end].iter().sum();
        dense + self.long.partition_point(|&s| (s as u64) < seconds) as u64
    }

    /// The nearest-rank `percent` percentile (the value at rank
    /// `ceil(percent / 100 * count)`), in ms, whole seconds (`long` sorted).
    fn percentile(&self, count: u64, percent: u64) -> Option<i64> {
        if count == 0 {
            return None;
        }
        let rank = (percent * count).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (seconds, &n) in self.dense.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(seconds as i64 * 1_000);
            }
        }
        let index = (rank - seen - 1) as usize;
        self.long.get(index).map(|seconds| seconds * 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, start_ms: i64, length_ms: i64, event_count: u64, concluded: bool) -> BoardSession {
        BoardSession {
            project: 1,
            user: UserKey::User(user.into()),
            session_id: start_ms,
            length_ms,
            event_count,
            concluded,
        }
    }

    fn change(seq: i64, session: BoardSession, removed: bool) -> BoardChange {
        BoardChange { seq, session, removed }
    }

    const DAY0: i64 = 19_723 * DAY_MS; // 2024-01-01

    #[test]
    fn figures_count_days_users_buckets_and_percentiles() {
        let mut board = Board::default();
        board.set_project_time_zone(1, "UTC");
        board.load(&session("a", DAY0 + 1_000, 5_000, 1, true));
        board.load(&session("a", DAY0 + 3_600_000, 65_000, 4, true));
        board.load(&session("a", DAY0 + DAY_MS + 10, 0, 1, false));
        board.load(&session("b", DAY0 + 7_200_000, 31_500, 3, true));
        board.set_applied_seq(10);
        let figures = board.figures(1, 19_723, 19_724, &[10_000, 60_000]);
        assert_eq!(figures.days[0], DayFigures { sessions: 3, total_length_ms: 101_500, users: 2 });
        assert_eq!(figures.days[1], DayFigures { sessions: 1, total_length_ms: 0, users: 1 });
        assert_eq!(figures.length_buckets, vec![2, 1, 1]);
        assert_eq!((figures.sessions, figures.users, figures.total_length_ms), (4, 2, 101_500));
        // Lengths in seconds 0, 5, 31, 65: rank 2 is 5 s, rank 4 is 65 s.
        assert_eq!(figures.median_length_ms, Some(5_000));
        assert_eq!(figures.p90_length_ms, Some(65_000));
        assert_eq!(figures.sessions_per_user, [1, 0, 1, 0, 0]);
        assert_eq!(figures.single_event_sessions, 2);
        assert_eq!(figures.open_sessions, 1);
        // Only the second day.
        let second = board.figures(1, 19_724, 19_724, &[]);
        assert_eq!((second.sessions, second.users, second.length_buckets.clone()), (1, 1, vec![1]));
    }

    #[test]
    fn changes_replace_and_remove_sessions_and_track_open_ones() {
        let mut board = Board::default();
        board.set_applied_seq(5);
        board.apply(&change(6, session("a", DAY0, 1_000, 2, false), false));
        board.apply(&change(7, session("a", DAY0, 2_000, 3, false), false));
        board.apply(&change(8, session("a", DAY0 + 4_000_000, 0, 1, false), false));
        let figures = board.figures(1, 19_723, 19_723, &[]);
        assert_eq!((figures.sessions, figures.open_sessions, figures.total_length_ms), (2, 2, 2_000));
        // A late event merges the two: the later one is removed, the first amended and concluded.
        board.apply(&change(9, session("a", DAY0 + 4_000_000, 0, 1, false), true));
        board.apply(&change(10, session("a", DAY0, 4_000_000, 5, true), false));
        // Replayed (already applied) changes change nothing.
        board.apply(&change(8, session("a", DAY0 + 4_000_000, 0, 1, false), false));
        let figures = board.figures(1, 19_723, 19_723, &[]);
        assert_eq!((figures.sessions, figures.open_sessions, figures.total_length_ms), (1, 0, 4_000_000));
        assert_eq!(board.applied_seq(), 10);
    }

    #[test]
    fn days_follow_the_project_time_zone_and_its_changes() {
        let mut board = Board::default();
        board.set_project_time_zone(1, "UTC");
        // 2024-01-01 23:30 UTC is 2024-01-02 in Berlin (UTC+1).
        board.load(&session("a", DAY0 + 23 * 3_600_000 + 1_800_000, 0, 1, true));
        assert_eq!(board.figures(1, 19_723, 19_723, &[]).sessions, 1);
        board.set_project_time_zone(1, "Europe/Berlin");
        assert_eq!(board.figures(1, 19_723, 19_723, &[]).sessions, 0);
        assert_eq!(board.figures(1, 19_724, 19_724, &[]).sessions, 1);
    }

    #[test]
    fn percentiles_beyond_a_day_use_the_sorted_tail() {
        let mut seconds = LengthSeconds::default();
        for length_ms in [2 * DAY_MS, 1_500, 3 * DAY_MS + 999] {
            seconds.add(length_ms);
        }
        seconds.sort_long();
        assert_eq!(seconds.percentile(3, 50), Some(2 * DAY_MS));
        assert_eq!(seconds.percentile(3, 90), Some(3 * DAY_MS));
        assert_eq!(seconds.percentile(3, 10), Some(1_000));
        assert_eq!(seconds.percentile(0, 50), None);
    }

    #[test]
    fn cohorts_count_matching_sessions_per_user() {
        let mut board = Board::default();
        board.set_project_time_zone(1, "UTC");
        for (user, start, length) in
            [("a", 0, 70_000), ("a", 5_000_000, 90_000), ("b", 0, 70_000), ("b", 9_000_000, 10)]
        {
            board.load(&session(user, DAY0 + start, length, 2, true));
        }
        let filter = CohortFilter {
            from_day: 19_723,
            to_day: 19_723,
            min_sessions: 2,
            min_length_ms: 60_000,
            max_length_ms: None,
        };
        assert_eq!(board.cohort(1, &filter), vec![&UserKey::User("a".into())]);
        let one = CohortFilter { min_sessions: 1, ..filter };
        assert_eq!(board.cohort(1, &one).len(), 2);
    }

    /// The figures computed naively from a flat list of sessions.
    fn naive(sessions: &[BoardSession], from_day: i32, to_day: i32, bounds_ms: &[i64]) -> BoardFigures {
        let in_range: Vec<&BoardSession> = sessions
            .iter()
            .filter(|s| (from_day..=to_day).contains(&(s.session_id.div_euclid(DAY_MS) as i32)))
            .collect();
        let mut days = vec![DayFigures::default(); (to_day - from_day + 1) as usize];
        let mut users_per_day = vec![std::collections::BTreeSet::new(); days.len()];
        let mut per_user: HashMap<&UserKey, u64> = HashMap::new();
        let mut length_buckets = vec![0; bounds_ms.len() + 1];
        for s in &in_range {
            let index = (s.session_id.div_euclid(DAY_MS) as i32 - from_day) as usize;
            days[index].sessions += 1;
            days[index].total_length_ms += s.length_ms;
            users_per_day[index].insert(&s.user);
            *per_user.entry(&s.user).or_default() += 1;
            length_buckets[bounds_ms.iter().filter(|&&b| b <= s.length_ms).count()] += 1;
        }
        for (day, users) in days.iter_mut().zip(&users_per_day) {
            day.users = users.len() as u64;
        }
        let mut seconds: Vec<i64> = in_range.iter().map(|s| s.length_ms.max(0) / 1_000 * 1_000).collect();
        seconds.sort_unstable();
        let rank =
            |percent: usize| (!seconds.is_empty()).then(|| seconds[(percent * seconds.len()).div_ceil(100).max(1) - 1]);
        let mut sessions_per_user = [0; SESSIONS_PER_USER_BUCKETS.len()];
        for &n in per_user.values() {
            sessions_per_user[SESSIONS_PER_USER_BUCKETS.iter().position(|&(_, l, h)| (l..=h).contains(&n)).unwrap()] +=
                1;
        }
        BoardFigures {
            from_day,
            days,
            length_buckets,
            sessions: in_range.len() as u64,
            users: per_user.len() as u64,
            total_length_ms: in_range.iter().map(|s| s.length_ms).sum(),
            median_length_ms: rank(50),
            p90_length_ms: rank(90),
            sessions_per_user,
            single_event_sessions: in_range.iter().filter(|s| s.event_count == 1).count() as u64,
            open_sessions: sessions.iter().filter(|s| !s.concluded).count() as u64,
        }
    }

    #[test]
    fn split_and_cached_passes_equal_the_naive_figures_for_any_bounds() {
        // Enough sessions for a pass split across threads, with lengths
        // beyond a day (the sorted tail) and ms that straddle bounds.
        let mut state = 7u64;
        let mut next = move |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut sessions = Vec::new();
        let mut starts = std::collections::HashSet::new();
        while sessions.len() < PARALLEL_PASS_MIN_SESSIONS as usize + 20_000 {
            let user = format!("u{}", next(5_000) * next(40) / 39);
            let start_ms = DAY0 + next(20) as i64 * DAY_MS + next(DAY_MS as u64) as i64;
            if !starts.insert((user.clone(), start_ms)) {
                continue;
            }
            let length_ms = match next(10) {
                0 => 0,
                1 => next(3 * DAY_MS as u64) as i64,
                _ => next(4_000_000) as i64,
            };
            sessions.push(session(&user, start_ms, length_ms, 1 + next(3), next(50) != 0));
        }
        let mut board = Board::default();
        board.set_project_time_zone(1, "UTC");
        for s in &sessions {
            board.load(s);
        }
        let bounds_sets: [&[i64]; 4] =
            [&[], &[10_000, 30_000, 60_000, 3_600_000, 7_200_000], &[1, 999, 10_500, 86_400_001], &[172_800_000]];
        for (from, to) in [(19_723, 19_742), (19_725, 19_731), (19_700, 19_723), (19_750, 19_760)] {
            for bounds in bounds_sets {
                // The second call of a range is answered from the cached pass.
                let expected = naive(&sessions, from, to, bounds);
                assert_eq!(board.figures(1, from, to, bounds), expected);
                assert_eq!(board.figures(1, from, to, bounds), expected);
            }
        }
        // A change invalidates the cached pass.
        let before = board.figures(1, 19_723, 19_742, &[]);
        let extra = session("new", DAY0 + 5 * DAY_MS, 1_000, 1, true);
        board.apply(&change(1, extra.clone(), false));
        sessions.push(extra);
        let after = board.figures(1, 19_723, 19_742, &[]);
        assert_eq!(after.sessions, before.sessions + 1);
        assert_eq!(after, naive(&sessions, 19_723, 19_742, &[]));
    }
}
