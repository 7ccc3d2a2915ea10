//! The ClickHouse adapter against two real local ClickHouse servers (Debian's
//! 18.16) as two shards. The servers are shared by the tests of this binary;
//! each test uses a database of its own.
//!
//! With `SESSIONIZER_CH_STATEMENTS_OUT=<file>`, `dialect_statements_run_here_and_export`
//! also writes the statements for `tests/cluster/chdb_dialect.py`.

#[path = "support/clickhouse_server.rs"]
mod clickhouse_server;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use clickhouse_server::{CLUSTER_NAME, ClickHouseServer};
use sessionizer_cluster::ClusterError;
use sessionizer_cluster::clickhouse::{ClickHouseStore, EventRow, SessionRow};
use sessionizer_engine::UserKey;
use sessionizer_store::{NewEvent, StoredSession};
use uuid::Uuid;

/// The shards, started once for all tests of this binary (stopped when it exits).
fn servers() -> &'static [ClickHouseServer] {
    static SERVERS: OnceLock<Vec<ClickHouseServer>> = OnceLock::new();
    SERVERS.get_or_init(|| ClickHouseServer::start_shards(2))
}

/// A store over both shards in a database of its own, schema created.
async fn store(database: &str) -> ClickHouseStore {
    let urls: Vec<String> = servers().iter().map(ClickHouseServer::url).collect();
    let store = ClickHouseStore::new(&urls, database, None, None).expect("valid store");
    store.init_schema().await.expect("schema");
    store
}

fn user(id: &str) -> UserKey {
    UserKey::User(Arc::from(id))
}

fn device(id: &str) -> UserKey {
    UserKey::Device(Arc::from(id))
}

fn new_event(user: &UserKey, event_type: &str, time_ms: i64, insert_id: &str) -> NewEvent {
    NewEvent {
        user_id: user.user_id().map(str::to_string),
        device_id: user.device_id().map(str::to_string),
        event_type: event_type.to_string(),
        time_ms,
        insert_id: Some(insert_id.to_string()),
        page: Some(format!("/{event_type}")),
        passive: false,
        properties: None,
        client_session_id: None,
        platform: Some("web".to_string()),
        ip: None,
        received_ms: time_ms + 1,
    }
}

fn session(user: &UserKey, session_id: i64, start_ms: i64, end_ms: i64) -> StoredSession {
    StoredSession {
        user: user.clone(),
        session_id,
        session_uid: Uuid::from_u128(0xabc0_0000 + session_id as u128),
        start_ms,
        end_ms,
        last_event_ms: end_ms,
        event_count: 1,
        active_ms: end_ms - start_ms,
        end_reason: None,
        concluded: false,
        entry_event_type: "open".to_string(),
        entry_page: Some("/open".to_string()),
        exit_event_type: "open".to_string(),
        exit_page: None,
        revision: 0,
    }
}

/// The same session as written at `version` (what reads return).
fn as_read(session: &StoredSession, version: u64) -> StoredSession {
    StoredSession { revision: version as i64, ..session.clone() }
}

/// 2024-03-10T00:00:00Z: events of the tests cross into April to span two monthly parts.
const T0: i64 = 1_710_028_800_000;
const DAY: i64 = 86_400_000;

#[tokio::test]
async fn schema_init_is_idempotent_on_every_shard() {
    let store = store("t_schema").await;
    store.init_schema().await.expect("second init");
    store.init_schema().await.expect("third init");
    for server in servers() {
        let tables = server
            .query("SELECT name FROM system.tables WHERE database = 't_schema' ORDER BY name")
            .expect("system.tables");
        assert_eq!(
            tables,
            "events_local\nsession_versions_local\nsession_versions_mv\nsessions_local\n",
            "on {}",
            server.url()
        );
    }
    assert_eq!(store.project_event_count(1).await.unwrap(), 0);
    assert!(store.project_sessions(1).await.unwrap().is_empty());
    assert_eq!(store.earliest_start_of_sessions_ending_since(0, 0).await.unwrap(), None);
}

