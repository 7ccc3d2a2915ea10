//! The scaled-out deployment's throughput on this machine (docs/scale-out.md,
//! "Sizing"): what one ingest node acknowledges, and how fast workers
//! sessionize into ClickHouse.
//!
//! ```text
//! cargo bench -p sessionizer --features cluster --bench cluster -- [--nats-nodes 1|3] [--sync-always 1|0]
//!     [--seconds 15] [--connections 8]
//! ```
//!
//! Starts NATS (`nats-server` on PATH or $NATS_SERVER; `--sync-always 1`, the
//! default, fsyncs every write) and one ClickHouse 18.16 shard on loopback, an
//! ingest node, then:
//! 1. *backlog*: `sessionizer loadgen` closed loop against the ingest node with no
//!    worker running: acknowledged events/s and latency (an acknowledgement means
//!    the stream stored the event);
//! 2. *drain*: one worker started on that backlog: events/s until ClickHouse holds every event;
//! 3. *steady, 1 worker*: loadgen again while that worker runs: acknowledged
//!    events/s, latency, and how long the worker needs after the load stops;
//! 4. *steady, 2 workers*: the same with a second worker;
//! 5. *queries*: a query node (`serve --role query`) answers the dashboard's
//!    reads over everything stored: the median of 7 timings of each route.
//!
//! Everything shares the machine's cores (NATS, ClickHouse, the nodes and the
//! load generator), so the figures are a floor for a node on its own machine.
#![allow(clippy::print_stdout)] // A report program: stdout is its output.

#[path = "../../cluster/tests/support/clickhouse_server.rs"]
mod clickhouse_server;
#[allow(dead_code, reason = "the test harness, shared; the benchmark uses part of it")]
#[path = "../tests/cluster/nats_cluster.rs"]
mod nats_cluster;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sessionizer");

fn arg(name: &str, default: u64) -> Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).context("a value after the flag")?.parse().context("a number"),
        None => Ok(default),
    }
}

