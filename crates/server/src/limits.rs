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
/// Requests waiting for the writer by default (`serve --write-queue-requests`);
/// beyond this, ingestion answers 503 (429 on Amplitude's routes) and stores nothing.
pub const WRITE_QUEUE_REQUESTS: usize = 1_024;
/// Largest configurable write queue: each waiting request holds up to
/// `MAX_DECOMPRESSED_BYTES` of parsed events.
pub const MAX_WRITE_QUEUE_REQUESTS: usize = 65_536;
/// Most requests grouped into one commit.
pub const MAX_GROUP_REQUESTS: usize = 256;
/// Most events grouped into one commit.
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// Most acknowledged events waiting in the ingest log to be applied to events
/// and sessions; beyond this, ingestion answers 503 until the writer catches
/// up. Bounds the log's size and the dedup filter in front of it.
pub const MAX_UNAPPLIED_EVENTS: usize = 250_000;
/// Logged events the writer waits for before applying them by default
/// (`serve --apply-batch-events`), unless a read waits for them or the oldest
/// has waited [`DEFAULT_APPLY_DELAY_MS`].
pub const DEFAULT_APPLY_BATCH_EVENTS: usize = 20_000;
/// Most logged events applied in one transaction of the main database; also
/// the largest `--apply-batch-events`.
pub const MAX_APPLY_BATCH_EVENTS: usize = 50_000;
/// Longest logged events wait to be applied by default (`serve --apply-delay`)
/// when fewer than the batch size have gathered and no read waits for them.
pub const DEFAULT_APPLY_DELAY_MS: u64 = 2_000;
/// Largest configurable `--apply-delay`: acknowledged events stay this long
/// at most in the ingest log only (reads never wait for it: they have the
/// writer apply at once).
pub const MAX_APPLY_DELAY_MS: u64 = 60_000;
/// Longest a read waits for the events acknowledged before it to be applied
/// (reads see every acknowledged event); beyond it, 503.
pub const MAX_READ_CATCH_UP_MS: u64 = 10_000;
/// Read requests served at once (each holds a database connection).
pub const MAX_CONCURRENT_READS: usize = 8;
/// Most sessions returned by `GET /v1/sessions`.
pub const MAX_SESSIONS_PER_RESPONSE: usize = 10_000;
/// Longest time range one export may cover.
pub const MAX_EXPORT_RANGE_MS: i64 = 400 * 24 * 60 * 60 * 1_000;
/// Sessions per page of `GET /v1/sessions` unless `limit` says otherwise.
pub const DEFAULT_SESSIONS_PER_PAGE: usize = 100;
/// Longest range of days one query may cover.
pub const MAX_QUERY_RANGE_DAYS: i32 = 400;
/// Most bucket bounds of a length distribution.
pub const MAX_LENGTH_BOUNDS: usize = 50;
/// Most events shown with one session (`GET /v1/sessions/{uid}`).
pub const MAX_SESSION_EVENTS_SHOWN: usize = 10_000;
/// Sessions listed with a user's app usage.
pub const RECENT_SESSIONS_SHOWN: usize = 20;
/// Most changes per page of the change feed (and of a session's history).
pub const MAX_CHANGES_PER_PAGE: usize = 10_000;
/// Most users listed in a cohort preview's JSON (the CSV lists every one).
pub const MAX_COHORT_USERS_SHOWN: usize = 1_000;
/// Most events the timeout preview reads: beyond it, it samples users.
pub const MAX_PREVIEW_EVENTS: usize = 250_000;
/// Most candidate timeouts in one preview.
pub const MAX_PREVIEW_TIMEOUTS: usize = 12;
/// Largest sign-in request body of the dashboard.
pub const MAX_SIGN_IN_BYTES: usize = 4 * 1024;
