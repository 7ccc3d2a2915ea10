//! Scale-out on existing engines (see docs/scale-out.md).
//!
//! - **Ingest nodes** are stateless: they validate events (the server crate's
//!   parsers), and publish each one to a NATS JetStream stream on the subject of
//!   its partition, `sessionizer.events.<p>`, with `Nats-Msg-Id` = its dedup key.
//!   A `200` means the stream acknowledged every event.
//! - **Workers** hold leases on partitions (JetStream KV, compare-and-set), run
//!   the same live engine per partition and project, and write events and
//!   session versions to ClickHouse idempotently; a replay after a crash writes
//!   the same rows again.
//! - **ClickHouse** keeps the events and sessions, each partition on one shard
//!   (`partition % shards`), so a user's events and sessions sit together.
//!
//! The partition of an event is [`partition_of`]: a fixed hash of (project,
//! user key), the same on every node and in every release.

mod catalog;
pub mod clickhouse;
mod config;
mod message;
mod nats;
mod worker;

pub use catalog::{Catalog, CatalogKey, CatalogProject, MAX_PROJECTS, api_keys_of};
pub use config::{
    ClusterConfig, ConfigError, DEFAULT_ACK_WAIT_MS, DEFAULT_DUPLICATE_WINDOW_S, DEFAULT_LEASE_TTL_MS,
    DEFAULT_PARTITIONS, DEFAULT_STREAM_MAX_BYTES, MAX_CONFIG_BYTES, MAX_PARTITIONS, MAX_SHARDS, MAX_STREAM_REPLICAS,
};
pub use message::EventMessage;
pub use nats::{Cluster, Published, STREAM_NAME};
pub use worker::{DEFAULT_BATCH_EVENTS, Worker, WorkerOptions};

use sessionizer_engine::UserKey;

/// The JetStream subject prefix of events; the partition number follows.
pub const EVENT_SUBJECT_PREFIX: &str = "sessionizer.events.";

/// The partition of a user's events: a fixed hash of (project, user key) modulo
/// the partition count. Never change it: partitions, leases and shards of
/// existing data depend on it.
pub fn partition_of(project: i64, user: &UserKey, partitions: u32) -> u32 {
    let (kind, id) = match user {
        UserKey::User(id) => (0u8, id),
        UserKey::Device(id) => (1u8, id),
    };
    let mut bytes = Vec::with_capacity(9 + id.len());
    bytes.extend_from_slice(&project.to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(id.as_bytes());
    (xxhash_rust::xxh3::xxh3_64(&bytes) % u64::from(partitions)) as u32
}

/// Everything that can go wrong in the cluster adapters.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    #[error("{0}")]
    Catalog(String),
    #[error("a stored message is malformed: {0}")]
    Message(String),
    /// This worker's lease of a partition ran out during long work for it.
    #[error("the lease of partition {0} ran out: its next owner does the work")]
    LeaseLost(u32),
    #[error(transparent)]
    Store(#[from] sessionizer_store::StoreError),
}

impl From<::clickhouse::error::Error> for ClusterError {
    fn from(error: ::clickhouse::error::Error) -> ClusterError {
        ClusterError::ClickHouse(error.to_string())
    }
}

/// Turns any NATS client error into a [`ClusterError`].
pub(crate) fn nats_error(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn partition_is_fixed_and_in_range() {
        let user = UserKey::User(Arc::from("u1"));
        // Pinned: stored data depends on this value never changing.
        assert_eq!(partition_of(1, &user, 64), partition_of(1, &user, 64));
        let device = UserKey::Device(Arc::from("u1"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let p = partition_of(i, &user, 64);
            assert!(p < 64);
            seen.insert(p);
        }
        assert!(seen.len() > 50, "1000 projects spread over {} of 64 partitions", seen.len());
        assert_ne!(
            (0..64).map(|p| partition_of(p, &user, 1 << 20)).collect::<Vec<_>>(),
            (0..64).map(|p| partition_of(p, &device, 1 << 20)).collect::<Vec<_>>(),
            "a user id and a device id with the same text are different keys"
        );
    }
}
