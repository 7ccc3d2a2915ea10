//! The fuzz targets on stable: every seed of `corpus/<name>/` and a few
//! thousand deterministic mutations of them (bit flips, truncations, splices,
//! repeated bytes, hostile tokens), each checked by the target's own body (no
//! panic, typed errors, bounds). Not coverage-guided: `cargo +nightly fuzz run`
//! is (docs/fuzzing.md). A failing input is written to
//! `$TMPDIR/sessionizer-fuzz-failures/<name>-<n>` for `cargo fuzz run <name> FILE`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sessionizer_fuzz::{MAX_INPUT_BYTES, TARGETS};

/// Mutations per target (spread over its seeds).
const MUTATIONS: usize = 3_000;
/// The slowest a single input may take here (a debug-ish build on a busy
/// 2-core machine; the real fuzzer's `-timeout` is the sharper check).
const MAX_INPUT_TIME: Duration = Duration::from_secs(5);

/// Tokens that tend to break parsers, spliced into inputs.
const TOKENS: &[&[u8]] = &[
    b"1e400",
    b"-1e400",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"9223372036854775807",
    b"-1",
    b"0.5",
    b"null",
    b"true",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"\\",
    b"%",
    b"%zz",
    b"=",
    b"&data=",
    b"\x1f\x8b",
    b"\"9999-12-31T23:59:59.999999999Z\"",
    b"\"-0001-01-01T00:00:00Z\"",
    b"\"2026-01-05T09:00:00+25:00\"",
    b"\"2026-02-30T00:00:00Z\"",
    b"'''",
    b"\"\"\"",
    b"[[a]]",
    b"a.b.c = 1",
    b"listen = \"[::1]:0\"",
    b"write_queue_requests = 99999999999999999999",
];

/// SplitMix64: a tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    // One to three mutations stacked.
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        match rng.below(8) {
            0 => {
                // Bit flips.
                for _ in 0..1 + rng.below(4) {
                    if !out.is_empty() {
                        let i = rng.below(out.len());
                        out[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => out.truncate(rng.below(len + 1)),
            2 => {
                // Splice: a prefix of this input and a suffix of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            3 => {
                // A byte repeated many times (deep nesting with `[`/`{`, long strings, many lines).
                let at = rng.below(len + 1);
                let byte = if rng.below(2) == 0 { b"[{\"a,\n0 "[rng.below(8)] } else { rng.next() as u8 };
                let count = [2, 100, 129, 1_000, 10_000, 70_000][rng.below(6)];
                out.splice(at..at, std::iter::repeat_n(byte, count));
            }
            4 => {
                // A slice of the input repeated (many events, repeated keys).
                if len > 0 {
                    let start = rng.below(len);
                    let end = (start + 1 + rng.below(64)).min(len);
                    let piece = out[start..end].to_vec();
                    let times = [2, 10, 300, 2_001][rng.below(4)];
                    for _ in 0..times {
                        out.splice(end..end, piece.iter().copied());
                    }
                }
            }
            5 | 6 => {
                // A hostile token, inserted or overwriting a run.
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                let end = if rng.below(2) == 0 { at } else { (at + rng.below(8)).min(len) };
                out.splice(at..end, token.iter().copied());
            }
            _ => {
                // Delete a run.
                if len > 0 {
                    let at = rng.below(len);
                    let end = (at + 1 + rng.below(16)).min(len);
                    out.drain(at..end);
                }
            }
        }
        out.truncate(MAX_INPUT_BYTES);
    }
    out
}

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.into_iter().map(|path| (path.clone(), std::fs::read(&path).unwrap())).collect()
}

/// Runs `body` on `input`; on a panic, saves the input and fails with where it is.
fn run_one(name: &str, body: fn(&[u8]), input: &[u8], what: &str, slowest: &mut (Duration, String)) {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| body(input));
    let took = started.elapsed();
    if took > slowest.0 {
        *slowest = (took, what.to_string());
    }
    if outcome.is_err() {
        let dir = std::env::temp_dir().join("sessionizer-fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}-{}", what.replace(['/', ' '], "_")));
        std::fs::write(&file, input).unwrap();
        panic!("{name}: {what} panicked; the input is in {}", file.display());
    }
    assert!(took <= MAX_INPUT_TIME, "{name}: {what} took {took:?} ({} bytes)", input.len());
}

fn smoke(name: &str) {
    let body = TARGETS.iter().find(|(n, _)| *n == name).map(|(_, body)| *body).expect("a target");
    let seeds = corpus(name);
    let mut slowest = (Duration::ZERO, String::new());
    for (path, seed) in &seeds {
        run_one(name, body, seed, &format!("seed {}", path.file_name().unwrap().to_string_lossy()), &mut slowest);
    }
    let bytes: Vec<Vec<u8>> = seeds.iter().map(|(_, seed)| seed.clone()).collect();
    // Seeded by the name, so every run checks the same inputs.
    let mut rng =
        Rng(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)));
    for n in 0..MUTATIONS {
        let input = mutate(&mut rng, &bytes, &bytes[n % bytes.len()]);
        run_one(name, body, &input, &format!("mutation {n}"), &mut slowest);
    }
    eprintln!("{name}: {} seeds + {MUTATIONS} mutations, slowest {:?} ({})", seeds.len(), slowest.0, slowest.1);
}

#[test]
fn every_target_has_a_test_and_a_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{name}.rs")).is_file(), "fuzz_targets/{name}.rs");
        assert!(root.join("corpus").join(name).is_dir(), "corpus/{name}");
    }
    assert_eq!(TARGETS.len(), 11);
}

#[test]
fn native_body() {
    smoke("native_body");
}

#[test]
fn amplitude() {
    smoke("amplitude");
}

#[test]
fn segment() {
    smoke("segment");
}

#[test]
fn posthog() {
    smoke("posthog");
}

#[test]
fn mixpanel() {
    smoke("mixpanel");
}

#[test]
fn ndjson_reader() {
    smoke("ndjson_reader");
}

#[test]
fn csv_reader() {
    smoke("csv_reader");
}

#[test]
fn config() {
    smoke("config");
}

#[test]
fn cluster_config() {
    smoke("cluster_config");
}

#[test]
fn feed_cursor() {
    smoke("feed_cursor");
}

#[test]
fn session_cursor() {
    smoke("session_cursor");
}
