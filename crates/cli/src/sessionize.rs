//! `sessionizer sessionize`: event files in, sessions out.
//!
//! Read every input into columns, intern users and devices into dense indices,
//! drop retried insert ids, run the engine's batch kernel, write sessions (and
//! optionally every event with its session id), and print a summary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::tz::TimeZone;
use sessionizer_engine::{
    BatchEvents, BatchOptions, BatchSession, BatchSessions, Candidates, EventClass, EventClassifier, MAX_BATCH_EVENTS,
    NO_DEVICE, NO_SESSION, SeenBits, SessionRules, UserKey, duplicate_rows_among, insert_id_hash, label_user_changes,
    session_uid, sessionize_users, tiebreak,
};
use sessionizer_formats::{
    EventChunk, EventRow, FieldNames, FileFormat, ReadErrorKind, ReadOptions, SessionRow, StrColumn, WriteError,
    open_event_reader, write_event_rows, write_session_rows,
};
use uuid::Uuid;

use crate::duration::parse_duration_ms;
use crate::{Exit, Failure};

/// Turn event files into sessions.
///
/// Inputs are NDJSON (.ndjson, .jsonl, .json), CSV (.csv) or Parquet (.parquet),
/// chosen by extension; `-` reads NDJSON from stdin. Each event needs an event
/// type, a time (epoch ms, epoch s, or ISO-8601) and a user id or device id.
#[derive(Debug, clap::Args)]
pub(crate) struct SessionizeArgs {
    /// Event files to read (all are sessionized together).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,

    /// Where to write sessions: .ndjson, .csv or .parquet by extension [default: NDJSON on stdout].
    #[arg(short, long, value_name = "OUTPUT")]
    output: Option<PathBuf>,

    /// Also write every input event with its session id (empty for events in no session).
    #[arg(long, value_name = "FILE")]
    events_out: Option<PathBuf>,

    /// Inactivity timeout: a gap this long or longer starts a new session. At least 1s.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration_ms)]
    timeout: i64,

    /// Also split a session once it would reach this length [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    max_length: Option<i64>,

    /// Also split sessions at local midnight in this IANA time zone (e.g. Europe/Berlin, UTC).
    #[arg(long, value_name = "TIME_ZONE")]
    midnight_split: Option<String>,

    /// Event types that take no part in sessions, comma separated; replaces the default list
    /// (App Installed, App Uninstalled, Notification Sent, Notification Clicked, UTM Visited,
    /// Identity Set, Identity Reset, Identity Error). Pass "" to exclude nothing.
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    exclude_event_types: Option<Vec<String>>,

    /// Event types that join an open session but never open or extend one, comma separated.
    /// Events with a true `passive` field are passive too.
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    passive_event_types: Vec<String>,

    /// Project id, part of every session's globally unique id (session_uid).
    #[arg(long, default_value = "default")]
    project: String,

    #[arg(long, default_value = "user_id", value_name = "NAME")]
    user_id_field: String,
    #[arg(long, default_value = "device_id", value_name = "NAME")]
    device_id_field: String,
    #[arg(long, default_value = "event_type", value_name = "NAME")]
    event_type_field: String,
    #[arg(long, default_value = "time", value_name = "NAME")]
    time_field: String,
    #[arg(long, default_value = "insert_id", value_name = "NAME")]
    insert_id_field: String,
    #[arg(long, default_value = "page", value_name = "NAME")]
    page_field: String,
    #[arg(long, default_value = "passive", value_name = "NAME")]
    passive_field: String,

    /// Skip malformed rows (counted in the summary) instead of stopping at the first one.
    #[arg(long)]
    skip_invalid: bool,

    /// Print no progress bar and no summary.
    #[arg(short, long)]
    quiet: bool,

    /// Also write the summary, with per-phase timings, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,

