//! End-to-end tests of the real `sessionizer` binary: golden outputs, the same
//! sessions whatever the input order and format, and errors with exit codes.
//!
//! Golden files live in `tests/golden`; `UPDATE_GOLDEN=1 cargo test -p sessionizer`
//! rewrites them (then review the diff).

mod access;
mod crash;
mod faults;
mod hostile;
mod overload;
mod query;
mod sdk;
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sessionizer");

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)
}

fn example() -> PathBuf {
    repo_path("examples/events.ndjson")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("the binary runs")
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn example_sessions_match_the_golden_file() {
    let output = run(&["sessionize", path_str(&example())]);
    golden("example.sessions.ndjson", &stdout(&output));
    let summary = stderr(&output);
    assert!(summary.contains("events: 21 read, 1 duplicates dropped, 2 excluded"), "{summary}");
    assert!(summary.contains("sessions: 5"), "{summary}");
    assert!(summary.contains("users: 4"), "{summary}");
}

#[test]
fn csv_sessions_and_events_out_match_the_golden_files() {
    let dir = temp_dir();
    let sessions = dir.path().join("sessions.csv");
    let events = dir.path().join("events.ndjson");
    let output = run(&[
        "sessionize",
        path_str(&example()),
        "-o",
        path_str(&sessions),
        "--events-out",
        path_str(&events),
        "--quiet",
    ]);
    assert_eq!(stdout(&output), "", "sessions go to the file, not stdout");
    assert_eq!(stderr(&output), "", "--quiet prints nothing");
    golden("example.sessions.csv", &std::fs::read_to_string(&sessions).unwrap());
    golden("example.events.ndjson", &std::fs::read_to_string(&events).unwrap());
}

/// The same events in reverse, rotated, from stdin, and as CSV and Parquet
/// (written by `--events-out`, read back with `--time-field time_ms`) give
/// byte-identical sessions.
#[test]
fn sessions_do_not_depend_on_input_order_or_format() {
    let expected = stdout(&run(&["sessionize", path_str(&example()), "--quiet"]));
    let text = std::fs::read_to_string(example()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = temp_dir();

    let reversed: Vec<&str> = lines.iter().rev().copied().collect();
    let mut rotated = lines.clone();
    rotated.rotate_left(7);
    for (name, order) in [("reversed.ndjson", reversed), ("rotated.jsonl", rotated)] {
        let path = dir.path().join(name);
        std::fs::write(&path, order.join("\n") + "\n").unwrap();
        assert_eq!(stdout(&run(&["sessionize", path_str(&path), "--quiet"])), expected, "{name}");
    }
    let from_stdin = run_with_stdin(&["sessionize", "-", "--quiet"], text.as_bytes());
    assert_eq!(stdout(&from_stdin), expected, "stdin");

    // Split across two inputs: still sessionized together.
    let (first, second) = (dir.path().join("first.ndjson"), dir.path().join("second.ndjson"));
    std::fs::write(&first, lines[..10].join("\n")).unwrap();
    std::fs::write(&second, lines[10..].join("\n")).unwrap();
    assert_eq!(stdout(&run(&["sessionize", path_str(&second), path_str(&first), "--quiet"])), expected, "two files");

    // The thread count changes how work is split, never the result.
    for threads in ["1", "2", "3"] {
        let split = run(&["sessionize", path_str(&example()), "--quiet", "--threads", threads, "--events-out", "-"]);
        let first_lines: Vec<&str> = std::str::from_utf8(&split.stdout).unwrap().lines().collect();
        assert!(first_lines.len() > expected.lines().count(), "sessions then events on stdout");
        let sessions_only = run(&["sessionize", path_str(&example()), "--quiet", "--threads", threads]);
        assert_eq!(stdout(&sessions_only), expected, "{threads} threads");
    }

    for extension in ["csv", "parquet"] {
        let events = dir.path().join(format!("events.{extension}"));
        let write = run(&["sessionize", path_str(&example()), "--quiet", "-o", "-", "--events-out", path_str(&events)]);
        assert!(write.status.success());
        let again = run(&["sessionize", path_str(&events), "--time-field", "time_ms", "--quiet"]);
        assert_eq!(stdout(&again), expected, "{extension} input");
    }
}

#[test]
fn parquet_sessions_output_and_stats_json() {
    let dir = temp_dir();
    let sessions = dir.path().join("sessions.parquet");
    let stats = dir.path().join("stats.json");
    let output = run(&[
        "sessionize",
        path_str(&example()),
        "-o",
        path_str(&sessions),
        "--stats-json",
        path_str(&stats),
        "--quiet",
    ]);
    assert_eq!(stdout(&output), "");
    let bytes = std::fs::read(&sessions).unwrap();
    assert_eq!(&bytes[..4], b"PAR1", "a Parquet file");
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["sessions"], 5);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["events_read"], 21);
    assert!(stats["timings_s"]["total"].as_f64().unwrap() >= 0.0);
}

