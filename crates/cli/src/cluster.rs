//! `sessionizer cluster ...` and the cluster roles of `sessionizer serve`
//! (docs/scale-out.md): administration of a cluster's NATS stream, catalog and
//! ClickHouse tables, and the ingest and worker roles.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use sessionizer_cluster::clickhouse::ClickHouseStore;
use sessionizer_cluster::{Cluster, ClusterConfig, ClusterError};
use sessionizer_store::ProjectSettings;

use crate::project::{print, project_json};
use crate::{Exit, Failure};

/// Administer a scaled-out deployment (NATS JetStream + ClickHouse).
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterFileArg {
    /// The cluster's TOML configuration (docs/scale-out.md).
    #[arg(long = "cluster", value_name = "FILE", env = "SESSIONIZER_CLUSTER")]
    pub(crate) file: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create the event stream, the KV buckets and the ClickHouse tables (idempotent).
    Init {
        #[command(flatten)]
        cluster: ClusterFileArg,
    },
    /// Create a project in the cluster's catalog; prints its id and keys as JSON (shown only once).
    CreateProject {
        #[command(flatten)]
        cluster: ClusterFileArg,
        #[arg(long)]
        name: String,
        /// Session settings as a JSON file: the `settings` object that `project show`
        /// prints (missing keys take their defaults). A cluster project's settings are
        /// chosen at creation [default: the defaults, a 30-minute timeout].
        #[arg(long, value_name = "FILE")]
        settings: Option<PathBuf>,
    },
    /// List the catalog's projects as JSON lines (without keys).
    Projects {
        #[command(flatten)]
        cluster: ClusterFileArg,
    },
    /// Write a project's current sessions from ClickHouse (NDJSON, CSV or Parquet by
    /// the output's extension; NDJSON to stdout without -o).
    Sessions {
        #[command(flatten)]
        cluster: ClusterFileArg,
        /// Project id or name.
        project: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// A project's stored event count (each event once) and current session count, as JSON.
    Stats {
        #[command(flatten)]
        cluster: ClusterFileArg,
        /// Project id or name.
        project: String,
    },
    /// Print every SQL statement the ClickHouse adapter sends, with sample rows
    /// and expected results, as a JSON array (`[{"sql", "expect"?}]`): for review
    /// and `tests/cluster/chdb_dialect.py`.
    Sql {
        #[command(flatten)]
        cluster: ClusterFileArg,
    },
}

pub(crate) fn load_config(path: &Path) -> Result<ClusterConfig, Exit> {
    ClusterConfig::load(path).map_err(|e| Exit::new(Failure::Usage, e))
}

fn cluster_failure(error: ClusterError) -> Exit {
    let failure = match error {
        ClusterError::Config(_) => Failure::Usage,
        ClusterError::Nats(_) | ClusterError::ClickHouse(_) => Failure::Unavailable,
        ClusterError::Catalog(_) => Failure::DataError,
        _ => Failure::Software,
    };
    Exit::new(failure, error)
}

pub(crate) fn clickhouse_of(config: &ClusterConfig) -> Result<ClickHouseStore, Exit> {
    ClickHouseStore::new(
        &config.clickhouse_shards,
        &config.clickhouse_database,
        config.clickhouse_user.as_deref(),
        config.clickhouse_password.as_deref(),
    )
    .map_err(cluster_failure)
}

/// How long a read command retries an unreachable NATS or ClickHouse (a
/// cluster in failover answers again within seconds).
const READ_RETRY: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs a read (idempotent) until it succeeds, fails for a reason other than
/// an unreachable engine, or [`READ_RETRY`] has passed.
async fn retrying<T, Attempt, Answer>(mut attempt: Attempt) -> Result<T, ClusterError>
where
    Attempt: FnMut() -> Answer,
    Answer: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + READ_RETRY;
    loop {
        match attempt().await {
            Err(ClusterError::Nats(_) | ClusterError::ClickHouse(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")
}

pub(crate) fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Init { cluster } => {
            let config = load_config(&cluster.file)?;
            let clickhouse = clickhouse_of(&config)?;
            runtime()?
                .block_on(async {
                    let nats = Cluster::connect(config.clone()).await?;
                    nats.init().await?;
                    clickhouse.init_schema().await
                })
                .map_err(cluster_failure)?;
            print(
                json!({"initialised": true, "partitions": config.partitions, "shards": config.clickhouse_shards.len()}),
            )
        }
        ClusterCommand::CreateProject { cluster, name, settings } => {
            let config = load_config(&cluster.file)?;
            let settings = match settings {
                Some(path) => read_settings(&path)?,
                None => ProjectSettings::default(),
            };
            let created = runtime()?
                .block_on(async {
                    let nats = Cluster::connect(config).await?;
                    let now = jiff::Timestamp::now().as_millisecond();
                    nats.catalog().await?.create_project(&name, settings, now).await
                })
                .map_err(cluster_failure)?;
            let mut value = project_json(&created.project);
            value["write_key"] = json!(created.write_key);
            value["read_key"] = json!(created.read_key);
            print(value)
        }
        ClusterCommand::Projects { cluster } => {
            let config = load_config(&cluster.file)?;
            let projects = runtime()?
                .block_on(retrying(|| async {
                    Cluster::connect(config.clone()).await?.catalog().await?.projects().await
                }))
                .map_err(cluster_failure)?;
            for project in projects {
                print(project_json(&project.project()))?;
            }
            Ok(())
        }
        ClusterCommand::Sessions { cluster, project, output } => {
            let config = load_config(&cluster.file)?;
            let clickhouse = clickhouse_of(&config)?;
            let sessions = runtime()?
                .block_on(retrying(|| async {
                    let nats = Cluster::connect(config.clone()).await?;
                    let project = nats.catalog().await?.project(&project).await?;
                    clickhouse.project_sessions(project.id).await
                }))
                .map_err(cluster_failure)?;
            write_sessions(&sessions, output.as_deref())
        }
        ClusterCommand::Stats { cluster, project } => {
            let config = load_config(&cluster.file)?;
            let clickhouse = clickhouse_of(&config)?;
            let (events, sessions) = runtime()?
                .block_on(retrying(|| async {
                    let nats = Cluster::connect(config.clone()).await?;
                    let project = nats.catalog().await?.project(&project).await?;
                    let events = clickhouse.project_event_count(project.id).await?;
                    let sessions = clickhouse.project_sessions(project.id).await?.len();
                    Ok::<_, ClusterError>((events, sessions))
                }))
                .map_err(cluster_failure)?;
            print(json!({"events": events, "sessions": sessions}))
        }
        ClusterCommand::Sql { cluster } => {
            use std::io::Write;
            let config = load_config(&cluster.file)?;
            let clickhouse = clickhouse_of(&config)?;
            writeln!(std::io::stdout().lock(), "{}", clickhouse.dialect_check_json())?;
            Ok(())
        }
    }
}

/// Largest settings file read.
const MAX_SETTINGS_BYTES: u64 = 64 * 1024;

fn read_settings(path: &Path) -> Result<ProjectSettings, Exit> {
    let usage = |message: String| Exit::new(Failure::Usage, anyhow::anyhow!(message));
    let size = std::fs::metadata(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?.len();
    if size > MAX_SETTINGS_BYTES {
        return Err(usage(format!(
            "{} has {size} bytes; a settings file has at most {MAX_SETTINGS_BYTES}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let settings: ProjectSettings =
        serde_json::from_str(&text).map_err(|e| usage(format!("invalid settings in {}: {e}", path.display())))?;
    settings.compile().map_err(|e| usage(format!("invalid settings in {}: {e}", path.display())))?;
    Ok(settings)
}

fn write_sessions(sessions: &[sessionizer_store::StoredSession], output: Option<&Path>) -> anyhow::Result<()> {
    let fail = |e: sessionizer_formats::WriteError| Exit::new(Failure::OutputError, e);
    let mut sink = sessionizer_formats::create_session_writer(output).map_err(fail)?;
    for session in sessions {
        sessionizer_server::write_stored_session(sink.as_mut(), session).map_err(fail)?;
    }
    sink.finish().map_err(fail)?;
    Ok(())
}
