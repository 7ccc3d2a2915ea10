//! The seed scenarios (`tests/data/seed_semantics.json`, copied from the design
//! notes) run through both entry points of the engine: the batch kernel, and the
//! live engine fed in the given order, in reverse, and one event per call.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Deserialize;
use sessionizer_engine::{
    BatchEvents, BatchOptions, ChangeKind, DEFAULT_TIMEOUT_MS, Event, EventClassifier, LiveConfig, SessionRules,
    Sessionizer, UserKey, sessionize_batch, tiebreak,
};

#[derive(Deserialize)]
struct SeedFile {
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Scenario {
    name: String,
    timeout_seconds: Option<f64>,
    events: Vec<SeedEvent>,
    #[serde(default)]
    expected_sessions: Vec<ExpectedSession>,
    #[serde(default)]
    expected_concluded: Vec<ExpectedConcluded>,
    expected_error: Option<String>,
}

#[derive(Deserialize, Clone)]
struct SeedEvent {
    user_id: String,
    event_type: String,
    time: String,
}

#[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct ExpectedSession {
    user_id: String,
    start: String,
    end: String,
    length_seconds: i64,
    event_count: u64,
}

#[derive(Deserialize)]
struct ExpectedConcluded {
    user_id: String,
    timestamp: String,
    raised_at: String,
}

fn ms(iso: &str) -> i64 {
    iso.parse::<Timestamp>().unwrap_or_else(|e| panic!("bad time {iso}: {e}")).as_millisecond()
}