    /// Threads for reading, sessionizing and writing, at most 64 [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// Bound on `--threads`: more than this only adds contention.
const MAX_THREADS: usize = 64;

pub(crate) fn run(args: SessionizeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let rules = rules_of(&args)?;
    let classifier = classifier_of(&args)?;
    check_output_formats(&args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, MAX_THREADS);
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    let mut timings = Timings::default();

    let (chunks, read_stats) = read_inputs(&args, threads, &progress)?;
    timings.read = seconds_since(started);
    progress.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    progress.set_message("sessionizing");
    let phase = Instant::now();
    let table = EventTable::build(&chunks, &classifier, threads);
    timings.prepare = seconds_since(phase);
    let phase = Instant::now();
    let tiebreak = |row: u32| table.tiebreak(row);
    let events = BatchEvents {
        user: &table.user,
        user_count: table.users.len() as u32,
        device: if table.devices == 0 { &[] } else { &table.device },
        time_ms: &table.time_ms,
        class: &table.class,
        // The batch command has no client session ids (its rules never split on them).
        client_session: &[],
        // Nor platform rules (a project setting of the server): every event
        // has the run's timeout.
        window: &[],
        tiebreak: &tiebreak,
    };
    let result =
        sessionize_parallel(&events, &rules, BatchOptions { assign_events: args.events_out.is_some() }, threads);
    timings.sessionize = seconds_since(phase);
    progress.set_message("writing");
    let phase = Instant::now();
    let uid_text = session_uid_text(&args.project, &table, &result, threads);
    write_sessions(&args, &table, &result, &uid_text, threads)?;
    if let Some(path) = &args.events_out {
        write_events(path, &table, &result, &uid_text, threads)?;
    }
    timings.write = seconds_since(phase);
    timings.total = seconds_since(started);
    progress.finish_and_clear();
    let summary = Summary::new(&read_stats, &table, &result, timings);
    if !args.quiet {
        eprint!("{}", summary.text());
    }
    if let Some(path) = &args.stats_json {
        std::fs::write(path, summary.json().to_string() + "\n")
            .map_err(|e| Exit::new(Failure::OutputError, anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Seconds spent in each phase.
#[derive(Debug, Default, Clone, Copy)]
struct Timings {
    read: f64,
    prepare: f64,
    sessionize: f64,
    write: f64,
    total: f64,
}

fn seconds_since(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn rules_of(args: &SessionizeArgs) -> Result<SessionRules, Exit> {
    let usage = |flag: &str, error: &dyn std::fmt::Display| {
        Exit::new(Failure::Usage, anyhow::anyhow!("invalid {flag}: {error}"))
    };
    let mut rules = SessionRules::new(args.timeout).map_err(|e| usage("--timeout", &e))?;
    if let Some(max_length_ms) = args.max_length {
        rules = rules.with_max_length_ms(max_length_ms).map_err(|e| usage("--max-length", &e))?;
    }
    if let Some(name) = &args.midnight_split {
        let time_zone = TimeZone::get(name).map_err(|_| {
            usage(
                "--midnight-split",
                &format!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin or UTC"),
            )
        })?;
        rules = rules.with_midnight_split(time_zone);
    }
    Ok(rules)
}

/// Fails before reading anything when an output's extension is not a format we write.
fn check_output_formats(args: &SessionizeArgs) -> Result<(), Exit> {
    for (flag, path) in [("--output", &args.output), ("--events-out", &args.events_out)] {
        if let Some(path) = path.as_deref().filter(|p| p.as_os_str() != "-") {
            FileFormat::from_path(path)
                .map_err(|e| Exit::new(Failure::Usage, anyhow::anyhow!("invalid {flag}: {e}")))?;
        }
    }
    Ok(())
}

fn classifier_of(args: &SessionizeArgs) -> Result<EventClassifier, Exit> {
    let non_empty =
        |names: &[String]| names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect::<Vec<_>>();
    let passive = non_empty(&args.passive_event_types);
    let result = match &args.exclude_event_types {
        Some(excluded) => EventClassifier::new(non_empty(excluded), passive),
        None => EventClassifier::new(sessionizer_engine::DEFAULT_EXCLUDED_EVENT_TYPES, passive),
    };
    result.map_err(|e| Exit::new(Failure::Usage, anyhow::anyhow!("invalid event type lists: {e}")))
}

#[derive(Debug, Default)]
struct ReadStats {
    rows: u64,
    skipped: u64,
    first_skipped: Option<String>,
}

fn read_inputs(
    args: &SessionizeArgs,
    threads: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<EventChunk>, ReadStats)> {
    let fields = FieldNames {
        user_id: args.user_id_field.clone(),
        device_id: args.device_id_field.clone(),
        event_type: args.event_type_field.clone(),
        time: args.time_field.clone(),
        insert_id: args.insert_id_field.clone(),
        page: args.page_field.clone(),
        passive: args.passive_field.clone(),
    };
    let options = ReadOptions { fields, skip_invalid: args.skip_invalid, threads };
    let mut readers = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        let reader = open_event_reader(path, &options).map_err(|e| {
            let failure = match e.kind {
                ReadErrorKind::Io(_) => Failure::NoInput,
                ReadErrorKind::UnknownFormat(_) => Failure::Usage,
                _ => Failure::DataError,
            };
            Exit::new(failure, e)
        })?;
        readers.push(reader);
    }
    let total_bytes: Option<u64> = readers.iter().map(|r| r.total_bytes()).sum();
    if let Some(total) = total_bytes {
        progress.set_length(total);
        progress.set_style(
            ProgressStyle::with_template("reading {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template"),
        );
    }
    let mut chunks = Vec::new();
    let mut stats = ReadStats::default();
    let mut done_bytes = 0;
    for mut reader in readers {
        while let Some(chunk) = reader.next_chunk().map_err(|e| Exit::new(Failure::DataError, e))? {
            stats.rows += chunk.len() as u64;
            // Checked while reading, so an oversized input fails early instead of exhausting memory.
            if stats.rows > MAX_BATCH_EVENTS as u64 {
                let error = anyhow::anyhow!("more than {MAX_BATCH_EVENTS} events in one run: split the input");
                return Err(Exit::new(Failure::DataError, error).into());
            }
            progress.set_position(done_bytes + reader.bytes_read());
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
        done_bytes += reader.bytes_read();
        stats.skipped += reader.skipped_rows();
        if stats.first_skipped.is_none() {
            stats.first_skipped = reader.first_skipped_error().map(ToString::to_string);
        }
    }
    Ok((chunks, stats))
}

/// Every event of every chunk, as the columns the batch kernel takes, plus the
/// tables to turn its indices back into strings.
struct EventTable<'a> {
    chunks: &'a [EventChunk],
    /// Global row of each chunk's first row.
    chunk_starts: Vec<usize>,
    users: Vec<UserKey>,
    user: Vec<u32>,
    device: Vec<u32>,
    /// Distinct device ids: with none, the kernel gets no device column and
    /// skips looking for user changes on shared devices.
    devices: usize,
    /// Distinct event types, and each row's index into them: what session
    /// entry and exit types are read from, without touching the chunks.
    event_types: Vec<&'a str>,
    event_type: Vec<u32>,
    time_ms: Vec<i64>,
    class: Vec<EventClass>,
    /// Rows whose insert id was seen on an earlier row: not sessionized, not written.
    duplicate: Vec<bool>,
    /// Whether any row has a page: without one, the writers skip looking up
    /// entry and exit pages (two cache misses per session).
    has_pages: bool,
    duplicates: u64,
    excluded: u64,
}

impl<'a> EventTable<'a> {
    /// Interns users and devices and finds duplicate insert ids, split over
    /// `threads`: interning by runs of chunks (merged in order afterwards, so
    /// indices do not depend on the thread count), dedup by hash partition.
    fn build(chunks: &'a [EventChunk], classifier: &EventClassifier, threads: usize) -> EventTable<'a> {
        let mut chunk_starts = Vec::with_capacity(chunks.len());
        let mut rows = 0;
        for chunk in chunks {
            chunk_starts.push(rows);
            rows += chunk.len();
        }
        let parts = threads.clamp(1, 16).min(chunks.len()).max(1);
        let groups = split_chunks(chunks, parts);
        // Phase 1, per run of chunks: intern ids (into the parts' rows) and hash insert ids.
        let mut user = vec![0u32; rows];
        let mut device = vec![0u32; rows];
        let mut event_type = vec![0u32; rows];
        let mut class = vec![EventClass::Active; rows];
        let mut time_ms = vec![0i64; rows];
        let lengths: Vec<usize> = groups.iter().map(|group| group.iter().map(EventChunk::len).sum()).collect();
        let columns = RowColumns::split(&mut user, &mut device, &mut event_type, &mut class, &mut time_ms, &lengths);
        let work = |part: usize, out: RowColumns<'_>| {
            let interned = intern_rows(groups[part], classifier, out);
            // Hashed straight into their hash partitions, so that each thread
            // of phase 2 reads only its own (a scan of every hash, skipping
            // half at random, cost more than the marking).
            let expected = lengths[part] / parts + lengths[part] / 64;
            let mut hashes: Vec<Vec<u64>> = (0..parts).map(|_| Vec::with_capacity(expected)).collect();
            for chunk in groups[part] {
                for hash in chunk.insert_id.iter().flatten().map(insert_id_hash) {
                    hashes[SeenBits::partition_of(hash, parts)].push(hash);
                }
            }
            (interned, hashes)
        };
        let (locals, hash_lists): (Vec<LocalInterned<'a>>, Vec<Vec<Vec<u64>>>) =
            run_each(columns, work).into_iter().unzip();
        // Phase 2, per hash partition: which hashes repeat (see
        // `sessionizer_engine::SeenBits`). Phase 3, only if any do: compare
        // those rows' ids exactly, in row order.
        let partition = |part: usize| -> Vec<&[u64]> { hash_lists.iter().map(|run| run[part].as_slice()).collect() };
        let hashes = hash_lists.iter().flatten().map(Vec::len).sum();
        let marked = run_parts(parts, |part| SeenBits::for_partition(hashes, part, parts).mark(&partition(part)));
        let candidates = Candidates::new(marked);
        let occurrences = run_parts(parts, |part| {
            partition(part).into_iter().flat_map(|list| candidates.occurrences(list)).collect()
        });
        let repeated = candidates.into_repeated(occurrences);
        drop(hash_lists);
        let ids = chunks.iter().flat_map(|chunk| chunk.insert_id.iter());
        let duplicate_rows = duplicate_rows_among(ids, &repeated, insert_id_hash);
        let columns = RowColumns::split(&mut user, &mut device, &mut event_type, &mut class, &mut time_ms, &lengths);
        let Merged { users, event_types, devices } = merge_interned(&locals, columns);
        let mut duplicate = vec![false; rows];
        for &row in &duplicate_rows {
            duplicate[row as usize] = true;
            class[row as usize] = EventClass::Excluded;
        }
        let duplicates = duplicate_rows.len() as u64;
        let excluded = class.iter().filter(|&&c| c == EventClass::Excluded).count() as u64 - duplicates;
        let has_pages = chunks.iter().any(|chunk| chunk.page.has_values());
        EventTable {
            chunks,
            chunk_starts,
            users,
            user,
            device,
            devices,
            event_types,
            event_type,
            time_ms,
            class,
            duplicate,
            duplicates,
            excluded,
            has_pages,
        }
    }

    /// The chunk and the row within it of a global row.
    fn locate(&self, row: u32) -> (&'a EventChunk, usize) {
        locate(self.chunks, &self.chunk_starts, row)
    }

    fn event_type_of(&self, row: u32) -> &'a str {
        self.event_types[self.event_type[row as usize] as usize]
    }

    /// The content hash that orders events sharing user, time and class.
    fn tiebreak(&self, row: u32) -> u64 {
        let (chunk, row) = self.locate(row);
        tiebreak(chunk.event_type.get(row).unwrap_or(""), chunk.page.get(row), chunk.insert_id.get(row))
    }
}

fn locate<'a>(chunks: &'a [EventChunk], chunk_starts: &[usize], row: u32) -> (&'a EventChunk, usize) {
    let row = row as usize;
    let chunk = chunk_starts.partition_point(|&start| start <= row) - 1;
    (&chunks[chunk], row - chunk_starts[chunk])
}

/// The batch kernel over disjoint user ranges, one per thread, then the
/// user-change labels over all sessions: the same result as `sessionize_batch`.
fn sessionize_parallel(
    events: &BatchEvents<'_>,
    rules: &SessionRules,
    options: BatchOptions,
    threads: usize,
) -> BatchSessions {
    let parts = threads.clamp(1, 16).min(events.user_count.max(1) as usize);
    let bounds = balanced_user_bounds(events, parts);
    let results = run_parts(parts, |part| sessionize_users(events, rules, options, bounds[part]..bounds[part + 1]));
    // The first part's vectors grow in place (a large allocation is
    // remapped, not copied) to take the others'.
    let total_sessions = results.iter().map(|result| result.sessions.len()).sum::<usize>();
    let mut results = results.into_iter();
    let mut merged = results.next().unwrap_or_default();
    merged.sessions.reserve_exact(total_sessions - merged.sessions.len());
    for result in results {
        let offset = merged.sessions.len() as u32;
        for (slot, &index) in merged.event_session.iter_mut().zip(&result.event_session) {
            if index != NO_SESSION {
                *slot = index + offset;
            }
        }
        merged.sessions.extend(result.sessions);
        merged.passive_without_session += result.passive_without_session;
    }
    label_user_changes(events, &mut merged.sessions);
    merged
}

/// `parts + 1` user bounds that give each part about the same number of
/// events: activity is skewed (a few users have most events), so equal user
/// counts would leave one thread with most of the work.
fn balanced_user_bounds(events: &BatchEvents<'_>, parts: usize) -> Vec<u32> {
    let mut per_user = vec![0u64; events.user_count as usize];
    for &user in events.user {
        per_user[user as usize] += 1;
    }
    let total = events.user.len() as u64;
    let mut bounds = Vec::with_capacity(parts + 1);
    bounds.push(0);
    let mut seen = 0u64;
    for (user, &count) in per_user.iter().enumerate() {
        if bounds.len() < parts && seen >= total * bounds.len() as u64 / parts as u64 {
            bounds.push(user as u32);
        }
        seen += count;
    }
    bounds.resize(parts + 1, events.user_count);
    bounds
}

/// Runs `work(0..parts)`, on one thread per part when there is more than one.
fn run_parts<T: Send>(parts: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if parts == 1 {
        return vec![work(0)];
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..parts).map(|part| scope.spawn(move || work(part))).collect();
        handles.into_iter().map(|handle| handle.join().expect("worker thread panicked")).collect()
    })
}

/// Runs `work(i, input)` for each of `inputs`, on one thread per input when
/// there is more than one.
fn run_each<I: Send, T: Send>(inputs: Vec<I>, work: impl Fn(usize, I) -> T + Sync) -> Vec<T> {
    if inputs.len() == 1 {
        return inputs.into_iter().map(|input| work(0, input)).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> =
            inputs.into_iter().enumerate().map(|(i, input)| scope.spawn(move || work(i, input))).collect();
        handles.into_iter().map(|handle| handle.join().expect("worker thread panicked")).collect()
    })
}

/// `parts` runs of consecutive chunks with about equal row counts.
fn split_chunks(chunks: &[EventChunk], parts: usize) -> Vec<&[EventChunk]> {
    let rows: usize = chunks.iter().map(EventChunk::len).sum();
    let mut groups = Vec::with_capacity(parts);
    let mut start = 0;
    let mut seen = 0;
    for part in 1..parts {
        let target = rows * part / parts;
        let mut end = start;
        while end < chunks.len() && seen < target {
            seen += chunks[end].len();
            end += 1;
        }
        groups.push(&chunks[start..end]);
        start = end;
    }
    groups.push(&chunks[start..]);
    groups
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Interned ids of one run of chunks, numbered locally in first-seen order.
struct LocalInterned<'a> {
    /// (is a device key, id) of each local user.
    users: Vec<(bool, &'a str)>,
    devices: Vec<&'a str>,
    /// Distinct event types with their class when not marked passive and when marked.
    types: Vec<(&'a str, [EventClass; 2])>,
}

/// One part's rows of the table's per-row columns: phase 1 writes local ids
/// (and classes and times) there, the merge turns the ids into global ones in
/// place. Written in place so that each column is allocated (and its pages
/// faulted in) once.
struct RowColumns<'o> {
    user: &'o mut [u32],
    device: &'o mut [u32],
    event_type: &'o mut [u32],
    class: &'o mut [EventClass],
    time_ms: &'o mut [i64],
}

impl<'o> RowColumns<'o> {
    /// Splits whole columns into consecutive parts of `lengths` rows.
    fn split(
        user: &'o mut [u32],
        device: &'o mut [u32],
        event_type: &'o mut [u32],
        class: &'o mut [EventClass],
        time_ms: &'o mut [i64],
        lengths: &[usize],
    ) -> Vec<RowColumns<'o>> {
        let mut rest = RowColumns { user, device, event_type, class, time_ms };
        let mut parts = Vec::with_capacity(lengths.len());
        for &n in lengths {
            let (user, user_rest) = rest.user.split_at_mut(n);
            let (device, device_rest) = rest.device.split_at_mut(n);
            let (event_type, type_rest) = rest.event_type.split_at_mut(n);
            let (class, class_rest) = rest.class.split_at_mut(n);
            let (time_ms, time_rest) = rest.time_ms.split_at_mut(n);
            parts.push(RowColumns { user, device, event_type, class, time_ms });
            rest = RowColumns {
                user: user_rest,
                device: device_rest,
                event_type: type_rest,
                class: class_rest,
                time_ms: time_rest,
            };
        }
        parts
    }
}

fn intern_rows<'a>(chunks: &'a [EventChunk], classifier: &EventClassifier, out: RowColumns<'_>) -> LocalInterned<'a> {
    // Keys are owned copies, allocated one after another: comparing against
    // them stays in cache, where a key borrowed from its first row would sit
    // anywhere in the input's hundreds of megabytes.
    let mut user_index: FastMap<Box<str>, u32> = FastMap::default();
    let mut anonymous_index: FastMap<Box<str>, u32> = FastMap::default();
    let mut device_index: FastMap<Box<str>, u32> = FastMap::default();
    let mut type_index: FastMap<&str, u32> = FastMap::default();
    let mut local = LocalInterned { users: Vec::new(), devices: Vec::new(), types: Vec::new() };
    let mut at = 0;
    // Dictionary-encoded columns are resolved once per distinct value (on
    // first use, so numbering stays in first-seen row order), and once per
    // dictionary, which the chunks of a Parquet row group share.
    let mut user_of_key = KeyCache::default();
    let mut device_of_key = KeyCache::default();
    let mut type_of_key = KeyCache::default();
    for chunk in chunks {
        out.time_ms[at..at + chunk.len()].copy_from_slice(&chunk.time_ms);
        user_of_key.switch_to(&chunk.user_id);
        device_of_key.switch_to(&chunk.device_id);
        type_of_key.switch_to(&chunk.event_type);
        for row in 0..chunk.len() {
            let device_id = chunk.device_id.get(row).filter(|id| !id.is_empty());
            let user_key = user_of_key.key(row);
            let user = match user_key.and_then(|key| user_of_key.get(key)) {
                Some(user) => user,
                None => {
                    // Readers guarantee a user id or a device id on every row.
                    let (is_device, id) = match chunk.user_id.get(row).filter(|id| !id.is_empty()) {
                        Some(user_id) => (false, user_id),
                        None => (true, device_id.expect("reader guarantees a user or device id")),
                    };
                    let index = if is_device { &mut anonymous_index } else { &mut user_index };
                    let user = match index.get(id) {
                        Some(&user) => user,
                        None => {
                            let user = local.users.len() as u32;
                            local.users.push((is_device, id));
                            index.insert(Box::from(id), user);
                            user
                        }
                    };
                    // Only a present user id names the user; a null key falls back to the device.
                    if let Some(key) = user_key.filter(|_| !is_device) {
                        user_of_key.set(key, user);
                    }
                    user
                }
            };
            out.user[at + row] = user;
            let device_key = device_of_key.key(row);
            let device = match device_key.and_then(|key| device_of_key.get(key)) {
                Some(device) => device,
                None => {
                    let device = match device_id {
                        Some(id) => match device_index.get(id) {
                            Some(&device) => device,
                            None => {
                                let device = local.devices.len() as u32;
                                local.devices.push(id);
                                device_index.insert(Box::from(id), device);
                                device
                            }
                        },
                        None => NO_DEVICE,
                    };
                    if let Some(key) = device_key {
                        device_of_key.set(key, device);
                    }
                    device
                }
            };
            out.device[at + row] = device;
            let type_key = type_of_key.key(row);
            let event_type = match type_key.and_then(|key| type_of_key.get(key)) {
                Some(event_type) => event_type,
                None => {
                    let name = chunk.event_type.get(row).unwrap_or("");
                    let event_type = *type_index.entry(name).or_insert_with(|| {
                        let classes = [classifier.classify(name, false), classifier.classify(name, true)];
                        local.types.push((name, classes));
                        local.types.len() as u32 - 1
                    });
                    if let Some(key) = type_key {
                        type_of_key.set(key, event_type);
                    }
                    event_type
                }
            };
            out.event_type[at + row] = event_type;
            out.class[at + row] = local.types[event_type as usize].1[usize::from(chunk.passive[row])];
        }
        at += chunk.len();
    }
    local
}

/// For the dictionary-encoded column of the current chunk, the interned id
/// of each distinct value once known; inert for a plain column.
#[derive(Default)]
struct KeyCache<'a> {
    dictionary: Option<&'a Arc<StrColumn>>,
    keys: Option<&'a [u32]>,
    ids: Vec<u32>,
}

