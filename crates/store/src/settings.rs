//! Per-project session settings: what `sessionizer project set` and the admin
//! API change, stored as JSON with the project.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use sessionizer_engine::{
    DEFAULT_BACKGROUND_EVENT_TYPES, DEFAULT_DEAD_APP_LIMIT_MS, DEFAULT_EXCLUDED_EVENT_TYPES, DEFAULT_TIMEOUT_MS,
    EventClassifier, PlatformRules, SessionRules,
};

use crate::StoreError;

/// A project's session rules, as stored and as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectSettings {
    /// Inactivity timeout; a gap of at least this starts a new session.
    pub timeout_ms: i64,
    /// Split sessions longer than this (off when absent).
    #[serde(default)]
    pub max_length_ms: Option<i64>,
    /// Split sessions at midnight in this IANA time zone (off when absent).
    #[serde(default)]
    pub midnight_split_time_zone: Option<String>,
    /// Event types that take no part in sessions.
    pub excluded_event_types: Vec<String>,
    /// Event types that join an open session but never open or extend one.
    #[serde(default)]
    pub passive_event_types: Vec<String>,
    /// Time zone that days are bucketed in by the query API.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// `server` (sessions from event time only; client session ids are kept
    /// but ignored) or `client` (also split where the SDK's session id changes).
    #[serde(default = "server")]
    pub session_source: String,
    /// Session rules of their own for some platforms (`web`, `ios`, `android`,
    /// `server`, ...): the platform comes from the event or its SDK.
    #[serde(default)]
    pub platforms: BTreeMap<String, PlatformSettings>,
    /// The platform of events that name none (off when absent).
    #[serde(default)]
    pub default_platform: Option<String>,
    /// With lifecycle: how long an app in the foreground may send nothing
    /// before its session ends as a dead app.
    #[serde(default = "dead_app_limit")]
    pub dead_app_limit_ms: i64,
    /// With lifecycle: the events that send an app to the background.
    #[serde(default = "background_event_types")]
    pub background_event_types: Vec<String>,
}

/// One platform's session rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSettings {
    /// Inactivity timeout; with lifecycle, how long after a background event
    /// a return continues the session.
    pub timeout_ms: i64,
    /// Sessions follow the app's foreground and background events.
    #[serde(default)]
    pub lifecycle: bool,
}

fn dead_app_limit() -> i64 {
    DEFAULT_DEAD_APP_LIMIT_MS
}

fn background_event_types() -> Vec<String> {
    DEFAULT_BACKGROUND_EVENT_TYPES.iter().map(|t| t.to_string()).collect()
}

/// The session sources a project may choose.
pub const SESSION_SOURCES: [&str; 2] = ["server", "client"];

fn server() -> String {
    "server".to_string()
}

fn utc() -> String {
    "UTC".to_string()
}

impl Default for ProjectSettings {
    fn default() -> Self {
        ProjectSettings {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_length_ms: None,
            midnight_split_time_zone: None,
            excluded_event_types: DEFAULT_EXCLUDED_EVENT_TYPES.iter().map(|t| t.to_string()).collect(),
            passive_event_types: Vec::new(),
            time_zone: utc(),
            session_source: server(),
            platforms: BTreeMap::new(),
            default_platform: None,
            dead_app_limit_ms: dead_app_limit(),
            background_event_types: background_event_types(),
        }
    }
}

impl ProjectSettings {
    /// The engine's rules and classifier, or a clear error naming the bad setting.
    pub fn compile(&self) -> Result<(SessionRules, EventClassifier), StoreError> {
        let invalid = |setting: &str, message: String| StoreError::InvalidSettings(format!("{setting}: {message}"));
        let mut rules = SessionRules::new(self.timeout_ms).map_err(|e| invalid("timeout_ms", e.to_string()))?;
        if let Some(max_length_ms) = self.max_length_ms {
            rules = rules.with_max_length_ms(max_length_ms).map_err(|e| invalid("max_length_ms", e.to_string()))?;
        }
        if let Some(name) = &self.midnight_split_time_zone {
            let time_zone = TimeZone::get(name)
                .map_err(|_| invalid("midnight_split_time_zone", format!("unknown IANA time zone {name:?}")))?;
            rules = rules.with_midnight_split(time_zone);
        }
        match self.session_source.as_str() {
            "server" => {}
            "client" => rules = rules.with_client_session_splits(),
            other => {
                return Err(invalid(
                    "session_source",
                    format!("{other:?} is not one of {}", SESSION_SOURCES.join(", ")),
                ));
            }
        }
        for (name, platform) in &self.platforms {
            let platform_rules = PlatformRules { timeout_ms: platform.timeout_ms, lifecycle: platform.lifecycle };
            rules = rules.with_platform(name, platform_rules).map_err(|e| invalid("platforms", e.to_string()))?;
        }
        if let Some(name) = &self.default_platform {
            rules = rules.with_default_platform(name).map_err(|e| invalid("default_platform", e.to_string()))?;
        }
        rules = rules
            .with_dead_app_limit_ms(self.dead_app_limit_ms)
            .map_err(|e| invalid("dead_app_limit_ms", e.to_string()))?
            .with_background_event_types(&self.background_event_types)
            .map_err(|e| invalid("background_event_types", e.to_string()))?;
        TimeZone::get(&self.time_zone)
            .map_err(|_| invalid("time_zone", format!("unknown IANA time zone {:?}", self.time_zone)))?;
        let classifier = EventClassifier::new(&self.excluded_event_types, &self.passive_event_types)
            .map_err(|e| invalid("event types", e.to_string()))?;
        Ok((rules, classifier))
    }
}
