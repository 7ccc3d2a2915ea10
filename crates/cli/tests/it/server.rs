//! The real server, started as a process: ingest, query, restart, and the
//! answers to bad requests. `TestServer` is shared with the crash test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::BIN;

/// A project's id and keys, as `sessionizer project create` prints them.
#[derive(Debug, Clone)]
pub(crate) struct TestProject {
    pub(crate) id: String,
    pub(crate) write_key: String,
    pub(crate) read_key: String,
}

pub(crate) fn create_project(data: &Path, name: &str) -> TestProject {
    let output = Command::new(BIN)
        .args(["project", "create", "--data", data.to_str().unwrap(), "--name", name])
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let created: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    TestProject {
        id: created["project_id"].as_str().unwrap().to_string(),
        write_key: created["write_key"].as_str().unwrap().to_string(),
        read_key: created["read_key"].as_str().unwrap().to_string(),
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `sessionizer serve`.
pub(crate) struct TestServer {
    #[allow(dead_code, reason = "kept for tests that inspect the data directory")]
    pub(crate) data: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
    agent: ureq::Agent,
}

/// Status and body of a response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl TestServer {
    pub(crate) fn start(data: &Path, port: u16) -> TestServer {
        let server = TestServer::spawn(data, port);
        server.wait_ready();
        server
    }

    /// Starts the process without waiting until it is ready (the crash test
    /// kills some servers while they load).
    pub(crate) fn spawn(data: &Path, port: u16) -> TestServer {
        TestServer::spawn_with(data, port, &[])
    }

    /// Starts the process with extra `serve` arguments and waits until it is ready.
    pub(crate) fn start_with(data: &Path, port: u16, extra: &[&str]) -> TestServer {
        let server = TestServer::spawn_with(data, port, extra);
        server.wait_ready();
        server
    }

    fn spawn_with(data: &Path, port: u16, extra: &[&str]) -> TestServer {
        let child = Command::new(BIN)
            .args(["serve", "--data", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("SESSIONIZER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary runs");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        TestServer { data: data.to_path_buf(), port, child: Some(child), agent: config.into() }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(reply) = self.try_get("/readyz", None)
                && reply.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not become ready");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn try_get(&self, path: &str, key: Option<&str>) -> Result<Reply, ureq::Error> {
        let mut request = self.agent.get(&self.url(path));
        if let Some(key) = key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.call()?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string()?;
        Ok(Reply { status, body })
    }

    pub(crate) fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.try_get(path, key).expect("request")
    }

    pub(crate) fn try_post(&self, path: &str, key: Option<&str>, body: &[u8]) -> Result<Reply, ureq::Error> {
        let mut request = self.agent.post(&self.url(path)).header("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.send(body)?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string()?;
        Ok(Reply { status, body })
    }

    pub(crate) fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        self.try_post(path, key, body.to_string().as_bytes()).expect("request")
    }

    /// Any request: method, path, headers and body; the status, the response headers and the body.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, ureq::http::HeaderMap, String) {
        let mut builder = ureq::http::Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.to_vec()).expect("request");
        let mut response = self.agent.run(request).expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.body_mut().read_to_string().expect("body");
        (status, headers, body)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
        child.wait().expect("wait")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Now, in epoch ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

const MIN: i64 = 60_000;

#[test]
fn ingest_query_restart_query() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "shop");
    let mut server = TestServer::start(dir.path(), free_port());
    let t0 = now_ms() - 3 * 60 * MIN;
    let events = |items: &[(&str, &str, i64, &str)]| {
        let list: Vec<Value> = items
            .iter()
            .map(|(user, event_type, time, insert_id)| {
                json!({"user_id": user, "event_type": event_type, "time": time, "insert_id": insert_id, "page": "/p"})
            })
            .collect();
        json!({ "events": list })
    };
    // Two sessions for alice (a 40-minute gap), one for bob; one excluded event.
    let first = events(&[
        ("alice", "Page Viewed", t0, "a1"),
        ("alice", "Button Clicked", t0 + 10 * MIN, "a2"),
        ("alice", "Notification Sent", t0 + 12 * MIN, "a3"),
        ("bob", "Page Viewed", t0 + MIN, "b1"),
        ("alice", "Page Viewed", t0 + 50 * MIN, "a4"),
    ]);
    let reply = server.post("/v1/events", Some(&project.write_key), &first);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"accepted": 5, "duplicates": 0}));
    // A retry of the same batch is all duplicates.
    assert_eq!(
        server.post("/v1/events", Some(&project.write_key), &first).json(),
        json!({"accepted": 0, "duplicates": 5})
    );

    let sessions = server.get("/v1/sessions?user_id=alice", Some(&project.read_key)).json();
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{sessions}");
    assert_eq!(list[0]["start_ms"], json!(t0));
    assert_eq!(list[0]["end_ms"], json!(t0 + 10 * MIN));
    assert_eq!(list[0]["event_count"], json!(2));
    assert_eq!(list[0]["session_id"], json!(t0));
    assert_eq!(list[0]["end_reason"], json!("inactivity"));
    assert_eq!(list[0]["concluded"], json!(true));
    assert_eq!(list[1]["start_ms"], json!(t0 + 50 * MIN));

    // A late event fills the gap: alice's two sessions merge.
    let late = events(&[("alice", "Scrolled", t0 + 30 * MIN, "a5")]);
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &late).status, 200);
    let merged = server.get("/v1/sessions?user_id=alice", Some(&project.read_key)).json();
    let list = merged["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{merged}");
    assert_eq!((list[0]["start_ms"].clone(), list[0]["end_ms"].clone()), (json!(t0), json!(t0 + 50 * MIN)));
    assert_eq!(list[0]["event_count"], json!(4));

    let mut usage = server.get("/v1/users/alice", Some(&project.read_key)).json();
    let recent = usage.as_object_mut().unwrap().remove("recent_sessions").unwrap();
    assert_eq!(
        usage,
        json!({"user_id": "alice", "session_count": 1, "first_seen_ms": t0, "last_seen_ms": t0 + 50 * MIN,
               "total_length_ms": 50 * MIN})
    );
    assert_eq!(recent, merged["sessions"], "the recent sessions are the user's sessions");
    assert_eq!(server.get("/v1/users/nobody", Some(&project.read_key)).status, 404);

    let export = |server: &TestServer| server.get("/v1/export/events?format=ndjson", Some(&project.read_key));
    let before = export(&server);
    assert_eq!(before.status, 200);
    let rows: Vec<Value> = before.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let expected = match (row["user_id"].as_str().unwrap(), row["event_type"].as_str().unwrap()) {
            (_, "Notification Sent") => Value::Null,
            ("alice", _) => json!(t0),
            _ => json!(t0 + MIN),
        };
        assert_eq!(row["session_id"], expected, "{row}");
    }

    // A clean stop, a restart: everything is still there, and answers the same.
    assert!(server.terminate().success());
    let server = TestServer::start(dir.path(), server.port);
    assert_eq!(server.get("/v1/sessions?user_id=alice", Some(&project.read_key)).json(), merged);
    assert_eq!(export(&server).body, before.body);
    assert_eq!(
        server.post("/v1/events", Some(&project.write_key), &late).json(),
        json!({"accepted": 0, "duplicates": 1})
    );
    let csv = server.get("/v1/export/events?format=csv", Some(&project.read_key));
    assert_eq!(csv.body.lines().count(), 7, "a header and six rows");
}

