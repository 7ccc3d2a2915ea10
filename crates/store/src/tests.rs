use sessionizer_engine::{EventClass, UserKey};

use super::*;
use crate::queries::SESSION_HISTORY_WHERE;

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

/// Two insert ids whose hashes collide are two events: the index narrows the
/// search to the hash, the ids decide.
#[test]
fn a_hash_collision_is_not_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("p", T0).unwrap().project;
    let batch = store.batch().unwrap();
    assert!(batch.insert_event(project.id, &event("u", "x", T0, "a")).unwrap());
    // Give "a" the hash of "b", as a collision would.
    batch.tx.execute("UPDATE events SET insert_hash = ?1", params![insert_hash("b")]).unwrap();
    assert!(!insert_id_stored(&batch.tx, project.id, "b").unwrap(), "same hash, another id");
    assert!(batch.insert_event(project.id, &event("u", "x", T0 + 1, "b")).unwrap());
    assert!(insert_id_stored(&batch.tx, project.id, "b").unwrap());
    assert!(!batch.insert_event(project.id, &event("u", "x", T0 + 2, "b")).unwrap(), "the second of two rows matches");
    batch.commit().unwrap();
    assert_eq!(store.event_count(project.id).unwrap(), 2);
}

/// Deduplication seeks the hash index, never scans the events.
#[test]
fn the_insert_id_probe_seeks_the_hash_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan: String = store
        .conn
        .query_row(&format!("EXPLAIN QUERY PLAN {INSERT_ID_PROBE_SQL}"), params![1, 2], |row| row.get(3))
        .unwrap();
    assert_eq!(plan, "SEARCH events USING INDEX events_insert_hash (project=? AND insert_hash=?)");
}

/// A session's history is found by the head of its uid and then the whole
/// uid: sessions of many users starting in the same millisecond share heads
/// (16 bits tell them apart), and each history holds only its own changes.
#[test]
fn session_history_tells_apart_uids_with_one_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let users = 5_000;
    let batch = store.batch().unwrap();
    for kind in [StoredChangeKind::Started, StoredChangeKind::Amended] {
        for user in 0..users {
            write_session(&batch, 1, kind, &format!("u{user}"), T0, T0 + MIN);
        }
    }
    batch.commit().unwrap();
    let uids: Vec<Uuid> = (0..users)
        .map(|user| sessionizer_engine::session_uid("p", &UserKey::User(format!("u{user}").into()), T0))
        .collect();
    let heads: std::collections::HashSet<i64> = uids.iter().map(uid_head).collect();
    assert!(heads.len() < users, "the test needs uids sharing a head");
    for (user, uid) in uids.iter().enumerate() {
        let history = store.session_history(1, uid, 10).unwrap();
        let kinds: Vec<&str> = history.iter().map(|change| change.kind.as_str()).collect();
        assert_eq!(kinds, ["started", "amended"], "u{user}");
        assert!(history.iter().all(|change| change.session_uid == uid.to_string()));
        assert!(history[0].seq < history[1].seq);
    }
    assert!(store.session_history(2, &uids[0], 10).unwrap().is_empty(), "another project");
    let mut explain = store
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN SELECT seq FROM session_changes WHERE {SESSION_HISTORY_WHERE}"))
        .unwrap();
    let plan: Vec<String> =
        explain.query_map(params![1, 2, "x", 3], |row| row.get(3)).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        plan,
        ["SEARCH session_changes USING INDEX session_changes_uid_head (project=? AND session_uid_head=?)"],
        "a seek, and no sort for ORDER BY seq"
    );
}