impl<'a> KeyCache<'a> {
    const UNKNOWN: u32 = u32::MAX;

    /// Moves to the next chunk's column, keeping the known ids when it shares
    /// the previous chunk's dictionary.
    fn switch_to(&mut self, column: &'a StrColumn) {
        self.keys = column.dictionary_keys();
        let dictionary = column.dictionary();
        let same = matches!((self.dictionary, dictionary), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        if !same {
            self.dictionary = dictionary;
            self.ids.clear();
            self.ids.resize(column.dictionary_len(), Self::UNKNOWN);
        }
    }

    /// The row's dictionary key, `None` for a plain column or a null row.
    #[inline]
    fn key(&self, row: usize) -> Option<u32> {
        self.keys.map(|keys| keys[row]).filter(|&key| key != StrColumn::NULL_KEY)
    }

    #[inline]
    fn get(&self, key: u32) -> Option<u32> {
        Some(self.ids[key as usize]).filter(|&id| id != Self::UNKNOWN)
    }

    #[inline]
    fn set(&mut self, key: u32, id: u32) {
        self.ids[key as usize] = id;
    }
}

struct Merged<'a> {
    users: Vec<UserKey>,
    event_types: Vec<&'a str>,
    /// Distinct device ids.
    devices: usize,
}

/// Renumbers the parts' local ids into global ones, in part order, so the
/// result equals interning all rows on one thread. The maps from local to
/// global ids are built in order (work per distinct value); each part's rows
/// are then renumbered in place on a thread of their own.
fn merge_interned<'a>(locals: &[LocalInterned<'a>], parts: Vec<RowColumns<'_>>) -> Merged<'a> {
    let mut user_index: FastMap<(bool, &str), u32> = FastMap::default();
    let mut device_index: FastMap<&str, u32> = FastMap::default();
    let mut type_index: FastMap<&str, u32> = FastMap::default();
    let mut users = Vec::new();
    let mut event_types = Vec::new();
    let mut maps = Vec::with_capacity(locals.len());
    for local in locals {
        let user_map: Vec<u32> = local
            .users
            .iter()
            .map(|&key| {
                let next = user_index.len() as u32;
                *user_index.entry(key).or_insert_with(|| {
                    let (is_device, id) = key;
                    users.push(if is_device { UserKey::Device(id.into()) } else { UserKey::User(id.into()) });
                    next
                })
            })
            .collect();
        let device_map: Vec<u32> = local
            .devices
            .iter()
            .map(|&id| {
                let next = device_index.len() as u32;
                *device_index.entry(id).or_insert(next)
            })
            .collect();
        let type_map: Vec<u32> = local
            .types
            .iter()
            .map(|&(name, _)| {
                *type_index.entry(name).or_insert_with(|| {
                    event_types.push(name);
                    event_types.len() as u32 - 1
                })
            })
            .collect();
        maps.push((user_map, device_map, type_map));
    }
    run_each(parts.into_iter().zip(&maps).collect(), |_, (part, (user_map, device_map, type_map))| {
        for slot in part.user.iter_mut() {
            *slot = user_map[*slot as usize];
        }
        for slot in part.device.iter_mut().filter(|slot| **slot != NO_DEVICE) {
            *slot = device_map[*slot as usize];
        }
        for slot in part.event_type.iter_mut() {
            *slot = type_map[*slot as usize];
        }
    });
    Merged { users, event_types, devices: device_index.len() }
}

