//! A naive reference model of the session definition, and proptests that check
//! both engine entry points against it on random events, shuffled and cut into
//! random batches.
//!
//! The model is written from the definition, as plainly as possible, and shares
//! no code with the engine: it computes local dates with `jiff` directly, keeps
//! every event in memory, and finds user changes by brute force.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;
use sessionizer_engine::{
    BatchEvents, BatchOptions, ChangeKind, EndReason, Event, EventClass, EventClassifier, LiveConfig, NO_DEVICE,
    NO_SESSION, PlatformRules, SessionRecord, SessionRules, Sessionizer, UserKey, client_session_key,
    label_user_changes, sessionize_batch, sessionize_users, tiebreak,
};

const BASE_MS: i64 = 1_767_648_600_000; // 2026-01-05T21:30:00Z: the range crosses midnight UTC and Berlin
const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone)]
struct TestEvent {
    key: UserKey,
    device: Option<u8>,
    event_type: &'static str,
    page: Option<&'static str>,
    time_ms: i64,
    marked_passive: bool,
    insert_id: Option<String>,
    /// The client SDK's session id (`cs-N`), if any.
    client: Option<u8>,
    /// `web`, `ios` or none.
    platform: Option<&'static str>,
}

/// One session in a form both engines and the model can be compared in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Canon {
    key: UserKey,
    start_ms: i64,
    end_ms: i64,
    last_event_ms: i64,
    event_count: u64,
    entry: (String, Option<String>),
    exit: (String, Option<String>),
    end_reason: EndReason,
    active_ms: i64,
}

#[derive(Debug, Clone)]
struct Case {
    rules: SessionRules,
    classifier: EventClassifier,
    events: Vec<TestEvent>,
}

fn classifier() -> EventClassifier {
    EventClassifier::new(["Notification Sent"], ["poll"]).unwrap()
}

fn rules_strategy() -> impl Strategy<Value = SessionRules> {
    let timeout = prop_oneof![Just(MINUTE_MS), Just(5 * MINUTE_MS), Just(10 * MINUTE_MS), Just(30 * MINUTE_MS)];
    let max_length = prop_oneof![3 => Just(None), 1 => Just(Some(15 * MINUTE_MS)), 1 => Just(Some(45 * MINUTE_MS))];
    let midnight = prop_oneof![3 => Just(None), 1 => Just(Some("UTC")), 1 => Just(Some("Europe/Berlin"))];
    let client_splits = prop::bool::weighted(0.3);
    // Platform rules: an app with lifecycle events and a short timeout (as on
    // Braze or Amplitude mobile), web with a timeout of its own.
    let platforms = prop_oneof![
        2 => Just(None),
        1 => (prop_oneof![Just(MINUTE_MS), Just(5 * MINUTE_MS)], prop_oneof![Just(20 * MINUTE_MS), Just(45 * MINUTE_MS)], prop_oneof![Just(None), Just(Some(10 * MINUTE_MS))])
            .prop_map(Some),
    ];
    (timeout, max_length, midnight, client_splits, platforms).prop_map(
        |(timeout_ms, max_length_ms, midnight, client_splits, platforms)| {
            let mut rules = SessionRules::new(timeout_ms).unwrap();
            if let Some((app_timeout_ms, dead_app_limit_ms, web_timeout_ms)) = platforms {
                rules =
                    rules.with_platform("ios", PlatformRules { timeout_ms: app_timeout_ms, lifecycle: true }).unwrap();
                rules = rules.with_dead_app_limit_ms(dead_app_limit_ms).unwrap();
                if let Some(timeout_ms) = web_timeout_ms {
                    rules = rules.with_platform("web", PlatformRules { timeout_ms, lifecycle: false }).unwrap();
                } else {
                    // Events without a platform come from the app.
                    rules = rules.with_default_platform("ios").unwrap();
                }
            }
            if client_splits {
                rules = rules.with_client_session_splits();
            }
            if let Some(max_length_ms) = max_length_ms {
                rules = rules.with_max_length_ms(max_length_ms).unwrap();
            }
            if let Some(name) = midnight {
                rules = rules.with_midnight_split(TimeZone::get(name).unwrap());
            }
            rules
        },
    )
}

