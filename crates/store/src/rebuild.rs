//! Sessions from stored events with the engine's batch kernel: what a
//! rebuild, a settings change and the resolution of very late events use.

use std::collections::HashMap;

use sessionizer_engine::{
    BatchEvents, BatchOptions, EventClassifier, NO_DEVICE, SessionRules, UserKey, client_session_key, session_uid,
    sessionize_batch, tiebreak,
};

use crate::{StoredEvent, StoredSession};

/// The sessions of `events` (any order), as the live engine would publish
/// them at `now_ms`: a session whose `end + window > now` is still open (no
/// end reason, not concluded).
pub fn sessionize_stored(
    project: &str,
    events: &[StoredEvent],
    rules: &SessionRules,
    classifier: &EventClassifier,
    now_ms: i64,
) -> Vec<StoredSession> {
    let mut users: Vec<UserKey> = Vec::new();
    let mut user_index: HashMap<UserKey, u32> = HashMap::new();
    let mut device_index: HashMap<&str, u32> = HashMap::new();
    let mut user = Vec::with_capacity(events.len());
    let mut device = Vec::with_capacity(events.len());
    let mut time_ms = Vec::with_capacity(events.len());
    let mut class = Vec::with_capacity(events.len());
    let mut client_session = Vec::new();
    let mut window = Vec::new();
    for stored in events {
        let event = &stored.event;
        let key = event.user_key();
        let next = users.len() as u32;
        let index = *user_index.entry(key.clone()).or_insert_with(|| {
            users.push(key);
            next
        });
        user.push(index);
        let next = device_index.len() as u32;
        device.push(match event.device_id.as_deref().filter(|d| !d.is_empty()) {
            Some(id) => *device_index.entry(id).or_insert(next),
            None => NO_DEVICE,
        });
        time_ms.push(event.time_ms);
        class.push(classifier.classify(&event.event_type, event.passive));
        if rules.splits_on_client_session() {
            client_session.push(event.client_session_id.as_deref().map_or(0, client_session_key));
        }
        if rules.has_platform_rules() {
            window.push(rules.window_of(event.platform.as_deref(), &event.event_type));
        }
    }
    let tie = |row: u32| {
        let event = &events[row as usize].event;
        tiebreak(&event.event_type, event.page.as_deref(), event.insert_id.as_deref())
    };
    let input = BatchEvents {
        user: &user,
        user_count: users.len() as u32,
        device: &device,
        time_ms: &time_ms,
        class: &class,
        client_session: &client_session,
        window: &window,
        tiebreak: &tie,
    };
    let result = sessionize_batch(&input, rules, BatchOptions::default());
    let sessions = &result.sessions;
    sessions
        .iter()
        .enumerate()
        .map(|(index, session)| {
            let last_of_user = sessions.get(index + 1).is_none_or(|next| next.user != session.user);
            let key = &users[session.user as usize];
            let entry = &events[session.entry_event as usize].event;
            let exit = &events[session.exit_event as usize].event;
            let concluded = session.end_ms.saturating_add(session.window.length_ms) <= now_ms;
            // A user's last session may still be extended: no end reason yet,
            // exactly like the live engine.
            let open_ended = last_of_user && !concluded;
            StoredSession {
                user: key.clone(),
                session_id: session.start_ms,
                session_uid: session_uid(project, key, session.start_ms),
                start_ms: session.start_ms,
                end_ms: session.end_ms,
                last_event_ms: session.last_event_ms,
                event_count: session.event_count,
                active_ms: session.active_ms,
                end_reason: (!open_ended).then(|| session.end_reason.as_str().to_string()),
                concluded,
                entry_event_type: entry.event_type.clone(),
                entry_page: entry.page.clone(),
                exit_event_type: exit.event_type.clone(),
                exit_page: exit.page.clone(),
                revision: 0,
            }
        })
        .collect()
}