/// A v6 database (text indexes on insert ids and session uids) migrates to
/// the integer keys: every stored row gets its key, across several fill
/// chunks, and deduplication and history still find the rows stored before.
#[test]
fn v6_text_keys_become_integers_on_migration() {
    let dir = tempfile::tempdir().unwrap();
    let rows = schema::FILL_CHUNK_ROWS * 2 + 7;
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        schema::migrate_to(&conn, 6).unwrap();
        conn.execute(
            "INSERT INTO projects (id, public_id, name, settings, created_ms) VALUES (1, 'prj_1', 'p', ?1, ?2)",
            params![settings_json(&ProjectSettings::default()), T0],
        )
        .unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO events (project, user_kind, user_key, user_id, event_type, time_ms, insert_id, passive, \
                 received_ms) VALUES (1, 0, 'u', 'u', 'x', ?1, ?2, 0, ?1)",
            )
            .unwrap();
        for i in 0..rows {
            // Every tenth event has no insert id.
            let insert_id = (i % 10 != 3).then(|| format!("id-{i}"));
            insert.execute(params![T0 + i as i64, insert_id]).unwrap();
        }
        drop(insert);
        let mut change = conn
            .prepare(
                "INSERT INTO session_changes (project, kind, user_kind, user_key, session_id, session_uid, start_ms, \
                 end_ms, last_event_ms, event_count, raised_at_ms, concluded) \
                 VALUES (1, 'started', 0, 'u', ?1, ?2, ?1, ?1, ?1, 1, ?1, 0)",
            )
            .unwrap();
        for i in 0..rows {
            let start = T0 + i as i64;
            let uid = sessionizer_engine::session_uid("p", &UserKey::User("u".into()), start);
            change.execute(params![start, uid.to_string()]).unwrap();
        }
        drop(change);
        conn.execute_batch("COMMIT").unwrap();
    }
    let mut store = Store::open(dir.path()).unwrap();
    let mut statement = store.conn.prepare("SELECT insert_id, insert_hash FROM events").unwrap();
    let stored: Vec<(Option<String>, Option<i64>)> =
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect();
    drop(statement);
    assert_eq!(stored.len(), rows);
    for (insert_id, hash) in &stored {
        assert_eq!(*hash, insert_id.as_deref().map(insert_hash), "{insert_id:?}");
    }
    let index = |name: &str| -> i64 {
        store.conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = ?1", [name], |row| row.get(0)).unwrap()
    };
    assert_eq!((index("events_insert_hash"), index("events_insert_id")), (1, 0));
    assert_eq!((index("session_changes_uid_head"), index("session_changes_uid")), (1, 0));
    let mut statement = store.conn.prepare("SELECT session_uid, session_uid_head FROM session_changes").unwrap();
    let changes: Vec<(String, i64)> =
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect();
    drop(statement);
    assert_eq!(changes.len(), rows);
    for (uid, head) in &changes {
        assert_eq!(*head, uid_head(&Uuid::parse_str(uid).unwrap()), "{uid}");
    }
    let last = sessionizer_engine::session_uid("p", &UserKey::User("u".into()), T0 + rows as i64 - 1);
    assert_eq!(store.session_history(1, &last, 10).unwrap().len(), 1);
    let batch = store.batch().unwrap();
    for i in [0, 1, schema::FILL_CHUNK_ROWS, rows - 1] {
        assert!(!batch.insert_event(1, &event("u", "x", T0, &format!("id-{i}"))).unwrap(), "id-{i} was stored");
    }
    assert!(batch.insert_event(1, &event("u", "x", T0, "id-3")).unwrap(), "event 3 had no insert id");
    batch.commit().unwrap();
}

/// SQLite is built without the process-wide page cache and allocation
/// statistics (`.cargo/config.toml`): their mutexes serialised the server's
/// threads. This fails when the build lost those flags.
#[test]
fn sqlite_is_built_without_process_wide_locks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut statement = store.conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(options.iter().any(|option| option == "THREADSAFE=1"), "{options:?}");
    assert!(!options.iter().any(|option| option == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
    assert!(options.iter().any(|option| option == "DEFAULT_MEMSTATUS=0"), "{options:?}");
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

/// The replay floor as it was computed before schema v5: a scan of every
/// session of the project. The reference the indexed answer must equal.
fn replay_floor_by_scan(conn: &rusqlite::Connection, project: i64, since_ms: i64) -> Option<i64> {
    conn.query_row(
        "SELECT min(start_ms) FROM sessions WHERE project = ?1 AND last_event_ms >= ?2",
        params![project, since_ms],
        |row| row.get(0),
    )
    .unwrap()
}

/// splitmix64: random data from a seed, so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n as u64) as i64
    }
}

/// Writes one session state (`kind` superseded deletes it) through the write path.
fn write_session(
    batch: &Batch<'_>,
    project: i64,
    kind: StoredChangeKind,
    user: &str,
    start_ms: i64,
    last_event_ms: i64,
) {
    let user = UserKey::User(user.into());
    let session = StoredSession {
        session_uid: sessionizer_engine::session_uid("p", &user, start_ms),
        user,
        session_id: start_ms,
        start_ms,
        end_ms: start_ms,
        last_event_ms,
        event_count: 1,
        active_ms: 0,
        end_reason: None,
        concluded: false,
        entry_event_type: "e".into(),
        entry_page: None,
        exit_event_type: "e".into(),
        exit_page: None,
        revision: 0,
    };
    batch.write_change(project, kind, &session, None, last_event_ms).unwrap();
}

