//! The scaled-out deployment's throughput on this machine (docs/scale-out.md,
//! "Sizing"): what one ingest node acknowledges, and how fast one and two
//! workers sessionize a backlog into ClickHouse.
//!
//! ```text
//! cargo bench -p sessionizer --features cluster --bench cluster -- [--nats-nodes 1|3] [--seconds 15] [--connections 8]
//! ```
//!
//! Starts NATS (`nats-server` on PATH or $NATS_SERVER) and one ClickHouse
//! 18.16 shard on loopback, an ingest node, then:
//! 1. `sessionizer loadgen` closed loop against the ingest node with no worker
//!    running: acknowledged events/s and latency (each ack means the stream stored the event);
//! 2. one worker started on that backlog: events/s until ClickHouse holds every event;
//! 3. a second backlog of the same size, drained by two workers.
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

/// Starts `workers` workers and times them until ClickHouse holds `target` events.
fn drain(config: &str, project: &str, workers: usize, target: u64) -> Result<(f64, u64)> {
    let before = stored_events(config, project)?;
    let started = Instant::now();
    let nodes: Vec<Node> = (0..workers)
        .map(|i| Node::start(&["--role", "worker", "--cluster", config, "--worker-id", &format!("bench{i}")]))
        .collect::<Result<_>>()?;
    let deadline = started + Duration::from_secs(1200);
    loop {
        let stored = stored_events(config, project)?;
        if stored >= target {
            let seconds = started.elapsed().as_secs_f64();
            drop(nodes);
            return Ok((seconds, stored - before));
        }
        if Instant::now() > deadline {
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
    let nats = nats_cluster::NatsCluster::start(nats_nodes);
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

    let first = loadgen(port, &key, seconds, connections, 1)?;
    let acknowledged_1 = first["events_accepted"].as_u64().context("events_accepted")?;
    let (one_worker_s, drained_1) = drain(config, &project, 1, acknowledged_1)?;
    let second = loadgen(port, &key, seconds, connections, 2)?;
    let acknowledged_2 = second["events_accepted"].as_u64().context("events_accepted")?;
    let (two_workers_s, drained_2) = drain(config, &project, 2, acknowledged_1 + acknowledged_2)?;
    let report = json!({
        "nats_nodes": nats_nodes,
        "stream_replicas": nats_nodes,
        "ingest": {"first": first, "second": second},
        "one_worker": {"events": drained_1, "seconds": one_worker_s, "events_per_s": drained_1 as f64 / one_worker_s},
        "two_workers": {"events": drained_2, "seconds": two_workers_s, "events_per_s": drained_2 as f64 / two_workers_s},
    });
    println!("{report:#}");
    Ok(())
}
