//! The JetStream message of one event: what an ingest node publishes and a
//! worker consumes.

use serde::{Deserialize, Serialize};
use sessionizer_store::NewEvent;

/// One validated event, with its project and dedup key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMessage {
    pub project: i64,
    /// The insert id, or an id the ingest node generated for an event without one.
    pub event_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub event_type: String,
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(default)]
    pub passive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub received_ms: i64,
}

impl EventMessage {
    pub fn new(project: i64, event_key: String, event: NewEvent) -> EventMessage {
        EventMessage {
            project,
            event_key,
            user_id: event.user_id,
            device_id: event.device_id,
            event_type: event.event_type,
            time_ms: event.time_ms,
            insert_id: event.insert_id,
            page: event.page,
            passive: event.passive,
            properties: event.properties,
            client_session_id: event.client_session_id,
            platform: event.platform,
            ip: event.ip,
            received_ms: event.received_ms,
        }
    }

    /// The `Nats-Msg-Id`: JetStream drops a second message with the same id
    /// inside the stream's duplicate window.
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.project, self.event_key)
    }

    pub fn event(&self) -> NewEvent {
        NewEvent {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            event_type: self.event_type.clone(),
            time_ms: self.time_ms,
            insert_id: self.insert_id.clone(),
            page: self.page.clone(),
            passive: self.passive,
            properties: self.properties.clone(),
            client_session_id: self.client_session_id.clone(),
            platform: self.platform.clone(),
            ip: self.ip.clone(),
            received_ms: self.received_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event message always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<EventMessage, crate::ClusterError> {
        let message: EventMessage =
            serde_json::from_slice(bytes).map_err(|e| crate::ClusterError::Message(e.to_string()))?;
        if message.user_id.is_none() && message.device_id.is_none() {
            return Err(crate::ClusterError::Message("an event without user_id or device_id".into()));
        }
        Ok(message)
    }
}