#[test]
fn event_exports_keep_properties_platform_and_the_sdk_session_id() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "export");
    let server = TestServer::start(dir.path(), free_port());
    let t0 = now_ms() - 60 * 60_000;
    let properties = json!({"plan": "pro", "cart": {"items": [1, 2], "total": 12.5}, "tags": ["a", "b"]});
    let body = json!({"events": [
        {"user_id": "u1", "event_type": "Checkout", "time": t0, "insert_id": "e1", "platform": "iOS",
         "client_session_id": "cs-7", "properties": properties},
        {"user_id": "u1", "event_type": "Viewed", "time": t0 + 1_000, "insert_id": "e2"},
    ]});
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &body).status, 200);
    let range = format!("from_ms={}&to_ms={}", t0 - 1, t0 + 60_000);
    let ndjson = server.get(&format!("/v1/export/events?format=ndjson&{range}"), Some(&project.read_key));
    let rows: Vec<Value> = ndjson.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{}", ndjson.body);
    assert_eq!(rows[0]["properties"], properties, "the properties, as an object");
    assert_eq!((rows[0]["platform"].as_str(), rows[0]["client_session_id"].as_str()), (Some("ios"), Some("cs-7")));
    assert_eq!((&rows[1]["properties"], &rows[1]["platform"]), (&Value::Null, &Value::Null));
    let csv = server.get(&format!("/v1/export/events?format=csv&{range}"), Some(&project.read_key));
    let header = csv.body.lines().next().unwrap();
    assert!(header.ends_with(",platform,client_session_id,properties"), "{header}");
    // The JSON text, quoted as CSV quotes (doubled quotes).
    let first = csv.body.lines().nth(1).unwrap();
    assert!(first.contains(r#",ios,cs-7,"{"#) && first.contains(r#"""plan"":""pro"""#), "{first}");
}

/// A restart replays stored events from the earliest start of the sessions
/// that can still change. A session of another user that began before that
/// point and ended after it (but long ago) must not come back as a fragment.
#[test]
fn a_restart_replays_no_session_from_its_middle() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "replay");
    let port = free_port();
    let mut server = TestServer::start(dir.path(), port);
    // The writer replays from the start of the sessions whose last event is
    // after now - 72 h (the lateness horizon) - 30 min (the timeout).
    let floor = now_ms() - 72 * 60 * MIN - 30 * MIN;
    let from = floor - 10 * MIN;
    let body = json!({"events": [
        // "y" sets the replay start: it begins 10 minutes before the floor and reaches past it.
        {"user_id": "y", "event_type": "e", "time": from, "insert_id": "y1"},
        {"user_id": "y", "event_type": "e", "time": floor + 5 * MIN, "insert_id": "y2"},
        // "x" spans that start and ends before the floor.
        {"user_id": "x", "event_type": "e", "time": from - 20 * MIN, "insert_id": "x1"},
        {"user_id": "x", "event_type": "e", "time": from + 5 * MIN, "insert_id": "x2"},
    ]});
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &body).status, 200);
    let sessions = |server: &TestServer| server.get("/v1/sessions?user_id=x", Some(&project.read_key)).json();
    let before = sessions(&server);
    assert_eq!(before["sessions"].as_array().unwrap().len(), 1, "{before}");
    assert!(server.terminate().success());
    let server = TestServer::start(dir.path(), port);
    let after = sessions(&server);
    assert_eq!(after["sessions"], before["sessions"], "the restart stored no fragment of x's session");
}

