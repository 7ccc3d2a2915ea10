use sessionizer_engine::{EventClass, UserKey};

use super::*;

const T0: i64 = 1_767_603_600_000; // 2026-01-05T09:00:00Z
const MIN: i64 = 60_000;

fn event(user: &str, event_type: &str, time_ms: i64, insert_id: &str) -> NewEvent {
    NewEvent {
        user_id: Some(user.to_string()),
        device_id: None,
        event_type: event_type.to_string(),
        time_ms,
        insert_id: Some(insert_id.to_string()),
        page: None,
        passive: false,
        properties: Some(r#"{"k":1}"#.to_string()),
        received_ms: time_ms,
        client_session_id: None,
        platform: None,
        ip: None,
    }
}

#[test]
fn projects_keys_and_settings_persist() {
    let dir = tempfile::tempdir().unwrap();
    let created = {
        let mut store = Store::open(dir.path()).unwrap();
        let created = store.create_project("Shop", T0).unwrap();
        assert!(created.write_key.starts_with("sk_write_") && created.read_key.starts_with("sk_read_"));
        assert_ne!(created.write_key, created.read_key);
        let mut settings = created.project.settings.clone();
        settings.timeout_ms = 10 * MIN;
        store.set_settings(&created.project, &settings).unwrap();
        created
    };
    let store = Store::open(dir.path()).unwrap();
    let project = store.project(&created.project.public_id).unwrap();
    assert_eq!(project.name, "Shop");
    assert_eq!(project.settings.timeout_ms, 10 * MIN);
    assert_eq!(store.project("Shop").unwrap().id, project.id);
    let keys = store.api_keys().unwrap();
    assert_eq!(keys.len(), 2);
    let write = keys.iter().find(|k| k.role == KeyRole::Write).unwrap();
    assert!(constant_time_eq(&write.hash, &hash_key(&created.write_key)));
    assert!(!constant_time_eq(&write.hash, &hash_key(&created.read_key)));
    // Only hashes are stored.
    let bytes = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    assert!(!bytes.windows(created.write_key.len()).any(|w| w == created.write_key.as_bytes()));
}

#[test]
fn bad_names_and_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    assert!(matches!(store.create_project("  ", T0), Err(StoreError::InvalidName(_))));
    assert!(matches!(
        store.create_project(&"x".repeat(MAX_PROJECT_NAME_BYTES + 1), T0),
        Err(StoreError::InvalidName(_))
    ));
    let project = store.create_project("p", T0).unwrap().project;
    let settings = ProjectSettings { timeout_ms: 999, ..ProjectSettings::default() };
    let error = store.set_settings(&project, &settings).unwrap_err().to_string();
    assert!(error.contains("timeout_ms"), "{error}");
    let settings = ProjectSettings { midnight_split_time_zone: Some("Mars/Base".into()), ..ProjectSettings::default() };
    assert!(store.set_settings(&project, &settings).unwrap_err().to_string().contains("Mars/Base"));
    assert!(matches!(store.project("nope"), Err(StoreError::UnknownProject(_))));
}

#[test]
fn events_dedup_by_insert_id_per_project() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = store.create_project("a", T0).unwrap().project;
    let b = store.create_project("b", T0).unwrap().project;
    let batch = store.batch().unwrap();
    assert!(batch.insert_event(a.id, &event("u", "x", T0, "i1")).unwrap());
    assert!(!batch.insert_event(a.id, &event("u", "x", T0 + 5, "i1")).unwrap(), "same project, same insert id");
    assert!(batch.insert_event(b.id, &event("u", "x", T0, "i1")).unwrap(), "another project");
    let mut no_id = event("u", "x", T0, "");
    no_id.insert_id = None;
    assert!(batch.insert_event(a.id, &no_id).unwrap());
    assert!(batch.insert_event(a.id, &no_id).unwrap(), "events without an insert id are never deduplicated");
    batch.commit().unwrap();
    drop(store);
    let store = Store::open_reader(dir.path()).unwrap();
    assert_eq!(store.event_count(a.id).unwrap(), 3);
    assert_eq!(store.event_count(b.id).unwrap(), 1);
}

