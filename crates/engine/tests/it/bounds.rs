//! The live engine's memory bounds and the changes it emits around them.

use std::sync::Arc;

use sessionizer_engine::{
    Assignment, ChangeKind, DeferReason, Event, EventClass, LiveConfig, SessionRules, Sessionizer, UserKey,
};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const T0: i64 = 1_767_600_000_000; // 2026-01-05T08:00:00Z

fn event(user: &str, minute: i64, insert_id: Option<&str>) -> Event {
    Event {
        user: UserKey::User(Arc::from(user)),
        device_id: None,
        event_type: Arc::from("view"),
        page: None,
        time_ms: T0 + minute * MINUTE_MS,
        class: EventClass::Active,
        insert_id: insert_id.map(Arc::from),
        client_session_id: None,
        platform: None,
    }
}

fn engine(configure: impl FnOnce(&mut LiveConfig)) -> Sessionizer {
    let mut config = LiveConfig::new("bounds", SessionRules::new(30 * MINUTE_MS).unwrap());
    configure(&mut config);
    Sessionizer::new(config).unwrap()
}

#[test]
fn events_beyond_the_lateness_horizon_are_deferred_and_old_state_is_evicted() {
    let mut engine = engine(|c| c.lateness_horizon_ms = 2 * HOUR_MS);
    let outcome = engine.ingest(vec![event("a", 0, None)], T0);
    assert!(matches!(outcome.assignments[0], Assignment::Session { .. }));
    // Three hours later: the session concludes, and is already past the horizon.
    let changes = engine.advance(T0 + 3 * HOUR_MS);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::Concluded);
    assert_eq!(engine.state_size(), (0, 0), "evicted once end + timeout <= now - horizon");
    let late = engine.ingest(vec![event("a", 5, None)], T0 + 3 * HOUR_MS);
    assert_eq!(late.assignments, vec![Assignment::Deferred(DeferReason::BeyondHorizon)]);
    assert!(late.changes.is_empty());
    // Inside the horizon a late event is still sessionized.
    let inside = engine.ingest(vec![event("a", 90, None)], T0 + 3 * HOUR_MS);
    assert!(
        matches!(inside.assignments[0], Assignment::Session { session_id, .. } if session_id == T0 + 90 * MINUTE_MS)
    );
}

#[test]
fn a_session_concludes_once_and_a_late_event_amends_it_within_the_horizon() {
    let mut engine = engine(|_| {});
    engine.ingest(vec![event("a", 0, None), event("a", 10, None)], T0 + 10 * MINUTE_MS);
    let concluded = engine.advance(T0 + 40 * MINUTE_MS);
    assert_eq!(concluded.len(), 1);
    assert_eq!(concluded[0].kind, ChangeKind::Concluded);
    assert_eq!(concluded[0].record.end_ms, T0 + 10 * MINUTE_MS);
    assert!(engine.advance(T0 + 50 * MINUTE_MS).is_empty(), "concluded exactly once");
    // An offline event from minute 5 arrives: the concluded session is amended.
    let outcome = engine.ingest(vec![event("a", 5, None)], T0 + 60 * MINUTE_MS);
    assert_eq!(outcome.changes.len(), 1);
    assert_eq!(outcome.changes[0].kind, ChangeKind::Amended);
    assert_eq!(outcome.changes[0].record.event_count, 3);
    assert!(outcome.changes[0].record.concluded);
    assert!(outcome.changes[0].record.revision > concluded[0].record.revision);
}

#[test]
fn an_event_before_the_start_supersedes_the_session_with_a_new_id() {
    let mut engine = engine(|_| {});
    let first = engine.ingest(vec![event("a", 20, None)], T0 + 20 * MINUTE_MS);
    assert_eq!(first.changes[0].kind, ChangeKind::Started);
    let outcome = engine.ingest(vec![event("a", 0, None)], T0 + 21 * MINUTE_MS);
    let kinds: Vec<ChangeKind> = outcome.changes.iter().map(|c| c.kind).collect();
    let new_id = T0;
    assert!(kinds.contains(&ChangeKind::Started));
    assert!(
        kinds.iter().any(|k| matches!(k, ChangeKind::Superseded { by_session_id, .. } if *by_session_id == new_id))
    );
    assert_eq!(engine.sessions().len(), 1);
    assert_eq!(engine.sessions()[0].session_id, new_id);
}