#[test]
fn keys_roles_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let shop = create_project(dir.path(), "shop");
    let other = create_project(dir.path(), "other");
    let server = TestServer::start(dir.path(), free_port());
    let good = json!({"events": [{"user_id": "u", "event_type": "e", "time": now_ms()}]});
    let code = |reply: Reply| (reply.status, reply.json()["error"]["code"].as_str().unwrap_or("").to_string());
    assert_eq!(code(server.post("/v1/events", None, &good)), (401, "missing_key".into()));
    assert_eq!(code(server.post("/v1/events", Some("sk_write_nope"), &good)), (401, "bad_key".into()));
    assert_eq!(code(server.post("/v1/events", Some(&shop.read_key), &good)), (403, "forbidden".into()));
    assert_eq!(code(server.get("/v1/sessions?user_id=u", Some(&shop.write_key))), (403, "forbidden".into()));
    assert_eq!(code(server.get("/v1/sessions?user_id=u", None)), (401, "missing_key".into()));
    // The key may come in the body instead (what `navigator.sendBeacon` can send), never a read key.
    let keyed =
        |key: &str| json!({"write_key": key, "events": [{"user_id": "w", "event_type": "e", "time": now_ms()}]});
    assert_eq!(server.post("/v1/events", None, &keyed(&shop.write_key)).status, 200);
    assert_eq!(code(server.post("/v1/events", None, &keyed(&shop.read_key))), (403, "forbidden".into()));
    assert_eq!(code(server.post("/v1/events", None, &keyed("sk_write_nope"))), (401, "bad_key".into()));
    // A read key sees only its own project.
    assert_eq!(server.post("/v1/events", Some(&shop.write_key), &good).status, 200);
    let own = server.get("/v1/sessions?user_id=u", Some(&shop.read_key)).json();
    assert_eq!(own["sessions"].as_array().unwrap().len(), 1);
    let theirs = server.get("/v1/sessions?user_id=u", Some(&other.read_key)).json();
    assert_eq!(theirs["sessions"].as_array().unwrap().len(), 0);

    // A bad event names its index and field, and nothing of the batch is stored.
    let bad = json!({"events": [
        {"user_id": "v", "event_type": "e", "time": now_ms()},
        {"user_id": "v", "time": now_ms()},
    ]});
    let reply = server.post("/v1/events", Some(&shop.write_key), &bad);
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["error"]["events"], json!([{"index": 1, "field": "event_type", "message": "required"}]));
    assert_eq!(server.get("/v1/sessions?user_id=v", Some(&shop.read_key)).json()["sessions"], json!([]));

    let too_big = vec![b' '; sessionizer_server::limits::MAX_BODY_BYTES + 1];
    assert_eq!(server.try_post("/v1/events", Some(&shop.write_key), &too_big).unwrap().status, 413);
    assert_eq!(
        code(server.get("/v1/sessions?user_id=u&device_id=d", Some(&shop.read_key))),
        (400, "bad_request".into())
    );
    assert_eq!(code(server.get("/v1/sessions?user_id=u&color=red", Some(&shop.read_key))), (400, "bad_request".into()));
    assert_eq!(
        code(server.get("/v1/export/events?from_ms=5&to_ms=1", Some(&shop.read_key))),
        (400, "bad_request".into())
    );
    assert_eq!(code(server.get("/v1/export/events?format=xml", Some(&shop.read_key))), (400, "bad_request".into()));
    assert_eq!(code(server.get("/v1/nothing", None)), (404, "not_found".into()));
    assert_eq!(server.get("/healthz", None).status, 200);
    let metrics = server.get("/metrics", None).body;
    assert!(metrics.contains("sessionizer_ingested_events_total 2"), "{metrics}");
    // Five ingestion requests had no key, a wrong key, or a read key (in the header or the body).
    assert!(metrics.contains("sessionizer_rejected_events_total{reason=\"unauthorized\"} 5\n"), "{metrics}");
    // The partly bad batch was rejected (one request), and the oversized body.
    assert!(metrics.contains("sessionizer_rejected_events_total{reason=\"invalid\"} 1\n"), "{metrics}");
    assert!(metrics.contains("sessionizer_rejected_events_total{reason=\"too_large\"} 1\n"), "{metrics}");
}