#[test]
fn an_uncommitted_batch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    {
        let batch = store.batch().unwrap();
        batch.insert_event(project.id, &event("u", "x", T0, "i1")).unwrap();
    }
    assert_eq!(store.event_count(project.id).unwrap(), 0);
}

#[test]
fn rebuild_export_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    let mut events = vec![
        event("alice", "Page Viewed", T0, "a1"),
        event("alice", "Notification Sent", T0 + 5 * MIN, "a2"),
        event("alice", "Button Clicked", T0 + 10 * MIN, "a3"),
        event("alice", "Page Viewed", T0 + 60 * MIN, "a4"),
        event("bob", "Page Viewed", T0 + 2 * MIN, "b1"),
    ];
    let mut poll = event("alice", "poll", T0 + 20 * MIN, "a5");
    poll.passive = true;
    events.push(poll);
    let batch = store.batch().unwrap();
    for e in &events {
        batch.insert_event(project.id, e).unwrap();
    }
    batch.commit().unwrap();
    let now = T0 + 10 * 60 * MIN;
    assert_eq!(store.rebuild_project(&project, now).unwrap(), 3);
    let alice = UserKey::User("alice".into());
    let sessions = store.sessions_of_user(project.id, &alice).unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        (sessions[0].start_ms, sessions[0].end_ms, sessions[0].last_event_ms),
        (T0, T0 + 10 * MIN, T0 + 20 * MIN)
    );
    assert_eq!(sessions[0].event_count, 3, "two active and the passive poll");
    assert_eq!(sessions[0].end_reason.as_deref(), Some("inactivity"));
    assert!(sessions[0].concluded && sessions[1].concluded);
    let usage = store.user_usage(project.id, &alice).unwrap().unwrap();
    assert_eq!(
        usage,
        UserUsage { session_count: 2, first_seen_ms: T0, last_seen_ms: T0 + 60 * MIN, total_length_ms: 10 * MIN }
    );
    assert_eq!(store.user_usage(project.id, &UserKey::User("nobody".into())).unwrap(), None);

    let (_, classifier) = project.settings.compile().unwrap();
    let classify = |t: &str, p: bool| classifier.classify(t, p);
    let mut seen = Vec::new();
    let count = store
        .export_events(project.id, 0, i64::MAX, &classify, &mut |e, session| {
            seen.push((e.event.insert_id.clone().unwrap(), session.map(|(id, _)| id)));
            Ok(())
        })
        .unwrap();
    assert_eq!(count, 6);
    let expected = [
        ("a1", Some(T0)),
        ("b1", Some(T0 + 2 * MIN)),
        ("a2", None), // excluded, although inside alice's session in time
        ("a3", Some(T0)),
        ("a5", Some(T0)), // passive, joined
        ("a4", Some(T0 + 60 * MIN)),
    ];
    let expected: Vec<_> = expected.iter().map(|(id, s)| (id.to_string(), *s)).collect();
    assert_eq!(seen, expected);
    assert!(classify("Notification Sent", false) == EventClass::Excluded);

    // A second rebuild changes nothing and records no change.
    let before = store.last_change_seq().unwrap();
    store.rebuild_project(&project, now).unwrap();
    assert_eq!(store.last_change_seq().unwrap(), before);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(Store::open(dir.path()), Err(StoreError::NewerSchema { found: 99, .. })));
}

#[test]
fn event_pages_cover_everything_once_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    let batch = store.batch().unwrap();
    // Many events share a time, so pages must break ties by seq.
    for i in 0..25 {
        batch.insert_event(project.id, &event("u", "e", T0 + (i % 4) * MIN, &format!("i{i}"))).unwrap();
    }
    batch.commit().unwrap();
    let mut seen = Vec::new();
    let mut after = (T0 + MIN, i64::MIN);
    loop {
        let page = store.events_page(project.id, after, 4).unwrap();
        let Some(last) = page.last() else { break };
        after = (last.event.time_ms, last.seq);
        seen.extend(page.iter().map(|e| (e.event.time_ms, e.seq)));
    }
    let mut expected = seen.clone();
    expected.sort();
    expected.dedup();
    assert_eq!(seen, expected, "in (time, seq) order, each once");
    assert_eq!(seen.len(), 25 - 7, "everything from T0 + 1 min on (seven events are at T0)");
}

