//! The query API against a naive reference: generated events are sent in
//! shuffled batches to the real server, every figure of the board (and the
//! session list, a user's usage, cohorts, the timeout preview and the change
//! feed) is computed again here from the events alone, and the two must be
//! equal. Every JSON answer is also checked against `/openapi.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::server::{TestProject, TestServer, create_project, free_port, now_ms};

const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;
const TIMEOUT: i64 = 30 * MIN;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone)]
struct Event {
    user: String,
    event_type: &'static str,
    time_ms: i64,
    insert_id: String,
}

/// Users with bursts of activity over the last ten days: gaps inside a burst
/// of seconds to 40 minutes (some cross the timeout), bursts hours apart, an
/// excluded type now and then, and one user active a minute ago (open session).
fn generate(now: i64) -> Vec<Event> {
    let mut rng = Rng(0x005E_ED0F_5E55_1075);
    let mut events = Vec::new();
    let types = ["Page Viewed", "Clicked", "Searched", "Notification Sent"];
    for u in 0..30 {
        let user = if u == 7 { "<img src=x onerror=alert(1)>".to_string() } else { format!("user-{u:02}") };
        let mut time = now - 10 * DAY + rng.below(2 * DAY as u64) as i64;
        let bursts = 1 + rng.below(6);
        for _ in 0..bursts {
            let burst_events = 1 + rng.below(12);
            for _ in 0..burst_events {
                if time > now - 2 * 60 * MIN {
                    break;
                }
                let event_type = types[if rng.below(10) == 0 { 3 } else { rng.below(3) as usize }];
                events.push(Event {
                    user: user.clone(),
                    event_type,
                    time_ms: time,
                    insert_id: format!("e{}", events.len()),
                });
                let gap = match rng.below(10) {
                    0..=6 => rng.below(5 * MIN as u64),
                    7 | 8 => rng.below(25 * MIN as u64),
                    _ => 25 * MIN as u64 + rng.below(15 * MIN as u64),
                };
                time += gap as i64;
            }
            time += 3 * 60 * MIN + rng.below(DAY as u64) as i64;
        }
    }
    events.push(Event {
        user: "live".into(),
        event_type: "Page Viewed",
        time_ms: now - MIN,
        insert_id: "live-1".into(),
    });
    events
}

#[derive(Debug, Clone, PartialEq)]
struct RefSession {
    user: String,
    start_ms: i64,
    end_ms: i64,
    event_count: u64,
}

