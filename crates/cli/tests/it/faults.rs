//! Storage faults against the real server (issue 7): a torn or truncated
//! write-ahead log, corrupt pages in the middle of the database, a full disk,
//! and a failing fsync. Each test ends by checking that nothing acknowledged
//! was lost and nothing damaged was served.
//!
//! ```sh
//! cargo test -p sessionizer --test it faults -- --nocapture
//! ```
//!
//! The torn-log test truncates the log at a dense sample of offsets over its
//! last two commits (every frame boundary, the bytes around it, inside the
//! frame header and in the middle of the page) and at every earlier frame
//! boundary; `FAULTS_EVERY_OFFSET=1` tries every byte offset of the last two
//! commits instead (about 95,000 restarts: hours). The disk-full test mounts a tmpfs and the
//! fsync test preloads a shim compiled with `cc`: without root or a C compiler
//! they say so and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessionizer_store::{DB_FILE, LOG_FILE, Store};

use super::BIN;
use super::server::{create_project, free_port, now_ms};

const MINUTE: i64 = 60_000;

/// `sessionizer serve` with its stderr kept in a file, extra environment
/// variables (the fsync shim) and its own HTTP client.
struct Server {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    agent: ureq::Agent,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> Value {
        self.json()["error"]["code"].clone()
    }
}