#[test]
fn settings_changes_resessionize_history() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "p");
    let t0 = now_ms() - 5 * 60 * MIN;
    {
        let mut server = TestServer::start(dir.path(), free_port());
        let batch = json!({"events": [
            {"user_id": "u", "event_type": "e", "time": t0, "insert_id": "1"},
            {"user_id": "u", "event_type": "e", "time": t0 + 20 * MIN, "insert_id": "2"},
        ]});
        assert_eq!(server.post("/v1/events", Some(&project.write_key), &batch).status, 200);
        assert!(server.terminate().success());
    }
    let set = Command::new(BIN)
        .args(["project", "set", "--data", dir.path().to_str().unwrap(), &project.id, "--timeout", "10m"])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let shown: Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(shown["settings"]["timeout_ms"], json!(10 * MIN));
    assert_eq!(shown["sessions"], json!(2), "a 20-minute gap splits under a 10-minute timeout");
    let bad = Command::new(BIN)
        .args(["project", "set", "--data", dir.path().to_str().unwrap(), &project.id, "--timeout", "500ms"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("timeout"));
    let server = TestServer::start(dir.path(), free_port());
    let sessions = server.get("/v1/sessions?user_id=u", Some(&project.read_key)).json();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 2);
    // A rebuild while the server runs is refused with a clear message.
    let rebuild = Command::new(BIN).args(["rebuild", "--data", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(rebuild.status.code(), Some(75), "{}", String::from_utf8_lossy(&rebuild.stderr));
}

#[test]
fn events_older_than_the_live_horizon_still_land_in_their_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "p");
    let server = TestServer::start(dir.path(), free_port());
    // Five days ago: beyond the live engine's 72-hour horizon, so the store resolves them.
    let t0 = now_ms() - 5 * 24 * 60 * MIN;
    let event =
        |time: i64, insert_id: &str| json!({"user_id": "old", "event_type": "e", "time": time, "insert_id": insert_id});
    let first = json!({"events": [event(t0, "1"), event(t0 + 10 * MIN, "2"), event(t0 + 50 * MIN, "3")]});
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &first).status, 200);
    let sessions = server.get("/v1/sessions?user_id=old", Some(&project.read_key)).json();
    let starts: Vec<&Value> = sessions["sessions"].as_array().unwrap().iter().map(|s| &s["start_ms"]).collect();
    assert_eq!(starts, [&json!(t0), &json!(t0 + 50 * MIN)], "{sessions}");
    // The gap is filled five days late: the two sessions merge.
    let late = json!({"events": [event(t0 + 30 * MIN, "4")]});
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &late).status, 200);
    let merged = server.get("/v1/sessions?user_id=old", Some(&project.read_key)).json();
    let list = merged["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{merged}");
    assert_eq!(
        (&list[0]["start_ms"], &list[0]["end_ms"], &list[0]["event_count"]),
        (&json!(t0), &json!(t0 + 50 * MIN), &json!(4))
    );
    assert_eq!(list[0]["end_reason"], json!("inactivity"));
}

