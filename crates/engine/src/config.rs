//! Session rules, event classification and the engine's limits.
//!
//! Everything here is validated once, at construction: a `SessionRules` that
//! exists is a valid one, so the hot paths never re-check it.

use std::collections::HashSet;
use std::fmt;

use jiff::tz::TimeZone;

/// The smallest inactivity timeout accepted (Braze's minimum): 1 second.
pub const MIN_TIMEOUT_MS: i64 = 1_000;
/// The largest inactivity timeout accepted: 7 days. Longer "sessions" are not
/// sessions, and the bound keeps the per-user state the engine retains bounded.
pub const MAX_TIMEOUT_MS: i64 = 7 * DAY_MS;
/// The default inactivity timeout (Amplitude, Braze Web, LiveSession): 30 minutes.
pub const DEFAULT_TIMEOUT_MS: i64 = 30 * 60 * 1_000;
/// The largest optional maximum session length: 366 days.
pub const MAX_MAX_LENGTH_MS: i64 = 366 * DAY_MS;
/// How long a concluded session stays in the live engine's state so that a late
/// event can still amend it: 72 hours (GA4's Measurement Protocol window).
pub const DEFAULT_LATENESS_HORIZON_MS: i64 = 72 * 60 * 60 * 1_000;
/// Bound on the events the live engine retains for one user (inside the
/// lateness horizon). Past it, concluded history is evicted early, and if the
/// user's open activity alone fills it, new events are deferred to the caller.
pub const DEFAULT_MAX_EVENTS_PER_USER: usize = 200_000;
/// Bound on the users the live engine tracks at once. Past it, events of new
/// users are deferred to the caller.
pub const DEFAULT_MAX_USERS: usize = 5_000_000;
/// Bound on the number of distinct event types named in one classifier list.
pub const MAX_CLASSIFIED_EVENT_TYPES: usize = 10_000;
/// Bound on the length of one event type name in a classifier list.
pub const MAX_EVENT_TYPE_BYTES: usize = 1_024;

const DAY_MS: i64 = 24 * 60 * 60 * 1_000;

/// Event types that neither open nor extend a session unless configured otherwise:
/// server-side and identity events that say nothing about the user being active.
pub const DEFAULT_EXCLUDED_EVENT_TYPES: [&str; 8] = [
    "App Installed",
    "App Uninstalled",
    "Notification Sent",
    "Notification Clicked",
    "UTM Visited",
    "Identity Set",
    "Identity Reset",
    "Identity Error",
];

/// A configuration value the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("session timeout must be at least 1 second (got {timeout_ms} ms)")]
    TimeoutTooSmall { timeout_ms: i64 },
    #[error("session timeout must be at most 7 days (got {timeout_ms} ms)")]
    TimeoutTooLarge { timeout_ms: i64 },
    #[error("maximum session length must be between 1 second and 366 days (got {max_length_ms} ms)")]
    MaxLengthOutOfRange { max_length_ms: i64 },
    #[error("lateness horizon must be between 0 and 366 days (got {horizon_ms} ms)")]
    HorizonOutOfRange { horizon_ms: i64 },
    #[error("event type {event_type:?} is listed as both excluded and passive")]
    EventTypeExcludedAndPassive { event_type: String },
    #[error("an event type name in a classifier list is empty")]
    EmptyEventType,
    #[error("an event type name in a classifier list is longer than {MAX_EVENT_TYPE_BYTES} bytes")]
    EventTypeTooLong,
    #[error("a classifier list names more than {MAX_CLASSIFIED_EVENT_TYPES} event types")]
    TooManyEventTypes,
    #[error("a per-user or user bound must be at least 1")]
    ZeroBound,
}

/// Where sessions split: the inactivity timeout and the optional extra splits.
#[derive(Clone, PartialEq)]
pub struct SessionRules {
    timeout_ms: i64,
    max_length_ms: Option<i64>,
    midnight_time_zone: Option<TimeZone>,
    client_session_splits: bool,
}

impl SessionRules {
    /// Rules with the given inactivity timeout and no extra splits.
    pub fn new(timeout_ms: i64) -> Result<SessionRules, ConfigError> {
        if timeout_ms < MIN_TIMEOUT_MS {
            return Err(ConfigError::TimeoutTooSmall { timeout_ms });
        }
        if timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::TimeoutTooLarge { timeout_ms });
        }
        Ok(SessionRules { timeout_ms, max_length_ms: None, midnight_time_zone: None, client_session_splits: false })
    }

    /// Also end a session once it would reach `max_length_ms`: an active event at
    /// or past `start + max_length_ms` opens a new session.
    pub fn with_max_length_ms(mut self, max_length_ms: i64) -> Result<SessionRules, ConfigError> {
        if !(MIN_TIMEOUT_MS..=MAX_MAX_LENGTH_MS).contains(&max_length_ms) {
            return Err(ConfigError::MaxLengthOutOfRange { max_length_ms });
        }
        self.max_length_ms = Some(max_length_ms);
        Ok(self)
    }

    /// Also end a session at local midnight in `time_zone`: a session never
    /// spans two local calendar days.
    pub fn with_midnight_split(mut self, time_zone: TimeZone) -> SessionRules {
        self.midnight_time_zone = Some(time_zone);
        self
    }

    /// Also end a session where the client's own session id changes: an
    /// active event whose client session id differs from the one the open
    /// session has seen opens a new session. Sessions still never span a gap
    /// of the timeout, so sessions stay a function of event time and the
    /// live engine's islands stay intact.
    pub fn with_client_session_splits(mut self) -> SessionRules {
        self.client_session_splits = true;
        self
    }

    pub fn timeout_ms(&self) -> i64 {
        self.timeout_ms
    }

    pub fn splits_on_client_session(&self) -> bool {
        self.client_session_splits
    }

    pub fn max_length_ms(&self) -> Option<i64> {
        self.max_length_ms
    }

    pub fn midnight_time_zone(&self) -> Option<&TimeZone> {
        self.midnight_time_zone.as_ref()
    }
}