impl Server {
    fn spawn(data: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = data.with_extension(format!("{port}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--data", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--read-rate-limit", "0"])
            .envs(env.iter().copied())
            .env("SESSIONIZER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary runs");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Server { port, child: Some(child), log, agent }
    }

    /// Starts a server and waits until `/healthz` answers (not `/readyz`: some
    /// tests expect a server that serves reads but refuses writes).
    fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        let mut server = Server::spawn(data, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if server.try_request("GET", "/healthz", None, b"").is_ok_and(|a| a.status == 200) {
                // The writer loads the live state before it takes writes.
                while Instant::now() < deadline && server.get("/readyz", None).body.contains("loading") {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited with {status}: {}", server.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not start: {}", server.log_text());
    }

    fn try_request(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Result<Answer, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("Content-Type", "application/json");
        if let Some(key) = key {
            builder = builder.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = self.agent.run(builder.body(body.to_vec()).unwrap())?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.body_mut().with_config().limit(64 << 20).read_to_string()?;
        Ok(Answer { status, retry_after, body })
    }

    fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.try_request("GET", path, key, b"").expect("the server answers")
    }

    fn post(&self, key: &str, body: &Value) -> Answer {
        self.try_request("POST", "/v1/events", Some(key), body.to_string().as_bytes()).expect("the server answers")
    }

    /// Every stored event's insert id, with how many times it is stored.
    fn stored_ids(&self, read_key: &str) -> BTreeMap<String, usize> {
        let export = self.get("/v1/export/events?format=ndjson", Some(read_key));
        assert_eq!(export.status, 200, "{}\nserver log:\n{}", export.body, self.log_text());
        let mut ids = BTreeMap::new();
        for line in export.body.lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            *ids.entry(row["insert_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        ids
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
        assert!(child.wait().unwrap().success(), "a clean stop: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A batch of `n` events with insert ids `{prefix}-{j}`, `pad` bytes of properties each.
fn batch(prefix: &str, n: usize, time_ms: i64, pad: usize) -> (Value, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|j| format!("{prefix}-{j}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(j, id)| {
            json!({"user_id": format!("u{}", j % 7), "event_type": "Viewed", "time": time_ms + j as i64,
                   "insert_id": id, "properties": {"marker": format!("m:{id}:"), "pad": "p".repeat(pad)}})
        })
        .collect();
    (json!({ "events": events }), ids)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn wal_path(data: &Path) -> PathBuf {
    data.join(format!("{DB_FILE}-wal"))
}

/// The write-ahead log of the ingest log, where acknowledgements are made durable.
fn ingest_log_wal_path(data: &Path) -> PathBuf {
    data.join(format!("{LOG_FILE}-wal"))
}

/// Each session as (user, id, uid, start, end, events, entry, exit): what a rebuild must reproduce.
type SessionRow = (Option<String>, i64, String, i64, i64, u64, String, String);

fn sessions_of(data: &Path) -> Vec<SessionRow> {
    let store = Store::open_reader(data).unwrap();
    let mut rows = Vec::new();
    for project in store.projects().unwrap() {
        for s in store.all_sessions(project.id).unwrap() {
            rows.push((
                s.user.user_id().map(str::to_string),
                s.session_id,
                s.session_uid.to_string(),
                s.start_ms,
                s.end_ms,
                s.event_count,
                s.entry_event_type.clone(),
                s.exit_event_type.clone(),
            ));
        }
    }
    rows.sort();
    rows
}

/// With the server stopped: the stored sessions are those `sessionizer rebuild` derives from the stored events.
fn assert_sessions_equal_a_rebuild(data: &Path, context: &str) {
    let before = sessions_of(data);
    let output = Command::new(BIN).args(["rebuild", "--data", data.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{context}: rebuild failed: {}", String::from_utf8_lossy(&output.stderr));
    let after = sessions_of(data);
    assert_eq!(before, after, "{context}: the stored sessions differ from a rebuild of the stored events");
}

fn check(data: &Path) -> (Option<i32>, Value, String) {
    let output = Command::new(BIN).args(["check", "--data", data.to_str().unwrap()]).output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), report, String::from_utf8_lossy(&output.stderr).into_owned())
}

// ---- a. torn or truncated log ----

/// Offsets where a commit ends in a SQLite WAL file: after each frame whose
/// header says "commit", as long as frames carry the header's salts.
fn wal_commit_ends(wal: &[u8]) -> (usize, Vec<usize>) {
    let be = |at: usize| u32::from_be_bytes(wal[at..at + 4].try_into().unwrap());
    assert!(wal.len() >= 32 && matches!(be(0), 0x377f0682 | 0x377f0683), "not a WAL file");
    let page_size = be(8) as usize;
    let salts = (be(16), be(20));
    let frame = 24 + page_size;
    let mut ends = Vec::new();
    let mut at = 32;
    while at + frame <= wal.len() && (be(at + 8), be(at + 12)) == salts {
        if be(at + 4) != 0 {
            ends.push(at + frame);
        }
        at += frame;
    }
    (page_size, ends)
}

/// SIGKILL after acknowledged ingest, then the ingest log's write-ahead log
/// (where acknowledgements are made durable) cut at each offset over its last
/// commits: the server starts, serves, and keeps every commit whose frames are
/// whole (SQLite rolls back a commit whose frames are torn; every acknowledged
/// commit before it survives). A torn commit may survive too, whole, when the
/// main database applied it before the kill: what is kept is always a prefix
/// of the acknowledged batches, each all or nothing, none twice. Its sessions
/// equal a rebuild.
#[test]
fn torn_log_keeps_a_valid_prefix_of_acknowledged_commits() {
    const BATCHES: usize = 10;
    const TORN_COMMITS: usize = 2;
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("original");
    let project = create_project(&original, "wal");
    let mut server = Server::start(&original, &[]);
    let t0 = now_ms() - 10 * MINUTE;
    // One request at a time: each acknowledged batch is one commit, and the
    // log's size after the acknowledgement is where that commit ends.
    let mut acknowledged: Vec<(Vec<String>, usize)> = Vec::new();
    for i in 0..BATCHES {
        let (body, ids) = batch(&format!("wal{i}"), 5, t0 + i as i64 * 1_000, 200);
        let answer = server.post(&project.write_key, &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
        acknowledged.push((ids, std::fs::metadata(ingest_log_wal_path(&original)).unwrap().len() as usize));
    }
    server.kill();
    let wal = std::fs::read(ingest_log_wal_path(&original)).unwrap();
    let (page_size, commit_ends) = wal_commit_ends(&wal);
    for (i, (_, end)) in acknowledged.iter().enumerate() {
        assert!(commit_ends.contains(end), "batch {i} was acknowledged at log offset {end}, not a commit end");
    }

    // Offsets over the frames of the last commits.
    let first = acknowledged[BATCHES - 1 - TORN_COMMITS].1;
    let last = acknowledged[BATCHES - 1].1;
    let frame = 24 + page_size;
    let offsets: BTreeSet<usize> = if std::env::var_os("FAULTS_EVERY_OFFSET").is_some() {
        (first..=last).collect()
    } else {
        (first..last)
            .step_by(frame)
            .flat_map(|start| [start, start + 1, start + 12, start + 24, start + 24 + page_size / 2, start + frame - 1])
            .chain([last, 0, 32])
            // Every earlier frame's boundary too (and one byte past it): each
            // earlier commit end keeps exactly the batches before it.
            .chain((32..first).step_by(frame).flat_map(|start| [start, start + 1]))
            .collect()
    };
    eprintln!(
        "torn log: {} bytes, {} frames of {frame} bytes, {} commits; {} offsets in [{first}, {last}]",
        wal.len(),
        (wal.len() - 32) / frame,
        commit_ends.len(),
        offsets.len()
    );
    let started = Instant::now();
    let mut kept_counts = BTreeMap::new();
    for (n, &offset) in offsets.iter().enumerate() {
        let copy = root.path().join(format!("cut-{offset}"));
        copy_dir(&original, &copy);
        let file = std::fs::OpenOptions::new().write(true).open(ingest_log_wal_path(&copy)).unwrap();
        file.set_len(offset as u64).unwrap();
        drop(file);

        let mut server = Server::start(&copy, &[]);
        assert_eq!(server.get("/readyz", None).status, 200, "offset {offset}: {}", server.log_text());
        let stored = server.stored_ids(&project.read_key);
        let mut kept = 0;
        for (i, (ids, end)) in acknowledged.iter().enumerate() {
            let counts: Vec<usize> = ids.iter().map(|id| stored.get(id).copied().unwrap_or(0)).collect();
            let whole = counts.iter().all(|&n| n == 1);
            assert!(
                whole || counts.iter().all(|&n| n == 0),
                "offset {offset}: batch {i} (commit ending at {end}) is partly stored or doubled: {counts:?}"
            );
            assert!(whole || *end > offset, "offset {offset}: batch {i}, whole in the log, is lost");
            assert!(!whole || kept == i, "offset {offset}: batch {i} is stored but an earlier one is not");
            kept += usize::from(whole);
        }
        assert_eq!(stored.len(), kept * 5, "offset {offset}: stored events of no batch: {stored:?}");
        *kept_counts.entry(kept).or_insert(0) += 1;
        // It serves: reads, and a new write on top of the recovered log.
        let (body, _) = batch(&format!("after-{offset}"), 2, t0 + 30_000, 10);
        assert_eq!(server.post(&project.write_key, &body).status, 200, "offset {offset}");
        server.terminate();
        // A rebuild per kept-prefix length and at a few torn offsets is enough
        // (the sessions depend only on which commits survived).
        if n % 7 == 0 || offset == last {
            assert_sessions_equal_a_rebuild(&copy, &format!("offset {offset}"));
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    eprintln!(
        "torn log: {} offsets in {:.1}s; batches kept → offsets: {kept_counts:?}",
        offsets.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---- b. corrupt pages in the middle ----

/// A checkpointed database with one page's header bytes flipped: `sessionizer
/// check` reports it (exit 65), the server answers every read that reaches the
/// page with 500 `storage_corrupt` (logged once) and every other read with
/// exactly what it answered before.
#[test]
fn corrupt_pages_are_detected_and_not_served() {
    const USERS: usize = 120;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let project = create_project(&data, "corrupt");
    // 20 to 5 days old: outside the live state the server replays at start.
    let t0 = now_ms() - 20 * 24 * 60 * MINUTE;
    let mut server = Server::start(&data, &[]);
    let events: Vec<Value> = (0..USERS)
        .flat_map(|u| {
            (0..8).map(move |j| {
                json!({"user_id": format!("c{u:03}"), "event_type": "Viewed", "time": t0 + u as i64 * 3 * 60 * MINUTE + j * MINUTE,
                       "insert_id": format!("c{u:03}-{j}"), "properties": {"marker": format!("mark-c{u:03}-"), "pad": "x".repeat(300)}})
            })
        })
        .collect();
    let stored = server.post(&project.write_key, &json!({ "events": events }));
    assert_eq!(stored.status, 200, "{}", stored.body);
    // Each user's one session, and its detail (which reads the session's events).
    let mut before = BTreeMap::new();
    for u in 0..USERS {
        let user = format!("c{u:03}");
        let list = server.get(&format!("/v1/sessions?user_id={user}"), Some(&project.read_key)).json();
        let uid = list["sessions"][0]["session_uid"].as_str().unwrap().to_string();
        let detail = server.get(&format!("/v1/sessions/{uid}"), Some(&project.read_key));
        assert_eq!(detail.status, 200);
        before.insert(user, (uid, detail.body));
    }
    server.terminate();
    // The last connection to close checkpoints the log into the database file.
    drop(Store::open(&data).unwrap());
    assert!(std::fs::metadata(wal_path(&data)).map_or(true, |m| m.len() == 0), "the log is checkpointed");
    assert_eq!(check(&data).0, Some(0), "intact data passes the check");

    // A page in the middle holding event rows (their properties are stored nowhere else).
    let mut file = std::fs::read(data.join(DB_FILE)).unwrap();
    let page_size = usize::from(u16::from_be_bytes([file[16], file[17]]));
    let pages = file.len() / page_size;
    let holds = |page: usize, user: usize| {
        let needle = format!("mark-c{user:03}-");
        file[page * page_size..(page + 1) * page_size].windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    let event_pages: Vec<usize> = (1..pages).filter(|&p| (0..USERS).any(|u| holds(p, u))).collect();
    assert!(event_pages.len() >= 3, "the events span several pages: {event_pages:?}");
    let victim = event_pages[event_pages.len() / 2];
    let hit: BTreeSet<String> = (0..USERS).filter(|&u| holds(victim, u)).map(|u| format!("c{u:03}")).collect();
    // The b-tree page header: type, first freeblock, cell count.
    for byte in &mut file[victim * page_size..victim * page_size + 5] {
        *byte ^= 0xff;
    }
    std::fs::write(data.join(DB_FILE), &file).unwrap();
    eprintln!("corrupt page {victim} of {pages} ({} pages hold events); users on it: {hit:?}", event_pages.len());

    let (code, report, stderr) = check(&data);
    assert_eq!(code, Some(65), "check exits 65 on damage: {report} {stderr}");
    assert_eq!(report["ok"], json!(false));
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(report["problems"].as_array().is_some_and(|p| !p.is_empty()), "{report}");

    let server = Server::start(&data, &[]);
    let mut refused = BTreeSet::new();
    for (user, (uid, body)) in &before {
        let detail = server.get(&format!("/v1/sessions/{uid}"), Some(&project.read_key));
        match detail.status {
            200 => assert_eq!(&detail.body, body, "{user}: a read answered other data than before"),
            500 => {
                assert_eq!(detail.code(), json!("storage_corrupt"), "{}", detail.body);
                refused.insert(user.clone());
            }
            other => panic!("{user}: {other} {}", detail.body),
        }
    }
    assert_eq!(refused, hit, "exactly the reads that reach the damaged page are refused");
    let export = server.try_request("GET", "/v1/export/events?format=ndjson", Some(&project.read_key), b"");
    // A streamed export that reaches the page stops short: the client sees a broken body, never a complete one.
    assert!(export.is_err() || export.as_ref().is_ok_and(|a| a.status == 500), "{export:?}");
    let log = server.log_text();
    assert_eq!(log.matches("stored data is damaged").count(), 1, "logged once: {log}");
    eprintln!(
        "corrupt page: check exit 65 ({} problems); {} of {USERS} reads refused, the rest unchanged",
        report["problems"].as_array().unwrap().len(),
        refused.len()
    );
}

// ---- c. disk full ----

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()])
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!("mount -t tmpfs failed (root needed): {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), self.path.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        drop(Command::new("umount").arg(&self.path).status());
    }
}

/// Ingest into a small tmpfs until the disk is full: 507 `disk_full` with
/// Retry-After, nothing of a refused request stored, reads served or refused
/// with the reason (503) while acknowledged events cannot be applied; then
/// the tmpfs grows and ingestion resumes without a restart, with every
/// acknowledged event stored once and the database intact.
#[test]
fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("tmpfs");
    let disk = match Tmpfs::mount(&data, "3m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_answers_507_and_recovers_when_space_returns: {why}");
            return;
        }
    };
    let project = create_project(&data, "full");
    let mut server = Server::start(&data, &[]);
    let t0 = now_ms() - 30 * MINUTE;
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut full_answers = 0;
    for i in 0..200 {
        let (body, ids) = batch(&format!("full{i}"), 50, t0 + i * 100, 1_000);
        let answer = server.post(&project.write_key, &body);
        match answer.status {
            200 => acknowledged.extend(ids),
            507 => {
                assert_eq!(answer.code(), json!("disk_full"), "{}", answer.body);
                assert!(answer.retry_after.is_some(), "507 has Retry-After");
                refused.extend(ids);
                full_answers += 1;
                if full_answers == 3 {
                    break;
                }
            }
            other => panic!("batch {i}: {other} {}", answer.body),
        }
    }
    assert_eq!(full_answers, 3, "the disk never filled");
    eprintln!("disk full after {} acknowledged events", acknowledged.len());
    // The server stays up. Reads see every acknowledged event or, while the
    // full disk keeps some from being applied, say so (503) rather than
    // answer without them.
    assert_eq!(server.get("/healthz", None).status, 200);
    let read = server.get("/v1/sessions?user_id=u1", Some(&project.read_key));
    match read.status {
        200 => {
            let stored = server.stored_ids(&project.read_key);
            assert!(refused.iter().all(|id| !stored.contains_key(id)), "events of a 507 are stored");
            assert!(acknowledged.iter().all(|id| stored.get(id) == Some(&1)), "an acknowledged event is missing");
        }
        503 => {
            assert_eq!(read.code(), json!("read_behind"), "{}", read.body);
            assert!(read.body.contains("disk is full"), "{}", read.body);
        }
        other => panic!("a read during a full disk answered {other}: {}", read.body),
    }

    // Space returns: ingestion resumes on the same process.
    disk.resize("64m");
    let mut resumed = None;
    for attempt in 0..50 {
        let (body, ids) = batch(&format!("after{attempt}"), 50, t0 + 60_000 + attempt, 100);
        let answer = server.post(&project.write_key, &body);
        if answer.status == 200 {
            acknowledged.extend(ids);
            resumed = Some(attempt);
            break;
        }
        assert_eq!(answer.status, 507, "{}", answer.body);
        refused.extend(ids);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed.is_some(), "ingestion did not resume after the disk grew: {}", server.log_text());
    for i in 0..5 {
        let (body, ids) = batch(&format!("more{i}"), 50, t0 + 120_000 + i, 100);
        assert_eq!(server.post(&project.write_key, &body).status, 200);
        acknowledged.extend(ids);
    }
    assert_eq!(server.get("/readyz", None).status, 200);
    let stored = server.stored_ids(&project.read_key);
    assert!(acknowledged.iter().all(|id| stored.get(id) == Some(&1)), "an acknowledged event is lost or doubled");
    assert!(refused.iter().all(|id| !stored.contains_key(id)), "events of a 507 are stored");
    assert_eq!(stored.len(), acknowledged.len());
    assert_eq!(check(&data).0, Some(0), "the database is intact");
    server.terminate();
    assert_sessions_equal_a_rebuild(&data, "after a full disk");
    eprintln!(
        "disk full: {} acknowledged, {} refused with 507; resumed after {} retries",
        acknowledged.len(),
        refused.len(),
        resumed.unwrap()
    );
}

// ---- d. fsync failure ----

/// Compiles `tests/faults/fail_fsync.c` into a shared object, or says why not.
fn build_fsync_shim(out: &Path) -> Result<PathBuf, String> {
    let source = super::repo_path("tests/faults/fail_fsync.c");
    let library = out.join("fail_fsync.so");
    let output = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o", library.to_str().unwrap(), source.to_str().unwrap(), "-ldl"])
        .output()
        .map_err(|e| format!("no C compiler (cc): {e}"))?;
    if !output.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(library)
}

/// Once fsync fails (EIO from a preloaded shim), the failing request is not
/// acknowledged, nothing after it is (503, `/readyz` not ready), and after a
/// restart without the shim every acknowledged event is there.
#[test]
fn a_failed_fsync_stops_acknowledgements() {
    let root = tempfile::tempdir().unwrap();
    let library = match build_fsync_shim(root.path()) {
        Ok(library) => library,
        Err(why) => {
            eprintln!("SKIPPED a_failed_fsync_stops_acknowledgements: {why}");
            return;
        }
    };
    let data = root.path().join("data");
    let trigger = root.path().join("fail-fsync-now");
    let project = create_project(&data, "fsync");
    let env = [("LD_PRELOAD", library.to_str().unwrap()), ("FAIL_FSYNC_TRIGGER", trigger.to_str().unwrap())];
    let mut server = Server::start(&data, &env);
    assert_eq!(server.get("/readyz", None).status, 200);
    let t0 = now_ms() - 5 * MINUTE;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (body, ids) = batch(&format!("sync{i}"), 20, t0 + i * 100, 50);
        assert_eq!(server.post(&project.write_key, &body).status, 200);
        acknowledged.extend(ids);
    }
    // A read waits until the acknowledged events are applied to the main
    // database: from here on only the next request writes (no session is due
    // to conclude), so it is the one whose fsync fails.
    assert_eq!(server.get("/v1/sessions?user_id=u1", Some(&project.read_key)).status, 200);
    std::fs::write(&trigger, b"").unwrap();
    let (body, failed_ids) = batch("failing", 20, t0 + 1_000, 50);
    let failing = server.post(&project.write_key, &body);
    assert_ne!(failing.status, 200, "a write whose fsync failed was acknowledged: {}", failing.body);
    assert_eq!(
        (failing.status, failing.code()),
        (500, json!("write_outcome_unknown")),
        "outcome unknown: {}",
        failing.body
    );
    // Nothing is acknowledged any more, not even after the disk "recovers".
    std::fs::remove_file(&trigger).unwrap();
    for i in 0..3 {
        let (body, _) = batch(&format!("refused{i}"), 5, t0 + 2_000 + i, 10);
        let answer = server.post(&project.write_key, &body);
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(answer.retry_after.is_some());
    }
    let ready = server.get("/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.body);
    // Reads still work.
    assert_eq!(server.get("/v1/sessions?user_id=u1", Some(&project.read_key)).status, 200);
    let log = server.log_text();
    server.kill();

    let server = Server::start(&data, &[]);
    assert_eq!(server.get("/readyz", None).status, 200);
    let stored = server.stored_ids(&project.read_key);
    assert!(acknowledged.iter().all(|id| stored.get(id) == Some(&1)), "an acknowledged event is lost or doubled");
    // The failed request is ambiguous (its frames may have reached the disk): all of it or none.
    let kept = failed_ids.iter().filter(|id| stored.contains_key(*id)).count();
    assert!(kept == 0 || kept == failed_ids.len(), "part of a batch survived: {kept}");
    assert!(stored.values().all(|&n| n == 1));
    assert!(stored.keys().all(|id| !id.starts_with("refused")), "a refused request was stored");
    eprintln!(
        "fsync failure: answer {} ({}); {} acknowledged events kept; the failed batch {} after restart; log: {}",
        failing.status,
        failing.code(),
        acknowledged.len(),
        if kept == 0 { "absent" } else { "present" },
        log.lines().find(|l| l.contains("write failed")).unwrap_or("")
    );
}
