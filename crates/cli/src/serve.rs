//! `sessionizer serve`: configuration (file, environment, flags), logging,
//! signals, and the server from `sessionizer-server`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use sessionizer_server::{ApplyBatching, ServeError, ServerConfig};

use crate::{Exit, Failure};

/// Default data directory, relative to the working directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "sessionizer-data";
/// Default listen address: loopback only, so nothing is exposed by accident.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Run the server: ingest events over HTTP, sessionize them live, store them durably.
///
/// Settings come from flags, then environment variables, then the TOML file
/// given by --config (keys `data`, `listen`, `log_format`, `write_queue_requests`,
/// `ingest_rate_limit`, `read_rate_limit`, `apply_batch_events`, `apply_delay`),
/// then defaults.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory (created if missing) [default: ./sessionizer-data].
    #[arg(long, value_name = "DIR", env = "SESSIONIZER_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "SESSIONIZER_LISTEN")]
    listen: Option<String>,
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE", env = "SESSIONIZER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT", env = "SESSIONIZER_LOG_FORMAT")]
    log_format: Option<String>,
    /// Ingestion requests that may wait for the writer; beyond them, requests
    /// are refused at once (503, or 429 on Amplitude's routes) [default: 1024].
    #[arg(long, value_name = "N", env = "SESSIONIZER_WRITE_QUEUE_REQUESTS")]
    write_queue_requests: Option<usize>,
    /// Events per second each project's write key may send (bursts of two
    /// seconds pass); beyond it, 429 with Retry-After. 0 turns it off [default: 100000].
    #[arg(long, value_name = "EVENTS_PER_S", env = "SESSIONIZER_INGEST_RATE_LIMIT")]
    ingest_rate_limit: Option<u32>,
    /// Read requests per second each project's read key may make; 0 turns it off [default: 100].
    #[arg(long, value_name = "REQUESTS_PER_S", env = "SESSIONIZER_READ_RATE_LIMIT")]
    read_rate_limit: Option<u32>,
    /// Acknowledged events the writer gathers before applying them to events
    /// and sessions (1 to 50000): larger batches write fewer bytes and use
    /// less CPU per event, and make a read that arrives during a batch wait
    /// longer [default: 20000].
    #[arg(long, value_name = "N", env = "SESSIONIZER_APPLY_BATCH_EVENTS")]
    apply_batch_events: Option<usize>,
    /// Longest acknowledged events wait to be applied when fewer than
    /// --apply-batch-events have gathered (at most 60s; a read has them
    /// applied at once) [default: 2s].
    #[arg(long, value_name = "DURATION", env = "SESSIONIZER_APPLY_DELAY")]
    apply_delay: Option<String>,
    /// Longest time a client may take to send a request's header (or keep an idle
    /// connection open); then the connection is closed [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    header_read_timeout: Option<std::time::Duration>,
    /// Longest pause while a client sends a request body; then 408 [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    body_idle_timeout: Option<std::time::Duration>,
    /// Longest time a client may take to send a whole request body, however
    /// steadily; then 408 [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    body_total_timeout: Option<std::time::Duration>,
    /// What this process does: `single` (everything, on the embedded store in
    /// --data), or as a node of a cluster (--cluster, docs/scale-out.md)
    /// `ingest` (HTTP ingestion into the event stream), `worker` (sessionizes
    /// partitions into ClickHouse), `query` (the query API and dashboard, from
    /// ClickHouse) or `all` (the three).
    #[arg(
        long,
        value_name = "ROLE",
        default_value = "single",
        value_parser = ["single", "ingest", "worker", "query", "all"]
    )]
    role: String,
    /// The cluster's TOML configuration (with --role ingest, worker, query or all).
    #[arg(long = "cluster", value_name = "FILE", env = "SESSIONIZER_CLUSTER")]
    cluster: Option<PathBuf>,
    /// A worker's id, unique in the cluster [default: host name and process id].
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
}