/// The sessions' indices in output order: by start, then by user. Runs of
/// them are sorted on `threads` threads, then merged.
fn output_order(table: &EventTable<'_>, result: &BatchSessions, threads: usize) -> Vec<u32> {
    let mut keys: Vec<(i64, u32, u32)> =
        result.sessions.iter().enumerate().map(|(index, s)| (s.start_ms, s.user, index as u32)).collect();
    // Users are compared (as strings) only on equal starts; a user's sessions
    // have distinct starts, so the order is total.
    let compare = |a: &(i64, u32, u32), b: &(i64, u32, u32)| {
        a.0.cmp(&b.0).then_with(|| table.users[a.1 as usize].cmp(&table.users[b.1 as usize]))
    };
    let run_length = keys.len().div_ceil(threads.clamp(1, 16)).max(1);
    run_each(keys.chunks_mut(run_length).collect(), |_, run| run.sort_unstable_by(compare));
    // Merge the sorted runs (at most 16: a scan of their heads is cheap).
    // Only indices: the writer's threads read the sessions themselves.
    let mut runs: Vec<&[(i64, u32, u32)]> = keys.chunks(run_length).collect();
    let mut ordered = Vec::with_capacity(keys.len());
    while !runs.is_empty() {
        let mut first = 0;
        for candidate in 1..runs.len() {
            if compare(&runs[candidate][0], &runs[first][0]).is_lt() {
                first = candidate;
            }
        }
        ordered.push(runs[first][0].2);
        runs[first] = &runs[first][1..];
        if runs[first].is_empty() {
            runs.remove(first);
        }
    }
    ordered
}