/// A session's length: mostly short, some within a few ms of `LONG_SESSION_MS`
/// either side (the partial index's edge), some many hours.
fn random_length(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => rng.below(30 * MIN),
        1 => LONG_SESSION_MS - 3 + rng.below(7),
        2 => rng.below(3 * LONG_SESSION_MS),
        _ => rng.below(30 * LONG_SESSION_MS),
    }
}

/// Interesting floors: random ones, and each side of the data's edges (a
/// session's start and last event, and `LONG_SESSION_MS` before its last event).
fn random_since(rng: &mut Rng, sessions: &[(i64, i64)]) -> i64 {
    if sessions.is_empty() || rng.below(3) == 0 {
        return T0 - 2 * LONG_SESSION_MS + rng.below(50 * LONG_SESSION_MS);
    }
    let (start, last) = sessions[rng.below(sessions.len() as i64) as usize];
    let edge = [start, last, last - LONG_SESSION_MS, start + LONG_SESSION_MS][rng.below(4) as usize];
    edge - 1 + rng.below(3)
}

/// The indexed replay floor equals the full scan's on random sessions,
/// written, amended (growing and shrinking across the long-session edge) and
/// superseded through the write path, in two projects.
#[test]
fn the_indexed_replay_floor_equals_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let projects =
        [store.create_project("a", T0).unwrap().project.id, store.create_project("b", T0).unwrap().project.id];
    let mut rng = Rng(0x5e55_1012);
    for round in 0..30 {
        // (project, user, start) -> last event, mirroring the table.
        let mut live: std::collections::BTreeMap<(i64, String, i64), i64> = std::collections::BTreeMap::new();
        for _ in 0..4 {
            let batch = store.batch().unwrap();
            for _ in 0..rng.below(60) {
                let project = projects[rng.below(2) as usize];
                let user = format!("u{}", rng.below(8));
                let existing: Vec<(i64, String, i64)> = live.keys().filter(|k| k.0 == project).cloned().collect();
                if !existing.is_empty() && rng.below(3) > 0 {
                    let key = existing[rng.below(existing.len() as i64) as usize].clone();
                    if rng.below(4) == 0 {
                        write_session(&batch, key.0, StoredChangeKind::Superseded, &key.1, key.2, key.2);
                        live.remove(&key);
                    } else {
                        let last = key.2 + random_length(&mut rng);
                        write_session(&batch, key.0, StoredChangeKind::Amended, &key.1, key.2, last);
                        live.insert(key, last);
                    }
                } else {
                    let start = T0 + rng.below(40 * LONG_SESSION_MS);
                    let last = start + random_length(&mut rng);
                    write_session(&batch, project, StoredChangeKind::Started, &user, start, last);
                    live.insert((project, user, start), last);
                }
            }
            batch.commit().unwrap();
            for project in projects {
                let sessions: Vec<(i64, i64)> =
                    live.iter().filter(|(k, _)| k.0 == project).map(|(k, last)| (k.2, *last)).collect();
                for _ in 0..25 {
                    let since = random_since(&mut rng, &sessions);
                    let expected = sessions.iter().filter(|(_, last)| *last >= since).map(|(start, _)| *start).min();
                    assert_eq!(replay_floor_by_scan(&store.conn, project, since), expected, "the model, round {round}");
                    assert_eq!(
                        store.earliest_start_of_sessions_ending_since(project, since).unwrap(),
                        expected,
                        "round {round}, project {project}, since {since}"
                    );
                }
            }
        }
        // The next round starts from an empty table.
        let batch = store.batch().unwrap();
        for (project, user, start) in live.keys() {
            write_session(&batch, *project, StoredChangeKind::Superseded, user, *start, *start);
        }
        batch.commit().unwrap();
        let left: i64 = store.conn.query_row("SELECT count(*) FROM sessions", [], |row| row.get(0)).unwrap();
        assert_eq!(left, 0);
    }
}