/// A timeout on the command line (`10s`, `500ms`, ...): above zero.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match crate::duration::parse_duration_ms(text)? {
        0 => Err("a timeout must be above zero".to_string()),
        ms => Ok(std::time::Duration::from_millis(ms.unsigned_abs())),
    }
}

/// The writer's batching from `--apply-batch-events` and `--apply-delay` (or
/// their environment variables or file keys), each defaulting on its own.
fn apply_batching(min_events: Option<usize>, delay: Option<String>) -> Result<ApplyBatching, Exit> {
    let usage = |message: String| Exit::new(Failure::Usage, anyhow::anyhow!(message));
    let defaults = ApplyBatching::default();
    let max_delay = match delay {
        None => defaults.max_delay(),
        Some(text) => {
            let ms = crate::duration::parse_duration_ms(&text).map_err(|e| usage(format!("apply_delay: {e}")))?;
            // The parser refuses negative durations.
            std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        }
    };
    ApplyBatching::new(min_events.unwrap_or(defaults.min_events()), max_delay).map_err(usage)
}

/// The configuration file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: Option<PathBuf>,
    listen: Option<String>,
    log_format: Option<String>,
    write_queue_requests: Option<usize>,
    ingest_rate_limit: Option<u32>,
    read_rate_limit: Option<u32>,
    apply_batch_events: Option<usize>,
    /// A duration such as `2s` or `500ms`.
    apply_delay: Option<String>,
}

fn read_config(path: &Path) -> Result<ConfigFile, Exit> {
    let usage = |message: String| Exit::new(Failure::Usage, anyhow::anyhow!(message));
    let metadata =
        std::fs::metadata(path).map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(usage(format!("config file {} is larger than {MAX_CONFIG_BYTES} bytes", path.display())));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| usage(format!("invalid config file {}: {e}", path.display())))
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let data_dir = args.data.or(file.data).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen_text = args.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        Exit::new(
            Failure::Usage,
            anyhow::anyhow!("invalid listen address {listen_text:?}: use IP:PORT, e.g. 127.0.0.1:8080"),
        )
    })?;
    let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| "text".to_string());
    let write_queue_requests = args
        .write_queue_requests
        .or(file.write_queue_requests)
        .unwrap_or(sessionizer_server::limits::WRITE_QUEUE_REQUESTS);
    let max_queue = sessionizer_server::limits::MAX_WRITE_QUEUE_REQUESTS;
    if !(1..=max_queue).contains(&write_queue_requests) {
        return Err(Exit::new(
            Failure::Usage,
            anyhow::anyhow!("write_queue_requests must be between 1 and {max_queue}, got {write_queue_requests}"),
        )
        .into());
    }
    let apply =
        apply_batching(args.apply_batch_events.or(file.apply_batch_events), args.apply_delay.or(file.apply_delay))?;
    init_logging(&log_format)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    let defaults = sessionizer_server::RateLimits::default();
    let rate_limits = sessionizer_server::RateLimits {
        ingest_events_per_s: args.ingest_rate_limit.or(file.ingest_rate_limit).unwrap_or(defaults.ingest_events_per_s),
        read_requests_per_s: args.read_rate_limit.or(file.read_rate_limit).unwrap_or(defaults.read_requests_per_s),
    };
    let defaults = sessionizer_server::Timeouts::default();
    let timeouts = sessionizer_server::Timeouts {
        header_read: args.header_read_timeout.unwrap_or(defaults.header_read),
        body_idle: args.body_idle_timeout.unwrap_or(defaults.body_idle),
        body_total: args.body_total_timeout.unwrap_or(defaults.body_total),
    };
    if args.role != "single" {
        let Some(cluster_file) = args.cluster else {
            return Err(Exit::new(
                Failure::Usage,
                anyhow::anyhow!("--role {} needs --cluster FILE (docs/scale-out.md)", args.role),
            )
            .into());
        };
        return run_cluster_role(&runtime, &args.role, &cluster_file, args.worker_id, listen, rate_limits, timeouts);
    }
    if args.cluster.is_some() {
        return Err(
            Exit::new(Failure::Usage, anyhow::anyhow!("--cluster needs --role ingest, worker, query or all")).into()
        );
    }
    let config = ServerConfig { data_dir, listen, write_queue_requests, rate_limits, timeouts, apply };
    runtime.block_on(sessionizer_server::serve(config, shutdown_signal())).map_err(|error| {
        let failure = match error {
            ServeError::Listen { .. } | ServeError::DataDirInUse(_) => Failure::Unavailable,
            ServeError::Store(_) | ServeError::Io(_) | ServeError::Cluster(_) => Failure::Software,
        };
        Exit::new(failure, error).into()
    })
}