impl Default for SessionRules {
    fn default() -> SessionRules {
        SessionRules {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_length_ms: None,
            midnight_time_zone: None,
            client_session_splits: false,
        }
    }
}

impl fmt::Debug for SessionRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRules")
            .field("timeout_ms", &self.timeout_ms)
            .field("max_length_ms", &self.max_length_ms)
            .field("midnight_time_zone", &self.midnight_time_zone.as_ref().and_then(|tz| tz.iana_name()))
            .field("client_session_splits", &self.client_session_splits)
            .finish()
    }
}

/// How an event takes part in sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventClass {
    /// Opens a session or extends the open one.
    Active,
    /// Joins the open session when it falls within the timeout of that session's
    /// last active event; never opens or extends one (polling, API calls).
    Passive,
    /// Takes no part in sessions and gets no session id (e.g. "Notification Sent").
    Excluded,
}

/// Decides each event's [`EventClass`] from its type and the client's own flag.
#[derive(Debug, Clone)]
pub struct EventClassifier {
    excluded: HashSet<Box<str>>,
    passive: HashSet<Box<str>>,
}

impl EventClassifier {
    /// A classifier with explicit lists (the defaults are not added).
    pub fn new<E, P>(excluded: E, passive: P) -> Result<EventClassifier, ConfigError>
    where
        E: IntoIterator,
        E::Item: AsRef<str>,
        P: IntoIterator,
        P::Item: AsRef<str>,
    {
        let excluded = collect_event_types(excluded)?;
        let passive = collect_event_types(passive)?;
        if let Some(both) = excluded.iter().find(|name| passive.contains(*name)) {
            return Err(ConfigError::EventTypeExcludedAndPassive { event_type: both.to_string() });
        }
        Ok(EventClassifier { excluded, passive })
    }

    /// Excluded types win over the client's passive flag: an excluded event never
    /// takes part in a session, however it is marked.
    pub fn classify(&self, event_type: &str, marked_passive: bool) -> EventClass {
        if self.excluded.contains(event_type) {
            EventClass::Excluded
        } else if marked_passive || self.passive.contains(event_type) {
            EventClass::Passive
        } else {
            EventClass::Active
        }
    }

    pub fn excluded_event_types(&self) -> impl Iterator<Item = &str> {
        self.excluded.iter().map(|name| &**name)
    }

    pub fn passive_event_types(&self) -> impl Iterator<Item = &str> {
        self.passive.iter().map(|name| &**name)
    }
}

impl Default for EventClassifier {
    fn default() -> EventClassifier {
        EventClassifier::new(DEFAULT_EXCLUDED_EVENT_TYPES, std::iter::empty::<&str>())
            .expect("the default lists are valid")
    }
}

fn collect_event_types<I>(names: I) -> Result<HashSet<Box<str>>, ConfigError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut set = HashSet::new();
    for name in names {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(ConfigError::EmptyEventType);
        }
        if name.len() > MAX_EVENT_TYPE_BYTES {
            return Err(ConfigError::EventTypeTooLong);
        }
        set.insert(Box::from(name));
        if set.len() > MAX_CLASSIFIED_EVENT_TYPES {
            return Err(ConfigError::TooManyEventTypes);
        }
    }
    Ok(set)
}

/// The live engine's configuration: the rules plus its memory bounds.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub rules: SessionRules,
    /// Project id; part of every session's globally unique id.
    pub project: String,
    /// Concluded sessions leave the state once `end + timeout <= now - horizon`;
    /// events older than `now - horizon` are deferred to the caller.
    pub lateness_horizon_ms: i64,
    pub max_events_per_user: usize,
    pub max_users: usize,
}

impl LiveConfig {
    pub fn new(project: impl Into<String>, rules: SessionRules) -> LiveConfig {
        LiveConfig {
            rules,
            project: project.into(),
            lateness_horizon_ms: DEFAULT_LATENESS_HORIZON_MS,
            max_events_per_user: DEFAULT_MAX_EVENTS_PER_USER,
            max_users: DEFAULT_MAX_USERS,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(0..=MAX_MAX_LENGTH_MS).contains(&self.lateness_horizon_ms) {
            return Err(ConfigError::HorizonOutOfRange { horizon_ms: self.lateness_horizon_ms });
        }
        if self.max_events_per_user == 0 || self.max_users == 0 {
            return Err(ConfigError::ZeroBound);
        }
        Ok(())
    }
}
