//! Every bound the server enforces, in one place (see ARCHITECTURE.md).

/// Largest request body as sent (possibly gzip-compressed).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
/// Largest request body after decompression: bounds gzip bombs.
pub const MAX_DECOMPRESSED_BYTES: usize = 20 * 1024 * 1024;
/// Most events in one ingestion request.
pub const MAX_EVENTS_PER_REQUEST: usize = 2_000;
/// Largest single event, as JSON.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Deepest nesting inside `properties` (an object at the top counts as 1).
pub const MAX_PROPERTY_DEPTH: usize = 8;
/// Longest id (`user_id`, `device_id`, `insert_id`) and page, in bytes.
pub const MAX_ID_BYTES: usize = 1_024;
/// Latest accepted event time, relative to the server clock after clock-skew correction.
pub const MAX_FUTURE_MS: i64 = 60 * 60 * 1_000;
/// Smallest client clock error corrected with `sent_at`: below it the
/// difference is transit time or a retry's delay, and times are kept as sent.
pub const MIN_SKEW_CORRECTION_MS: i64 = 60 * 1_000;
/// Oldest accepted event time, relative to the server clock. Older history goes
/// through `sessionizer import`-style batch loads, not the live API.
pub const MAX_AGE_MS: i64 = 2 * 365 * 24 * 60 * 60 * 1_000;
/// Requests waiting for the writer; beyond this, ingestion answers 503.
pub const WRITE_QUEUE_REQUESTS: usize = 1_024;
/// Most requests grouped into one commit.
pub const MAX_GROUP_REQUESTS: usize = 256;
/// Most events grouped into one commit.
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// Read requests served at once (each holds a database connection).
pub const MAX_CONCURRENT_READS: usize = 8;
/// Most sessions returned by `GET /v1/sessions`.
pub const MAX_SESSIONS_PER_RESPONSE: usize = 10_000;
/// Longest time range one export may cover.
pub const MAX_EXPORT_RANGE_MS: i64 = 400 * 24 * 60 * 60 * 1_000;