#[test]
fn client_session_source_splits_where_the_sdk_session_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    let batch = store.batch().unwrap();
    for (i, (minute, client)) in [(0, "a"), (5, "a"), (8, "b"), (12, "b")].into_iter().enumerate() {
        let mut e = event("u", "view", T0 + minute * MIN, &format!("i{i}"));
        e.client_session_id = Some(client.to_string());
        batch.insert_event(project.id, &e).unwrap();
    }
    batch.commit().unwrap();
    let now = T0 + 24 * 60 * MIN;
    assert_eq!(store.rebuild_project(&project, now).unwrap(), 1, "server: one session, client ids ignored");
    let settings = ProjectSettings { session_source: "client".into(), ..project.settings.clone() };
    store.set_settings(&project, &settings).unwrap();
    let project = store.project(&project.public_id).unwrap();
    assert_eq!(store.rebuild_project(&project, now).unwrap(), 2);
    let sessions = store.sessions_of_user(project.id, &UserKey::User("u".into())).unwrap();
    assert_eq!(sessions[0].end_reason.as_deref(), Some("client_session"));
    let bad = ProjectSettings { session_source: "sdk".into(), ..project.settings.clone() };
    assert!(store.set_settings(&project, &bad).unwrap_err().to_string().contains("session_source"));
}

/// The board caught up from the change log equals a board loaded afresh from
/// the sessions table, through merges (late events), new users and a time
/// zone change.
#[test]
fn a_caught_up_board_equals_a_fresh_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    let insert = |store: &mut Store, events: &[NewEvent]| {
        let batch = store.batch().unwrap();
        for event in events {
            batch.insert_event(project.id, event).unwrap();
        }
        batch.commit().unwrap();
    };
    insert(
        &mut store,
        &[
            event("a", "view", T0, "1"),
            event("a", "view", T0 + 40 * MIN, "2"),
            event("b", "view", T0 + 5 * MIN, "3"),
            event("b", "Notification Sent", T0 + 6 * MIN, "4"),
        ],
    );
    store.rebuild_project(&project, T0 + 10 * 60 * MIN).unwrap();
    let mut board = store.load_board().unwrap();
    let day = (T0 / 86_400_000) as i32;
    let figures = |board: &Board| board.figures(project.id, day - 1, day + 1, &[60_000]);
    let before = figures(&board);
    assert_eq!((before.sessions, before.users), (3, 2));

    // A late event bridges a's two sessions; c appears; b gets a second session.
    insert(
        &mut store,
        &[event("a", "view", T0 + 20 * MIN, "5"), event("c", "view", T0, "6"), event("b", "view", T0 + 90 * MIN, "7")],
    );
    store.rebuild_project(&project, T0 + 10 * 60 * MIN).unwrap();
    assert!(store.catch_up_board(&mut board).unwrap() > 0);
    let fresh = store.load_board().unwrap();
    assert_eq!(figures(&board), figures(&fresh));
    assert_eq!((figures(&board).sessions, figures(&board).users), (4, 3));
    assert_eq!(figures(&board).total_length_ms, 40 * MIN);
    assert_eq!(board.applied_seq(), fresh.applied_seq());
    // Nothing new: nothing applied.
    assert_eq!(store.catch_up_board(&mut board).unwrap(), 0);

    // A time zone change moves the days of the caught-up board too.
    let mut settings = project.settings.clone();
    settings.time_zone = "Pacific/Kiritimati".to_string(); // UTC+14: 09:00Z is 23:00 the same day there
    store.set_settings(&project, &settings).unwrap();
    store.catch_up_board(&mut board).unwrap();
    assert_eq!(figures(&board), figures(&store.load_board().unwrap()));
}
