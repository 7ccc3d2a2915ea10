//! The session definition, as one left fold over a user's events in time order.
//!
//! Both the batch kernel and the live engine feed this scanner, so the two can
//! only disagree about *which* events they feed it, never about what a session is.
//!
//! Order of a user's events: by time, then active before passive (so a passive
//! event at the very instant a session opens joins it), then by the event's
//! content hash ([`crate::tiebreak`]), which makes ties independent of arrival.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::config::{Hold, SessionRules, Window};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndReason {
    /// No active event of the user within the timeout after the last one.
    Inactivity,
    /// The next active event came at or past `start + max_length`.
    MaxLength,
    /// The next active event fell on the next local calendar day.
    Midnight,
    /// Ended by inactivity, and the device of its last event was used by another
    /// user within the timeout.
    UserChange,
    /// The next active event carried another client session id (only with
    /// [`SessionRules::with_client_session_splits`]).
    ClientSession,
    /// The app went to the background and did not come back within its
    /// platform's timeout (platforms with lifecycle rules).
    Backgrounded,
    /// The app stayed in the foreground with no event for the dead-app limit:
    /// it was killed or crashed without a background event.
    DeadApp,
}

impl EndReason {
    pub const ALL: [EndReason; 7] = [
        EndReason::Inactivity,
        EndReason::MaxLength,
        EndReason::Midnight,
        EndReason::UserChange,
        EndReason::ClientSession,
        EndReason::Backgrounded,
        EndReason::DeadApp,
    ];

    /// Why a session whose last active event had this hold ends when no
    /// activity follows within its window.
    pub fn after(hold: Hold) -> EndReason {
        match hold {
            Hold::Inactivity => EndReason::Inactivity,
            Hold::Foreground => EndReason::DeadApp,
            Hold::Background => EndReason::Backgrounded,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Inactivity => "inactivity",
            EndReason::MaxLength => "max_length",
            EndReason::Midnight => "midnight",
            EndReason::UserChange => "user_change",
            EndReason::ClientSession => "client_session",
            EndReason::Backgrounded => "backgrounded",
            EndReason::DeadApp => "dead_app",
        }
    }
}

/// A session as the scanner sees it: times, a count, and the positions (in the
/// fed order) of its entry event and its last active event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    /// The last event's time, passive ones included: every event of the
    /// session lies in `[start_ms, last_event_ms]`, and no other event of the
    /// user that is not excluded does.
    pub(crate) last_event_ms: i64,
    pub(crate) event_count: u64,
    pub(crate) entry_pos: usize,
    pub(crate) exit_pos: usize,
    /// The client session id (see [`crate::client_session_key`]) of the latest
    /// active event that carried one, 0 for none.
    pub(crate) client_session: u64,
    /// The window of the last active event: activity before `end_ms +
    /// window.length_ms` continues the session.
    pub(crate) window: Window,
    /// Time in the foreground: the gaps between consecutive active events,
    /// except those that follow a background event. Equal to the length
    /// unless the session has background events.
    pub(crate) active_ms: i64,
}

impl Span {
    /// Activity before this continues the session; at or after it the session
    /// is over.
    pub(crate) fn open_until_ms(&self) -> i64 {
        self.end_ms.saturating_add(self.window.length_ms)
    }
}

/// What one fed event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The event opened a new session; the previous one (if any) ended for `EndReason`.
    Opened(Option<(Span, EndReason)>),
    /// The event joined the open session.
    Joined,
    /// A passive event with no open session to join: it gets no session.
    Orphan,
}

/// The scanner's whole state. It is plain data so that the live engine can keep
/// it and resume the fold when events arrive in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ScanState {
    open: Option<Span>,
    /// `[start, end)` of the local day of the open session's last active event,
    /// cached because time-zone arithmetic is slow; only with a midnight split.
    day_ms: Option<(i64, i64)>,
    /// Position of the next fed event.
    next_pos: usize,
    #[cfg(debug_assertions)]
    last_time_ms: Option<i64>,
}