fn output_error(path: Option<&Path>, error: WriteError) -> anyhow::Error {
    let target = path.map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let failure = if matches!(error, WriteError::UnknownFormat(_)) { Failure::Usage } else { Failure::OutputError };
    Exit::new(failure, anyhow::anyhow!("cannot write {target}: {error}")).into()
}

/// Every session's uid as text, in the kernel's order (by user), in one
/// buffer the output columns borrow from: in that order each user's id is
/// read from memory once for all their sessions, where output order would
/// miss the cache twice per session. Hashing and formatting them is worth
/// the threads.
fn session_uid_text(project: &str, table: &EventTable<'_>, result: &BatchSessions, threads: usize) -> String {
    let sessions = &result.sessions;
    let parts = threads.clamp(1, 16);
    run_parts(parts, |part| {
        let mine = &sessions[sessions.len() * part / parts..sessions.len() * (part + 1) / parts];
        let mut text = String::with_capacity(mine.len() * UUID_TEXT_BYTES);
        let mut buffer = Uuid::encode_buffer();
        for s in mine {
            let uid = session_uid(project, &table.users[s.user as usize], s.start_ms);
            text.push_str(uid.hyphenated().encode_lower(&mut buffer));
        }
        text
    })
    .concat()
}

/// Session `index`'s uid in [`session_uid_text`]'s buffer.
fn uid_of(uid_text: &str, index: usize) -> &str {
    &uid_text[index * UUID_TEXT_BYTES..(index + 1) * UUID_TEXT_BYTES]
}