fn event_strategy() -> impl Strategy<Value = TestEvent> {
    let key = prop_oneof![
        4 => (0u8..3).prop_map(|n| UserKey::User(Arc::from(format!("user-{n}")))),
        1 => (0u8..2).prop_map(|n| UserKey::Device(Arc::from(format!("device-{n}")))),
    ];
    let event_type = prop_oneof![
        4 => Just("view"),
        3 => Just("click"),
        2 => Just("poll"),
        1 => Just("Notification Sent"),
        2 => Just("App Backgrounded"),
        1 => Just("App Foregrounded"),
    ];
    let platform = prop_oneof![2 => Just(None), 1 => Just(Some("web")), 2 => Just(Some("ios"))];
    let page = prop_oneof![Just(None), Just(Some("/home")), Just(Some("/cart"))];
    // Minutes, so equal times and gaps equal to the timeout are common.
    let time_ms = (0i64..240).prop_map(|minute| BASE_MS + minute * MINUTE_MS);
    let client = prop::option::of(0u8..3);
    (
        key,
        prop::option::of(0u8..2),
        event_type,
        page,
        time_ms,
        prop::bool::weighted(0.1),
        any::<u32>(),
        (client, platform),
    )
        .prop_map(|(key, device, event_type, page, time_ms, marked_passive, id, (client, platform))| TestEvent {
            // An anonymous event's key is its device.
            device: match &key {
                UserKey::Device(id) => Some(id.trim_start_matches("device-").parse().unwrap()),
                UserKey::User(_) => device,
            },
            key,
            event_type,
            page,
            time_ms,
            marked_passive,
            insert_id: Some(format!("ins-{id}")),
            client,
            platform,
        })
}

/// Events plus exact retries of some of them (same insert id), so dedup is exercised.
fn case_strategy() -> impl Strategy<Value = Case> {
    (
        rules_strategy(),
        prop::collection::vec(event_strategy(), 0..60),
        prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    )
        .prop_map(|(rules, mut events, retries)| {
            // Insert ids must be unique among distinct events.
            for (n, event) in events.iter_mut().enumerate() {
                event.insert_id = Some(format!("ins-{n}"));
            }
            if !events.is_empty() {
                for retry in retries {
                    events.push(events[retry.index(events.len())].clone());
                }
            }
            Case { rules, classifier: classifier(), events }
        })
}

fn class_of(case: &Case, event: &TestEvent) -> EventClass {
    case.classifier.classify(event.event_type, event.marked_passive)
}

fn local_date(rules: &SessionRules, time_ms: i64) -> Option<jiff::civil::Date> {
    rules.midnight_time_zone().map(|tz| Timestamp::from_millisecond(time_ms).unwrap().to_zoned(tz.clone()).date())
}

/// How long after an active event its session stays open, and how it ends
/// when nothing follows: the platform's rules, spelled out.
fn window(rules: &SessionRules, event: &TestEvent) -> (i64, EndReason) {
    let platform = event
        .platform
        .or(rules.default_platform())
        .and_then(|name| rules.platforms().find(|(p, _)| *p == name).map(|(_, r)| r));
    match platform {
        None => (rules.timeout_ms(), EndReason::Inactivity),
        Some(PlatformRules { timeout_ms, lifecycle: false }) => (timeout_ms, EndReason::Inactivity),
        Some(PlatformRules { timeout_ms, lifecycle: true }) => {
            if rules.background_event_types().any(|t| t == event.event_type) {
                (timeout_ms, EndReason::Backgrounded)
            } else {
                (rules.dead_app_limit_ms(), EndReason::DeadApp)
            }
        }
    }
}