fn iso(ms: i64) -> String {
    Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn scenarios() -> Vec<Scenario> {
    let text = include_str!("../data/seed_semantics.json");
    let file: SeedFile = serde_json::from_str(text).expect("seed file parses");
    assert!(file.scenarios.len() >= 16, "the seed file lost scenarios");
    file.scenarios
}

fn rules_of(scenario: &Scenario) -> Result<SessionRules, String> {
    let timeout_ms = match scenario.timeout_seconds {
        Some(seconds) => (seconds * 1000.0).round() as i64,
        None => DEFAULT_TIMEOUT_MS,
    };
    SessionRules::new(timeout_ms).map_err(|e| e.to_string())
}

fn live_events(scenario: &Scenario) -> Vec<Event> {
    let classifier = EventClassifier::default();
    scenario
        .events
        .iter()
        .map(|e| Event {
            user: UserKey::User(Arc::from(e.user_id.as_str())),
            device_id: None,
            event_type: Arc::from(e.event_type.as_str()),
            page: None,
            time_ms: ms(&e.time),
            class: classifier.classify(&e.event_type, false),
            insert_id: None,
            client_session_id: None,
            platform: None,
        })
        .collect()
}

fn batch_sessions(scenario: &Scenario, rules: &SessionRules) -> Vec<ExpectedSession> {
    let classifier = EventClassifier::default();
    let mut users: Vec<String> = scenario.events.iter().map(|e| e.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let user: Vec<u32> = scenario.events.iter().map(|e| users.binary_search(&e.user_id).unwrap() as u32).collect();
    let time_ms: Vec<i64> = scenario.events.iter().map(|e| ms(&e.time)).collect();
    let class: Vec<_> = scenario.events.iter().map(|e| classifier.classify(&e.event_type, false)).collect();
    let tie = |row: u32| tiebreak(&scenario.events[row as usize].event_type, None, None);
    let events = BatchEvents {
        user: &user,
        user_count: users.len() as u32,
        device: &[],
        time_ms: &time_ms,
        class: &class,
        client_session: &[],
        window: &[],
        tiebreak: &tie,
    };
    let result = sessionize_batch(&events, rules, BatchOptions { assign_events: true });
    let mut sessions: Vec<ExpectedSession> = result
        .sessions
        .iter()
        .map(|s| ExpectedSession {
            user_id: users[s.user as usize].clone(),
            start: iso(s.start_ms),
            end: iso(s.end_ms),
            length_seconds: s.length_ms() / 1000,
            event_count: s.event_count,
        })
        .collect();
    sessions.sort();
    sessions
}

fn live_sessions(rules: &SessionRules, batches: Vec<Vec<Event>>) -> (Vec<ExpectedSession>, Sessionizer) {
    let mut engine = Sessionizer::new(LiveConfig::new("seeds", rules.clone())).unwrap();
    let mut now_ms = i64::MIN;
    for batch in batches {
        now_ms = batch.iter().map(|e| e.time_ms).max().unwrap_or(now_ms).max(now_ms);
        engine.ingest(batch, now_ms);
    }
    let mut sessions: Vec<ExpectedSession> = engine
        .sessions()
        .iter()
        .map(|r| ExpectedSession {
            user_id: r.user.id().to_string(),
            start: iso(r.start_ms),
            end: iso(r.end_ms),
            length_seconds: r.length_ms() / 1000,
            event_count: r.event_count,
        })
        .collect();
    sessions.sort();
    (sessions, engine)
}

fn normalized(expected: &[ExpectedSession]) -> Vec<ExpectedSession> {
    let mut expected: Vec<ExpectedSession> = expected
        .iter()
        .map(|s| ExpectedSession { start: iso(ms(&s.start)), end: iso(ms(&s.end)), ..s.clone() })
        .collect();
    expected.sort();
    expected
}

#[test]
fn every_seed_scenario_passes_in_batch_and_live_in_any_order() {
    let mut checked = 0;
    for scenario in scenarios() {
        let rules = match (rules_of(&scenario), &scenario.expected_error) {
            (Err(message), Some(expected)) => {
                assert!(message.contains(expected.as_str()), "{}: error {message:?} lacks {expected:?}", scenario.name);
                checked += 1;
                continue;
            }
            (Ok(_), Some(expected)) => panic!("{}: expected error {expected:?}, got valid rules", scenario.name),
            (Err(message), None) => panic!("{}: unexpected error {message}", scenario.name),
            (Ok(rules), None) => rules,
        };
        let expected = normalized(&scenario.expected_sessions);
        assert_eq!(batch_sessions(&scenario, &rules), expected, "{}: batch kernel", scenario.name);

        let events = live_events(&scenario);
        let in_order = vec![events.clone()];
        let reversed = vec![events.iter().rev().cloned().collect()];
        let one_by_one: Vec<Vec<Event>> = events.iter().map(|e| vec![e.clone()]).collect();
        let one_by_one_reversed: Vec<Vec<Event>> = events.iter().rev().map(|e| vec![e.clone()]).collect();
        for (how, batches) in [
            ("one batch", in_order),
            ("reversed", reversed),
            ("one by one", one_by_one),
            ("one by one reversed", one_by_one_reversed),
        ] {
            let (sessions, _) = live_sessions(&rules, batches);
            assert_eq!(sessions, expected, "{}: live engine, {how}", scenario.name);
        }
        checked += 1;
    }
    assert_eq!(checked, scenarios().len());
}

#[test]
fn concluded_records_are_stamped_with_the_last_activity_when_the_timeout_passes() {
    let mut checked = 0;
    for scenario in scenarios().into_iter().filter(|s| !s.expected_concluded.is_empty()) {
        let rules = rules_of(&scenario).unwrap();
        let (_, mut engine) = live_sessions(&rules, vec![live_events(&scenario)]);
        for expected in &scenario.expected_concluded {
            let raised_at_ms = ms(&expected.raised_at);
            let early = engine.advance(raised_at_ms - 1);
            assert!(
                early.iter().all(|c| c.kind != ChangeKind::Concluded),
                "{}: concluded before the timeout passed",
                scenario.name
            );
            let changes = engine.advance(raised_at_ms);
            let concluded: Vec<_> = changes.iter().filter(|c| c.kind == ChangeKind::Concluded).collect();
            assert_eq!(concluded.len(), 1, "{}: one conclusion", scenario.name);
            let change = concluded[0];
            assert_eq!(change.record.user.id(), expected.user_id, "{}", scenario.name);
            assert_eq!(change.record.end_ms, ms(&expected.timestamp), "{}: stamped with last activity", scenario.name);
            assert_eq!(change.raised_at_ms, raised_at_ms, "{}: raised when the timeout passed", scenario.name);
            checked += 1;
        }
    }
    assert!(checked >= 3, "the seeds have at least three conclusion vectors");
}

#[test]
fn excluded_events_get_no_session_id() {
    let scenario = scenarios().into_iter().find(|s| s.name.starts_with("excluded-events")).expect("scenario exists");
    let rules = rules_of(&scenario).unwrap();
    let mut engine = Sessionizer::new(LiveConfig::new("seeds", rules)).unwrap();
    let events = live_events(&scenario);
    let types: Vec<String> = events.iter().map(|e| e.event_type.to_string()).collect();
    let outcome = engine.ingest(events, ms("2026-01-05T12:00:00Z"));
    let mut by_type: HashMap<String, usize> = HashMap::new();
    for (event_type, assignment) in types.iter().zip(&outcome.assignments) {
        let in_session = matches!(assignment, sessionizer_engine::Assignment::Session { .. });
        let excluded = event_type.starts_with("Notification");
        assert_eq!(in_session, !excluded, "{event_type}: {assignment:?}");
        *by_type.entry(event_type.clone()).or_default() += 1;
    }
    assert_eq!(by_type.len(), 4);
}