fn write_sessions(
    args: &SessionizeArgs,
    table: &EventTable<'_>,
    result: &BatchSessions,
    uid_text: &str,
    threads: usize,
) -> anyhow::Result<()> {
    let order = output_order(table, result, threads);
    let sessions = &result.sessions;
    let row = |position: usize| {
        let index = order[position] as usize;
        let session = &sessions[index];
        let user = &table.users[session.user as usize];
        let page_of = |row: u32| {
            let (chunk, row) = table.locate(row);
            chunk.page.get(row)
        };
        let (entry_page, exit_page) =
            if table.has_pages { (page_of(session.entry_event), page_of(session.exit_event)) } else { (None, None) };
        SessionRow {
            user_id: user.user_id(),
            device_id: user.device_id(),
            session_id: session.start_ms,
            session_uid: uid_of(uid_text, index),
            start_ms: session.start_ms,
            end_ms: session.end_ms,
            length_ms: session.length_ms(),
            active_ms: session.active_ms,
            event_count: session.event_count,
            end_reason: session.end_reason.as_str(),
            entry_event_type: table.event_type_of(session.entry_event),
            entry_page,
            exit_event_type: table.event_type_of(session.exit_event),
            exit_page,
        }
    };
    let path = args.output.as_deref().filter(|p| p.as_os_str() != "-");
    write_session_rows(path, order.len(), &row, threads).or_else(|error| finish_after_error(path, error))
}