/// The definition, spelled out.
fn reference(case: &Case) -> Vec<Canon> {
    let rules = &case.rules;
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&TestEvent> =
        case.events.iter().filter(|e| e.insert_id.as_ref().is_none_or(|id| seen.insert(id.clone()))).collect();
    let mut by_key: BTreeMap<UserKey, Vec<&TestEvent>> = BTreeMap::new();
    for event in &distinct {
        if class_of(case, event) != EventClass::Excluded {
            by_key.entry(event.key.clone()).or_default().push(event);
        }
    }
    // Each session with the device and the window of its last active event.
    let mut sessions: Vec<(Canon, Option<u8>, (i64, EndReason))> = Vec::new();
    for (key, mut events) in by_key {
        events.sort_by_key(|e| {
            let passive = class_of(case, e) == EventClass::Passive;
            (e.time_ms, passive, tiebreak(e.event_type, e.page, e.insert_id.as_deref()) >> 1)
        });
        let mut current: Option<(Canon, Option<u8>, (i64, EndReason))> = None;
        // The client session the open session has seen last.
        let mut client: Option<u8> = None;
        for event in events {
            let label = (event.event_type.to_string(), event.page.map(str::to_string));
            let active = class_of(case, event) == EventClass::Active;
            let Some((session, exit_device, exit_window)) = current.as_mut() else {
                if active {
                    current = Some((new_session(&key, event.time_ms, label), event.device, window(rules, event)));
                    client = event.client;
                }
                continue;
            };
            let gap_ok = event.time_ms - session.end_ms < exit_window.0;
            let same_day = local_date(rules, event.time_ms) == local_date(rules, session.start_ms);
            if !active {
                if gap_ok && same_day {
                    session.event_count += 1;
                    session.last_event_ms = event.time_ms;
                }
                continue;
            }
            let split = if !gap_ok {
                Some(exit_window.1)
            } else if !same_day {
                Some(EndReason::Midnight)
            } else if rules.splits_on_client_session()
                && event.client.is_some()
                && client.is_some()
                && event.client != client
                && event.time_ms > session.last_event_ms
            {
                Some(EndReason::ClientSession)
            } else if rules.max_length_ms().is_some_and(|max| event.time_ms - session.start_ms >= max) {
                Some(EndReason::MaxLength)
            } else {
                None
            };
            match split {
                Some(reason) => {
                    let mut done = current.take().unwrap();
                    done.0.end_reason = reason;
                    sessions.push(done);
                    current = Some((new_session(&key, event.time_ms, label), event.device, window(rules, event)));
                    client = event.client;
                }
                None => {
                    // Time after a background event is not time in the app.
                    if exit_window.1 != EndReason::Backgrounded {
                        session.active_ms += event.time_ms - session.end_ms;
                    }
                    *exit_window = window(rules, event);
                    session.end_ms = event.time_ms;
                    session.last_event_ms = event.time_ms;
                    session.event_count += 1;
                    session.exit = label;
                    *exit_device = event.device;
                    if event.client.is_some() {
                        client = event.client;
                    }
                }
            }
        }
        if let Some((mut session, device, exit_window)) = current {
            session.end_reason = exit_window.1;
            sessions.push((session, device, exit_window));
        }
    }
    // User change, by brute force over all events.
    for (session, exit_device, (window_ms, _)) in
        sessions.iter_mut().filter(|s| s.0.end_reason == EndReason::Inactivity)
    {
        let Some(device) = *exit_device else { continue };
        let other_user_came = distinct.iter().any(|e| {
            e.device == Some(device)
                && e.key != session.key
                && class_of(case, e) == EventClass::Active
                && e.time_ms > session.end_ms
                && e.time_ms - session.end_ms < *window_ms
        });
        if other_user_came {
            session.end_reason = EndReason::UserChange;
        }
    }
    let mut sessions: Vec<Canon> = sessions.into_iter().map(|(session, _, _)| session).collect();
    sessions.sort();
    sessions
}

fn new_session(key: &UserKey, time_ms: i64, label: (String, Option<String>)) -> Canon {
    Canon {
        key: key.clone(),
        start_ms: time_ms,
        end_ms: time_ms,
        last_event_ms: time_ms,
        event_count: 1,
        entry: label.clone(),
        exit: label,
        end_reason: EndReason::Inactivity,
        active_ms: 0,
    }
}

