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
//! Memory: about 24 bytes per session plus about 80 bytes per user (key,
//! hash entry, vector header); 10M sessions of 1M users take about 320 MB.

use std::collections::HashMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use sessionizer_engine::UserKey;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Percentiles are computed from lengths in whole seconds: a dense count per
/// second up to this length, a sorted list beyond it.
const DENSE_PERCENTILE_SECONDS: usize = 86_400;

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

    fn set_time_zone(&mut self, name: &str) {
        if self.time_zone_name == name {
            return;
        }
        self.time_zone = TimeZone::get(name).unwrap_or(TimeZone::UTC);
        self.time_zone_name = name.to_string();
        let time_zone = self.time_zone.clone();
        for user in &mut self.users {
            for session in &mut user.sessions {
                session.day = day_in(&time_zone, session.start_ms);
            }
        }
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
        self.projects.entry(project).or_insert_with(|| ProjectBoard::new(time_zone)).set_time_zone(time_zone);
    }

    /// Adds a session of the snapshot (before any change is applied).
    pub fn load(&mut self, session: &BoardSession) {
        self.projects.entry(session.project).or_insert_with(|| ProjectBoard::new("UTC")).upsert(session);
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
    }

    /// The day `ms` falls on in the project's time zone.
    pub fn day_of(&self, project: i64, ms: i64) -> i32 {
        self.projects.get(&project).map_or(ms.div_euclid(DAY_MS) as i32, |p| p.day_of(ms))
    }

    /// Every board figure of `project` for days `from_day..=to_day`, with the
    /// length distribution over `bounds_ms` (increasing, positive).
    pub fn figures(&self, project: i64, from_day: i32, to_day: i32, bounds_ms: &[i64]) -> BoardFigures {
        let day_count = (to_day - from_day + 1).max(0) as usize;
        let mut figures = BoardFigures {
            from_day,
            days: vec![DayFigures::default(); day_count],
            length_buckets: vec![0; bounds_ms.len() + 1],
            sessions: 0,
            users: 0,
            total_length_ms: 0,
            median_length_ms: None,
            p90_length_ms: None,
            sessions_per_user: [0; SESSIONS_PER_USER_BUCKETS.len()],
            single_event_sessions: 0,
            open_sessions: 0,
        };
        let Some(board) = self.projects.get(&project) else { return figures };
        figures.open_sessions = board.open_sessions;
        let mut seconds = LengthSeconds::default();
        for user in &board.users {
            let list = &user.sessions;
            let first = list.partition_point(|c| c.day < from_day);
            let mut in_range = 0u64;
            let mut last_day = i32::MIN;
            for session in list[first..].iter().take_while(|c| c.day <= to_day) {
                let day = &mut figures.days[(session.day - from_day) as usize];
                day.sessions += 1;
                day.total_length_ms += session.length_ms;
                if session.day != last_day {
                    day.users += 1;
                    last_day = session.day;
                }
                figures.length_buckets[bounds_ms.partition_point(|&b| b <= session.length_ms)] += 1;
                figures.total_length_ms += session.length_ms;
                figures.single_event_sessions += u64::from(session.event_count() == 1);
                seconds.add(session.length_ms);
                in_range += 1;
            }
            if in_range > 0 {
                figures.users += 1;
                figures.sessions += in_range;
                let bucket =
                    SESSIONS_PER_USER_BUCKETS.iter().position(|&(_, low, high)| (low..=high).contains(&in_range));
                figures.sessions_per_user[bucket.expect("the buckets cover 1..")] += 1;
            }
        }
        figures.median_length_ms = seconds.percentile(figures.sessions, 50);
        figures.p90_length_ms = seconds.percentile(figures.sessions, 90);
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

    /// The nearest-rank `percent` percentile (the value at rank
    /// `ceil(percent / 100 * count)`), in ms, whole seconds.
    fn percentile(&mut self, count: u64, percent: u64) -> Option<i64> {
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
        self.long.sort_unstable();
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
}