impl RefSession {
    fn length_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// The naive definition: each user's non-excluded events in time order, a
/// new session wherever the gap is at least the timeout.
fn reference_sessions(events: &[Event], timeout_ms: i64) -> Vec<RefSession> {
    let mut by_user: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for event in events.iter().filter(|e| e.event_type != "Notification Sent") {
        by_user.entry(&event.user).or_default().push(event.time_ms);
    }
    let mut sessions = Vec::new();
    for (user, mut times) in by_user {
        times.sort_unstable();
        let mut current: Option<RefSession> = None;
        for time in times {
            match &mut current {
                Some(session) if time - session.end_ms < timeout_ms => {
                    session.end_ms = time;
                    session.event_count += 1;
                }
                _ => {
                    sessions.extend(current.take());
                    current = Some(RefSession { user: user.to_string(), start_ms: time, end_ms: time, event_count: 1 });
                }
            }
        }
        sessions.extend(current);
    }
    sessions
}

fn utc_date(ms: i64) -> String {
    let days = ms.div_euclid(DAY);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Nearest-rank percentile, truncated to whole seconds (the API's definition).
fn percentile_seconds(lengths: &[i64], percent: usize) -> Value {
    if lengths.is_empty() {
        return Value::Null;
    }
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    json!(sorted[rank - 1] / 1_000 * 1_000)
}

fn send(server: &TestServer, project: &TestProject, events: &[Event], seed: u64) {
    let mut shuffled = events.to_vec();
    let mut rng = Rng(seed);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut rest = shuffled.as_slice();
    while !rest.is_empty() {
        let take = (1 + rng.below(60) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        let body = json!({"events": batch.iter().map(|e| json!({
            "user_id": e.user, "event_type": e.event_type, "time": e.time_ms, "insert_id": e.insert_id,
        })).collect::<Vec<_>>()});
        let reply = server.post("/v1/events", Some(&project.write_key), &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// GET with the read key; 200 and a body that matches the OpenAPI schema of the route.
fn read(server: &TestServer, project: &TestProject, spec: &Value, path: &str) -> Value {
    let reply = server.get(path, Some(&project.read_key));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    let body = reply.json();
    let route = openapi_route(spec, path.split('?').next().unwrap());
    let schema = &spec["paths"][route.as_str()]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    check_schema(spec, schema, &body, path);
    body
}

/// The OpenAPI path template that `path` matches.
fn openapi_route(spec: &Value, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|template| {
            let pattern: Vec<&str> = template.split('/').collect();
            pattern.len() == parts.len()
                && pattern.iter().zip(&parts).all(|(p, actual)| p.starts_with('{') || p == actual)
        })
        .unwrap_or_else(|| panic!("{path} is not in /openapi.json"))
        .clone()
}

/// A JSON Schema subset (what /openapi.json uses): `$ref`, `type` (one or a
/// list), `required`, `properties`, `additionalProperties: false`, `items`, `enum`.
fn check_schema(spec: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return check_schema(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::Array(list) => list.iter().map(|t| t.as_str().unwrap()).collect(),
            other => vec![other.as_str().unwrap()],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"));
        assert!(ok, "{at}: {value} is {actual}, the schema says {allowed:?}");
    }
    if let Some(options) = schema["enum"].as_array() {
        assert!(options.contains(value), "{at}: {value} is not one of {options:?}");
    }
    if let Value::Object(object) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(object.contains_key(required.as_str().unwrap()), "{at}: missing {required}");
        }
        let properties = schema["properties"].as_object();
        for (key, field) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => check_schema(spec, property, field, &format!("{at}.{key}")),
                None => assert!(
                    schema["additionalProperties"] != json!(false),
                    "{at}: {key} is not in the schema (document it in crates/server/assets/openapi.json)"
                ),
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_schema(spec, item_schema, item, &format!("{at}[{i}]"));
        }
    }
}

#[test]
fn every_board_figure_equals_the_naive_reference() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "board");
    let server = TestServer::start(dir.path(), free_port());
    let spec = server.get("/openapi.json", None).json();
    let now = now_ms();
    let events = generate(now);
    send(&server, &project, &events, 42);
    // The same events again in another order: all duplicates, nothing changes.
    send(&server, &project, &events, 7);

    let sessions = reference_sessions(&events, TIMEOUT);
    let from = utc_date(now - 11 * DAY);
    let to = utc_date(now);
    let range = format!("from={from}&to={to}");
    // Sessions conclude on the server's clock (a tick every 500 ms): wait until
    // every session but the live one is concluded.
    let expected_open = sessions.iter().filter(|s| s.end_ms + TIMEOUT > now_ms()).count() as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let summary = loop {
        let summary = read(&server, &project, &spec, &format!("/v1/stats/summary?{range}"));
        if summary["open_sessions"] == json!(expected_open) || std::time::Instant::now() > deadline {
            break summary;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };

    // Summary.
    let lengths: Vec<i64> = sessions.iter().map(RefSession::length_ms).collect();
    let total: i64 = lengths.iter().sum();
    let mut per_user: BTreeMap<&str, u64> = BTreeMap::new();
    for session in &sessions {
        *per_user.entry(&session.user).or_default() += 1;
    }
    let bucket_of = |n: u64| match n {
        1 => 0,
        2 => 1,
        3..=5 => 2,
        6..=10 => 3,
        _ => 4,
    };
    let mut distribution = [0u64; 5];
    for &n in per_user.values() {
        distribution[bucket_of(n)] += 1;
    }
    let n = sessions.len() as i64;
    let single = sessions.iter().filter(|s| s.event_count == 1).count();
    assert!(n > 60, "the generator makes a meaningful data set ({n} sessions)");
    assert_eq!(summary["sessions"], json!(n));
    assert_eq!(summary["users"], json!(per_user.len()));
    assert_eq!(summary["total_length_ms"], json!(total));
    assert_eq!(summary["avg_length_ms"], json!((2 * total + n) / (2 * n)));
    assert_eq!(summary["median_length_ms"], percentile_seconds(&lengths, 50));
    assert_eq!(summary["p90_length_ms"], percentile_seconds(&lengths, 90));
    let labels = ["1", "2", "3-5", "6-10", "11+"];
    let want: Vec<Value> = labels.iter().zip(distribution).map(|(l, u)| json!({"label": l, "users": u})).collect();
    assert_eq!(summary["sessions_per_user"]["distribution"], json!(want));
    let mean = summary["sessions_per_user"]["mean"].as_f64().unwrap();
    assert!((mean - n as f64 / per_user.len() as f64).abs() < 1e-9);
    assert!((summary["single_event_share"].as_f64().unwrap() - single as f64 / n as f64).abs() < 1e-9);
    assert_eq!(summary["open_sessions"], json!(expected_open));
    assert_eq!(expected_open, 1, "only the live user's session is open");

    // Per day: sessions, total length, distinct users, average.
    let daily = read(&server, &project, &spec, &format!("/v1/stats/daily?{range}"));
    let mut by_day: BTreeMap<String, (u64, i64, BTreeSet<&str>)> = BTreeMap::new();
    for session in &sessions {
        let day = by_day.entry(utc_date(session.start_ms)).or_default();
        day.0 += 1;
        day.1 += session.length_ms();
        day.2.insert(&session.user);
    }
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 12, "every day of the range, empty ones too");
    assert_eq!(days[0]["date"], json!(from));
    for day in days {
        let (count, length, users) = by_day.remove(day["date"].as_str().unwrap()).unwrap_or_default();
        let average = if count == 0 { 0 } else { (2 * length + count as i64) / (2 * count as i64) };
        assert_eq!(
            day,
            &json!({"date": day["date"], "sessions": count, "total_length_ms": length, "users": users.len(),
                    "avg_length_ms": average}),
        );
    }
    assert!(by_day.is_empty(), "sessions on days outside the answer: {by_day:?}");

    // Length distribution, default and custom bounds.
    for (query, bounds) in [
        (String::new(), vec![10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000]),
        ("&bounds_ms=1000,300000".to_string(), vec![1_000, 300_000]),
    ] {
        let answer = read(&server, &project, &spec, &format!("/v1/stats/length-distribution?{range}{query}"));
        let mut counts = vec![0u64; bounds.len() + 1];
        for length in &lengths {
            counts[bounds.iter().filter(|&&b| b <= *length).count()] += 1;
        }
        let got: Vec<u64> =
            answer["buckets"].as_array().unwrap().iter().map(|b| b["sessions"].as_u64().unwrap()).collect();
        assert_eq!(got, counts, "bounds {bounds:?}");
        assert_eq!(answer["buckets"][0]["min_length_ms"], json!(0));
        assert_eq!(answer["buckets"][bounds.len()]["max_length_ms"], Value::Null);
    }

    // The session list: filtered by length, newest first, page by page.
    let min_length = 2 * MIN;
    let mut want: Vec<(i64, String)> =
        sessions.iter().filter(|s| s.length_ms() >= min_length).map(|s| (s.start_ms, s.user.clone())).collect();
    want.sort_by(|a, b| b.cmp(a));
    let mut got = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 100, "pagination ends");
        let path = format!("/v1/sessions?{range}&min_length_ms={min_length}&order=desc&limit=7&cursor={cursor}");
        let answer = read(&server, &project, &spec, &path);
        for session in answer["sessions"].as_array().unwrap() {
            assert!(session["length_ms"].as_i64().unwrap() >= min_length);
            got.push((session["start_ms"].as_i64().unwrap(), session["user_id"].as_str().unwrap().to_string()));
        }
        match answer["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(got, want);

    // Sessions holding an event of a type: the reference's sessions with such an event in their span.
    let searched: BTreeSet<(i64, String)> = sessions
        .iter()
        .filter(|s| {
            events
                .iter()
                .any(|e| e.user == s.user && e.event_type == "Searched" && (s.start_ms..=s.end_ms).contains(&e.time_ms))
        })
        .map(|s| (s.start_ms, s.user.clone()))
        .collect();
    let answer = read(&server, &project, &spec, &format!("/v1/sessions?{range}&event_type=Searched&limit=10000"));
    let got: BTreeSet<(i64, String)> = answer["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["start_ms"].as_i64().unwrap(), s["user_id"].as_str().unwrap().to_string()))
        .collect();
    assert!(!searched.is_empty() && searched.len() < sessions.len());
    assert_eq!(got, searched);

    // One session: its events in order, entry and exit, history.
    let longest = sessions.iter().max_by_key(|s| (s.event_count, s.start_ms)).unwrap();
    let listed = read(&server, &project, &spec, &format!("/v1/sessions?user_id={}", urlencode(&longest.user)));
    let uid = listed["sessions"].as_array().unwrap().iter().find(|s| s["start_ms"] == json!(longest.start_ms)).unwrap()
        ["session_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = read(&server, &project, &spec, &format!("/v1/sessions/{uid}"));
    let times: Vec<i64> = detail["events"].as_array().unwrap().iter().map(|e| e["time_ms"].as_i64().unwrap()).collect();
    assert_eq!(times.len() as u64, longest.event_count, "{detail}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "events in time order");
    assert!(detail["events"].as_array().unwrap().iter().all(|e| e["event_type"] != "Notification Sent"));
    assert_eq!((times[0], *times.last().unwrap()), (longest.start_ms, longest.end_ms));
    assert!(!detail["revisions"].as_array().unwrap().is_empty());
    assert_eq!(server.get("/v1/sessions/00000000-0000-0000-0000-000000000000", Some(&project.read_key)).status, 404);
    assert_eq!(server.get("/v1/sessions/not-a-uid", Some(&project.read_key)).status, 400);

    // A user's app usage: sessions, first and last use, total time.
    for user in ["user-03", "<img src=x onerror=alert(1)>"] {
        let mine: Vec<&RefSession> = sessions.iter().filter(|s| s.user == user).collect();
        let usage = read(&server, &project, &spec, &format!("/v1/users/{}", urlencode(user)));
        assert_eq!(usage["user_id"], json!(user));
        assert_eq!(usage["session_count"], json!(mine.len()));
        assert_eq!(usage["first_seen_ms"], json!(mine.iter().map(|s| s.start_ms).min().unwrap()));
        assert_eq!(usage["last_seen_ms"], json!(mine.iter().map(|s| s.end_ms).max().unwrap()));
        assert_eq!(usage["total_length_ms"], json!(mine.iter().map(|s| s.length_ms()).sum::<i64>()));
    }

    // A cohort: users with at least two sessions of a minute or more.
    let mut qualifying: HashMap<&str, u64> = HashMap::new();
    for session in sessions.iter().filter(|s| s.length_ms() >= MIN) {
        *qualifying.entry(&session.user).or_default() += 1;
    }
    let mut cohort: Vec<&str> = qualifying.into_iter().filter(|&(_, n)| n >= 2).map(|(u, _)| u).collect();
    cohort.sort_unstable();
    let request = json!({"from": from, "to": to, "min_sessions": 2, "min_length_ms": MIN});
    let answer = server.post("/v1/cohorts/preview", Some(&project.read_key), &request);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    check_schema(&spec, &json!({"$ref": "#/components/schemas/Cohort"}), &answer, "cohort");
    let users: Vec<&str> = answer["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, cohort);
    assert_eq!(answer["count"], json!(cohort.len()));
    let csv =
        server.try_post("/v1/cohorts/preview?format=csv", Some(&project.read_key), request.to_string().as_bytes());
    let csv = csv.unwrap();
    assert_eq!(csv.body.lines().count(), cohort.len() + 1, "a header and a line per user");
    let unknown = server.post("/v1/cohorts/preview", Some(&project.read_key), &json!({"min_sessions": 1, "colour": 1}));
    assert_eq!(unknown.status, 400, "unknown fields are refused");

    // The timeout preview: session counts under each candidate timeout.
    let preview = read(&server, &project, &spec, &format!("/v1/timeout-preview?{range}&timeouts=5m,30m,2h"));
    assert_eq!(preview["sample_fraction"], json!(1.0), "small data: every user is read");
    for (i, timeout) in [5 * MIN, 30 * MIN, 120 * MIN].into_iter().enumerate() {
        let candidate = reference_sessions(&events, timeout);
        let row = &preview["timeouts"][i];
        assert_eq!(row["timeout_ms"], json!(timeout));
        assert_eq!(row["sessions"], json!(candidate.len()), "timeout {timeout}");
        let mut lengths: Vec<i64> = candidate.iter().map(RefSession::length_ms).collect();
        lengths.sort_unstable();
        assert_eq!(row["median_length_ms"], json!(lengths[lengths.len().div_ceil(2) - 1]));
    }
    assert_eq!(preview["timeouts"][1]["current"], json!(true));
    let gaps: u64 = preview["gap_histogram"].as_array().unwrap().iter().map(|b| b["gaps"].as_u64().unwrap()).sum();
    let users_with_events = per_user.len() as u64;
    let active_events = events.iter().filter(|e| e.event_type != "Notification Sent").count() as u64;
    assert_eq!(gaps, active_events - users_with_events, "one gap between each pair of consecutive events");

    // A late event fills a gap: two sessions merge, and the board follows at once.
    let (first, second) = sessions
        .windows(2)
        .map(|w| (&w[0], &w[1]))
        .find(|(a, b)| a.user == b.user && b.start_ms - a.end_ms < 2 * TIMEOUT - 2 * MIN)
        .expect("a gap that one event can bridge");
    let bridge = (first.end_ms + second.start_ms) / 2;
    let late = Event { user: first.user.clone(), event_type: "Clicked", time_ms: bridge, insert_id: "late".into() };
    send(&server, &project, std::slice::from_ref(&late), 1);
    let after = read(&server, &project, &spec, &format!("/v1/stats/summary?{range}"));
    assert_eq!(after["sessions"], json!(n - 1), "the late event merged two sessions");
    assert_eq!(after["total_length_ms"], json!(total + second.start_ms - first.end_ms));

    // The change feed, page by page: the last state of each live session is
    // the session list, and superseded sessions are gone.
    let mut last_state: BTreeMap<String, Value> = BTreeMap::new();
    let mut cursor = "0".to_string();
    loop {
        let page = read(&server, &project, &spec, &format!("/v1/changes?cursor={cursor}&limit=50"));
        let changes = page["changes"].as_array().unwrap();
        for change in changes {
            last_state.insert(change["session_uid"].as_str().unwrap().to_string(), change.clone());
        }
        if changes.is_empty() {
            break;
        }
        cursor = page["next_cursor"].as_str().unwrap().to_string();
    }
    let live: BTreeSet<(i64, u64)> = last_state
        .values()
        .filter(|c| c["kind"] != "superseded")
        .map(|c| (c["start_ms"].as_i64().unwrap(), c["event_count"].as_u64().unwrap()))
        .collect();
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = read(&server, &project, &spec, &format!("/v1/sessions?{range}&limit=1000&cursor={cursor}"));
        all.extend(
            page["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["start_ms"].as_i64().unwrap(), s["event_count"].as_u64().unwrap())),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(all.len() as i64, n - 1);
    assert_eq!(live, all.into_iter().collect::<BTreeSet<_>>());

    // Exports of sessions: one line per session, in every format.
    let export = server.get("/v1/export/sessions?format=ndjson", Some(&project.read_key));
    assert_eq!(export.status, 200);
    assert_eq!(export.body.lines().count() as i64, n - 1);
    let parquet = server.get("/v1/export/sessions?format=csv", Some(&project.read_key));
    assert_eq!(parquet.body.lines().count() as i64, n, "a header and a line per session");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn bad_parameters_get_clear_400s_and_reads_need_a_read_key() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "params");
    let server = TestServer::start(dir.path(), free_port());
    let bad = |path: &str, needle: &str| {
        let reply = server.get(path, Some(&project.read_key));
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{path}: {message:?} should mention {needle:?}");
    };
    bad("/v1/stats/daily?from=2024-02-01&to=2024-01-01", "after");
    bad("/v1/stats/daily?from=2020-01-01&to=2024-01-01", "at most 400");
    bad("/v1/stats/daily?from=yesterday", "YYYY-MM-DD");
    bad("/v1/stats/daily?from=2024-1-1", "YYYY-MM-DD");
    bad("/v1/stats/summary?colour=red", "colour");
    bad("/v1/stats/length-distribution?bounds_ms=10,5", "increasing");
    bad("/v1/stats/length-distribution?bounds_ms=ten", "whole number");
    bad("/v1/sessions?limit=0", "limit");
    bad("/v1/sessions?min_length_ms=10&max_length_ms=5", "above");
    bad("/v1/sessions?cursor=nonsense", "cursor");
    bad("/v1/sessions?order=sideways", "order");
    bad("/v1/changes?cursor=-4", "cursor");
    bad("/v1/timeout-preview?timeouts=5m,0s", "between 1s and 7 days");
    bad("/v1/timeout-preview?timeouts=soon", "duration");
    bad("/v1/export/sessions?format=xml", "format");

    // Reads need the read key; the dashboard's cookie works for reads only.
    for path in ["/v1/stats/summary", "/v1/sessions", "/v1/changes", "/v1/project", "/v1/export/sessions"] {
        assert_eq!(server.get(path, None).status, 401, "{path}");
        assert_eq!(server.get(path, Some(&project.write_key)).status, 403, "{path}");
    }
    let sign_in = |key: &str| {
        server.request(
            "POST",
            "/dashboard/sign-in",
            &[("Content-Type", "application/json")],
            json!({"read_key": key}).to_string().as_bytes(),
        )
    };
    let (status, _, _) = sign_in(&project.write_key);
    assert_eq!(status, 401, "the write key does not sign in");
    let (status, headers, _) = sign_in(&project.read_key);
    assert_eq!(status, 204);
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let (status, _, body) = server.request("GET", "/v1/project", &[("Cookie", pair)], b"");
    assert_eq!(status, 200, "{body}");
    let event = json!({"events": [{"user_id": "u", "event_type": "e", "time": now_ms()}]}).to_string();
    let (status, _, _) = server.request("POST", "/v1/events", &[("Cookie", pair)], event.as_bytes());
    assert_eq!(status, 401, "the cookie never authorizes ingestion");
    let (status, headers, _) = server.request("GET", "/dashboard/", &[], b"");
    assert_eq!(status, 200);
    assert!(headers.get("content-security-policy").is_some());
}
