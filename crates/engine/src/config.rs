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

/// How long an app session stays open with the app in the foreground and no
/// event at all before it is taken for dead (killed without a background
/// event): 30 minutes, the web default.
pub const DEFAULT_DEAD_APP_LIMIT_MS: i64 = 30 * 60 * 1_000;
/// Bound on the platforms one project names rules for.
pub const MAX_PLATFORMS: usize = 32;
/// Bound on the length of a platform name.
pub const MAX_PLATFORM_BYTES: usize = 64;

/// App lifecycle events that send the app to the background (or end the
/// client's session), by default: Segment's, Amplitude's and sessionizer's own
/// (`Page Hidden` from the browser SDK with `trackVisibility`).
/// Foreground events need no list: any active event that is not a background
/// event shows the app in the foreground (`Application Opened`,
/// `Application Foregrounded`, `session_start`, `App Foregrounded`, but also a
/// screen view after a lost foreground event).
pub const DEFAULT_BACKGROUND_EVENT_TYPES: [&str; 5] = [
    "Application Backgrounded",
    "session_end",
    "[Amplitude] Application Backgrounded",
    "App Backgrounded",
    "Page Hidden",
];

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
    #[error("dead-app limit must be between 1 second and 7 days (got {dead_app_limit_ms} ms)")]
    DeadAppLimitOutOfRange { dead_app_limit_ms: i64 },
    #[error("platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: String },
    #[error("more than {MAX_PLATFORMS} platforms have rules")]
    TooManyPlatforms,
}

/// Where sessions split: the inactivity timeout and the optional extra splits.
#[derive(Clone, PartialEq)]
pub struct SessionRules {
    timeout_ms: i64,
    max_length_ms: Option<i64>,
    midnight_time_zone: Option<TimeZone>,
    client_session_splits: bool,
    /// Per-platform rules, sorted by name; empty for most projects.
    platforms: Vec<(Box<str>, PlatformRules)>,
    /// The platform of events that name none, if set.
    default_platform: Option<Box<str>>,
    /// With lifecycle: how long a foreground app may go without any event.
    dead_app_limit_ms: i64,
    background_event_types: HashSet<Box<str>>,
    /// The largest window any event can have: islands of the live engine are
    /// runs of events closer than this (see [`SessionRules::join_distance_ms`]).
    join_distance_ms: i64,
}

/// The session rules of one platform (`ios`, `android`, `web`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformRules {
    /// Inactivity timeout of the platform; with lifecycle, how long after a
    /// background event a return continues the session.
    pub timeout_ms: i64,
    /// App lifecycle events drive sessions: while in the foreground a session
    /// stays open however long the user is idle (up to the dead-app limit).
    pub lifecycle: bool,
}

/// What an active event says about how long its session stays open after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Hold {
    /// A plain event: the session stays open for the (platform's) timeout.
    #[default]
    Inactivity,
    /// A lifecycle platform's app is in the foreground: the session stays
    /// open until the dead-app limit.
    Foreground,
    /// The app went to the background: a return within the platform's
    /// timeout continues the session.
    Background,
}

