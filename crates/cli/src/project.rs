//! `sessionizer project ...` and `sessionizer rebuild`: administration that
//! works on the data directory directly, with or without a running server.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use sessionizer_store::{Project, Store};

use crate::duration::parse_duration_ms;
use crate::serve::DEFAULT_DATA_DIR;
use crate::{Exit, Failure};

/// Create and configure projects.
#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(Debug, Args)]
struct DataArg {
    /// Data directory [default: ./sessionizer-data].
    #[arg(long, value_name = "DIR", env = "SESSIONIZER_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a project; prints its id and keys as JSON (the keys are shown only once).
    Create {
        #[command(flatten)]
        data: DataArg,
        /// The project's name.
        #[arg(long)]
        name: String,
    },
    /// List projects as JSON lines (without keys).
    List {
        #[command(flatten)]
        data: DataArg,
    },
    /// Show one project's settings as JSON.
    Show {
        #[command(flatten)]
        data: DataArg,
        /// Project id or name.
        project: String,
    },
    /// Change session settings; the project's history is re-sessionized.
    Set(Box<SetArgs>),
    /// Revoke an API key.
    RevokeKey {
        #[command(flatten)]
        data: DataArg,
        /// The key to revoke.
        key: String,
    },
}

#[derive(Debug, Args)]
struct SetArgs {
    #[command(flatten)]
    data: DataArg,
    /// Project id or name.
    project: String,
    /// Inactivity timeout (e.g. 30m, 90s); at least 1s.
    #[arg(long, value_parser = parse_duration_ms)]
    timeout: Option<i64>,
    /// Split sessions longer than this (e.g. 4h), or "off".
    #[arg(long, value_name = "DURATION|off")]
    max_length: Option<String>,
    /// Split sessions at midnight in this IANA time zone, or "off".
    #[arg(long, value_name = "TIME_ZONE|off")]
    midnight_split: Option<String>,
    /// Event types that take no part in sessions (comma-separated; empty for none).
    #[arg(long, value_delimiter = ',')]
    exclude_event_types: Option<Vec<String>>,
    /// Event types that join but never open or extend a session (comma-separated).
    #[arg(long, value_delimiter = ',')]
    passive_event_types: Option<Vec<String>>,
    /// Time zone that days are counted in by the query API.
    #[arg(long)]
    time_zone: Option<String>,
    /// Where sessions come from: "server" (event time only) or "client" (also
    /// split where the SDK's own session id changes).
    #[arg(long, value_name = "server|client")]
    session_source: Option<String>,
    /// Session rules for one platform (repeatable): its timeout, and
    /// `,lifecycle` for app sessions driven by foreground and background
    /// events, e.g. `--platform ios=10s,lifecycle --platform web=30m`;
    /// `NAME=off` removes a platform's rules.
    #[arg(long = "platform", value_name = "NAME=DURATION[,lifecycle]|NAME=off")]
    platforms: Vec<String>,
    /// The platform of events that name none, or "off".
    #[arg(long, value_name = "NAME|off")]
    default_platform: Option<String>,
    /// With lifecycle: how long an app in the foreground may send nothing
    /// before its session ends as a dead app (e.g. 30m).
    #[arg(long, value_parser = parse_duration_ms)]
    dead_app_limit: Option<i64>,
    /// With lifecycle: the events that send an app to the background (comma-separated).
    #[arg(long, value_delimiter = ',')]
    background_event_types: Option<Vec<String>>,
}

/// `NAME=DURATION[,lifecycle]` or `NAME=off` of `project set --platform`.
fn parse_platform(text: &str) -> Result<(String, Option<sessionizer_store::PlatformSettings>), String> {
    let (name, rules) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=DURATION[,lifecycle]"))?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("{text:?} names no platform"));
    }
    if rules.trim() == "off" {
        return Ok((name, None));
    }
    let (timeout, lifecycle) = match rules.split_once(',') {
        Some((timeout, "lifecycle")) => (timeout, true),
        Some((_, other)) => return Err(format!("{other:?} is not \"lifecycle\" in {text:?}")),
        None => (rules, false),
    };
    let timeout_ms = parse_duration_ms(timeout.trim())?;
    Ok((name, Some(sessionizer_store::PlatformSettings { timeout_ms, lifecycle })))
}

/// Re-sessionize every project's history from its stored events.
#[derive(Debug, Args)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    data: DataArg,
    /// Only this project (id or name).
    #[arg(long)]
    project: Option<String>,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn open(data: &DataArg, create: bool) -> Result<Store, Exit> {
    if !create && !data.data.join(sessionizer_store::DB_FILE).exists() {
        return Err(Exit::new(
            Failure::NoInput,
            anyhow::anyhow!("no sessionizer data in {} (create a project first)", data.data.display()),
        ));
    }
    Store::open(&data.data).map_err(|e| Exit::new(Failure::Software, e))
}

pub(crate) fn print(value: serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    Ok(())
}

