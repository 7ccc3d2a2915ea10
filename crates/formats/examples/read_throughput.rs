//! Read throughput of the event readers on generated files.
//!
//! ```text
//! cargo run --release -p sessionizer-formats --example read_throughput -- [EVENTS] [DIR] [FILE...]
//! ```
//!
//! Generates (once) `DIR/events_EVENTS.ndjson` and `.parquet`, shaped like
//! `bench/gen_events.py` output (`user_id`, `event_type`, `time` in epoch ms,
//! `insert_id`; Parquet row groups of 2^20 rows, zstd), plus `_u64.parquet`
//! with integer user ids, then times reading each with 1 and 2 threads, or
//! only the FILEs given.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sessionizer_formats::{ReadOptions, open_event_reader};

const TYPES: [&str; 17] = [
    "Page Viewed",
    "Button Clicked",
    "Search Performed",
    "Product Viewed",
    "Add To Cart",
    "Scroll",
    "Video Played",
    "Video Paused",
    "Form Submitted",
    "Checkout Started",
    "Purchase Completed",
    "Login",
    "Share",
    "Error Shown",
    "Notification Sent",
    "Email Sent",
    "Push Delivered",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Columns {
    users: Vec<u64>,
    types: Vec<usize>,
    times: Vec<i64>,
    insert_ids: Vec<String>,
}

fn generate(events: usize) -> Columns {
    let mut rng = Rng(42);
    let user_count = (events / 100).max(1) as u64;
    let mut columns = Columns { users: vec![], types: vec![], times: vec![], insert_ids: Vec::with_capacity(events) };
    let mut time = 1_704_067_200_000i64;
    for _ in 0..events {
        // Skewed users: the square of a uniform draw favours low ids.
        let u = rng.next() % 1_000_000;
        columns.users.push(u * u * user_count / 1_000_000_000_000);
        columns.types.push((rng.next() % 17) as usize);
        time += (rng.next() % 500) as i64;
        columns.times.push(time);
        columns.insert_ids.push(format!("{:016x}{:016x}", rng.next(), rng.next()));
    }
    columns
}

fn write_ndjson(path: &Path, c: &Columns) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..c.times.len() {
        writeln!(
            out,
            r#"{{"user_id":"user_{}","event_type":"{}","time":{},"insert_id":"{}"}}"#,
            c.users[i], TYPES[c.types[i]], c.times[i], c.insert_ids[i]
        )
        .expect("write");
    }
    out.flush().expect("flush");
}

fn write_parquet(path: &Path, c: &Columns, integer_users: bool) {
    let users: ArrayRef = if integer_users {
        Arc::new(UInt64Array::from(c.users.clone()))
    } else {
        Arc::new(StringArray::from_iter_values(c.users.iter().map(|u| format!("user_{u}"))))
    };
    let batch = RecordBatch::try_from_iter([
        ("user_id", users),
        ("event_type", Arc::new(StringArray::from_iter_values(c.types.iter().map(|&t| TYPES[t]))) as ArrayRef),
        ("time", Arc::new(Int64Array::from(c.times.clone())) as ArrayRef),
        ("insert_id", Arc::new(StringArray::from_iter_values(c.insert_ids.iter())) as ArrayRef),
    ])
    .expect("batch");
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_size(1 << 20)
        .build();
    let file = std::fs::File::create(path).expect("create");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

fn time_read(path: &Path, threads: usize) {
    let options = ReadOptions { threads, ..ReadOptions::default() };
    let start = Instant::now();
    let mut reader = open_event_reader(path, &options).expect("open");
    let (mut rows, mut checksum) = (0usize, 0i64);
    while let Some(chunk) = reader.next_chunk().expect("read") {
        rows += chunk.len();
        checksum = checksum.wrapping_add(chunk.time_ms.iter().sum::<i64>());
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "{:<40} threads={threads} rows={rows} {seconds:.3}s {:.2}M rows/s {:.0} MB/s (checksum {checksum})",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        rows as f64 / seconds / 1e6,
        bytes as f64 / seconds / 1e6,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = PathBuf::from(args.get(1).map_or("/tmp/sessionizer-formats-bench", String::as_str));
    std::fs::create_dir_all(&dir).expect("create dir");
    let ndjson = dir.join(format!("events_{events}.ndjson"));
    let parquet = dir.join(format!("events_{events}.parquet"));
    let parquet_u64 = dir.join(format!("events_{events}_u64.parquet"));
    if !ndjson.exists() || !parquet.exists() || !parquet_u64.exists() {
        eprintln!("generating {events} events in {}", dir.display());
        let columns = generate(events);
        write_ndjson(&ndjson, &columns);
        write_parquet(&parquet, &columns, false);
        write_parquet(&parquet_u64, &columns, true);
    }
    let mut files: Vec<PathBuf> = args.iter().skip(2).map(PathBuf::from).collect();
    if files.is_empty() {
        files = vec![ndjson, parquet, parquet_u64];
    }
    // THREADS=n times only that thread count.
    let thread_counts: Vec<usize> = match std::env::var("THREADS").ok().and_then(|t| t.parse().ok()) {
        Some(threads) => vec![threads],
        None => vec![1, 2],
    };
    for file in &files {
        for &threads in &thread_counts {
            time_read(file, threads);
        }
    }
}