/// Length of a UUID's hyphenated text.
const UUID_TEXT_BYTES: usize = 36;

/// A reader that went away (`| head`) is not an error; anything else is.
fn finish_after_error(path: Option<&Path>, error: WriteError) -> anyhow::Result<()> {
    if path.is_none() && error.is_broken_pipe() { Ok(()) } else { Err(output_error(path, error)) }
}

/// Every input event but the duplicates, in input order, with its session,
/// formatted and encoded on `threads` threads.
fn write_events(
    path: &Path,
    table: &EventTable<'_>,
    result: &BatchSessions,
    uid_text: &str,
    threads: usize,
) -> anyhow::Result<()> {
    let path = Some(path).filter(|p| p.as_os_str() != "-");
    // Output position to row: the identity unless some rows are duplicates.
    let kept: Vec<u32> = if table.duplicates == 0 {
        Vec::new()
    } else {
        (0..table.duplicate.len()).filter(|&row| !table.duplicate[row]).map(|row| row as u32).collect()
    };
    let count = table.duplicate.len() - table.duplicates as usize;
    let row = |position: usize| {
        let global = if kept.is_empty() { position } else { kept[position] as usize };
        let (chunk, row) = table.locate(global as u32);
        let index = result.event_session[global];
        let session = (index != NO_SESSION).then_some(index as usize);
        EventRow {
            user_id: chunk.user_id.get(row),
            device_id: chunk.device_id.get(row),
            event_type: chunk.event_type.get(row).unwrap_or(""),
            time_ms: chunk.time_ms[row],
            insert_id: chunk.insert_id.get(row),
            page: chunk.page.get(row),
            passive: chunk.passive[row],
            session_id: session.map(|index| result.sessions[index].start_ms),
            session_uid: session.map(|index| uid_of(uid_text, index)),
        }
    };
    write_event_rows(path, count, &row, threads).or_else(|error| finish_after_error(path, error))
}

