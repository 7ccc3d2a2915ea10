//! The sessions board over 10M sessions (~100M events): in process, through
//! the real server, and against DuckDB on the same sessions.
//!
//! ```text
//! cargo bench -p sessionizer --bench board -- [--sessions 10000000] [--users 1000000] [--days 30]
//!     [--repeat 11] [--server-sessions N] [--seed 42] [--work-dir DIR] [--fresh] [--no-server] [--no-duckdb]
//! ```
//!
//! See docs/benchmarks-board.md for what each phase measures. Generated inputs
//! (the sessions CSV for DuckDB and the server's data directory) are kept in
//! the work directory, keyed by the generator's parameters, so a re-run skips
//! the slow SQLite fill; `--fresh` rebuilds them.
#![allow(clippy::print_stdout)] // A report program: stdout is its output.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sessionizer_engine::{ChangeKind, EndReason, SessionChange, SessionRecord, UserKey, session_uid};
use sessionizer_store::board::{BoardChange, BoardSession};
use sessionizer_store::{Board, BoardFigures, SESSIONS_PER_USER_BUCKETS, Store};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// The last day of the generated data: 2026-10-31 (days since 1970-01-01).
const LAST_DAY: i32 = 20_757;
/// The server's default length bounds (`DEFAULT_LENGTH_BOUNDS_MS` in
/// crates/server/src/query.rs), which the dashboard uses.
const DEFAULT_BOUNDS_MS: [i64; 9] =
    [10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000];
/// Sessions ending this close to the end of the data are still open.
const OPEN_WINDOW_MS: i64 = 30 * 60_000;
/// Sessions written to SQLite per transaction.
const FILL_BATCH: usize = 250_000;
/// The benchmark project: the store's id of the first project created.
const PROJECT: i64 = 1;
/// Project of the in-process board (any id: the board is per project).
const BOARD_PROJECT: i64 = 1;

#[derive(Debug, Clone)]
struct Args {
    sessions: usize,
    users: usize,
    days: i32,
    repeat: usize,
    server_sessions: usize,
    seed: u64,
    work_dir: PathBuf,
    fresh: bool,
    server: bool,
    duckdb: bool,
}

fn parse_args() -> Result<Args> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let mut args = Args {
        sessions: 10_000_000,
        users: 1_000_000,
        days: 30,
        repeat: 11,
        server_sessions: 0,
        seed: 42,
        work_dir: home.join(".cache/sessionizer/bench-board"),
        fresh: false,
        server: true,
        duckdb: true,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => args.sessions = value()?.parse()?,
            "--users" => args.users = value()?.parse()?,
            "--days" => args.days = value()?.parse()?,
            "--repeat" => args.repeat = value()?.parse()?,
            "--server-sessions" => args.server_sessions = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--work-dir" => args.work_dir = PathBuf::from(value()?),
            "--fresh" => args.fresh = true,
            "--no-server" => args.server = false,
            "--no-duckdb" => args.duckdb = false,
            // cargo bench passes --bench to harness = false programs.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.server_sessions == 0 {
        args.server_sessions = args.sessions;
    }
    ensure!(args.sessions > 0 && args.users > 0 && args.repeat > 0, "sessions, users and repeat must be positive");
    ensure!((7..=400).contains(&args.days), "--days must be 7..=400");
    Ok(args)
}

// ---- the synthetic sessions ----

/// SplitMix64: small, fast, and the same sequence on every machine.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[derive(Debug, Clone, Copy)]
struct Generated {
    user: u32,
    start_ms: i64,
    length_ms: i64,
    event_count: u32,
    open: bool,
}

#[derive(Debug)]
struct DataSet {
    /// Sorted by (user, start); starts are unique per user.
    sessions: Vec<Generated>,
    users: usize,
    from_day: i32,
    to_day: i32,
    events: u64,
}

