//! sessionizer's engine: what a session is, computed without I/O.
//!
//! Events and `now` go in; sessions and session changes come out. The engine
//! never reads the clock, never touches a file or socket, never spawns a thread,
//! and gives the same output for the same input, so it can be tested with
//! tables and random models and replayed exactly.
//!
//! Two entry points share one definition of a session (the fold in `scan`):
//! * [`sessionize_batch`]: every event at once, sorted and scanned; for files,
//!   rebuilds and exports.
//! * [`Sessionizer`]: events in any order and in any batches, with `now`; emits
//!   started / amended / concluded / superseded changes and keeps its memory
//!   bounded (lateness horizon, per-user and user-count bounds).
//!
//! The semantics are written out in `docs/session-semantics.md`.

mod batch;
mod config;
mod dedup;
mod ids;
mod key;
mod live;
mod scan;

pub use batch::{
    BatchEvents, BatchOptions, BatchSession, BatchSessions, MAX_BATCH_EVENTS, NO_DEVICE, NO_SESSION,
    label_user_changes, sessionize_batch, sessionize_users,
};
pub use config::{
    ConfigError, DEFAULT_BACKGROUND_EVENT_TYPES, DEFAULT_DEAD_APP_LIMIT_MS, DEFAULT_EXCLUDED_EVENT_TYPES,
    DEFAULT_LATENESS_HORIZON_MS, DEFAULT_MAX_EVENTS_PER_USER, DEFAULT_MAX_USERS, DEFAULT_TIMEOUT_MS, EventClass,
    EventClassifier, Hold, LiveConfig, MAX_CLASSIFIED_EVENT_TYPES, MAX_EVENT_TYPE_BYTES, MAX_MAX_LENGTH_MS,
    MAX_PLATFORM_BYTES, MAX_PLATFORMS, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, PlatformRules, SessionRules, Window,
};
pub use dedup::{
    Candidates, RepeatedHashes, SeenBits, duplicate_rows, duplicate_rows_among, insert_id_hash, repeated_hashes,
};
pub use ids::{InsertIdSet, PrehashedHasher, client_session_key, insert_key, session_id, session_uid, tiebreak};
pub use key::UserKey;
pub use live::{Assignment, ChangeKind, DeferReason, Event, IngestOutcome, SessionChange, SessionRecord, Sessionizer};
pub use scan::EndReason;

#[cfg(test)]
mod tests;