#[test]
fn retried_insert_ids_count_once() {
    let mut engine = engine(|_| {});
    let outcome = engine.ingest(vec![event("a", 0, Some("x")), event("a", 0, Some("x"))], T0);
    assert!(matches!(outcome.assignments[0], Assignment::Session { .. }));
    assert_eq!(outcome.assignments[1], Assignment::Duplicate);
    let retry = engine.ingest(vec![event("a", 0, Some("x"))], T0 + MINUTE_MS);
    assert_eq!(retry.assignments, vec![Assignment::Duplicate]);
    assert_eq!(engine.sessions()[0].event_count, 1);
}

#[test]
fn a_full_user_state_evicts_concluded_history_then_defers() {
    let mut engine = engine(|c| c.max_events_per_user = 3);
    // Two concluded islands of one event each, then an open one.
    engine.ingest(vec![event("a", 0, None), event("a", 60, None)], T0 + 120 * MINUTE_MS);
    engine.ingest(vec![event("a", 120, None)], T0 + 120 * MINUTE_MS);
    assert_eq!(engine.state_size(), (1, 3));
    // The fourth event makes room by evicting the oldest concluded island.
    let outcome = engine.ingest(vec![event("a", 121, None)], T0 + 121 * MINUTE_MS);
    assert!(matches!(outcome.assignments[0], Assignment::Session { .. }));
    assert_eq!(engine.state_size(), (1, 3));
    // History before the evicted island's reach is now deferred to the caller.
    let before = engine.ingest(vec![event("a", 1, None)], T0 + 122 * MINUTE_MS);
    assert_eq!(before.assignments, vec![Assignment::Deferred(DeferReason::BeforeEvictedHistory)]);
    // Open activity alone filling the bound: new events are deferred, not dropped silently.
    let mut full = engine_with_bound(2);
    full.ingest(vec![event("b", 0, None), event("b", 1, None)], T0 + MINUTE_MS);
    let outcome = full.ingest(vec![event("b", 2, None)], T0 + 2 * MINUTE_MS);
    assert_eq!(outcome.assignments, vec![Assignment::Deferred(DeferReason::UserStateFull)]);
}

fn engine_with_bound(max_events_per_user: usize) -> Sessionizer {
    engine(|c| c.max_events_per_user = max_events_per_user)
}

#[test]
fn users_past_the_user_bound_are_deferred() {
    let mut engine = engine(|c| c.max_users = 2);
    let outcome = engine.ingest(vec![event("a", 0, None), event("b", 0, None), event("c", 0, None)], T0);
    assert!(matches!(outcome.assignments[0], Assignment::Session { .. }));
    assert!(matches!(outcome.assignments[1], Assignment::Session { .. }));
    assert_eq!(outcome.assignments[2], Assignment::Deferred(DeferReason::TooManyUsers));
    let later = engine.ingest(vec![event("d", 1, None), event("a", 1, None)], T0 + MINUTE_MS);
    assert_eq!(later.assignments[0], Assignment::Deferred(DeferReason::TooManyUsers));
    assert!(matches!(later.assignments[1], Assignment::Session { .. }), "known users are still served");
}

#[test]
fn a_late_event_touching_a_held_session_is_not_deferred_even_beyond_the_horizon() {
    let mut engine = engine(|c| c.lateness_horizon_ms = 2 * HOUR_MS);
    // A session that runs for three hours: it began before the horizon floor
    // but the engine still holds it.
    for minute in (0..=180).step_by(20) {
        let outcome = engine.ingest(vec![event("a", minute, None)], T0 + minute * MINUTE_MS);
        assert!(matches!(outcome.assignments[0], Assignment::Session { .. }));
    }
    let now = T0 + 3 * HOUR_MS + 5 * MINUTE_MS;
    // 10 minutes before its start: older than now - horizon, yet it extends the held session.
    let outcome = engine.ingest(vec![event("a", -10, None)], now);
    assert!(
        matches!(outcome.assignments[0], Assignment::Session { session_id, .. } if session_id == T0 - 10 * MINUTE_MS),
        "{:?}",
        outcome.assignments
    );
    assert!(outcome.changes.iter().any(|c| matches!(c.kind, ChangeKind::Superseded { .. })));
    // An hour before its start: it touches nothing held, so the store resolves it.
    let far = engine.ingest(vec![event("a", -60, None)], now);
    assert_eq!(far.assignments, vec![Assignment::Deferred(DeferReason::BeyondHorizon)]);
}