/// How long after an active event its session stays open, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub length_ms: i64,
    pub hold: Hold,
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
        Ok(SessionRules { timeout_ms, join_distance_ms: timeout_ms, ..SessionRules::default() })
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

    /// Rules for events of one platform: its own timeout, and with
    /// `lifecycle`, sessions driven by the app's foreground and background
    /// events. Replaces earlier rules for the same platform.
    pub fn with_platform(mut self, platform: &str, rules: PlatformRules) -> Result<SessionRules, ConfigError> {
        check_platform_name(platform)?;
        SessionRules::new(rules.timeout_ms).map_err(|error| ConfigError::InvalidPlatform {
            platform: platform.to_string(),
            reason: error.to_string(),
        })?;
        match self.platforms.binary_search_by(|(name, _)| (**name).cmp(platform)) {
            Ok(at) => self.platforms[at].1 = rules,
            Err(at) => {
                if self.platforms.len() >= MAX_PLATFORMS {
                    return Err(ConfigError::TooManyPlatforms);
                }
                self.platforms.insert(at, (Box::from(platform), rules));
            }
        }
        self.update_join_distance();
        Ok(self)
    }

    /// Events that name no platform follow the rules of `platform` (which
    /// need not have rules of its own: then the project timeout applies).
    pub fn with_default_platform(mut self, platform: &str) -> Result<SessionRules, ConfigError> {
        check_platform_name(platform)?;
        self.default_platform = Some(Box::from(platform));
        Ok(self)
    }

    /// How long a lifecycle platform's session stays open in the foreground
    /// with no event at all [`DEFAULT_DEAD_APP_LIMIT_MS`].
    pub fn with_dead_app_limit_ms(mut self, dead_app_limit_ms: i64) -> Result<SessionRules, ConfigError> {
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&dead_app_limit_ms) {
            return Err(ConfigError::DeadAppLimitOutOfRange { dead_app_limit_ms });
        }
        self.dead_app_limit_ms = dead_app_limit_ms;
        self.update_join_distance();
        Ok(self)
    }

    /// The event types that send an app to the background (replacing
    /// [`DEFAULT_BACKGROUND_EVENT_TYPES`]).
    pub fn with_background_event_types<I>(mut self, names: I) -> Result<SessionRules, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.background_event_types = collect_event_types(names)?;
        Ok(self)
    }

    fn update_join_distance(&mut self) {
        let platforms = self.platforms.iter().map(|(_, rules)| {
            if rules.lifecycle { rules.timeout_ms.max(self.dead_app_limit_ms) } else { rules.timeout_ms }
        });
        self.join_distance_ms = platforms.fold(self.timeout_ms, i64::max);
    }

    /// The inactivity timeout of events with no platform rules.
    pub fn timeout_ms(&self) -> i64 {
        self.timeout_ms
    }

    /// The largest [`Window`] any event can have. Active events at least this
    /// far apart are always in different sessions.
    pub fn join_distance_ms(&self) -> i64 {
        self.join_distance_ms
    }

    pub fn default_platform(&self) -> Option<&str> {
        self.default_platform.as_deref()
    }

    /// Whether any platform has rules of its own.
    pub fn has_platform_rules(&self) -> bool {
        !self.platforms.is_empty()
    }

    pub fn platforms(&self) -> impl Iterator<Item = (&str, PlatformRules)> {
        self.platforms.iter().map(|(name, rules)| (&**name, *rules))
    }

    pub fn dead_app_limit_ms(&self) -> i64 {
        self.dead_app_limit_ms
    }

    pub fn background_event_types(&self) -> impl Iterator<Item = &str> {
        self.background_event_types.iter().map(|name| &**name)
    }

    /// The window an active event of `event_type` on `platform` opens: a
    /// later active event of the user within it continues the session.
    pub fn window_of(&self, platform: Option<&str>, event_type: &str) -> Window {
        let rules = platform
            .or(self.default_platform.as_deref())
            .and_then(|platform| self.platforms.binary_search_by(|(name, _)| (**name).cmp(platform)).ok())
            .map(|at| self.platforms[at].1);
        match rules {
            None => self.plain_window(),
            Some(PlatformRules { timeout_ms, lifecycle: false }) => {
                Window { length_ms: timeout_ms, hold: Hold::Inactivity }
            }
            Some(PlatformRules { timeout_ms, lifecycle: true }) => {
                if self.background_event_types.contains(event_type) {
                    Window { length_ms: timeout_ms, hold: Hold::Background }
                } else {
                    Window { length_ms: self.dead_app_limit_ms, hold: Hold::Foreground }
                }
            }
        }
    }

    /// The window of events when no platform has rules of its own.
    pub(crate) fn plain_window(&self) -> Window {
        Window { length_ms: self.timeout_ms, hold: Hold::Inactivity }
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
            platforms: Vec::new(),
            default_platform: None,
            dead_app_limit_ms: DEFAULT_DEAD_APP_LIMIT_MS,
            background_event_types: DEFAULT_BACKGROUND_EVENT_TYPES.iter().map(|name| Box::from(*name)).collect(),
            join_distance_ms: DEFAULT_TIMEOUT_MS,
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
            .field("platforms", &self.platforms)
            .field("default_platform", &self.default_platform)
            .field("dead_app_limit_ms", &self.dead_app_limit_ms)
            .finish()
    }
}

/// A platform name is 1 to [`MAX_PLATFORM_BYTES`] bytes, in lower case (the
/// SDK formats and the native API lower-case the platforms they are sent).
fn check_platform_name(platform: &str) -> Result<(), ConfigError> {
    let reason = if platform.is_empty() || platform.len() > MAX_PLATFORM_BYTES {
        format!("a platform name has 1 to {MAX_PLATFORM_BYTES} bytes")
    } else if platform != platform.to_ascii_lowercase() {
        "platform names are lower case (platforms are lower-cased on ingest)".to_string()
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidPlatform { platform: platform.to_string(), reason })
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