#[tokio::test]
async fn events_deduplicate_and_page_in_time_order() {
    let store = store("t_events").await;
    let project = 11;
    // Partitions 0..4 over both shards; three users per partition; events
    // spread over 40 days (two monthly parts), with equal times in places.
    let mut rows = Vec::new();
    let mut seq = 100;
    for partition in 0..4u32 {
        for u in 0..3 {
            let who = if u == 2 { device(&format!("d{partition}")) } else { user(&format!("u{partition}-{u}")) };
            for i in 0..5i64 {
                seq += 1;
                let time = T0 + (i * 10 * DAY) + if i == 3 { 0 } else { u * 1000 };
                let key = format!("p{partition}-u{u}-e{i}");
                rows.push(EventRow::new(project, partition, seq, &key, &new_event(&who, "view", time, &key)));
            }
        }
    }
    for partition in 0..4u32 {
        let mine: Vec<EventRow> = rows.iter().filter(|r| r.partition == partition).cloned().collect();
        store.insert_events(partition, &mine).await.unwrap();
    }
    assert_eq!(store.project_event_count(project).await.unwrap(), 60);
    assert_eq!(store.project_event_count(project + 1).await.unwrap(), 0);

    // Written twice (a replay): no result changes.
    for partition in 0..4u32 {
        let mine: Vec<EventRow> = rows.iter().filter(|r| r.partition == partition).cloned().collect();
        store.insert_events(partition, &mine).await.unwrap();
    }
    assert_eq!(store.project_event_count(project).await.unwrap(), 60);

    // A retried event (same key) with a later sequence: the first one stays.
    let first = rows.iter().find(|r| r.partition == 2).unwrap().clone();
    let mut retry = first.clone();
    retry.seq = 9_999;
    retry.received_ms += 5_000;
    store.insert_events(2, &[retry]).await.unwrap();
    assert_eq!(store.project_event_count(project).await.unwrap(), 60);

    // Paging through partition 2 in pages of 4 gives every event once, in (time, seq) order.
    let mut expected: Vec<EventRow> = rows.iter().filter(|r| r.partition == 2).cloned().collect();
    expected.sort_by_key(|r| (r.time_ms, r.seq));
    let mut paged = Vec::new();
    let mut after = (i64::MIN, 0u64);
    let mut pages = 0;
    loop {
        let page = store.partition_events_page(2, i64::MIN, after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = (last.time_ms, last.seq);
        paged.extend(page);
        pages += 1;
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(paged, expected);
    assert_eq!(pages, 4, "15 events in pages of 4");

    // The floor: events before from_ms are left out (and their month's part skipped).
    let from = T0 + 20 * DAY;
    let page = store.partition_events_page(2, from, (i64::MIN, 0), 1000).await.unwrap();
    let want: Vec<EventRow> = expected.iter().filter(|r| r.time_ms >= from).cloned().collect();
    assert_eq!(page, want);
    assert_eq!(page.len(), 9);

    // A user's events: only theirs, ordered, converted back to what was ingested.
    let who = user("u1-0");
    let events = store.user_events(project, 1, &who).await.unwrap();
    let want: Vec<_> = rows.iter().filter(|r| r.user_key == "u1-0").map(EventRow::to_stored).collect();
    assert_eq!(events, want);
    assert_eq!(events.len(), 5);
    assert!(events.windows(2).all(|w| (w[0].event.time_ms, w[0].seq) < (w[1].event.time_ms, w[1].seq)));
    // A device id with the text of a user id is another key.
    assert!(store.user_events(project, 2, &user("d2")).await.unwrap().is_empty());
    assert_eq!(store.user_events(project, 2, &device("d2")).await.unwrap().len(), 5);
    assert!(store.user_events(project + 1, 1, &who).await.unwrap().is_empty());

    // Stored event keys: only the project's, in this partition.
    let keys: Vec<String> = ["p1-u0-e0", "p1-u0-e4", "p0-u0-e0", "nope"].iter().map(|s| s.to_string()).collect();
    let found: HashSet<String> = store.existing_event_keys(project, 1, &keys).await.unwrap().into_iter().collect();
    assert_eq!(found, HashSet::from(["p1-u0-e0".to_string(), "p1-u0-e4".to_string()]));
    assert!(store.existing_event_keys(project + 1, 1, &keys).await.unwrap().is_empty());
    assert!(store.existing_event_keys(project, 1, &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn partitions_live_on_their_shard() {
    let store = store("t_routing").await;
    assert_eq!(store.shard_count(), 2);
    let project = 3;
    for partition in 0..6u32 {
        let who = user(&format!("user-{partition}"));
        let event = new_event(&who, "open", T0 + i64::from(partition), &format!("k{partition}"));
        store
            .insert_events(partition, &[EventRow::new(project, partition, u64::from(partition) + 1, "k", &event)])
            .await
            .unwrap();
        let s = session(&who, 1, T0, T0 + 1);
        store.insert_sessions(partition, &[SessionRow::new(project, partition, &s, false, 1, T0)]).await.unwrap();
    }
    for (index, server) in servers().iter().enumerate() {
        for table in ["events_local", "sessions_local"] {
            let partitions = server
                .query(&format!("SELECT DISTINCT partition FROM t_routing.{table} ORDER BY partition"))
                .expect("query a shard");
            let want: String = (0..6u32).filter(|p| p % 2 == index as u32).map(|p| format!("{p}\n")).collect();
            assert_eq!(partitions, want, "{table} on shard {index}");
        }
    }
    assert_eq!(store.project_event_count(project).await.unwrap(), 6);
    let sessions = store.project_sessions(project).await.unwrap();
    let users: Vec<&str> = sessions.iter().map(|s| s.user.id()).collect();
    assert_eq!(users, ["user-0", "user-1", "user-2", "user-3", "user-4", "user-5"], "merged from both shards, ordered");
}

#[tokio::test]
async fn session_versions_replace_and_supersede() {
    let store = store("t_sessions").await;
    let project = 5;
    let partition = 1; // shard 1
    let alice = user("alice");
    let bob = device("bob");

    let a1 = session(&alice, 1, T0, T0 + 60_000);
    let mut a1_later = a1.clone();
    a1_later.end_ms = T0 + 120_000;
    a1_later.event_count = 3;
    a1_later.end_reason = Some("inactivity".to_string());
    a1_later.concluded = true;
    let a2 = session(&alice, 2, T0 + DAY, T0 + DAY + 10);
    let b1 = session(&bob, 7, T0 - DAY, T0 - DAY + 5);
    let rows = vec![
        SessionRow::new(project, partition, &a1, false, 10, T0),
        SessionRow::new(project, partition, &a2, false, 11, T0),
        SessionRow::new(project, partition, &b1, false, 12, T0),
    ];
    store.insert_sessions(partition, &rows).await.unwrap();
    store.insert_sessions(partition, &rows).await.unwrap(); // a replay
    assert_eq!(store.sessions_of_user(project, partition, &alice).await.unwrap(), [as_read(&a1, 10), as_read(&a2, 11)]);

    // A newer version replaces the older; an older one written late does not.
    store.insert_sessions(partition, &[SessionRow::new(project, partition, &a1_later, false, 20, T0)]).await.unwrap();
    let stale = SessionRow::new(project, partition, &session(&alice, 1, T0, T0 + 1), false, 15, T0);
    store.insert_sessions(partition, &[stale]).await.unwrap();
    assert_eq!(
        store.sessions_of_user(project, partition, &alice).await.unwrap(),
        [as_read(&a1_later, 20), as_read(&a2, 11)]
    );

    // Superseded: gone from every read, but still known as stored.
    store.insert_sessions(partition, &[SessionRow::new(project, partition, &a2, true, 21, T0)]).await.unwrap();
    assert_eq!(store.sessions_of_user(project, partition, &alice).await.unwrap(), [as_read(&a1_later, 20)]);
    assert_eq!(
        store.project_sessions(project).await.unwrap(),
        [as_read(&a1_later, 20), as_read(&b1, 12)],
        "users ordered by (kind, key): user ids before device ids"
    );
    let ids = store.stored_session_ids(project, partition, &alice, &[1, 2, 3]).await.unwrap();
    assert_eq!(ids, HashSet::from([1, 2]));
    let keys = store
        .stored_session_keys(
            project,
            partition,
            &[(alice.clone(), 1), (bob.clone(), 7), (user("bob"), 7), (bob.clone(), 8)],
        )
        .await
        .unwrap();
    assert_eq!(keys, HashSet::from([(alice.clone(), 1), (bob.clone(), 7)]));
    assert!(store.stored_session_ids(project + 1, partition, &alice, &[1]).await.unwrap().is_empty());
    assert!(store.stored_session_ids(project, partition, &alice, &[]).await.unwrap().is_empty());

    // Earliest start of sessions ending since a time (superseded ones do not count).
    let p = partition;
    assert_eq!(store.earliest_start_of_sessions_ending_since(p, T0 - DAY).await.unwrap(), Some(T0 - DAY));
    assert_eq!(store.earliest_start_of_sessions_ending_since(p, T0).await.unwrap(), Some(T0));
    assert_eq!(store.earliest_start_of_sessions_ending_since(p, T0 + 120_000).await.unwrap(), Some(T0));
    // a2 ended later than a1 but is superseded.
    assert_eq!(store.earliest_start_of_sessions_ending_since(p, T0 + 120_001).await.unwrap(), None);
    assert_eq!(
        store.earliest_start_of_sessions_ending_since(3, T0 - DAY).await.unwrap(),
        None,
        "same shard, other partition"
    );

    // Sessions starting since a time, with their project.
    let since = store.partition_sessions_since(p, T0).await.unwrap();
    assert_eq!(since, [(project, as_read(&a1_later, 20))]);
    let all = store.partition_sessions_since(p, i64::MIN).await.unwrap();
    assert_eq!(all, [(project, as_read(&a1_later, 20)), (project, as_read(&b1, 12))]);

    // Superseding the last one of a user, then bringing it back with a newer version.
    store.insert_sessions(partition, &[SessionRow::new(project, partition, &a1_later, true, 30, T0)]).await.unwrap();
    assert!(store.sessions_of_user(project, partition, &alice).await.unwrap().is_empty());
    store.insert_sessions(partition, &[SessionRow::new(project, partition, &a1, false, 31, T0)]).await.unwrap();
    assert_eq!(store.sessions_of_user(project, partition, &alice).await.unwrap(), [as_read(&a1, 31)]);
}

#[tokio::test]
async fn hostile_strings_round_trip() {
    let store = store("t_strings").await;
    let project = 9;
    let partition = 0;
    let nasty = [
        "o'brien",
        "back\\slash",
        "\\'",
        "'); DROP TABLE t_strings.events_local; --",
        "ünïcödé 😀 \u{202e}",
        "new\nline\ttab\rcr\0nul",
        "?fields ?? {x:String} `tick` \"dq\"",
        "",
    ];
    for (i, text) in nasty.iter().enumerate() {
        let who = if i % 2 == 0 { user(&format!("{text}#{i}")) } else { device(&format!("{text}#{i}")) };
        let mut event = new_event(&who, text, T0 + i as i64, &format!("{text}/{i}"));
        event.page = Some(text.to_string());
        event.properties = Some(serde_json::json!({ "k": text }).to_string());
        event.client_session_id = Some(text.to_string());
        event.ip = Some(text.to_string());
        let row = EventRow::new(project, partition, i as u64 + 1, &format!("{text}/{i}"), &event);
        store.insert_events(partition, std::slice::from_ref(&row)).await.unwrap();
        let events = store.user_events(project, partition, &who).await.unwrap();
        assert_eq!(events, [row.to_stored()], "{text:?}");
        let found = store.existing_event_keys(project, partition, &[format!("{text}/{i}")]).await.unwrap();
        assert_eq!(found, [format!("{text}/{i}")]);

        let mut s = session(&who, i as i64, T0, T0 + 1);
        s.entry_event_type = text.to_string();
        s.entry_page = Some(text.to_string());
        s.exit_page = Some(text.to_string());
        s.end_reason = Some(format!("{text}!"));
        store.insert_sessions(partition, &[SessionRow::new(project, partition, &s, false, 1, T0)]).await.unwrap();
        assert_eq!(store.sessions_of_user(project, partition, &who).await.unwrap(), [as_read(&s, 1)], "{text:?}");
        let keys = store.stored_session_keys(project, partition, &[(who.clone(), i as i64)]).await.unwrap();
        assert_eq!(keys.len(), 1, "{text:?}");
    }
    // Nothing was dropped or injected.
    assert_eq!(store.project_event_count(project).await.unwrap(), nasty.len() as u64);
    assert_eq!(store.project_sessions(project).await.unwrap().len(), nasty.len());
}

#[tokio::test]
async fn long_key_lists_split_into_several_queries() {
    let store = store("t_long_lists").await;
    let project = 4;
    let who = user("many");
    let rows: Vec<EventRow> = (0..3000u64)
        .map(|i| {
            let key = format!("{i:06}-{}", "k".repeat(40));
            EventRow::new(project, 0, i + 1, &key, &new_event(&who, "e", T0 + i as i64, &key))
        })
        .collect();
    store.insert_events(0, &rows).await.unwrap();
    // ~60 bytes a key: 20 000 keys are well over one query's bound.
    let mut keys: Vec<String> = rows.iter().map(|r| r.event_key.clone()).collect();
    keys.extend((0..17_000).map(|i| format!("missing-{i}-{}", "x".repeat(40))));
    let found: HashSet<String> = store.existing_event_keys(project, 0, &keys).await.unwrap().into_iter().collect();
    assert_eq!(found.len(), 3000);
    let ids: Vec<i64> = (0..20_000).collect();
    let sessions: Vec<SessionRow> =
        (0..50).map(|i| SessionRow::new(project, 0, &session(&who, i * 100, T0, T0 + 1), false, 1, T0)).collect();
    store.insert_sessions(0, &sessions).await.unwrap();
    let stored = store.stored_session_ids(project, 0, &who, &ids).await.unwrap();
    assert_eq!(stored, (0..50).map(|i| i * 100).collect::<HashSet<i64>>());
}

#[tokio::test]
async fn errors_name_the_shard_and_the_operation() {
    // A port nothing listens on (bound and released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let store = ClickHouseStore::new(std::slice::from_ref(&url), "t_errors", None, None).unwrap();
    let error = store.user_events(1, 0, &user("u")).await.unwrap_err();
    let ClusterError::ClickHouse(message) = &error else { panic!("{error:?}") };
    assert!(message.contains(&url) && message.contains("reading a user's events"), "{message}");

    // A server that answers with an error (no such database).
    let urls: Vec<String> = servers().iter().map(ClickHouseServer::url).collect();
    let store = ClickHouseStore::new(&urls, "t_never_created", None, None).unwrap();
    let error = store.insert_events(1, &[row_in(1)]).await.unwrap_err();
    let ClusterError::ClickHouse(message) = &error else { panic!("{error:?}") };
    assert!(message.contains(&urls[1]) && message.contains("inserting events"), "{message}");
}

fn row_in(partition: u32) -> EventRow {
    EventRow::new(1, partition, 1, "k", &new_event(&user("u"), "e", T0, "k"))
}

#[tokio::test]
async fn a_distributed_table_sees_both_shards() {
    let store = store("t_distributed").await;
    let project = 8;
    for partition in 0..8u32 {
        let rows: Vec<EventRow> = (0..=partition)
            .map(|i| {
                let key = format!("{partition}-{i}");
                let who = user(&format!("u{partition}"));
                EventRow::new(project, partition, u64::from(i) + 1, &key, &new_event(&who, "e", T0, &key))
            })
            .collect();
        store.insert_events(partition, &rows).await.unwrap();
        store.insert_events(partition, &rows).await.unwrap();
    }
    let first = &servers()[0];
    first
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS t_distributed.events_all AS t_distributed.events_local \
             ENGINE = Distributed({CLUSTER_NAME}, t_distributed, events_local)"
        ))
        .expect("create the Distributed table");
    // FINAL runs on each shard; a user's rows are all on one shard, so the sum is exact.
    let count = first.query(&format!("SELECT count() FROM t_distributed.events_all FINAL WHERE project = {project}"));
    assert_eq!(count.expect("count through the Distributed table"), "36\n");
    assert_eq!(store.project_event_count(project).await.unwrap(), 36);
}

#[tokio::test]
async fn dialect_statements_run_here_and_export() {
    let urls: Vec<String> = servers().iter().map(ClickHouseServer::url).collect();
    let store = ClickHouseStore::new(&urls, "t_dialect", None, None).unwrap();
    let checks = store.dialect_checks();
    assert_eq!(checks.iter().map(|c| c.sql.clone()).collect::<Vec<_>>(), store.dialect_check_statements());
    assert!(checks.iter().filter(|c| c.expect.is_some()).count() >= 10);
    let server = &servers()[0];
    for check in &checks {
        let output = server
            .query_format(&check.sql, "TabSeparatedWithNames")
            .unwrap_or_else(|e| panic!("{}\nfailed on 18.16: {e}", check.sql));
        if let Some(Err(e)) = check.expect.as_ref().map(|expect| expect.check(&output)) {
            panic!("{}\n{e}", check.sql);
        }
    }
    if let Some(path) = std::env::var_os("SESSIONIZER_CH_STATEMENTS_OUT") {
        std::fs::write(&path, store.dialect_check_json()).expect("write the dialect statements");
    }
}

/// The query role's reads on both shards against the single binary's rules:
/// the board index's figures and cohorts for the same sessions, and exports
/// and session pages walked in small steps across shards.
#[tokio::test]
async fn query_reads_equal_the_board_index_and_page_across_shards() {
    use sessionizer_cluster::clickhouse::{DayWindow, FigureParts};
    use sessionizer_store::{Board, BoardSession, CohortFilter, SessionCursor, SessionFilter};
    let store = store("t_reads").await;
    let project = 21;
    let zone = "America/New_York";
    // 12 users over partitions 0..4 (both shards), 1 to 4 sessions each, on
    // days around T0, with lengths from 0 to hours; two events per session.
    let mut events = Vec::new();
    let mut sessions = Vec::new();
    for n in 0..12u32 {
        let partition = n % 4;
        let key = if n % 5 == 0 { device(&format!("d{n}")) } else { user(&format!("u{n}")) };
        for s in 0..=(n % 4) {
            let start = T0 + i64::from(s) * DAY / 3 + i64::from(n) * 7_919_000;
            let length = i64::from(n * s) * 431_000 + i64::from(s) * 1_500;
            let mut stored = session(&key, start, start, start + length);
            stored.event_count = 2;
            stored.concluded = s < 2;
            stored.session_uid = Uuid::from_u128(u128::from(n) << 32 | u128::from(s));
            let id = |i: u32| format!("e{n}-{s}-{i}");
            events.push(EventRow::new(
                project,
                partition,
                u64::from(n * 100 + s * 10),
                &id(0),
                &new_event(&key, "open", start, &id(0)),
            ));
            events.push(EventRow::new(
                project,
                partition,
                u64::from(n * 100 + s * 10 + 1),
                &id(1),
                &new_event(&key, "click", start + length, &id(1)),
            ));
            // Excluded, within the session: in no session.
            events.push(EventRow::new(
                project,
                partition,
                u64::from(n * 100 + s * 10 + 2),
                &id(2),
                &new_event(&key, "Notification Sent", start, &id(2)),
            ));
            sessions.push((partition, stored));
        }
    }
    store.insert_events_routed(&events).await.unwrap();
    let rows: Vec<SessionRow> = sessions.iter().map(|(p, s)| SessionRow::new(project, *p, s, false, 5, T0)).collect();
    store.insert_sessions_routed(&rows).await.unwrap();

    // The board index over the same sessions.
    let mut board = Board::default();
    board.set_project_time_zone(project, zone);
    for (_, s) in &sessions {
        board.load(&BoardSession {
            project,
            user: s.user.clone(),
            session_id: s.session_id,
            length_ms: s.length_ms(),
            event_count: s.event_count,
            concluded: s.concluded,
        });
    }
    // T0 is 19:00 on 2024-03-09 in New York (whose clocks go forward that night).
    let day0 = (T0 / DAY) as i32 - 1;
    for (from_day, to_day) in [(day0 - 1, day0 + 2), (day0, day0), (day0 + 1, day0 + 30)] {
        let window = DayWindow { project, time_zone: zone, from_day, to_day };
        for bounds in [&[][..], &[1_000, 60_000, 3_600_000][..], &[1_500, 431_001][..]] {
            let expected = board.figures(project, from_day, to_day, bounds);
            let figures = store.board_figures(&window, bounds, FigureParts::ALL).await.unwrap();
            assert_eq!(figures, expected, "days {from_day}..={to_day} {bounds:?}");
            // What each route asks for alone is the same.
            let days = FigureParts { days: true, lengths: false, users: false };
            assert_eq!(store.board_figures(&window, bounds, days).await.unwrap().days, expected.days);
            let lengths = FigureParts { days: false, lengths: true, users: false };
            let alone = store.board_figures(&window, bounds, lengths).await.unwrap();
            assert_eq!(
                (alone.length_buckets, alone.sessions, alone.median_length_ms, alone.p90_length_ms),
                (expected.length_buckets.clone(), expected.sessions, expected.median_length_ms, expected.p90_length_ms)
            );
        }
        for (min_sessions, min_length_ms, max_length_ms) in [(1, 0, None), (2, 1_000, Some(2_000_000))] {
            let filter = CohortFilter { from_day, to_day, min_sessions, min_length_ms, max_length_ms };
            let expected: Vec<UserKey> = board.cohort(project, &filter).into_iter().cloned().collect();
            assert_eq!(store.cohort(&window, &filter).await.unwrap(), expected);
        }
    }
    let all = board.figures(project, day0 - 1, day0 + 2, &[]);
    assert_eq!(all.sessions, sessions.len() as u64);
    assert!(all.median_length_ms.is_some() && all.users == 12, "{all:?}");

    // The timeout preview's sample: hash order, within the budget, a prefix of the whole order.
    let window = DayWindow { project, time_zone: zone, from_day: day0 - 1, to_day: day0 + 2 };
    let (total, everyone) = store.sample_users(&window, 1_000).await.unwrap();
    assert_eq!((total, everyone.len()), (12, 12));
    let (_, few) = store.sample_users(&window, 5).await.unwrap();
    assert!(!few.is_empty() && few.iter().map(|(_, events)| events).sum::<u64>() <= 5, "{few:?}");
    assert_eq!(few[..], everyone[..few.len()]);
    let few_users: Vec<UserKey> = few.iter().map(|(user, _)| user.clone()).collect();
    let their_events = store.events_of_users(project, &few_users, (T0 - DAY, T0 + 10 * DAY)).await.unwrap();
    let expected_events = events.iter().filter(|row| few_users.contains(&row.to_stored().event.user_key())).count();
    assert_eq!(their_events.len(), expected_events);

    // Session pages of 5, across shards, in (start, user) order, both ways.
    let mut expected: Vec<StoredSession> = sessions.iter().map(|(_, s)| as_read(s, 5)).collect();
    expected.sort_by(|a, b| (a.start_ms, &a.user).cmp(&(b.start_ms, &b.user)));
    for newest_first in [false, true] {
        let mut filter = SessionFilter { from_ms: i64::MIN, to_ms: i64::MAX, newest_first, ..SessionFilter::default() };
        let mut walked = Vec::new();
        loop {
            let page = store.sessions_page(project, &filter, 5).await.unwrap();
            walked.extend(page.iter().cloned());
            match page.last() {
                Some(last) if page.len() == 5 => {
                    filter.after = Some(SessionCursor { start_ms: last.start_ms, user: last.user.clone() })
                }
                _ => break,
            }
        }
        let mut want = expected.clone();
        if newest_first {
            want.reverse();
        }
        assert_eq!(walked, want, "newest first: {newest_first}");
    }

    // The events export in steps of 4: time order, each with its session (none when excluded).
    let mut exported = Vec::new();
    let mut after = None;
    loop {
        let excluded = |event_type: &str| event_type == "Notification Sent";
        let page = store.events_with_sessions(project, (T0 - DAY, T0 + 10 * DAY), after, 4, &excluded).await.unwrap();
        assert!(page.len() <= 4);
        exported.extend(page.iter().cloned());
        match page.last() {
            Some((last, _)) if page.len() == 4 => after = Some((last.time_ms, last.seq)),
            _ => break,
        }
    }
    assert_eq!(exported.len(), events.len());
    assert!(exported.windows(2).all(|w| (w[0].0.time_ms, w[0].0.seq) < (w[1].0.time_ms, w[1].0.seq)));
    for (row, session) in &exported {
        let owner = sessions.iter().map(|(_, s)| s).find(|s| {
            s.user == row.to_stored().event.user_key() && s.start_ms <= row.time_ms && row.time_ms <= s.last_event_ms
        });
        let want = match row.event_type.as_str() {
            "Notification Sent" => None,
            _ => owner.map(|s| (s.session_id, s.session_uid)),
        };
        assert_eq!(*session, want, "{row:?}");
        assert!(row.event_type == "Notification Sent" || session.is_some());
    }
}