/// A project over its key's rate limit gets 429 with `Retry-After` and
/// nothing of those requests stored, while another project carries on.
#[test]
fn rate_limits_refuse_one_project_and_spare_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let noisy = create_project(dir.path(), "noisy");
    let quiet = create_project(dir.path(), "quiet");
    let server =
        TestServer::start_with(dir.path(), free_port(), &["--ingest-rate-limit", "100", "--read-rate-limit", "5"]);
    let t0 = now_ms() - 60 * MIN;
    let batch = |prefix: &str, n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"user_id": format!("{prefix}-{i}"), "event_type": "e", "time": t0, "insert_id": format!("{prefix}-{i}")}))
            .collect();
        json!({"events": events})
    };
    // A burst of two seconds' worth (200 events) passes, the next is refused at once.
    let mut statuses = Vec::new();
    for round in 0..4 {
        let reply = server.post("/v1/events", Some(&noisy.write_key), &batch(&format!("n{round}"), 100));
        if reply.status == 429 {
            assert_eq!(reply.json()["error"]["code"], json!("rate_limited"), "{}", reply.body);
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    // Amplitude's route answers in Amplitude's throttling format, with a delay.
    let amplitude_events: Vec<Value> =
        (0..150).map(|i| json!({"user_id": format!("amp-{i}"), "event_type": "e", "time": t0})).collect();
    let amplitude = json!({"api_key": noisy.write_key, "events": amplitude_events});
    let (status, headers, body) = server.request("POST", "/2/httpapi", &[], amplitude.to_string().as_bytes());
    assert_eq!(status, 429, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], json!(429));
    assert!(headers.get("retry-after").unwrap().to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // The other project is not slowed down.
    assert_eq!(server.post("/v1/events", Some(&quiet.write_key), &batch("q", 100)).status, 200);

    // Reads: thirty at once from one read key, five per second with a burst of ten; the other key still reads.
    let reads: Vec<u16> = (0..30).map(|_| server.get("/v1/stats/summary", Some(&noisy.read_key)).status).collect();
    assert!(reads.contains(&429), "{reads:?}");
    assert_eq!(server.get("/v1/stats/summary", Some(&quiet.read_key)).status, 200);
    // Nothing of the refused requests was stored.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let export = server.get("/v1/export/events?format=ndjson", Some(&noisy.read_key));
    let accepted = statuses.iter().filter(|&&s| s == 200).count() * 100;
    assert_eq!(export.body.lines().count(), accepted);
}

/// Logs (at debug level, as an operator investigating would set them) hold
/// no API key and no user data, whatever the requests: good, bad, refused.
#[test]
fn logs_hold_no_keys_and_no_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "logs");
    let log_path = dir.path().join("server.log");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--data", dir.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .env("SESSIONIZER_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(&url("/readyz")).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secret_user = "user-3c1f-private@example.com";
    let secret_page = "/account/secret-page-77";
    let good = json!({"events": [{"user_id": secret_user, "event_type": "Secret Type", "time": now_ms(),
        "insert_id": "secret-insert-id", "page": secret_page, "properties": {"card": "4111-1111"}}]});
    let bad = json!({"events": [{"user_id": secret_user, "time": "not a time", "page": secret_page}]});
    let post = |key: &str, body: &Value| {
        agent
            .post(&url("/v1/events"))
            .header("Authorization", &format!("Bearer {key}"))
            .send(body.to_string())
            .unwrap();
    };
    post(&project.write_key, &good);
    post(&project.write_key, &bad);
    post(&project.read_key, &good);
    post("sk_write_0123456789abcdef0123456789abcdef", &good);
    for path in [format!("/v1/users/{secret_user}"), format!("/v1/sessions?user_id={secret_user}"), "/v1/nope".into()] {
        agent.get(&url(&path)).header("Authorization", &format!("Bearer {}", project.read_key)).call().unwrap();
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("sessionizer serving"), "the log was written: {log}");
    for secret in [
        project.write_key.as_str(),
        project.read_key.as_str(),
        "sk_write_0123456789abcdef",
        secret_user,
        secret_page,
        "Secret Type",
        "secret-insert-id",
        "4111-1111",
    ] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
}