/// `count` sessions of up to `users` users over `days` days ending on [`LAST_DAY`].
///
/// - Users: Zipf-Mandelbrot activity (weight `1 / (rank + users/200)`): the
///   busiest users have a few hundred sessions, most have one to three.
/// - Starts: uniform over the days, weekends at 70%, within a day a diurnal
///   cycle peaking at 15:00 UTC (rejection sampling).
/// - Lengths: a quarter single-event sessions of length 0; the rest log-normal
///   (median 4 min, sigma 1.3) capped at 4 h, with 2 + ~sqrt(seconds) events,
///   about 10 events per session overall.
/// - Sessions ending within 30 minutes of the end of the data are open.
fn generate(count: usize, users: usize, days: i32, seed: u64) -> DataSet {
    let mut rng = Rng(seed);
    let from_day = LAST_DAY - days + 1;
    let end_ms = i64::from(LAST_DAY + 1) * DAY_MS;
    let offset = (users as f64 / 200.0).max(1.0);
    let log_span = ((users as f64 + offset) / offset).ln();
    let mut sessions = Vec::with_capacity(count);
    for _ in 0..count {
        let rank = (offset * (rng.unit() * log_span).exp() - offset) as u64;
        // Spread ranks over ids so id order says nothing about activity.
        let user = (rank.min(users as u64 - 1).wrapping_mul(0x9e37_79b1) % users as u64) as u32;
        let day = loop {
            let day = from_day + rng.below(days as u64) as i32;
            // 1970-01-01 was a Thursday: day % 7 is 2 on Saturdays, 3 on Sundays.
            if !matches!(day.rem_euclid(7), 2 | 3) || rng.unit() < 0.7 {
                break day;
            }
        };
        let time_of_day_ms = loop {
            let ms = rng.below(DAY_MS as u64) as i64;
            let phase = std::f64::consts::TAU * (ms - 15 * HOUR_MS) as f64 / DAY_MS as f64;
            if rng.unit() * 1.8 < 1.0 + 0.8 * phase.cos() {
                break ms;
            }
        };
        let start_ms = i64::from(day) * DAY_MS + time_of_day_ms;
        let (length_ms, event_count) = if rng.unit() < 0.25 {
            (0, 1)
        } else {
            let seconds = (240f64.ln() + 1.3 * rng.normal()).exp().min(4.0 * 3_600.0);
            let length_ms = (seconds * 1_000.0) as i64;
            (length_ms, 2 + (seconds.sqrt() * rng.unit() * 1.2) as u32)
        };
        sessions.push(Generated { user, start_ms, length_ms, event_count, open: false });
    }
    sessions.sort_unstable_by_key(|s| (s.user, s.start_ms));
    // A session's id is its start: make starts unique per user.
    for i in 1..sessions.len() {
        if sessions[i].user == sessions[i - 1].user && sessions[i].start_ms <= sessions[i - 1].start_ms {
            sessions[i].start_ms = sessions[i - 1].start_ms + 1;
        }
    }
    let mut events = 0;
    for session in &mut sessions {
        session.open = session.start_ms + session.length_ms >= end_ms - OPEN_WINDOW_MS;
        events += u64::from(session.event_count);
    }
    // A bumped start can cross midnight of the last day: keep it in range.
    sessions.retain(|s| s.start_ms < end_ms);
    DataSet { sessions, users, from_day, to_day: LAST_DAY, events }
}

fn user_name(user: u32) -> String {
    format!("u{user:08}")
}

// ---- in process ----

fn rss_bytes(pid: Option<u32>) -> Result<u64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |pid| format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Builds the board as `Store::load_board` does: rows grouped by user, one key per user.
fn build_board(data: &DataSet) -> Board {
    let mut board = Board::default();
    board.set_project_time_zone(BOARD_PROJECT, "UTC");
    let mut current: Option<(u32, UserKey)> = None;
    for session in &data.sessions {
        if current.as_ref().is_none_or(|(user, _)| *user != session.user) {
            current = Some((session.user, UserKey::User(Arc::from(user_name(session.user)))));
        }
        let user = current.as_ref().map(|(_, key)| key.clone()).expect("set above");
        board.load(&BoardSession {
            project: BOARD_PROJECT,
            user,
            session_id: session.start_ms,
            length_ms: session.length_ms,
            event_count: u64::from(session.event_count),
            concluded: !session.open,
        });
    }
    board.set_applied_seq(0);
    board
}

/// A session the day before the data: applying it (again) is a new change,
/// which invalidates anything derived from the board, without changing any
/// figure of the ranges measured.
fn outside_session(from_day: i32) -> BoardSession {
    BoardSession {
        project: BOARD_PROJECT,
        user: UserKey::User(Arc::from("bench-invalidate")),
        session_id: i64::from(from_day - 1) * DAY_MS,
        length_ms: 1_000,
        event_count: 2,
        concluded: true,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    median_ms: f64,
    p90_ms: f64,
}

/// Median and nearest-rank p90 of durations, in ms.
fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1_000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |percent: usize| ms[((percent * ms.len()).div_ceil(100)).max(1) - 1];
    Stats { median_ms: rank(50), p90_ms: rank(90) }
}