#[cfg(not(feature = "cluster"))]
fn run_cluster_role(
    _runtime: &tokio::runtime::Runtime,
    role: &str,
    _cluster_file: &Path,
    _worker_id: Option<String>,
    _listen: SocketAddr,
    _rate_limits: sessionizer_server::RateLimits,
    _timeouts: sessionizer_server::Timeouts,
) -> anyhow::Result<()> {
    Err(Exit::new(
        Failure::Usage,
        anyhow::anyhow!(
            "--role {role} needs a binary built with the `cluster` feature (cargo build --features cluster)"
        ),
    )
    .into())
}

/// `serve --role ingest|worker|query|all`: a node of a cluster.
#[cfg(feature = "cluster")]
fn run_cluster_role(
    runtime: &tokio::runtime::Runtime,
    role: &str,
    cluster_file: &Path,
    worker_id: Option<String>,
    listen: SocketAddr,
    rate_limits: sessionizer_server::RateLimits,
    timeouts: sessionizer_server::Timeouts,
) -> anyhow::Result<()> {
    use sessionizer_cluster::{Cluster, DEFAULT_BATCH_EVENTS, Worker, WorkerOptions};
    let config = crate::cluster::load_config(cluster_file)?;
    let worker_id = worker_id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
    });
    let unavailable = |e: &dyn std::fmt::Display| Exit::new(Failure::Unavailable, anyhow::anyhow!("{e}"));
    runtime.block_on(async {
        let cluster = Cluster::connect(config).await.map_err(|e| unavailable(&e))?;
        // NATS unreachable at start is waited out (a node may start before the
        // cluster does); a cluster that cannot work with this configuration is an error.
        loop {
            match cluster.check_partitions().await {
                Ok(()) => break,
                Err(error @ sessionizer_cluster::ClusterError::Nats(_)) => {
                    tracing::warn!(%error, "cannot reach the cluster yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(error) => return Err(unavailable(&error)),
            }
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.send_replace(true);
        });
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            drop(stopped.wait_for(|s| *s).await);
        };
        let http = async {
            if role == "worker" {
                return Ok(());
            }
            let config = sessionizer_server::ClusterNodeConfig {
                listen,
                rate_limits,
                timeouts,
                ingest: role == "ingest" || role == "all",
                query: role == "query" || role == "all",
            };
            let serving = sessionizer_server::serve_cluster_node(config, cluster.clone(), wait(stopped.clone()));
            serving.await.map_err(|error| {
                let failure =
                    if matches!(error, ServeError::Listen { .. }) { Failure::Unavailable } else { Failure::Software };
                Exit::new(failure, error)
            })
        };
        let work = async {
            if role == "ingest" || role == "query" {
                return Ok(());
            }
            let options = WorkerOptions { worker_id: worker_id.clone(), batch_events: DEFAULT_BATCH_EVENTS };
            tracing::info!(worker = %worker_id, "sessionizer worker starting");
            let worker = Worker::new(cluster.clone(), options).map_err(|e| Exit::new(Failure::Usage, e))?;
            worker.run(wait(stopped.clone())).await.map_err(|e| Exit::new(Failure::Unavailable, e))
        };
        let (served, worked) = tokio::join!(http, work);
        served.and(worked)
    })?;
    Ok(())
}

fn init_logging(format: &str) -> Result<(), Exit> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SESSIONIZER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => {
            return Err(Exit::new(Failure::Usage, anyhow::anyhow!("invalid log format {other:?}: use text or json")));
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested: draining in-flight requests");
}