/// The batch kernel, with the interning and dedup the CLI does.
fn batch(case: &Case) -> Vec<Canon> {
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&TestEvent> =
        case.events.iter().filter(|e| e.insert_id.as_ref().is_none_or(|id| seen.insert(id.clone()))).collect();
    let mut keys: Vec<UserKey> = events.iter().map(|e| e.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let user: Vec<u32> = events.iter().map(|e| keys.binary_search(&e.key).unwrap() as u32).collect();
    let device: Vec<u32> = events.iter().map(|e| e.device.map_or(NO_DEVICE, u32::from)).collect();
    let time_ms: Vec<i64> = events.iter().map(|e| e.time_ms).collect();
    let class: Vec<EventClass> = events.iter().map(|e| class_of(case, e)).collect();
    let client_session: Vec<u64> =
        events.iter().map(|e| e.client.map_or(0, |c| client_session_key(&format!("cs-{c}")))).collect();
    let window: Vec<_> = if case.rules.has_platform_rules() {
        events.iter().map(|e| case.rules.window_of(e.platform, e.event_type)).collect()
    } else {
        Vec::new()
    };
    let tie = |row: u32| {
        let e = events[row as usize];
        tiebreak(e.event_type, e.page, e.insert_id.as_deref())
    };
    let input = BatchEvents {
        user: &user,
        user_count: keys.len() as u32,
        device: &device,
        time_ms: &time_ms,
        class: &class,
        client_session: &client_session,
        window: &window,
        tiebreak: &tie,
    };
    let result = sessionize_batch(&input, &case.rules, BatchOptions { assign_events: true });
    // The parallel composition: disjoint user ranges, then user-change labels.
    let split = keys.len() as u32 / 2;
    let options = BatchOptions { assign_events: true };
    let first = sessionize_users(&input, &case.rules, options, 0..split);
    let second = sessionize_users(&input, &case.rules, options, split..keys.len() as u32);
    let mut sessions: Vec<_> = first.sessions.iter().chain(&second.sessions).copied().collect();
    label_user_changes(&input, &mut sessions);
    assert_eq!(sessions, result.sessions, "split by user range");
    assert_eq!(first.passive_without_session + second.passive_without_session, result.passive_without_session);
    let orphans = (0..class.len())
        .filter(|&row| class[row] == EventClass::Passive && result.event_session[row] == NO_SESSION)
        .count() as u64;
    assert_eq!(result.passive_without_session, orphans);
    // Every event is in the session the kernel says, or in none for a reason;
    // and its session is the one whose `[start_ms, last_event_ms]` holds its
    // time (what a store's as-of join relies on).
    for (row, &index) in result.event_session.iter().enumerate() {
        let by_time = result.sessions.iter().position(|s| {
            s.user == user[row]
                && class[row] != EventClass::Excluded
                && (s.start_ms..=s.last_event_ms).contains(&time_ms[row])
        });
        if index == NO_SESSION {
            assert_ne!(class[row], EventClass::Active, "an active event is always in a session");
            assert_eq!(by_time, None, "an event outside sessions is in no session's time range");
            continue;
        }
        let session = &result.sessions[index as usize];
        assert_eq!(session.user, user[row]);
        assert!(session.start_ms <= time_ms[row] && time_ms[row] <= session.last_event_ms);
        assert!(session.end_ms <= session.last_event_ms);
        if class[row] == EventClass::Active {
            assert!(time_ms[row] <= session.end_ms);
        }
        assert_eq!(by_time, Some(index as usize), "the time range finds the event's session");
    }
    let label = |row: u32| {
        let e = events[row as usize];
        (e.event_type.to_string(), e.page.map(str::to_string))
    };
    let mut sessions: Vec<Canon> = result
        .sessions
        .iter()
        .map(|s| Canon {
            key: keys[s.user as usize].clone(),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            last_event_ms: s.last_event_ms,
            event_count: s.event_count,
            entry: label(s.entry_event),
            exit: label(s.exit_event),
            end_reason: s.end_reason,
            active_ms: s.active_ms,
        })
        .collect();
    sessions.sort();
    sessions
}

fn live_event(case: &Case, e: &TestEvent) -> Event {
    Event {
        user: e.key.clone(),
        device_id: e.device.map(|d| Arc::from(format!("device-{d}"))),
        event_type: Arc::from(e.event_type),
        page: e.page.map(Arc::from),
        time_ms: e.time_ms,
        class: class_of(case, e),
        insert_id: e.insert_id.as_deref().map(Arc::from),
        client_session_id: e.client.map(|c| Arc::from(format!("cs-{c}"))),
        platform: e.platform.map(Arc::from),
    }
}

fn canon_of(record: &SessionRecord) -> Canon {
    Canon {
        key: record.user.clone(),
        start_ms: record.start_ms,
        end_ms: record.end_ms,
        last_event_ms: record.last_event_ms,
        event_count: record.event_count,
        entry: (record.entry_event_type.to_string(), record.entry_page.as_deref().map(str::to_string)),
        exit: (record.exit_event_type.to_string(), record.exit_page.as_deref().map(str::to_string)),
        end_reason: record.end_reason.expect("concluded sessions have an end reason"),
        active_ms: record.active_ms,
    }
}

/// The live engine fed `arrival` cut at `cuts`, `now` following the latest event
/// seen; then everything concluded. Also replays the change feed and checks it
/// rebuilds exactly the engine's final state.
fn live(case: &Case, arrival: &[usize], cuts: &[usize]) -> Vec<Canon> {
    let mut engine = Sessionizer::new(LiveConfig::new("model", case.rules.clone())).unwrap();
    let mut feed: HashMap<(UserKey, i64), SessionRecord> = HashMap::new();
    let mut last_revision = 0;
    let mut apply = |changes: Vec<sessionizer_engine::SessionChange>| {
        for change in changes {
            assert!(change.record.revision > last_revision, "revisions increase");
            last_revision = change.record.revision;
            let id = (change.record.user.clone(), change.record.session_id);
            match change.kind {
                ChangeKind::Superseded { .. } => {
                    assert!(feed.remove(&id).is_some(), "superseded a session never published");
                }
                ChangeKind::Started => {
                    assert!(feed.insert(id, change.record).is_none(), "started a session twice");
                }
                ChangeKind::Amended | ChangeKind::Concluded => {
                    assert!(feed.insert(id, change.record).is_some(), "amended or concluded an unknown session");
                }
            }
        }
    };
    let mut now_ms = i64::MIN;
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(arrival.len())).collect();
    ends.push(arrival.len());
    ends.sort_unstable();
    for end in ends {
        let batch: Vec<Event> = arrival[start..end].iter().map(|&i| live_event(case, &case.events[i])).collect();
        start = end;
        now_ms = batch.iter().map(|e| e.time_ms).max().unwrap_or(now_ms).max(now_ms);
        let outcome = engine.ingest(batch, now_ms);
        apply(outcome.changes);
    }
    let end_of_time = BASE_MS + 300 * MINUTE_MS + case.rules.join_distance_ms();
    apply(engine.advance(end_of_time));
    let records = engine.sessions();
    let mut replayed: Vec<SessionRecord> = feed.into_values().collect();
    replayed.sort_by(|a, b| (&a.user, a.start_ms).cmp(&(&b.user, b.start_ms)));
    assert_eq!(replayed, records, "the change feed rebuilds the engine's state");
    assert!(records.iter().all(|r| r.concluded), "all sessions concluded at the end of time");
    let mut sessions: Vec<Canon> = records.iter().map(canon_of).collect();
    sessions.sort();
    sessions
}

