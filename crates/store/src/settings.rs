//! Per-project session settings: what `sessionizer project set` and the admin
//! API change, stored as JSON with the project.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use sessionizer_engine::{DEFAULT_EXCLUDED_EVENT_TYPES, DEFAULT_TIMEOUT_MS, EventClassifier, SessionRules};

use crate::StoreError;

/// A project's session rules, as stored and as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
        TimeZone::get(&self.time_zone)
            .map_err(|_| invalid("time_zone", format!("unknown IANA time zone {:?}", self.time_zone)))?;
        let classifier = EventClassifier::new(&self.excluded_event_types, &self.passive_event_types)
            .map_err(|e| invalid("event types", e.to_string()))?;
        Ok((rules, classifier))
    }
}
