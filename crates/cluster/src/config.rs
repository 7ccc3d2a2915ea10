//! The cluster's configuration: one TOML file shared by every node
//! (`serve --role … --cluster FILE`, `cluster init --cluster FILE`).

use std::path::Path;

use serde::Deserialize;

/// Bounds on the configuration, each checked by [`ClusterConfig::validate`].
pub const MAX_PARTITIONS: u32 = 1024;
pub const DEFAULT_PARTITIONS: u32 = 64;
pub const MAX_STREAM_REPLICAS: usize = 5;
pub const MAX_SHARDS: usize = 256;
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// How long JetStream remembers a `Nats-Msg-Id` (retries within it answer as duplicates).
pub const DEFAULT_DUPLICATE_WINDOW_S: u64 = 2 * 60 * 60;
/// Stream size bound; when full, publishes fail (503) instead of dropping events.
pub const DEFAULT_STREAM_MAX_BYTES: i64 = 10 * 1024 * 1024 * 1024;
/// Redelivery delay of unacknowledged messages (longer than any batch takes).
pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
/// A worker that has not renewed a partition lease for this long loses it.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

/// What every node of a cluster reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`), any of the cluster's nodes.
    pub nats_urls: Vec<String>,
    /// Fixed number of partitions (chosen once at `cluster init`: the partition
    /// of every stored user depends on it).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// JetStream replicas of the event stream and the KV buckets (3 in a 3-node cluster).
    #[serde(default = "one")]
    pub stream_replicas: usize,
    #[serde(default = "default_duplicate_window_s")]
    pub duplicate_window_s: u64,
    #[serde(default = "default_stream_max_bytes")]
    pub stream_max_bytes: i64,
    /// ClickHouse HTTP endpoints, one per shard; partition `p` is stored on shard `p % shards`.
    pub clickhouse_shards: Vec<String>,
    #[serde(default = "default_database")]
    pub clickhouse_database: String,
    #[serde(default)]
    pub clickhouse_user: Option<String>,
    #[serde(default)]
    pub clickhouse_password: Option<String>,
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How long JetStream waits for a worker's acknowledgement before it
    /// delivers a message again (to the partition's next owner after a crash).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
}

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}
fn one() -> usize {
    1
}
fn default_duplicate_window_s() -> u64 {
    DEFAULT_DUPLICATE_WINDOW_S
}
fn default_stream_max_bytes() -> i64 {
    DEFAULT_STREAM_MAX_BYTES
}
fn default_database() -> String {
    "sessionizer".into()
}
fn default_ack_wait_ms() -> u64 {
    DEFAULT_ACK_WAIT_MS
}
fn default_lease_ttl_ms() -> u64 {
    DEFAULT_LEASE_TTL_MS
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClusterConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let read = |source| ConfigError::Read { path: path.display().to_string(), source };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::Parse {
                path: path.display().to_string(),
                message: format!("the file has {size} bytes; at most {MAX_CONFIG_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        ClusterConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.display().to_string(), message },
            ConfigError::Invalid(message) => ConfigError::Parse { path: path.display().to_string(), message },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: String::new(), message: e.message().to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.nats_urls.is_empty() {
            return invalid("nats_urls: name at least one NATS server (nats://host:port)".into());
        }
        if let Some(url) = self.nats_urls.iter().find(|u| u.parse::<async_nats::ServerAddr>().is_err()) {
            return invalid(format!("nats_urls: {url:?} is not a NATS URL (nats://host:port)"));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return invalid(format!("partitions: {} is not between 1 and {MAX_PARTITIONS}", self.partitions));
        }
        if !(1..=MAX_STREAM_REPLICAS).contains(&self.stream_replicas) {
            return invalid(format!(
                "stream_replicas: {} is not between 1 and {MAX_STREAM_REPLICAS}",
                self.stream_replicas
            ));
        }
        if self.duplicate_window_s == 0 {
            return invalid("duplicate_window_s: must be at least 1".into());
        }
        if self.stream_max_bytes < 1024 * 1024 {
            return invalid(format!("stream_max_bytes: {} is below 1 MiB", self.stream_max_bytes));
        }
        if self.clickhouse_shards.is_empty() || self.clickhouse_shards.len() > MAX_SHARDS {
            return invalid(format!("clickhouse_shards: name 1 to {MAX_SHARDS} ClickHouse HTTP URLs"));
        }
        if let Some(url) =
            self.clickhouse_shards.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return invalid(format!("clickhouse_shards: {url:?} is not an http:// or https:// URL"));
        }
        if self.clickhouse_database.is_empty()
            || !self.clickhouse_database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return invalid(format!(
                "clickhouse_database: {:?} must be letters, digits and underscores",
                self.clickhouse_database
            ));
        }
        if !(1_000..=600_000).contains(&self.lease_ttl_ms) {
            return invalid(format!("lease_ttl_ms: {} is not between 1000 and 600000", self.lease_ttl_ms));
        }
        if !(1_000..=600_000).contains(&self.ack_wait_ms) {
            return invalid(format!("ack_wait_ms: {} is not between 1000 and 600000", self.ack_wait_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = ClusterConfig::parse(
            "nats_urls = [\"nats://127.0.0.1:4222\"]\nclickhouse_shards = [\"http://127.0.0.1:8123\"]",
        )
        .unwrap();
        assert_eq!(config.partitions, DEFAULT_PARTITIONS);
        assert_eq!(config.clickhouse_database, "sessionizer");
        for (text, expected) in [
            ("nats_urls = []\nclickhouse_shards = [\"http://a\"]", "nats_urls"),
            ("nats_urls = [\"nats://a:1\"]\nclickhouse_shards = [\"ftp://a\"]", "clickhouse_shards"),
            ("nats_urls = [\"nats://a:1\"]\nclickhouse_shards = [\"http://a\"]\npartitions = 0", "partitions"),
            (
                "nats_urls = [\"nats://a:1\"]\nclickhouse_shards = [\"http://a\"]\nclickhouse_database = \"a;b\"",
                "database",
            ),
            ("nats_urls = [\"nats://a:1\"]\nclickhouse_shards = [\"http://a\"]\nshards = 2", "unknown field"),
        ] {
            let error = ClusterConfig::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