fn arrival_strategy() -> impl Strategy<Value = (Case, Vec<usize>, Vec<usize>)> {
    case_strategy().prop_flat_map(|case| {
        let n = case.events.len();
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        let cuts = prop::collection::vec(0..=n, 0..6);
        (Just(case), order, cuts)
    })
}

proptest! {
    // 512 cases by default; PROPTEST_CASES=100000 for a long soak.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn batch_kernel_matches_the_reference_model((case, arrival, _cuts) in arrival_strategy()) {
        // Row order must not matter either.
        let shuffled = Case { events: arrival.iter().map(|&i| case.events[i].clone()).collect(), ..case.clone() };
        prop_assert_eq!(batch(&shuffled), reference(&case));
    }

    #[test]
    fn live_engine_in_any_order_and_batches_matches_the_reference_model((case, arrival, cuts) in arrival_strategy()) {
        prop_assert_eq!(live(&case, &arrival, &cuts), reference(&case));
    }
}

#[test]
fn the_model_itself_splits_where_the_definition_says() {
    // A hand-checked case, so a wrong model cannot make both engines look right.
    let rules = SessionRules::new(10 * MINUTE_MS).unwrap().with_max_length_ms(15 * MINUTE_MS).unwrap();
    let at = |minute: i64, event_type: &'static str| TestEvent {
        key: UserKey::User(Arc::from("u")),
        device: None,
        event_type,
        page: None,
        time_ms: BASE_MS + minute * MINUTE_MS,
        marked_passive: false,
        insert_id: None,
        client: None,
        platform: None,
    };
    let case = Case {
        rules,
        classifier: classifier(),
        events: vec![at(0, "view"), at(9, "view"), at(12, "poll"), at(16, "view"), at(30, "view"), at(45, "poll")],
    };
    let sessions = reference(&case);
    let summary: Vec<(i64, i64, u64, EndReason)> = sessions
        .iter()
        .map(|s| ((s.start_ms - BASE_MS) / MINUTE_MS, (s.end_ms - BASE_MS) / MINUTE_MS, s.event_count, s.end_reason))
        .collect();
    assert_eq!(
        summary,
        vec![(0, 9, 3, EndReason::MaxLength), (16, 16, 1, EndReason::Inactivity), (30, 30, 1, EndReason::Inactivity)]
    );
    assert_eq!(batch(&case), sessions);
}