/// What a run did, for people (stderr) and for scripts (`--stats-json`).
#[derive(Debug)]
struct Summary {
    events_read: u64,
    invalid_skipped: u64,
    first_invalid: Option<String>,
    duplicates: u64,
    excluded: u64,
    passive_without_session: u64,
    users: u64,
    sessions: u64,
    median_length_ms: Option<i64>,
    p90_length_ms: Option<i64>,
    timings: Timings,
}

impl Summary {
    fn new(read: &ReadStats, table: &EventTable<'_>, result: &BatchSessions, timings: Timings) -> Summary {
        let mut lengths: Vec<i64> = result.sessions.iter().map(BatchSession::length_ms).collect();
        let mut users_with_sessions = vec![false; table.users.len()];
        for session in &result.sessions {
            users_with_sessions[session.user as usize] = true;
        }
        Summary {
            events_read: read.rows,
            invalid_skipped: read.skipped,
            first_invalid: read.first_skipped.clone(),
            duplicates: table.duplicates,
            excluded: table.excluded,
            passive_without_session: result.passive_without_session,
            users: users_with_sessions.iter().filter(|&&has| has).count() as u64,
            sessions: result.sessions.len() as u64,
            median_length_ms: percentile(&mut lengths, 50),
            p90_length_ms: percentile(&mut lengths, 90),
            timings,
        }
    }

    fn text(&self) -> String {
        let mut text = format!(
            "events: {} read, {} duplicates dropped, {} excluded, {} passive without a session\n",
            self.events_read, self.duplicates, self.excluded, self.passive_without_session
        );
        if self.invalid_skipped > 0 {
            text += &format!("invalid rows skipped: {}", self.invalid_skipped);
            if let Some(first) = &self.first_invalid {
                text += &format!(" (first: {first})");
            }
            text += "\n";
        }
        text += &format!("users: {}\nsessions: {}\n", self.users, self.sessions);
        if let (Some(median), Some(p90)) = (self.median_length_ms, self.p90_length_ms) {
            text += &format!("session length: median {}, p90 {}\n", human_ms(median), human_ms(p90));
        }
        let seconds = self.timings.total;
        let rate = if seconds > 0.0 { self.events_read as f64 / seconds } else { 0.0 };
        text += &format!("took {seconds:.2}s ({:.2}M events/s)\n", rate / 1e6);
        text
    }

    fn json(&self) -> serde_json::Value {
        let t = &self.timings;
        serde_json::json!({
            "events_read": self.events_read,
            "invalid_skipped": self.invalid_skipped,
            "first_invalid": self.first_invalid,
            "duplicates": self.duplicates,
            "excluded": self.excluded,
            "passive_without_session": self.passive_without_session,
            "users": self.users,
            "sessions": self.sessions,
            "median_length_ms": self.median_length_ms,
            "p90_length_ms": self.p90_length_ms,
            "timings_s": {
                "read": t.read, "prepare": t.prepare, "sessionize": t.sessionize, "write": t.write, "total": t.total,
            },
        })
    }
}

/// Nearest-rank percentile.
fn percentile(values: &mut [i64], percent: usize) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let rank = (values.len() * percent).div_ceil(100).clamp(1, values.len()) - 1;
    Some(*values.select_nth_unstable(rank).1)
}

fn human_ms(ms: i64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{}s", seconds),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}