pub(crate) fn project_json(project: &Project) -> serde_json::Value {
    json!({
        "project_id": project.public_id,
        "name": project.name,
        "created_ms": project.created_ms,
        "settings": project.settings,
    })
}

fn store_error(error: sessionizer_store::StoreError) -> Exit {
    let failure = match error {
        sessionizer_store::StoreError::InvalidSettings(_)
        | sessionizer_store::StoreError::InvalidName(_)
        | sessionizer_store::StoreError::UnknownProject(_) => Failure::Usage,
        _ => Failure::Software,
    };
    Exit::new(failure, error)
}

pub(crate) fn run(args: ProjectArgs) -> anyhow::Result<()> {
    match args.command {
        ProjectCommand::Create { data, name } => {
            let mut store = open(&data, true)?;
            let created = store.create_project(&name, now_ms()).map_err(store_error)?;
            let mut value = project_json(&created.project);
            value["write_key"] = json!(created.write_key);
            value["read_key"] = json!(created.read_key);
            print(value)
        }
        ProjectCommand::List { data } => {
            let store = open(&data, false)?;
            for project in store.projects().map_err(store_error)? {
                print(project_json(&project))?;
            }
            Ok(())
        }
        ProjectCommand::Show { data, project } => {
            let store = open(&data, false)?;
            print(project_json(&store.project(&project).map_err(store_error)?))
        }
        ProjectCommand::Set(args) => set(*args),
        ProjectCommand::RevokeKey { data, key } => {
            let mut store = open(&data, false)?;
            if !store.revoke_key(key.trim(), now_ms()).map_err(store_error)? {
                return Err(Exit::new(Failure::Usage, anyhow::anyhow!("no such active key")).into());
            }
            print(json!({"revoked": true}))
        }
    }
}

fn set(args: SetArgs) -> anyhow::Result<()> {
    let mut store = open(&args.data, false)?;
    let project = store.project(&args.project).map_err(store_error)?;
    let mut settings = project.settings.clone();
    let usage = |flag: &str, message: String| Exit::new(Failure::Usage, anyhow::anyhow!("invalid {flag}: {message}"));
    if let Some(timeout) = args.timeout {
        settings.timeout_ms = timeout;
    }
    if let Some(max_length) = &args.max_length {
        settings.max_length_ms = match max_length.as_str() {
            "off" => None,
            text => Some(parse_duration_ms(text).map_err(|e| usage("--max-length", e))?),
        };
    }
    if let Some(zone) = &args.midnight_split {
        settings.midnight_split_time_zone = (zone != "off").then(|| zone.clone());
    }
    let clean = |names: &[String]| names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    if let Some(excluded) = &args.exclude_event_types {
        settings.excluded_event_types = clean(excluded);
    }
    if let Some(passive) = &args.passive_event_types {
        settings.passive_event_types = clean(passive);
    }
    if let Some(zone) = &args.time_zone {
        settings.time_zone = zone.clone();
    }
    if let Some(source) = &args.session_source {
        settings.session_source = source.clone();
    }
    for platform in &args.platforms {
        match parse_platform(platform).map_err(|e| usage("--platform", e))? {
            (name, Some(rules)) => settings.platforms.insert(name, rules),
            (name, None) => settings.platforms.remove(&name),
        };
    }
    if let Some(platform) = &args.default_platform {
        settings.default_platform = (platform != "off").then(|| platform.trim().to_ascii_lowercase());
    }
    if let Some(limit) = args.dead_app_limit {
        settings.dead_app_limit_ms = limit;
    }
    if let Some(background) = &args.background_event_types {
        settings.background_event_types = clean(background);
    }
    store.set_settings(&project, &settings).map_err(store_error)?;
    let project = store.project(&project.public_id).map_err(store_error)?;
    let mut value = project_json(&project);
    if sessionizer_server::server_running(&args.data.data) {
        // The running server notices within a second and re-sessionizes.
        value["resessionized_by"] = json!("server");
    } else {
        let sessions = store.rebuild_project(&project, now_ms()).map_err(store_error)?;
        value["resessionized_by"] = json!("this command");
        value["sessions"] = json!(sessions);
    }
    print(value)
}

pub(crate) fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    if sessionizer_server::server_running(&args.data.data) {
        return Err(Exit::new(
            Failure::TempFail,
            anyhow::anyhow!(
                "a server is running on {}: stop it first (it keeps sessions current itself)",
                args.data.data.display()
            ),
        )
        .into());
    }
    let mut store = open(&args.data, false)?;
    let projects = match &args.project {
        Some(project) => vec![store.project(project).map_err(store_error)?],
        None => store.projects().map_err(store_error)?,
    };
    for project in projects {
        let started = std::time::Instant::now();
        let events = store.event_count(project.id).map_err(store_error)?;
        let sessions = store.rebuild_project(&project, now_ms()).map_err(store_error)?;
        print(json!({
            "project_id": project.public_id,
            "events": events,
            "sessions": sessions,
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}