/// Both halves of the replay floor are index seeks, never a scan of the
/// project's sessions (a partial index is only used when the query spells
/// its condition the same way).
#[test]
fn the_replay_floor_seeks_its_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = |sql: &str| -> String {
        let mut statement = store.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values = rusqlite::params_from_iter(std::iter::repeat_n(T0, statement.parameter_count()));
        let rows = statement.query_map(values, |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    };
    let recent = plan(REPLAY_FLOOR_RECENT_SQL);
    assert!(recent.starts_with("SEARCH sessions USING INDEX sessions_start (project=? AND start_ms>?)"), "{recent}");
    assert!(!recent.contains("TEMP B-TREE"), "walked in start order, not sorted: {recent}");
    let long = plan(REPLAY_FLOOR_LONG_SQL);
    assert!(
        long.starts_with("SEARCH sessions USING COVERING INDEX sessions_long (project=? AND last_event_ms>?)"),
        "{long}"
    );
}

/// A v3 database (before `active_ms` and `sessions_long`) and a v4 one (before
/// `sessions_long`) with sessions in them migrate to the newest schema, and the
/// replay floor over the migrated sessions is the full scan's.
#[test]
fn v3_and_v4_databases_migrate() {
    for from in [3, 4] {
        migrates_from(from);
    }
}

fn migrates_from(from: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sessions = [
        (T0, T0 + 10 * MIN),
        (T0 + 5 * MIN, T0 + 30 * LONG_SESSION_MS),
        (T0 + 3 * LONG_SESSION_MS, T0 + 4 * LONG_SESSION_MS),
    ];
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        schema::migrate_to(&conn, from).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, from as i64);
        conn.execute(
            "INSERT INTO projects (id, public_id, name, settings, created_ms) VALUES (1, 'prj_1', 'p', ?1, ?2)",
            params![settings_json(&ProjectSettings::default()), T0],
        )
        .unwrap();
        for (i, (start, last)) in sessions.into_iter().enumerate() {
            conn.execute(
                "INSERT INTO sessions (project, user_kind, user_key, session_id, session_uid, start_ms, end_ms, \
                 last_event_ms, event_count, concluded, entry_event_type, exit_event_type, revision) \
                 VALUES (1, 0, ?1, ?2, ?3, ?2, ?4, ?4, 1, 0, 'e', 'e', ?5)",
                params![format!("u{i}"), start, uuid::Uuid::nil().to_string(), last, i as i64 + 1],
            )
            .unwrap();
        }
        let indexes: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'sessions_long'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(indexes, 0, "v{from} has no sessions_long");
    }
    let store = Store::open(dir.path()).unwrap();
    let version = |conn: &rusqlite::Connection| -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap()
    };
    let fresh = tempfile::tempdir().unwrap();
    let newest = version(&Store::open(fresh.path()).unwrap().conn);
    assert!(newest >= 5);
    assert_eq!(version(&store.conn), newest);
    // The index holds exactly the migrated long sessions.
    let long: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM sessions INDEXED BY sessions_long WHERE project = 1 AND last_event_ms >= 0 \
             AND last_event_ms - start_ms >= 3600000",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(long, 2);
    let migrated = store.sessions_of_user(1, &UserKey::User("u1".into())).unwrap();
    assert_eq!(migrated.iter().map(|s| (s.start_ms, s.last_event_ms)).collect::<Vec<_>>(), [sessions[1]]);
    for since in [
        T0 - MIN,
        T0 + 10 * MIN,
        T0 + 10 * MIN + 1,
        T0 + 4 * LONG_SESSION_MS,
        T0 + 5 * LONG_SESSION_MS,
        T0 + 31 * LONG_SESSION_MS,
    ] {
        assert_eq!(
            store.earliest_start_of_sessions_ending_since(1, since).unwrap(),
            replay_floor_by_scan(&store.conn, 1, since),
            "since {since}"
        );
    }
    assert_eq!(store.earliest_start_of_sessions_ending_since(1, T0 + 10 * MIN + 1).unwrap(), Some(T0 + 5 * MIN));
    let integrity: String = store.conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
}

