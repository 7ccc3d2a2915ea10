//! `sessionizer`: the binary and the composition root.
//!
//! This is the only crate that parses command lines, talks to the terminal and
//! exits the process. It composes `sessionizer-formats` (files),
//! `sessionizer-engine` (what a session is), `sessionizer-store` (durable
//! storage) and `sessionizer-server` (HTTP).

#[cfg(feature = "cluster")]
mod cluster;
mod duration;
mod loadgen;
mod project;
mod serve;
mod sessionize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: the server's writer allocates and
/// frees many short-lived strings per event, and glibc spends a sixth of the
/// writer's time consolidating and unlinking free chunks; with jemalloc the
/// writer applies 12% more events per second (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Self-hosted session analytics: groups each user's events into sessions.
#[derive(Debug, Parser)]
#[command(name = "sessionizer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve::ServeArgs),
    Sessionize(Box<sessionize::SessionizeArgs>),
    Project(project::ProjectArgs),
    Rebuild(project::RebuildArgs),
    Loadgen(loadgen::LoadgenArgs),
    Check(CheckArgs),
    #[cfg(feature = "cluster")]
    Cluster(cluster::ClusterArgs),
}

/// Check a data directory for damage (SQLite's integrity check of every page
/// and index). Prints a JSON report; exits 65 when the data is damaged. Safe
/// while a server runs (it reads one consistent snapshot).
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Data directory [default: ./sessionizer-data].
    #[arg(long, value_name = "DIR", env = "SESSIONIZER_DATA")]
    data: Option<std::path::PathBuf>,
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = args.data.unwrap_or_else(|| std::path::PathBuf::from(serve::DEFAULT_DATA_DIR));
    let report = sessionizer_store::check_data_dir(&dir).map_err(|error| match error {
        sessionizer_store::StoreError::DataDir { .. } => Exit::new(Failure::NoInput, error),
        other => Exit::new(Failure::Software, other),
    })?;
    let json =
        serde_json::json!({"data": dir, "ok": report.is_ok(), "pages": report.pages, "problems": report.problems});
    writeln!(std::io::stdout().lock(), "{json}")?;
    if report.is_ok() {
        return Ok(());
    }
    let shown = sessionizer_store::MAX_CHECK_PROBLEMS;
    let more = if report.problems.len() >= shown { format!(" (the first {shown})") } else { String::new() };
    Err(Exit::new(
        Failure::DataError,
        anyhow::anyhow!(
            "the data in {} is damaged: {} problems{more}, first: {}; restore it from a backup",
            dir.display(),
            report.problems.len(),
            report.problems[0]
        ),
    )
    .into())
}

/// Exit codes, in the spirit of sysexits.h; documented in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A bad flag or configuration value (clap uses 2 for its own usage errors too).
    Usage = 2,
    /// A malformed input row or file.
    DataError = 65,
    /// An input file (or data directory) that cannot be opened.
    NoInput = 66,
    /// A service the command needs is unavailable (address in use, data directory held by another server).
    Unavailable = 69,
    /// An internal or storage error.
    Software = 70,
    /// Writing the output failed.
    OutputError = 74,
    /// Try again later (e.g. a rebuild while a server is running).
    TempFail = 75,
}

/// An error that knows its exit code; anything else exits with 1.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) failure: Failure,
    pub(crate) error: anyhow::Error,
}

impl Exit {
    pub(crate) fn new(failure: Failure, error: impl Into<anyhow::Error>) -> Exit {
        Exit { failure, error: error.into() }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Sessionize(args) => sessionize::run(*args),
        Command::Project(args) => project::run(args),
        Command::Rebuild(args) => project::rebuild(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Check(args) => check(args),
        #[cfg(feature = "cluster")]
        Command::Cluster(args) => cluster::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.downcast_ref::<Exit>().map_or(1, |exit| exit.failure as u8);
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