fn stats_of_seconds(samples: &[f64]) -> Stats {
    stats(&samples.iter().map(|&s| Duration::from_secs_f64(s)).collect::<Vec<_>>())
}

#[derive(Debug)]
struct InProcess {
    build: Duration,
    rss_delta_bytes: u64,
    single_30: Stats,
    single_7: Stats,
    whole_30: Stats,
    whole_7: Stats,
    figures_30: BoardFigures,
    figures_7: BoardFigures,
}

fn in_process(data: &DataSet, repeat: usize) -> Result<InProcess> {
    let rss_before = rss_bytes(None)?;
    let started = Instant::now();
    let mut board = build_board(data);
    let build = started.elapsed();
    let rss_after = rss_bytes(None)?;

    let outside = outside_session(data.from_day);
    let mut seq = board.applied_seq();
    let mut invalidate = |board: &mut Board| {
        seq += 1;
        board.apply(&BoardChange { seq, session: outside.clone(), removed: false });
    };
    let range_7 = (data.to_day - 6, data.to_day);
    let range_30 = (data.to_day - 29, data.to_day);
    let (mut single_30, mut single_7, mut whole_30, mut whole_7) = (vec![], vec![], vec![], vec![]);
    let (mut figures_30, mut figures_7) = (None, None);
    for _ in 0..repeat {
        for (range, single, whole, figures) in [
            (range_30, &mut single_30, &mut whole_30, &mut figures_30),
            (range_7, &mut single_7, &mut whole_7, &mut figures_7),
        ] {
            // One figures() call after a change: the cost of any one endpoint.
            invalidate(&mut board);
            let started = Instant::now();
            let result = board.figures(BOARD_PROJECT, range.0, range.1, &DEFAULT_BOUNDS_MS);
            single.push(started.elapsed());
            *figures = Some(result);
            // The whole board after a change: the calls of /v1/stats/daily,
            // /v1/stats/length-distribution and /v1/stats/summary.
            invalidate(&mut board);
            let started = Instant::now();
            let daily = board.figures(BOARD_PROJECT, range.0, range.1, &[]);
            let distribution = board.figures(BOARD_PROJECT, range.0, range.1, &DEFAULT_BOUNDS_MS);
            let summary = board.figures(BOARD_PROJECT, range.0, range.1, &[]);
            whole.push(started.elapsed());
            ensure!(daily.days == distribution.days && summary.sessions == distribution.sessions, "calls disagree");
        }
    }
    Ok(InProcess {
        build,
        rss_delta_bytes: rss_after.saturating_sub(rss_before),
        single_30: stats(&single_30),
        single_7: stats(&single_7),
        whole_30: stats(&whole_30),
        whole_7: stats(&whole_7),
        figures_30: figures_30.context("no run")?,
        figures_7: figures_7.context("no run")?,
    })
}

// ---- figures as plain values, for comparisons ----

/// The board's figures as JSON in the shape the DuckDB helper prints.
fn figures_json(f: &BoardFigures) -> Value {
    json!({
        "from_day": f.from_day,
        "days": f.days.iter().map(|d| json!({"sessions": d.sessions, "total_length_ms": d.total_length_ms, "users": d.users})).collect::<Vec<_>>(),
        "length_buckets": f.length_buckets,
        "sessions": f.sessions,
        "users": f.users,
        "total_length_ms": f.total_length_ms,
        "median_length_ms": f.median_length_ms,
        "p90_length_ms": f.p90_length_ms,
        "single_event_sessions": f.single_event_sessions,
        "sessions_per_user": f.sessions_per_user,
        "open_sessions": f.open_sessions,
    })
}

/// Truncates the percentiles to whole seconds, as the board reports them.
fn truncate_percentiles(mut figures: Value) -> Value {
    for key in ["median_length_ms", "p90_length_ms"] {
        if let Some(ms) = figures[key].as_i64() {
            figures[key] = json!(ms - ms.rem_euclid(1_000));
        }
    }
    figures
}