/// Events appended to the ingest log, applied to the main database in user
/// order, keep their log positions as `seq`; the log forgets applied rows
/// when reopened, and its positions continue after every stored event.
#[test]
fn the_ingest_log_applies_exactly_once_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("Shop", T0).unwrap().project.id;
    // An event stored before the log existed (an older database).
    let batch = store.batch().unwrap();
    assert!(batch.insert_event(project, &event("old", "Open", T0, "i0")).unwrap());
    batch.commit().unwrap();
    let first_seq = store.all_events(project).unwrap()[0].seq;
    // Version 6 records it as applied, so log positions continue after it.
    assert_eq!(store.applied_log_seq().unwrap(), 0, "written after the migration: nothing applied yet");

    let mut log = IngestLog::open(dir.path()).unwrap();
    let events = [event("b", "Open", T0 + 2 * MIN, "i1"), event("a", "Open", T0 + MIN, "i2"), {
        let mut anonymous = event("x", "Open", T0 + 3 * MIN, "i3");
        anonymous.user_id = None;
        anonymous.device_id = Some("d1".into());
        anonymous.insert_id = None;
        anonymous
    }];
    let positions = log.append(&events.iter().map(|e| (project, e)).collect::<Vec<_>>(), None).unwrap();
    assert_eq!(positions.len(), 3);
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(positions[0] > first_seq, "log positions {positions:?} reuse a stored event's seq {first_seq}");
    assert_eq!(log.last_seq().unwrap(), positions[2]);
    let ids: Vec<(i64, String)> = log.insert_ids_after(0).unwrap().into_iter().map(|l| (l.seq, l.insert_id)).collect();
    assert_eq!(ids, [(positions[0], "i1".to_string()), (positions[1], "i2".to_string())]);
    assert_eq!(
        log.stored_in_main(&[(project, "i0"), (project, "i1"), (project + 1, "i0")]).unwrap(),
        [true, false, false]
    );

    // Apply the first two, then the third: positions become seq.
    let reader = LogReader::open(dir.path()).unwrap();
    let rows = reader.events_after(0, 2).unwrap();
    assert_eq!(rows.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), positions[..2]);
    assert_eq!(rows[0].1.event, events[0]);
    let batch = store.batch().unwrap();
    batch.insert_logged_events(&rows, positions[1]).unwrap();
    batch.commit().unwrap();
    assert_eq!(store.applied_log_seq().unwrap(), positions[1]);
    assert_eq!(log.applied_seq().unwrap(), positions[1]);
    assert_eq!(log.stored_in_main(&[(project, "i1"), (project, "i2")]).unwrap(), [true, true]);
    let rest = reader.events_after(positions[1], 10).unwrap();
    assert_eq!(rest.len(), 1);
    let batch = store.batch().unwrap();
    batch.insert_logged_events(&rest, positions[2]).unwrap();
    batch.commit().unwrap();
    let stored: Vec<(i64, String)> =
        store.all_events(project).unwrap().into_iter().map(|e| (e.seq, e.event.event_type.clone())).collect();
    assert_eq!(
        stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [first_seq, positions[0], positions[1], positions[2]]
    );
    // Applying a row again is an error, never a second copy.
    let batch = store.batch().unwrap();
    assert!(batch.insert_logged_events(&rows[..1], positions[0]).is_err());
    drop(batch);

    // Reopened: the applied rows are gone from the log, positions go on.
    drop(log);
    let mut log = IngestLog::open(dir.path()).unwrap();
    assert!(reader.events_after(0, 10).unwrap().is_empty());
    assert!(log.insert_ids_after(0).unwrap().is_empty());
    let next = log.append(&[(project, &event("c", "Open", T0, "i4"))], None).unwrap();
    assert!(next[0] > positions[2], "{next:?} after {positions:?}");
    // Trimming drops what was applied and keeps the rest.
    let later = log.append(&[(project, &event("c", "Open", T0, "i5"))], Some(next[0])).unwrap();
    assert_eq!(reader.events_after(0, 10).unwrap().iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), later);
}

/// A lost log file (or one older than the main database's applied position)
/// restarts its positions after the last applied one, never reusing a seq.
#[test]
fn a_new_ingest_log_continues_after_the_applied_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let project = store.create_project("Shop", T0).unwrap().project.id;
    let mut log = IngestLog::open(dir.path()).unwrap();
    let positions = log.append(&[(project, &event("a", "Open", T0, "i1"))], None).unwrap();
    let rows = LogReader::open(dir.path()).unwrap().events_after(0, 10).unwrap();
    let batch = store.batch().unwrap();
    batch.insert_logged_events(&rows, positions[0]).unwrap();
    batch.commit().unwrap();
    drop(log);
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.path().join(format!("{LOG_FILE}{suffix}"));
        if path.exists() {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut log = IngestLog::open(dir.path()).unwrap();
    let next = log.append(&[(project, &event("a", "Open", T0 + MIN, "i2"))], None).unwrap();
    assert_eq!(next, [positions[0] + 1]);
}
