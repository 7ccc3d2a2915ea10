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
        /// prints (missing keys take their defaults) [default: the defaults, a
        /// 30-minute timeout]. `cluster set-settings` changes them later.
        #[arg(long, value_name = "FILE")]
        settings: Option<PathBuf>,
    },
    /// Change a project's session settings. The workers then re-sessionize the
    /// project's whole history, partition by partition; prints the new settings
    /// and their revision as JSON.
    SetSettings {
        #[command(flatten)]
        cluster: ClusterFileArg,
        /// Project id or name.
        project: String,
        /// A JSON object with the settings to change (keys of the `settings`
        /// object that `cluster projects` prints); the others stay as they are.
        #[arg(long, value_name = "FILE")]
        settings: PathBuf,
        /// Wait until every partition's sessions follow the new settings,
        /// reporting progress on stderr; at most this long (e.g. 10m) [default: no wait].
        #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
        wait: Option<std::time::Duration>,
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
    ClickHouseStore::from_config(config).map_err(cluster_failure)
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
        ClusterCommand::SetSettings { cluster, project, settings, wait } => {
            let config = load_config(&cluster.file)?;
            let partitions = config.partitions;
            let changes = read_settings_object(&settings)?;
            let runtime = runtime()?;
            let (catalog, current) = runtime
                .block_on(async {
                    let catalog = Cluster::connect(config).await?.catalog().await?;
                    let current = catalog.project(&project).await?;
                    Ok::<_, ClusterError>((catalog, current))
                })
                .map_err(cluster_failure)?;
            let merged = merge_settings(&current.settings, changes, &settings)?;
            let updated = runtime
                .block_on(catalog.set_settings(current.id, current.settings_revision, merged))
                .map_err(cluster_failure)?;
            let mut value = project_json(&updated.project());
            value["settings_revision"] = json!(updated.settings_revision);
            if let Some(wait) = wait {
                runtime.block_on(wait_for_settings(&catalog, &updated, partitions, wait))?;
                value["applied_partitions"] = json!(partitions);
            }
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
                let mut value = project_json(&project.project());
                value["settings_revision"] = json!(project.settings_revision);
                print(value)?;
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

/// The longest `--wait` of `cluster set-settings`.
const MAX_SETTINGS_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    let ms = crate::duration::parse_duration_ms(text)?;
    if ms <= 0 || ms as u128 > MAX_SETTINGS_WAIT.as_millis() {
        return Err(format!("between 1 ms and {} h", MAX_SETTINGS_WAIT.as_secs() / 3600));
    }
    Ok(std::time::Duration::from_millis(ms.unsigned_abs()))
}

fn usage(message: String) -> Exit {
    Exit::new(Failure::Usage, anyhow::anyhow!(message))
}

fn read_settings_text(path: &Path) -> Result<String, Exit> {
    let size = std::fs::metadata(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?.len();
    if size > MAX_SETTINGS_BYTES {
        return Err(usage(format!(
            "{} has {size} bytes; a settings file has at most {MAX_SETTINGS_BYTES}",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

fn read_settings(path: &Path) -> Result<ProjectSettings, Exit> {
    let settings: ProjectSettings = serde_json::from_str(&read_settings_text(path)?)
        .map_err(|e| usage(format!("invalid settings in {}: {e}", path.display())))?;
    settings.compile().map_err(|e| usage(format!("invalid settings in {}: {e}", path.display())))?;
    Ok(settings)
}

/// A settings file of `cluster set-settings`: a JSON object of the keys to change.
fn read_settings_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, Exit> {
    match serde_json::from_str(&read_settings_text(path)?) {
        Ok(serde_json::Value::Object(changes)) => Ok(changes),
        Ok(_) => Err(usage(format!("{}: expected a JSON object of settings to change", path.display()))),
        Err(e) => Err(usage(format!("invalid JSON in {}: {e}", path.display()))),
    }
}

/// `current` with the keys of `changes` replaced, checked (a bad key or value is a usage error).
fn merge_settings(
    current: &ProjectSettings,
    changes: serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<ProjectSettings, Exit> {
    let invalid = |e: &dyn std::fmt::Display| usage(format!("invalid settings in {}: {e}", path.display()));
    let mut merged = serde_json::to_value(current).map_err(|e| invalid(&e))?;
    for (key, value) in changes {
        merged[key] = value;
    }
    let settings: ProjectSettings = serde_json::from_value(merged).map_err(|e| invalid(&e))?;
    settings.compile().map_err(|e| invalid(&e))?;
    Ok(settings)
}

/// Waits until every partition applied the project's settings revision,
/// printing progress on stderr when it changes.
async fn wait_for_settings(
    catalog: &sessionizer_cluster::Catalog,
    project: &sessionizer_cluster::CatalogProject,
    partitions: u32,
    wait: std::time::Duration,
) -> Result<(), Exit> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut reported = None;
    loop {
        let applied = retrying(|| catalog.applied_partitions(project.id, project.settings_revision, partitions))
            .await
            .map_err(cluster_failure)?;
        if reported != Some(applied) {
            eprintln!(
                "settings revision {}: applied on {applied} of {partitions} partitions",
                project.settings_revision
            );
            reported = Some(applied);
        }
        if applied == partitions {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Exit::new(
                Failure::Unavailable,
                anyhow::anyhow!(
                    "the settings are stored, but after {} s only {applied} of {partitions} partitions follow them \
                     (are workers running?); the rest follow once workers reach them",
                    wait.as_secs()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
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