#[test]
fn client_session_ids_split_only_where_they_change() {
    let rules = SessionRules::new(30 * MINUTE_MS).unwrap().with_client_session_splits();
    let at = |minute: i64, event_type: &'static str, client: Option<u8>| TestEvent {
        key: UserKey::User(Arc::from("u")),
        device: None,
        event_type,
        page: None,
        time_ms: BASE_MS + minute * MINUTE_MS,
        marked_passive: false,
        insert_id: Some(format!("i-{minute}-{event_type}")),
        client,
        platform: None,
    };
    // cs-0 until minute 10; an event without a client id continues it; cs-1
    // from minute 12; a poll (passive) with cs-0 joins without splitting; a
    // 40-minute gap still ends cs-1's session by inactivity.
    let events = vec![
        at(0, "view", Some(0)),
        at(5, "click", None),
        at(10, "view", Some(0)),
        at(12, "view", Some(1)),
        at(13, "poll", Some(0)),
        at(20, "view", Some(1)),
        at(60, "view", Some(1)),
    ];
    let case = Case { rules: rules.clone(), classifier: classifier(), events: events.clone() };
    let sessions = reference(&case);
    let summary: Vec<(i64, i64, u64, EndReason)> = sessions
        .iter()
        .map(|s| ((s.start_ms - BASE_MS) / MINUTE_MS, (s.end_ms - BASE_MS) / MINUTE_MS, s.event_count, s.end_reason))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 10, 3, EndReason::ClientSession),
            (12, 20, 3, EndReason::Inactivity),
            (60, 60, 1, EndReason::Inactivity)
        ]
    );
    assert_eq!(batch(&case), sessions);
    let arrival: Vec<usize> = (0..events.len()).rev().collect();
    assert_eq!(live(&case, &arrival, &[3]), sessions, "the live engine, fed backwards");
    // Without the setting, client ids change nothing.
    let plain = Case { rules: SessionRules::new(30 * MINUTE_MS).unwrap(), classifier: classifier(), events };
    assert_eq!(reference(&plain).len(), 2);
    assert_eq!(batch(&plain), reference(&plain));
}