/// Names the first fields where two figure objects differ.
fn differences(label: &str, ours: &Value, theirs: &Value) -> Vec<String> {
    let (Some(ours), Some(theirs)) = (ours.as_object(), theirs.as_object()) else {
        return vec![format!("{label}: not objects")];
    };
    ours.iter()
        .filter(|(key, value)| theirs.get(*key) != Some(*value))
        .map(|(key, value)| {
            format!("{label}: {key}: sessionizer {value} vs {}", theirs.get(key).unwrap_or(&Value::Null))
        })
        .collect()
}

// ---- DuckDB ----

#[derive(Debug)]
struct Duck {
    version: String,
    threads: String,
    load_s: f64,
    whole_30: Stats,
    whole_7: Stats,
    figures_30: Value,
    figures_7: Value,
}

fn write_csv(data: &DataSet, path: &Path) -> Result<()> {
    let partial = path.with_extension("partial");
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
    writeln!(out, "user_id,start_ms,length_ms,event_count,open")?;
    for s in &data.sessions {
        writeln!(out, "{},{},{},{},{}", s.user, s.start_ms, s.length_ms, s.event_count, s.open)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn duckdb(data: &DataSet, csv: &Path, repeat: usize) -> Result<Duck> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/board_duckdb.py");
    let bounds = DEFAULT_BOUNDS_MS.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let output = Command::new("python3")
        .arg(&script)
        .arg("--csv")
        .arg(csv)
        .args(["--range", &format!("{}:{}", data.to_day - 29, data.to_day)])
        .args(["--range", &format!("{}:{}", data.to_day - 6, data.to_day)])
        .args(["--bounds-ms", &bounds, "--repeat", &repeat.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 bench/board_duckdb.py (pip install -r bench/requirements.txt)")?;
    ensure!(output.status.success(), "the DuckDB helper failed: {}", output.status);
    let result: Value = serde_json::from_slice(&output.stdout).context("the DuckDB helper's JSON")?;
    let range = |i: usize| -> Result<(Stats, Value)> {
        let range = &result["ranges"][i];
        let seconds: Vec<f64> =
            range["seconds"].as_array().context("seconds")?.iter().filter_map(Value::as_f64).collect();
        Ok((stats_of_seconds(&seconds), range["figures"].clone()))
    };
    let (whole_30, figures_30) = range(0)?;
    let (whole_7, figures_7) = range(1)?;
    Ok(Duck {
        version: result["duckdb_version"].as_str().unwrap_or("?").to_string(),
        threads: result["threads"].to_string(),
        load_s: result["load_s"].as_f64().context("load_s")?,
        whole_30,
        whole_7,
        figures_30,
        figures_7,
    })
}

// ---- through the server ----

#[derive(Debug)]
struct Filled {
    dir: PathBuf,
    read_key: String,
    fill: Option<Duration>,
}

/// The server's data directory for `data`, filled through the store's write
/// path (one Started change per session) unless a complete one is kept.
fn fill_store(data: &DataSet, dir: &Path, fresh: bool) -> Result<Filled> {
    let marker = dir.join("bench-board.json");
    if !fresh && let Ok(text) = std::fs::read_to_string(&marker) {
        let kept: Value = serde_json::from_str(&text)?;
        if let Some(key) = kept["read_key"].as_str() {
            return Ok(Filled { dir: dir.to_path_buf(), read_key: key.to_string(), fill: None });
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_sessionizer"))
        .args(["project", "create", "--name", "bench", "--data"])
        .arg(dir)
        .output()?;
    ensure!(output.status.success(), "project create: {}", String::from_utf8_lossy(&output.stderr));
    let created: Value = serde_json::from_slice(&output.stdout)?;
    let read_key = created["read_key"].as_str().context("read_key")?.to_string();
    let public_id = created["project_id"].as_str().context("project_id")?.to_string();

    let started = Instant::now();
    let mut store = Store::open(dir)?;
    ensure!(store.project(&public_id)?.id == PROJECT, "the bench project is not project {PROJECT}");
    // Changes in start order, as a live server records them.
    let mut order: Vec<u32> = (0..data.sessions.len() as u32).collect();
    order.sort_unstable_by_key(|&i| (data.sessions[i as usize].start_ms, data.sessions[i as usize].user));
    let mut keys: HashMap<u32, UserKey> = HashMap::new();
    let (entry, page): (Arc<str>, Arc<str>) = (Arc::from("Page Viewed"), Arc::from("/"));
    for (batch_index, chunk) in order.chunks(FILL_BATCH).enumerate() {
        let batch = store.batch()?;
        for &i in chunk {
            let s = data.sessions[i as usize];
            let user = keys.entry(s.user).or_insert_with(|| UserKey::User(Arc::from(user_name(s.user)))).clone();
            let end_ms = s.start_ms + s.length_ms;
            let record = SessionRecord {
                session_uid: session_uid(&public_id, &user, s.start_ms),
                user,
                session_id: s.start_ms,
                start_ms: s.start_ms,
                end_ms,
                last_event_ms: end_ms,
                event_count: u64::from(s.event_count),
                active_ms: s.length_ms,
                entry_event_type: entry.clone(),
                entry_page: Some(page.clone()),
                exit_event_type: entry.clone(),
                exit_page: Some(page.clone()),
                end_reason: (!s.open).then_some(EndReason::Inactivity),
                concluded: !s.open,
                revision: 0,
            };
            batch.apply_change(PROJECT, &SessionChange { kind: ChangeKind::Started, record, raised_at_ms: end_ms })?;
        }
        batch.commit()?;
        let done = ((batch_index + 1) * FILL_BATCH).min(order.len());
        eprintln!("  filled {done} of {} sessions ({:.0} s)", order.len(), started.elapsed().as_secs_f64());
    }
    drop(store);
    let fill = started.elapsed();
    std::fs::write(&marker, json!({"read_key": read_key, "project_id": public_id}).to_string())?;
    Ok(Filled { dir: dir.to_path_buf(), read_key, fill: Some(fill) })
}

/// Records one more change (the session of [`outside_session`]) so the
/// server's next query catches up a change first, as after new data.
fn record_outside_change(dir: &Path, public_id: &str, from_day: i32) -> Result<()> {
    let mut store = Store::open(dir)?;
    let session = outside_session(from_day);
    let start_ms = session.session_id;
    let entry: Arc<str> = Arc::from("Page Viewed");
    let record = SessionRecord {
        session_uid: session_uid(public_id, &session.user, start_ms),
        user: session.user,
        session_id: start_ms,
        start_ms,
        end_ms: start_ms + session.length_ms,
        last_event_ms: start_ms + session.length_ms,
        event_count: session.event_count,
        active_ms: session.length_ms,
        entry_event_type: entry.clone(),
        entry_page: None,
        exit_event_type: entry,
        exit_page: None,
        end_reason: Some(EndReason::Inactivity),
        concluded: true,
        revision: 0,
    };
    let batch = store.batch()?;
    batch.apply_change(PROJECT, &SessionChange { kind: ChangeKind::Amended, record, raised_at_ms: start_ms })?;
    batch.commit()?;
    Ok(())
}

#[derive(Debug)]
struct Server {
    sessions: usize,
    fill: Option<Duration>,
    load: Duration,
    ready: Duration,
    rss_bytes: u64,
    sequential_30: Stats,
    concurrent_30: Stats,
    sequential_7: Stats,
    warm_sequential_30: Stats,
    figures_30: Value,
}

/// Kills the server if the benchmark fails half-way.
#[derive(Debug)]
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            drop(self.0.kill());
            drop(self.0.wait());
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn date(day: i32) -> String {
    jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().days(i64::from(day)))
        .map_or_else(|_| String::new(), |d| d.to_string())
}

#[derive(Debug, Clone)]
struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let mut response =
            match self.agent.get(format!("{}{path_and_query}", self.base)).header("Authorization", &self.auth).call() {
                Ok(response) => response,
                Err(ureq::Error::StatusCode(status)) => return Ok((status, String::new())),
                Err(error) => return Err(error.into()),
            };
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    }

    /// The three requests of the dashboard's board; their bodies.
    fn board(&self, from: &str, to: &str, concurrent: bool) -> Result<[Value; 3]> {
        let paths = [
            format!("/v1/stats/daily?from={from}&to={to}"),
            format!("/v1/stats/length-distribution?from={from}&to={to}"),
            format!("/v1/stats/summary?from={from}&to={to}"),
        ];
        let fetch = |path: &String| -> Result<Value> {
            let (status, body) = self.get(path)?;
            ensure!(status == 200, "GET {path}: {status}");
            Ok(serde_json::from_str(&body)?)
        };
        let bodies: Vec<Value> = if concurrent {
            std::thread::scope(|scope| {
                let handles: Vec<_> = paths.iter().map(|path| scope.spawn(move || fetch(path))).collect();
                handles.into_iter().map(|h| h.join().expect("a request thread panicked")).collect::<Result<_>>()
            })?
        } else {
            paths.iter().map(fetch).collect::<Result<_>>()?
        };
        bodies.try_into().map_err(|_| anyhow::anyhow!("three bodies"))
    }
}

/// The server's answers in the shape of [`figures_json`].
fn server_figures(from_day: i32, [daily, distribution, summary]: &[Value; 3]) -> Result<Value> {
    let days = daily["days"].as_array().context("days")?;
    let buckets = distribution["buckets"].as_array().context("buckets")?;
    let spu = summary["sessions_per_user"]["distribution"].as_array().context("distribution")?;
    ensure!(spu.len() == SESSIONS_PER_USER_BUCKETS.len(), "sessions-per-user buckets");
    Ok(json!({
        "from_day": from_day,
        "days": days.iter().map(|d| json!({"sessions": d["sessions"], "total_length_ms": d["total_length_ms"], "users": d["users"]})).collect::<Vec<_>>(),
        "length_buckets": buckets.iter().map(|b| b["sessions"].clone()).collect::<Vec<_>>(),
        "sessions": summary["sessions"],
        "users": summary["users"],
        "total_length_ms": summary["total_length_ms"],
        "median_length_ms": summary["median_length_ms"],
        "p90_length_ms": summary["p90_length_ms"],
        "single_event_sessions": (summary["single_event_share"].as_f64().unwrap_or(0.0) * summary["sessions"].as_f64().unwrap_or(0.0)).round() as u64,
        "sessions_per_user": spu.iter().map(|b| b["users"].clone()).collect::<Vec<_>>(),
        "open_sessions": summary["open_sessions"],
    }))
}

fn through_server(data: &DataSet, filled: &Filled, repeat: usize) -> Result<Server> {
    let marker: Value = serde_json::from_str(&std::fs::read_to_string(filled.dir.join("bench-board.json"))?)?;
    let public_id = marker["project_id"].as_str().context("project_id")?.to_string();
    let port = free_port()?;
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sessionizer"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&filled.dir)
        .env("SESSIONIZER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let mut server = ServerProcess(child);
    let pid = server.0.id();
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
    let client =
        Client { agent, base: format!("http://127.0.0.1:{port}"), auth: format!("Bearer {}", filled.read_key) };
    let (from_30, from_7, to) = (date(data.to_day - 29), date(data.to_day - 6), date(data.to_day));
    let probe = format!("/v1/stats/summary?from={to}&to={to}");
    let load = loop {
        if let Ok((200, _)) = client.get(&probe) {
            break started.elapsed();
        }
        ensure!(server.0.try_wait()?.is_none(), "the server exited during the load");
        ensure!(started.elapsed() < Duration::from_secs(1_800), "the board did not load in 30 minutes");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss = rss_bytes(Some(pid))?;
    // The writer loads its live state at start too (a scan of the sessions
    // table): measure once it is done, so it does not share the cores.
    let ready = loop {
        if let Ok((200, _)) = client.get("/readyz") {
            break started.elapsed();
        }
        ensure!(server.0.try_wait()?.is_none(), "the server exited before it was ready");
        ensure!(started.elapsed() < Duration::from_secs(3_600), "the server was not ready in an hour");
        std::thread::sleep(Duration::from_millis(50));
    };

    let figures_30 = server_figures(data.to_day - 29, &client.board(&from_30, &to, false)?)?;
    let (mut sequential_30, mut concurrent_30, mut sequential_7, mut warm_30) = (vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        for (from, concurrent, samples) in [
            (&from_30, false, &mut sequential_30),
            (&from_30, true, &mut concurrent_30),
            (&from_7, false, &mut sequential_7),
        ] {
            record_outside_change(&filled.dir, &public_id, data.from_day)?;
            let started = Instant::now();
            client.board(from, &to, concurrent)?;
            samples.push(started.elapsed());
            if !concurrent && from == &from_30 {
                // Right after: unchanged data, the same range (a reload of the page).
                let started = Instant::now();
                client.board(&from_30, &to, false)?;
                warm_30.push(started.elapsed());
            }
        }
    }

    // SIGTERM: the server finishes in-flight work and exits 0.
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -TERM {pid}");
    let exit = server.0.wait()?;
    ensure!(exit.success(), "the server exited with {exit}");
    Ok(Server {
        sessions: data.sessions.len(),
        fill: filled.fill,
        load,
        ready,
        rss_bytes: rss,
        sequential_30: stats(&sequential_30),
        concurrent_30: stats(&concurrent_30),
        sequential_7: stats(&sequential_7),
        warm_sequential_30: stats(&warm_30),
        figures_30,
    })
}

// ---- the report ----

fn ratio(ours: Stats, theirs: Stats) -> f64 {
    ours.median_ms / theirs.median_ms
}

fn row(label: &str, s: Stats) {
    println!("  {label:<58} {:>9.1} ms {:>9.1} ms", s.median_ms, s.p90_ms);
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.work_dir)?;
    let load_start = load_average();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "board benchmark: {} sessions of up to {} users over {} days, seed {}, {} repetitions, {} cores, load average {}",
        args.sessions, args.users, args.days, args.seed, args.repeat, cores, load_start
    );

    let started = Instant::now();
    let data = generate(args.sessions, args.users, args.days, args.seed);
    let open = data.sessions.iter().filter(|s| s.open).count();
    let single = data.sessions.iter().filter(|s| s.event_count == 1).count();
    println!(
        "generated {} sessions ({} events, {:.1} per session; {} single-event, {} open) in {:.1} s",
        data.sessions.len(),
        data.events,
        data.events as f64 / data.sessions.len() as f64,
        single,
        open,
        started.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    let inproc = in_process(&data, args.repeat)?;
    let per_session = inproc.rss_delta_bytes as f64 / data.sessions.len() as f64;
    println!(
        "in process: board built in {:.2} s, RSS +{:.0} MiB ({:.1} bytes per session, users' keys included)",
        inproc.build.as_secs_f64(),
        inproc.rss_delta_bytes as f64 / (1 << 20) as f64,
        per_session
    );

    let key = format!("s{}-u{}-d{}-seed{}", data.sessions.len(), data.users, args.days, args.seed);
    let duck = if args.duckdb {
        let csv = args.work_dir.join(format!("sessions-{key}.csv"));
        if args.fresh || !csv.exists() {
            write_csv(&data, &csv)?;
        }
        let duck = duckdb(&data, &csv, args.repeat)?;
        for (label, ours, theirs) in [
            ("DuckDB 30 days", &inproc.figures_30, &duck.figures_30),
            ("DuckDB 7 days", &inproc.figures_7, &duck.figures_7),
        ] {
            failures.extend(differences(label, &figures_json(ours), &truncate_percentiles(theirs.clone())));
        }
        Some(duck)
    } else {
        None
    };

    let server = if args.server {
        let server_data = if args.server_sessions == args.sessions {
            None
        } else {
            let users = ((args.users as f64 * args.server_sessions as f64 / args.sessions as f64) as usize).max(1);
            Some(generate(args.server_sessions, users, args.days, args.seed))
        };
        let server_data = server_data.as_ref().unwrap_or(&data);
        let dir = args.work_dir.join(format!(
            "store-s{}-u{}-d{}-seed{}",
            server_data.sessions.len(),
            server_data.users,
            args.days,
            args.seed
        ));
        let filled = fill_store(server_data, &dir, args.fresh)?;
        let server = through_server(server_data, &filled, args.repeat)?;
        // The same figures as the in-process board over the same sessions.
        let expected = if std::ptr::eq(server_data, &data) {
            figures_json(&inproc.figures_30)
        } else {
            let board = build_board(server_data);
            figures_json(&board.figures(BOARD_PROJECT, server_data.to_day - 29, server_data.to_day, &DEFAULT_BOUNDS_MS))
        };
        failures.extend(differences("server 30 days", &server.figures_30, &expected));
        Some(server)
    } else {
        None
    };

    println!();
    println!("  {:<58} {:>12} {:>12}", "", "median", "p90");
    row("in process: figures(), 30 days (one endpoint)", inproc.single_30);
    row("in process: figures(), 7 days (one endpoint)", inproc.single_7);
    row("in process: whole board (3 endpoint calls), 30 days", inproc.whole_30);
    row("in process: whole board (3 endpoint calls), 7 days", inproc.whole_7);
    if let Some(duck) = &duck {
        row(&format!("DuckDB {} ({} threads): whole board, 30 days", duck.version, duck.threads), duck.whole_30);
        row(&format!("DuckDB {} ({} threads): whole board, 7 days", duck.version, duck.threads), duck.whole_7);
    }
    if let Some(server) = &server {
        let n = server.sessions;
        row(&format!("server ({n} sessions): whole board, 30 days, sequential"), server.sequential_30);
        row(&format!("server ({n} sessions): whole board, 30 days, concurrent"), server.concurrent_30);
        row(&format!("server ({n} sessions): whole board, 7 days, sequential"), server.sequential_7);
        row(&format!("server ({n} sessions): 30 days again, no new change"), server.warm_sequential_30);
    }
    println!();
    if let Some(duck) = &duck {
        println!(
            "sessionizer / DuckDB (whole board, in process): 30 days {:.3}, 7 days {:.3}; DuckDB load {:.2} s",
            ratio(inproc.whole_30, duck.whole_30),
            ratio(inproc.whole_7, duck.whole_7),
            duck.load_s
        );
        if let Some(server) = server.as_ref().filter(|s| s.sessions == data.sessions.len()) {
            println!(
                "sessionizer server / DuckDB (whole board, 30 days, sequential): {:.3}",
                ratio(server.sequential_30, duck.whole_30)
            );
        }
    }
    if let Some(server) = &server {
        println!(
            "server: {} sessions, board loaded {:.2} s after start (writer ready {:.2} s), RSS {:.0} MiB ({:.1} bytes per session){}",
            server.sessions,
            server.load.as_secs_f64(),
            server.ready.as_secs_f64(),
            server.rss_bytes as f64 / (1 << 20) as f64,
            server.rss_bytes as f64 / server.sessions as f64,
            server.fill.map_or_else(
                || " (store kept from an earlier run)".to_string(),
                |f| format!(", store filled in {:.0} s", f.as_secs_f64())
            )
        );
    }
    let goal_ms = 200.0;
    let worst =
        [Some(inproc.whole_30), server.as_ref().map(|s| s.sequential_30), server.as_ref().map(|s| s.concurrent_30)]
            .into_iter()
            .flatten()
            .map(|s| s.median_ms)
            .fold(0.0, f64::max);
    println!(
        "goal: whole board (30 days) under {goal_ms} ms: {} (worst median {worst:.1} ms)",
        if worst < goal_ms { "met" } else { "NOT met" }
    );
    let load_end = load_average();
    println!("load average at the end: {load_end}");
    if failures.is_empty() {
        println!("same figures: yes (DuckDB: exact; median and p90 truncated to whole seconds)");
    } else {
        println!("same figures: NO");
        for failure in &failures {
            println!("  {failure}");
        }
    }

    let s = |s: Stats| json!({"median_ms": s.median_ms, "p90_ms": s.p90_ms});
    let report = json!({
        "sessions": data.sessions.len(),
        "events": data.events,
        "users": inproc.figures_30.users,
        "days": args.days,
        "seed": args.seed,
        "repeat": args.repeat,
        "cores": cores,
        "load_average": {"start": load_start, "end": load_end},
        "in_process": {
            "build_s": inproc.build.as_secs_f64(),
            "rss_bytes_per_session": per_session,
            "figures_30d": s(inproc.single_30),
            "figures_7d": s(inproc.single_7),
            "whole_board_30d": s(inproc.whole_30),
            "whole_board_7d": s(inproc.whole_7),
        },
        "duckdb": duck.as_ref().map(|d| json!({
            "version": d.version,
            "threads": d.threads,
            "load_s": d.load_s,
            "whole_board_30d": s(d.whole_30),
            "whole_board_7d": s(d.whole_7),
            "ratio_30d": ratio(inproc.whole_30, d.whole_30),
            "ratio_7d": ratio(inproc.whole_7, d.whole_7),
        })),
        "server": server.as_ref().map(|v| json!({
            "sessions": v.sessions,
            "fill_s": v.fill.map(|f| f.as_secs_f64()),
            "load_s": v.load.as_secs_f64(),
            "ready_s": v.ready.as_secs_f64(),
            "rss_bytes": v.rss_bytes,
            "rss_bytes_per_session": v.rss_bytes as f64 / v.sessions as f64,
            "whole_board_30d_sequential": s(v.sequential_30),
            "whole_board_30d_concurrent": s(v.concurrent_30),
            "whole_board_7d_sequential": s(v.sequential_7),
            "whole_board_30d_no_change": s(v.warm_sequential_30),
        })),
        "goal_met": worst < goal_ms,
        "same_figures": failures.is_empty(),
    });
    println!("{report}");
    ensure!(failures.is_empty(), "the figures differ");
    Ok(())
}