/// `--apply-batch-events` and `--apply-delay`: the writer applies acknowledged
/// events once the batch has gathered, and otherwise waits for the delay, but
/// a read never waits for it. Bad values are refused before the server starts.
#[test]
fn apply_batching_is_configurable_and_reads_never_wait_for_it() {
    let batch = |first_user: usize| {
        let events: Vec<Value> = (first_user..first_user + 10)
            .map(|i| json!({"user_id": format!("u{i}"), "event_type": "Page Viewed", "time": now_ms(), "insert_id": format!("i{i}")}))
            .collect();
        json!({ "events": events })
    };
    let unapplied = |server: &TestServer| -> u64 {
        let metrics = server.get("/metrics", None).body;
        let line = metrics.lines().find(|line| line.starts_with("sessionizer_unapplied_events ")).expect("the gauge");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };

    // A batch of 5: ten events are applied without any read asking.
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "small");
    let server =
        TestServer::start_with(dir.path(), free_port(), &["--apply-batch-events", "5", "--apply-delay", "60s"]);
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &batch(0)).status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while unapplied(&server) > 0 {
        assert!(Instant::now() < deadline, "a full batch was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);

    // A batch of 1,000 and a minute's delay: ten events wait in the log,
    // longer than the default delay (2 s), until a read has them applied.
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "large");
    let server =
        TestServer::start_with(dir.path(), free_port(), &["--apply-batch-events", "1000", "--apply-delay", "1m"]);
    assert_eq!(server.post("/v1/events", Some(&project.write_key), &batch(0)).status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(unapplied(&server), 10, "the writer waits for the batch or the delay");
    let usage = server.get("/v1/users/u3", Some(&project.read_key));
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert_eq!(usage.json()["session_count"], json!(1), "a read sees every acknowledged event");
    assert_eq!(unapplied(&server), 0);
    drop(server);

    // Out of bounds, from a flag, the environment or the file: exit 2, saying which.
    let config = dir.path().join("sessionizer.toml");
    std::fs::write(&config, "apply_delay = \"2m\"\n").unwrap();
    let config = config.to_str().unwrap();
    // Arguments, an environment variable, what the error says.
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case<'_>; 5] = [
        (&["--apply-batch-events", "0"], None, "apply_batch_events must be between 1 and 50000, got 0"),
        (&["--apply-batch-events", "50001"], None, "apply_batch_events must be between 1 and 50000"),
        (&["--apply-delay", "soon"], None, "apply_delay: invalid duration"),
        (&[], Some(("SESSIONIZER_APPLY_DELAY", "0s")), "apply_delay must be above zero and at most 60 s, got 0 ms"),
        (&["--config", config], None, "apply_delay must be above zero and at most 60 s, got 120000 ms"),
    ];
    for (args, env, expected) in cases {
        let mut command = Command::new(BIN);
        command.args(["serve", "--data", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"]).args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A batch large enough for the writer to store and sessionize it on two
/// threads at once (`PARALLEL_APPLY_MIN_EVENTS`) gives the sessions the batch
/// command finds in the same events.
#[test]
fn a_large_batch_applied_at_once_matches_the_batch_command() {
    const USERS: i64 = 40;
    const EVENTS_PER_USER: i64 = 75;
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "large batch");
    // Nothing is applied until the read below: then all 3,000 events at once.
    let server =
        TestServer::start_with(dir.path(), free_port(), &["--apply-batch-events", "50000", "--apply-delay", "60s"]);
    // Each user's last event a minute ago at the latest (the server refuses
    // the future), the first at most 62.5 hours before (inside the engine's
    // 72-hour horizon).
    let mut events = Vec::new();
    for user in 0..USERS {
        let mut time_ms = now_ms() - 60_000 - EVENTS_PER_USER * 3_000_000 + user * 1_000;
        for n in 0..EVENTS_PER_USER {
            // Gaps of 1 s to 50 min: some below the 30 min timeout, some above.
            time_ms += 1_000 + (user * 7_919 + n * 104_729) % 2_999_000;
            let event_type = match n % 10 {
                0 => "Notification Sent", // excluded: no session
                _ => "Page Viewed",
            };
            events.push(json!({
                "user_id": format!("user-{user}"),
                "event_type": event_type,
                "time": time_ms,
                "insert_id": format!("{user}-{n}"),
            }));
        }
    }
    // Arrival order is not time order: the users interleave, newest first.
    events.reverse();
    for request in events.chunks(500) {
        let reply = server.post("/v1/events", Some(&project.write_key), &json!({ "events": request }));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    let input = dir.path().join("events.ndjson");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = Command::new(BIN).args(["sessionize", input.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key = |session: &Value| {
        ["user_id", "session_id", "start_ms", "end_ms", "event_count"].map(|field| session[field].to_string())
    };
    let mut expected: Vec<[String; 5]> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| key(&serde_json::from_str(line).unwrap()))
        .collect();
    expected.sort();

    let mut stored = Vec::new();
    for user in 0..USERS {
        let reply = server.get(&format!("/v1/sessions?user_id=user-{user}"), Some(&project.read_key));
        assert_eq!(reply.status, 200, "{}", reply.body);
        stored.extend(reply.json()["sessions"].as_array().unwrap().iter().map(key));
    }
    stored.sort();
    assert!(expected.len() > 2 * USERS as usize, "the data has gaps above the timeout: {}", expected.len());
    assert_eq!(stored, expected);
}
