//! Bounds on input sizes. Each one keeps memory bounded whatever the input.

/// The longest NDJSON line or CSV record accepted, in bytes (1 MiB).
///
/// An event is a handful of short fields; a line this long is garbage or an
/// attack. The readers enforce the bound while reading, so a 10 GB line costs
/// at most this much memory before it is rejected (as a row error, which
/// `skip_invalid` can skip).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The longest string accepted in any single field (8 KiB).
///
/// Ids, event types and page names are short. The bound keeps one event's
/// footprint small in every later stage (sessions copy entry and exit pages),
/// and, with [`CHUNK_ROWS`], keeps a chunk's string columns under `u32::MAX`.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;

/// The most events in one [`crate::EventChunk`].
///
/// Large enough to amortise per-chunk work, small enough to keep a chunk in a
/// few megabytes for typical events. Also the Parquet reader's batch size.
pub const CHUNK_ROWS: usize = 65_536;

/// The text readers end a chunk once any string column holds this many bytes
/// (64 MiB), so that a chunk of long (but valid) fields stays bounded in memory.
///
/// A chunk may exceed it by one event, at most [`MAX_FIELD_BYTES`] per column.
pub const CHUNK_BYTES: usize = 64 * 1024 * 1024;

// `StrColumn` offsets are `u32`. A chunk holds at most `CHUNK_ROWS` fields of
// at most `MAX_FIELD_BYTES` each per column, and integer ids render in at most
// 20 bytes, so no column can reach `u32::MAX` bytes, whatever the byte bound.
const _: () = assert!(CHUNK_ROWS * MAX_FIELD_BYTES < u32::MAX as usize);
const _: () = assert!(CHUNK_BYTES + MAX_FIELD_BYTES < u32::MAX as usize);
const _: () = assert!(MAX_FIELD_BYTES <= MAX_LINE_BYTES);