#[test]
fn split_and_classification_flags_change_the_sessions() {
    let example = example();
    let sessions = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["sessionize", path_str(&example), "--quiet"];
        all.extend_from_slice(args);
        stdout(&run(&all)).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let reasons = |sessions: &[serde_json::Value]| -> Vec<String> {
        sessions.iter().map(|s| s["end_reason"].as_str().unwrap().to_string()).collect()
    };
    let default = sessions(&[]);
    assert_eq!(default.len(), 5);
    assert!(reasons(&default).contains(&"user_change".to_string()), "the tablet's anonymous session ends on login");

    let midnight = sessions(&["--midnight-split", "UTC"]);
    assert_eq!(midnight.len(), 6, "carol's 23:50-00:10 session splits at midnight");
    assert!(reasons(&midnight).contains(&"midnight".to_string()));

    let capped = sessions(&["--max-length", "1h"]);
    assert_eq!(capped.len(), 6, "alice's 73-minute session splits at one hour");
    assert!(reasons(&capped).contains(&"max_length".to_string()));

    let short = sessions(&["--timeout", "10m"]);
    assert!(short.len() > default.len());

    // With nothing excluded, carol's App Installed opens her session a minute early.
    let nothing_excluded = sessions(&["--exclude-event-types", ""]);
    assert!(nothing_excluded.iter().any(|s| s["entry_event_type"] == "App Installed"));
}

#[test]
fn a_malformed_row_names_file_and_line_and_exits_65() {
    let dir = temp_dir();
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"user_id\":\"u\",\"event_type\":\"a\",\"time\":1767600000000}\n\n{\"user_id\":\"u\",\"event_type\":\"b\"}\n",
    )
    .unwrap();
    let output = run(&["sessionize", path_str(&bad)]);
    assert_eq!(output.status.code(), Some(65));
    let message = stderr(&output);
    assert!(message.contains("bad.ndjson:3:"), "{message}");
    assert!(message.contains("time"), "{message}");

    let skipped = run(&["sessionize", path_str(&bad), "--skip-invalid"]);
    assert_eq!(stdout(&skipped).lines().count(), 1);
    assert!(stderr(&skipped).contains("invalid rows skipped: 1"), "{}", stderr(&skipped));
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    let example = example();
    let cases: [(&[&str], &str); 4] = [
        (&["--timeout", "0.5s"], "session timeout must be at least 1 second"),
        (&["--timeout", "soon"], "invalid duration"),
        (&["--midnight-split", "Mars/Olympus"], "unknown time zone"),
        (&["--exclude-event-types", "Sync", "--passive-event-types", "Sync"], "both excluded and passive"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["sessionize", path_str(&example)];
        all.extend_from_slice(args);
        let output = run(&all);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn missing_and_unsupported_inputs_exit_with_their_codes() {
    let dir = temp_dir();
    let missing = run(&["sessionize", path_str(&dir.path().join("nope.ndjson"))]);
    assert_eq!(missing.status.code(), Some(66), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("nope.ndjson"));

    let text = dir.path().join("events.txt");
    std::fs::write(&text, "hello").unwrap();
    let unsupported = run(&["sessionize", path_str(&text)]);
    assert_eq!(unsupported.status.code(), Some(2), "{}", stderr(&unsupported));
    assert!(stderr(&unsupported).contains(".parquet"), "lists the supported formats: {}", stderr(&unsupported));

    // A bad output extension fails before any input is read, and creates no file.
    let output = dir.path().join("sessions.xlsx");
    let bad_output = run(&["sessionize", path_str(&example()), "-o", path_str(&output)]);
    assert_eq!(bad_output.status.code(), Some(2), "{}", stderr(&bad_output));
    assert!(stderr(&bad_output).contains("--output"), "{}", stderr(&bad_output));
    assert!(!output.exists());
}

/// Duplicates within and across input files are found whatever the thread
/// count: each thread interns and hashes its own files, the hashes are
/// marked per hash partition (several with several files and threads).
#[test]
fn duplicates_across_files_are_dropped_with_any_thread_count() {
    let dir = temp_dir();
    let t0: i64 = 1_700_000_000_000;
    let mut paths = Vec::new();
    for file in 0..4i64 {
        // 500 events per file; every fifth repeats an id of the previous file
        // (and the first file repeats its own), so 400 of 2,000 are duplicates.
        let lines: Vec<String> = (0..500i64)
            .map(|i| {
                let id = if i % 5 == 0 { format!("f{}-{}", (file - 1).max(0), i + 1) } else { format!("f{file}-{i}") };
                let user = format!("u{}", i % 37);
                format!(
                    r#"{{"user_id":"{user}","event_type":"Page Viewed","time":{},"insert_id":"{id}"}}"#,
                    t0 + (file * 500 + i) * 7_000
                )
            })
            .collect();
        let path = dir.path().join(format!("part{file}.ndjson"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        paths.push(path);
    }
    let mut outputs = Vec::new();
    for threads in ["1", "2", "3", "4"] {
        let stats = dir.path().join(format!("stats{threads}.json"));
        let mut args = vec!["sessionize", "--quiet", "--threads", threads, "--stats-json", path_str(&stats)];
        args.extend(paths.iter().map(|path| path_str(path)));
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        assert_eq!(stats["events_read"], 2_000, "{threads} threads");
        assert_eq!(stats["duplicates"], 400, "{threads} threads");
        outputs.push(stdout(&output));
    }
    assert!(outputs.windows(2).all(|pair| pair[0] == pair[1]), "the same sessions with any thread count");
}