impl ScanState {
    pub(crate) fn open_span(&self) -> Option<&Span> {
        self.open.as_ref()
    }

    /// Feeds the next event of one user, in the order described in the module
    /// docs; `client_session` is the event's client session key, 0 for none;
    /// `window` is the event's [`SessionRules::window_of`] (ignored for passive events).
    pub(crate) fn step(
        &mut self,
        rules: &SessionRules,
        time_ms: i64,
        active: bool,
        client_session: u64,
        window: Window,
    ) -> Step {
        #[cfg(debug_assertions)]
        {
            debug_assert!(self.last_time_ms.is_none_or(|last| last <= time_ms), "events fed out of order");
            self.last_time_ms = Some(time_ms);
        }
        let pos = self.next_pos;
        self.next_pos += 1;
        let Some(open) = self.open.as_mut() else {
            if !active {
                return Step::Orphan;
            }
            self.open_at(rules, time_ms, pos, client_session, window);
            return Step::Opened(None);
        };
        let within_timeout = time_ms < open.open_until_ms();
        let same_day = match self.day_ms {
            Some((_, day_end_ms)) => time_ms < day_end_ms,
            None => true,
        };
        if !active {
            if within_timeout && same_day {
                open.event_count += 1;
                open.last_event_ms = time_ms;
                return Step::Joined;
            }
            return Step::Orphan;
        }
        let split = if !within_timeout {
            Some(EndReason::after(open.window.hold))
        } else if !same_day {
            Some(EndReason::Midnight)
        } else if rules.splits_on_client_session()
            && client_session != 0
            && open.client_session != 0
            && client_session != open.client_session
            // Not within the millisecond of the session's last event, so that
            // sessions never share an instant (the store finds an event's
            // session by its time).
            && time_ms > open.last_event_ms
        {
            Some(EndReason::ClientSession)
        } else if rules.max_length_ms().is_some_and(|max| time_ms - open.start_ms >= max) {
            Some(EndReason::MaxLength)
        } else {
            None
        };
        match split {
            None => {
                if open.window.hold != Hold::Background {
                    open.active_ms += time_ms - open.end_ms;
                }
                open.window = window;
                open.end_ms = time_ms;
                open.last_event_ms = time_ms;
                open.event_count += 1;
                open.exit_pos = pos;
                if client_session != 0 {
                    open.client_session = client_session;
                }
                Step::Joined
            }
            Some(reason) => {
                let closed = *open;
                self.open_at(rules, time_ms, pos, client_session, window);
                Step::Opened(Some((closed, reason)))
            }
        }
    }

    fn open_at(&mut self, rules: &SessionRules, time_ms: i64, pos: usize, client_session: u64, window: Window) {
        self.open = Some(Span {
            window,
            active_ms: 0,
            start_ms: time_ms,
            end_ms: time_ms,
            last_event_ms: time_ms,
            event_count: 1,
            entry_pos: pos,
            exit_pos: pos,
            client_session,
        });
        if let Some(time_zone) = rules.midnight_time_zone() {
            let cached = self.day_ms.is_some_and(|(start, end)| (start..end).contains(&time_ms));
            if !cached {
                self.day_ms = Some(local_day_ms(time_zone, time_ms));
            }
        }
    }
}

/// `[start, end)` in epoch ms of the local calendar day containing `time_ms`.
pub(crate) fn local_day_ms(time_zone: &TimeZone, time_ms: i64) -> (i64, i64) {
    // Event times are bounded to years 1970..=9999 by every reader, so these
    // conversions cannot fail on real input; a failure is a broken invariant.
    let zoned = Timestamp::from_millisecond(time_ms).expect("event time in range").to_zoned(time_zone.clone());
    let start = zoned.start_of_day().expect("start of day in range");
    let end = zoned.tomorrow().and_then(|next| next.start_of_day()).expect("next day in range");
    (start.timestamp().as_millisecond(), end.timestamp().as_millisecond())
}
