//! The app lifecycle and per-platform vectors (`tests/data/lifecycle_vectors.json`)
//! through both entry points: the batch kernel, and the live engine fed in the
//! given order, reversed, one event per call, and in seeded shuffles cut into
//! random batches. The live engine must also conclude each session exactly when
//! the window of its last event has passed.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Deserialize;
use sessionizer_engine::{
    BatchEvents, BatchOptions, ChangeKind, Event, EventClassifier, LiveConfig, PlatformRules, SessionRules,
    Sessionizer, UserKey, sessionize_batch, tiebreak,
};

#[derive(Deserialize)]
struct VectorFile {
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Scenario {
    name: String,
    rules: Rules,
    events: Vec<VectorEvent>,
    expected_sessions: Vec<Expected>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    timeout_seconds: i64,
    dead_app_limit_seconds: Option<i64>,
    #[serde(default)]
    platforms: BTreeMap<String, Platform>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Platform {
    timeout_seconds: i64,
    lifecycle: bool,
}

#[derive(Deserialize, Clone)]
struct VectorEvent {
    user_id: String,
    event_type: String,
    time: String,
    platform: Option<String>,
}

/// A session as the vectors state it; `concluded_at` only from the vectors.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Expected {
    user_id: String,
    start: String,
    end: String,
    event_count: u64,
    active_seconds: i64,
    end_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    concluded_at: Option<String>,
}

fn ms(iso: &str) -> i64 {
    iso.parse::<Timestamp>().unwrap_or_else(|e| panic!("bad time {iso}: {e}")).as_millisecond()
}

fn iso(ms: i64) -> String {
    Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn scenarios() -> Vec<Scenario> {
    let file: VectorFile =
        serde_json::from_str(include_str!("../data/lifecycle_vectors.json")).expect("the vector file parses");
    assert!(file.scenarios.len() >= 6, "the vector file lost scenarios");
    file.scenarios
}

fn rules_of(scenario: &Scenario) -> SessionRules {
    let mut rules = SessionRules::new(scenario.rules.timeout_seconds * 1000).unwrap();
    if let Some(seconds) = scenario.rules.dead_app_limit_seconds {
        rules = rules.with_dead_app_limit_ms(seconds * 1000).unwrap();
    }
    for (name, platform) in &scenario.rules.platforms {
        let platform_rules =
            PlatformRules { timeout_ms: platform.timeout_seconds * 1000, lifecycle: platform.lifecycle };
        rules = rules.with_platform(name, platform_rules).unwrap();
    }
    rules
}

fn live_events(scenario: &Scenario) -> Vec<Event> {
    let classifier = EventClassifier::default();
    let events = scenario.events.iter().enumerate();
    events
        .map(|(n, e)| Event {
            user: UserKey::User(Arc::from(e.user_id.as_str())),
            device_id: None,
            event_type: Arc::from(e.event_type.as_str()),
            page: None,
            time_ms: ms(&e.time),
            class: classifier.classify(&e.event_type, false),
            insert_id: Some(Arc::from(format!("i-{n}"))),
            client_session_id: None,
            platform: e.platform.as_deref().map(Arc::from),
        })
        .collect()
}

fn batch_sessions(scenario: &Scenario, rules: &SessionRules) -> Vec<Expected> {
    let classifier = EventClassifier::default();
    let mut users: Vec<&str> = scenario.events.iter().map(|e| e.user_id.as_str()).collect();
    users.sort();
    users.dedup();
    let user: Vec<u32> =
        scenario.events.iter().map(|e| users.binary_search(&e.user_id.as_str()).unwrap() as u32).collect();
    let time_ms: Vec<i64> = scenario.events.iter().map(|e| ms(&e.time)).collect();
    let class: Vec<_> = scenario.events.iter().map(|e| classifier.classify(&e.event_type, false)).collect();
    let window: Vec<_> =
        scenario.events.iter().map(|e| rules.window_of(e.platform.as_deref(), &e.event_type)).collect();
    let tie = |row: u32| tiebreak(&scenario.events[row as usize].event_type, None, None);
    let events = BatchEvents {
        user: &user,
        user_count: users.len() as u32,
        device: &[],
        time_ms: &time_ms,
        class: &class,
        client_session: &[],
        window: &window,
        tiebreak: &tie,
    };
    let mut sessions: Vec<Expected> = sessionize_batch(&events, rules, BatchOptions::default())
        .sessions
        .iter()
        .map(|s| Expected {
            user_id: users[s.user as usize].to_string(),
            start: iso(s.start_ms),
            end: iso(s.end_ms),
            event_count: s.event_count,
            active_seconds: s.active_ms / 1000,
            end_reason: s.end_reason.as_str().to_string(),
            concluded_at: None,
        })
        .collect();
    sessions.sort();
    sessions
}

/// The live engine fed `batches` with `now` following the latest event, then
/// advanced past every window.
fn live_sessions(rules: &SessionRules, batches: Vec<Vec<Event>>) -> Vec<Expected> {
    let mut engine = Sessionizer::new(LiveConfig::new("lifecycle", rules.clone())).unwrap();
    let mut now_ms = i64::MIN;
    for batch in batches {
        now_ms = batch.iter().map(|e| e.time_ms).max().unwrap_or(now_ms).max(now_ms);
        engine.ingest(batch, now_ms);
    }
    engine.advance(now_ms + rules.join_distance_ms());
    let mut sessions: Vec<Expected> = engine.sessions().iter().map(|r| expected_of(r, None)).collect();
    sessions.sort();
    sessions
}

/// The live engine given every event up front with the clock at the first
/// one, then the clock stepped a second at a time: each session must
/// conclude at the first `now` at which its last event's window has passed.
fn live_conclusions(rules: &SessionRules, events: Vec<Event>) -> Vec<Expected> {
    let mut engine = Sessionizer::new(LiveConfig::new("lifecycle", rules.clone())).unwrap();
    let first_ms = events.iter().map(|e| e.time_ms).min().unwrap();
    let last_ms = events.iter().map(|e| e.time_ms).max().unwrap();
    let mut concluded_at: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut note = |changes: Vec<sessionizer_engine::SessionChange>| {
        for change in changes.into_iter().filter(|c| c.kind == ChangeKind::Concluded) {
            let key = (change.record.user.id().to_string(), change.record.session_id);
            assert!(concluded_at.insert(key, change.raised_at_ms).is_none(), "concluded twice");
        }
    };
    note(engine.ingest(events, first_ms).changes);
    let mut now_ms = first_ms;
    while now_ms <= last_ms + rules.join_distance_ms() {
        note(engine.advance(now_ms));
        now_ms += 1000;
    }
    let mut sessions: Vec<Expected> = engine
        .sessions()
        .iter()
        .map(|r| expected_of(r, concluded_at.get(&(r.user.id().to_string(), r.session_id)).copied()))
        .collect();
    sessions.sort();
    sessions
}

fn expected_of(record: &sessionizer_engine::SessionRecord, concluded_at_ms: Option<i64>) -> Expected {
    Expected {
        user_id: record.user.id().to_string(),
        start: iso(record.start_ms),
        end: iso(record.end_ms),
        event_count: record.event_count,
        active_seconds: record.active_ms / 1000,
        end_reason: record.end_reason.map_or("open", |reason| reason.as_str()).to_string(),
        concluded_at: concluded_at_ms.map(iso),
    }
}

fn normalized(expected: &[Expected], with_conclusions: bool) -> Vec<Expected> {
    let mut expected: Vec<Expected> = expected
        .iter()
        .map(|s| Expected {
            start: iso(ms(&s.start)),
            end: iso(ms(&s.end)),
            concluded_at: s.concluded_at.as_deref().filter(|_| with_conclusions).map(|t| iso(ms(t))),
            ..s.clone()
        })
        .collect();
    expected.sort();
    expected
}

/// SplitMix64, for seeded shuffles and cuts.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn shuffled_batches(events: &[Event], seed: u64) -> Vec<Vec<Event>> {
    let mut state = seed;
    let mut events = events.to_vec();
    for i in (1..events.len()).rev() {
        events.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    let mut batches = Vec::new();
    while !events.is_empty() {
        let size = 1 + (next(&mut state) % 3) as usize;
        batches.push(events.drain(..size.min(events.len())).collect());
    }
    batches
}

#[test]
fn every_lifecycle_vector_passes_in_batch_and_live_in_any_order() {
    for scenario in scenarios() {
        let rules = rules_of(&scenario);
        let expected = normalized(&scenario.expected_sessions, false);
        assert_eq!(batch_sessions(&scenario, &rules), expected, "{}: batch kernel", scenario.name);

        let with_conclusions = normalized(&scenario.expected_sessions, true);
        assert!(
            with_conclusions.iter().all(|s| s.concluded_at.is_some()),
            "{}: vectors state conclusions",
            scenario.name
        );
        let events = live_events(&scenario);
        assert_eq!(live_conclusions(&rules, events.clone()), with_conclusions, "{}: conclusions", scenario.name);
        let mut orders = vec![
            ("one batch", vec![events.clone()]),
            ("reversed", vec![events.iter().rev().cloned().collect()]),
            ("one by one", events.iter().map(|e| vec![e.clone()]).collect()),
        ];
        for seed in 0..20 {
            orders.push(("shuffled", shuffled_batches(&events, seed)));
        }
        for (how, batches) in orders {
            let sessions = live_sessions(&rules, batches);
            assert_eq!(sessions, expected, "{}: live engine, {how}", scenario.name);
        }
    }
}

#[test]
fn platform_rules_are_validated() {
    let rules = SessionRules::new(60_000).unwrap();
    let too_short = PlatformRules { timeout_ms: 999, lifecycle: true };
    assert!(rules.clone().with_platform("ios", too_short).unwrap_err().to_string().contains("at least 1 second"));
    let fine = PlatformRules { timeout_ms: 10_000, lifecycle: true };
    assert!(rules.clone().with_platform("iOS", fine).unwrap_err().to_string().contains("lower case"));
    assert!(rules.clone().with_platform("", fine).is_err());
    assert!(rules.clone().with_dead_app_limit_ms(500).is_err());
    let rules = rules.with_platform("ios", fine).unwrap().with_dead_app_limit_ms(45 * 60_000).unwrap();
    assert_eq!(rules.join_distance_ms(), 45 * 60_000, "the dead-app limit bounds the join distance");
    let mut many = SessionRules::new(60_000).unwrap();
    for n in 0..sessionizer_engine::MAX_PLATFORMS {
        many = many.with_platform(&format!("p{n}"), fine).unwrap();
    }
    assert!(many.with_platform("one-more", fine).is_err(), "the platform count is bounded");
}