fn run(args: &[&str]) -> Result<String> {
    let output = Command::new(BIN).args(args).output()?;
    if !output.status.success() {
        bail!("sessionizer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

struct Node(Child);

impl Node {
    fn start(args: &[&str]) -> Result<Node> {
        Ok(Node(
            Command::new(BIN)
                .arg("serve")
                .args(args)
                .env("SESSIONIZER_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn stored_events(config: &str, project: &str) -> Result<u64> {
    let stats: Value = serde_json::from_str(&run(&["cluster", "stats", "--cluster", config, project])?)?;
    stats["events"].as_u64().context("events")
}

fn start_worker(config: &str, i: usize) -> Result<Node> {
    Node::start(&["--role", "worker", "--cluster", config, "--worker-id", &format!("bench{i}")])
}

/// Waits until ClickHouse holds `target` events; returns the seconds waited.
fn wait_stored(config: &str, project: &str, target: u64) -> Result<f64> {
    let started = Instant::now();
    loop {
        let stored = stored_events(config, project)?;
        if stored >= target {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(1200) {
            bail!("the workers stored {stored} of {target} events in 20 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn loadgen(port: u16, key: &str, seconds: u64, connections: u64, seed: u64) -> Result<Value> {
    let out = run(&[
        "loadgen",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--key",
        key,
        "--duration",
        &format!("{seconds}s"),
        "--connections",
        &connections.to_string(),
        "--users",
        "100000",
        "--seed",
        &seed.to_string(),
        "--quiet",
    ])?;
    Ok(serde_json::from_str(out.lines().last().context("loadgen output")?)?)
}

fn main() -> Result<()> {
    let nats_nodes = arg("--nats-nodes", 1)? as usize;
    let seconds = arg("--seconds", 15)?;
    let connections = arg("--connections", 8)?;
    let sync_always = arg("--sync-always", 1)? == 1;
    let nats = nats_cluster::NatsCluster::start_with(nats_nodes, sync_always);
    let shard = clickhouse_server::ClickHouseServer::start();
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("cluster.toml");
    std::fs::write(
        &config_path,
        format!(
            "nats_urls = {:?}\nclickhouse_shards = [{:?}]\npartitions = 64\nstream_replicas = {nats_nodes}\nstream_max_bytes = 1073741824\n",
            nats.urls(),
            shard.url()
        ),
    )?;
    let config = config_path.to_str().context("utf-8 path")?;
    run(&["cluster", "init", "--cluster", config])?;
    let created: Value =
        serde_json::from_str(&run(&["cluster", "create-project", "--cluster", config, "--name", "bench"])?)?;
    let key = created["write_key"].as_str().context("write_key")?.to_string();
    let project = created["project_id"].as_str().context("project_id")?.to_string();
    let port = free_port();
    let _ingest = Node::start(&["--role", "ingest", "--cluster", config, "--listen", &format!("127.0.0.1:{port}")])?;
    let ready = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("http://127.0.0.1:{port}/readyz")).call().is_err() {
        if Instant::now() > ready {
            bail!("the ingest node did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let summary = |run: &Value| {
        json!({
            "events_per_s": run["events_per_s"],
            "p50_ms": run["latency_ms"]["p50"],
            "p99_ms": run["latency_ms"]["p99"],
            "errors": run["errors"],
        })
    };
    // 1. A backlog, no worker.
    let backlog = loadgen(port, &key, seconds, connections, 1)?;
    let mut stored = backlog["events_accepted"].as_u64().context("events_accepted")?;
    // 2. One worker drains it.
    let worker_0 = start_worker(config, 0)?;
    let drain_s = wait_stored(config, &project, stored)?;
    let drain = json!({"events": stored, "seconds": drain_s, "events_per_s": stored as f64 / drain_s});
    // 3. Load while one worker runs.
    let started = Instant::now();
    let steady_1 = loadgen(port, &key, seconds, connections, 2)?;
    let accepted_1 = steady_1["events_accepted"].as_u64().context("events_accepted")?;
    stored += accepted_1;
    let lag_1 = wait_stored(config, &project, stored)?;
    let worker_rate_1 = accepted_1 as f64 / started.elapsed().as_secs_f64();
    // 4. Load while two workers run (the second takes half the partitions within a few lease periods).
    let worker_1 = start_worker(config, 1)?;
    std::thread::sleep(Duration::from_secs(12));
    let started = Instant::now();
    let steady_2 = loadgen(port, &key, seconds, connections, 3)?;
    let accepted_2 = steady_2["events_accepted"].as_u64().context("events_accepted")?;
    stored += accepted_2;
    let lag_2 = wait_stored(config, &project, stored)?;
    let worker_rate_2 = accepted_2 as f64 / started.elapsed().as_secs_f64();
    drop((worker_0, worker_1));
    // 5. The dashboard's reads on a query node, over everything stored.
    let read_key = created["read_key"].as_str().context("read_key")?.to_string();
    let query_port = free_port();
    let _query =
        Node::start(&["--role", "query", "--cluster", config, "--listen", &format!("127.0.0.1:{query_port}")])?;
    let get = |path: &str| -> Result<Value> {
        let mut response = ureq::get(&format!("http://127.0.0.1:{query_port}{path}"))
            .header("Authorization", &format!("Bearer {read_key}"))
            .call()?;
        Ok(serde_json::from_str(&response.body_mut().read_to_string()?)?)
    };
    let ready = Instant::now() + Duration::from_secs(60);
    while get("/v1/project").is_err() {
        if Instant::now() > ready {
            bail!("the query node did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let range = get("/v1/stats/range")?;
    let days = format!(
        "from={}&to={}",
        range["first_date"].as_str().context("first_date")?,
        range["last_date"].as_str().context("last_date")?
    );
    let mut queries = serde_json::Map::new();
    for path in [
        format!("/v1/stats/summary?{days}"),
        format!("/v1/stats/daily?{days}"),
        format!("/v1/stats/length-distribution?{days}"),
        format!("/v1/sessions?{days}&limit=100"),
        format!("/v1/sessions?{days}&limit=100&min_length_ms=60000&order=desc"),
    ] {
        let mut timings_ms: Vec<f64> = (0..7)
            .map(|_| {
                let started = Instant::now();
                get(&path).map(|_| started.elapsed().as_secs_f64() * 1_000.0)
            })
            .collect::<Result<_>>()?;
        timings_ms.sort_by(f64::total_cmp);
        queries.insert(path, json!({"median_ms": timings_ms[3]}));
    }
    let sessions = get(&format!("/v1/stats/summary?{days}"))?["sessions"].clone();
    let report = json!({
        "nats_nodes": nats_nodes,
        "stream_replicas": nats_nodes,
        "sync_always": sync_always,
        "seconds_per_phase": seconds,
        "connections": connections,
        "1_backlog_ingest": summary(&backlog),
        "2_drain_one_worker": drain,
        "3_steady_one_worker": {"ingest": summary(&steady_1), "stored_events_per_s": worker_rate_1, "lag_after_load_s": lag_1},
        "4_steady_two_workers": {"ingest": summary(&steady_2), "stored_events_per_s": worker_rate_2, "lag_after_load_s": lag_2},
        "5_query_node": {"events": stored, "sessions": sessions, "routes": queries},
    });
    println!("{report:#}");
    Ok(())
}
