//! The NATS side: connecting, creating the stream and buckets (`cluster
//! init`), and publishing events (what an ingest node does for a request).

use std::time::Duration;

use async_nats::jetstream::{self, context::ContextBuilder, kv, message::PublishMessage, stream};
use bytes::Bytes;
use sessionizer_store::{NewEvent, random_hex};

use crate::catalog::{CATALOG_BUCKET, Catalog};
use crate::message::EventMessage;
use crate::{ClusterConfig, ClusterError, EVENT_SUBJECT_PREFIX, nats_error, partition_of};

/// The JetStream stream holding events until a worker has stored them.
pub const STREAM_NAME: &str = "SESSIONIZER_EVENTS";
pub(crate) const LEASE_BUCKET: &str = "sessionizer_leases";
/// The catalog key recording the partition count chosen at `cluster init`.
const PARTITIONS_KEY: &str = "partitions";
/// Publishes awaiting their acknowledgement, per ingest node; more wait for a slot.
const MAX_ACKS_IN_FLIGHT: usize = 20_000;
/// How long a publish waits for the stream's acknowledgement.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message the stream accepts (an event is bounded far below this by the ingest limits).
const MAX_MESSAGE_BYTES: i32 = 1024 * 1024;

/// How long `cluster init` waits for a JetStream that is still starting.
const INIT_WAIT: Duration = Duration::from_secs(30);

enum InitError {
    /// JetStream is not ready yet (no leader, a timeout): worth another try.
    NotYet(String),
    Failed(ClusterError),
}

/// A connection to the cluster's NATS servers.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub config: ClusterConfig,
    js: jetstream::Context,
}

/// What the stream made of one request's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    pub accepted: u64,
    /// Events whose dedup key the stream had already seen within its duplicate window.
    pub duplicates: u64,
}

impl Cluster {
    /// Connects to any of `config.nats_urls` (the client follows the cluster's other servers).
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let addresses = config
            .nats_urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(nats_error)?;
        let client = async_nats::ConnectOptions::new()
            .name("sessionizer")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(addresses)
            .await
            .map_err(|e| ClusterError::Nats(format!("cannot connect to {}: {e}", config.nats_urls.join(", "))))?;
        let js = ContextBuilder::new()
            .timeout(PUBLISH_ACK_TIMEOUT)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client);
        Ok(Cluster { config, js })
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates (or updates) the event stream and the KV buckets; idempotent.
    /// Refuses a partition count other than the one the cluster was created with.
    pub async fn init(&self) -> Result<(), ClusterError> {
        // A cluster just started may still be electing its JetStream leader:
        // wait out answers that say so, for a while.
        let deadline = tokio::time::Instant::now() + INIT_WAIT;
        loop {
            match self.init_once().await {
                Err(InitError::NotYet(message)) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(%message, "JetStream not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(InitError::NotYet(message)) => {
                    return Err(ClusterError::Nats(format!(
                        "JetStream was not ready within {} s: {message}",
                        INIT_WAIT.as_secs()
                    )));
                }
                Err(InitError::Failed(error)) => return Err(error),
                Ok(()) => break,
            }
        }
        let catalog = self.catalog_bucket().await?;
        let wanted = self.config.partitions.to_string();
        loop {
            match catalog.create(PARTITIONS_KEY, Bytes::from(wanted.clone())).await {
                Ok(_) => return Ok(()),
                // Initialised before: the partition count must be the same.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return self.check_partitions().await,
                // A publish or its acknowledgement can time out while the
                // cluster settles (seen under load): not an answer, retry.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "cannot record the partition count yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(ClusterError::Nats(format!("cannot record the partition count: {e}"))),
            }
        }
    }

    async fn init_once(&self) -> Result<(), InitError> {
        use async_nats::jetstream::context::{CreateKeyValueErrorKind, CreateStreamErrorKind};
        let replicas = self.config.stream_replicas;
        self.js
            .create_or_update_stream(stream::Config {
                name: STREAM_NAME.into(),
                subjects: vec![format!("{EVENT_SUBJECT_PREFIX}*")],
                // Kept until the worker of its partition acknowledges it (one consumer per partition).
                retention: stream::RetentionPolicy::WorkQueue,
                // Full: refuse new events (the ingest node answers 503) rather than drop stored ones.
                discard: stream::DiscardPolicy::New,
                max_bytes: self.config.stream_max_bytes,
                max_message_size: MAX_MESSAGE_BYTES,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(self.config.duplicate_window_s),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let message = format!("cannot create the stream {STREAM_NAME}: {e}");
                match e.kind() {
                    CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                        InitError::NotYet(message)
                    }
                    CreateStreamErrorKind::JetStream(error) if error.code() == 503 => InitError::NotYet(message),
                    _ => InitError::Failed(ClusterError::Nats(message)),
                }
            })?;
        for bucket in [CATALOG_BUCKET, LEASE_BUCKET] {
            self.js
                .create_or_update_key_value(kv::Config {
                    bucket: bucket.into(),
                    history: 1,
                    num_replicas: replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    let message = format!("cannot create the bucket {bucket}: {e}");
                    match e.kind() {
                        CreateKeyValueErrorKind::TimedOut => InitError::NotYet(message),
                        _ => InitError::Failed(ClusterError::Nats(message)),
                    }
                })?;
            // Reads from the stream's leader, not from any replica ("direct get"):
            // a key created a moment ago must work on every ingest node at once,
            // and a lease must be read as it is.
            let not_yet = |e: &dyn std::fmt::Display| InitError::NotYet(format!("bucket {bucket}: {e}"));
            let mut kv_stream = self.js.get_stream(format!("KV_{bucket}")).await.map_err(|e| not_yet(&e))?;
            let mut config = kv_stream.info().await.map_err(|e| not_yet(&e))?.config.clone();
            if config.allow_direct {
                config.allow_direct = false;
                self.js.update_stream(config).await.map_err(|e| not_yet(&e))?;
            }
        }
        Ok(())
    }

    /// Fails unless the cluster was initialised with this configuration's partition count.
    pub async fn check_partitions(&self) -> Result<(), ClusterError> {
        let catalog = self.catalog_bucket().await?;
        let stored = catalog.get(PARTITIONS_KEY).await.map_err(nats_error)?.ok_or_else(|| {
            ClusterError::Catalog("the cluster is not initialised: run `sessionizer cluster init` first".into())
        })?;
        let stored = String::from_utf8_lossy(&stored).to_string();
        if stored != self.config.partitions.to_string() {
            return Err(ClusterError::Catalog(format!(
                "the cluster was initialised with {stored} partitions but the configuration says {}; \
                 the partition count cannot change",
                self.config.partitions
            )));
        }
        Ok(())
    }

    async fn catalog_bucket(&self) -> Result<kv::Store, ClusterError> {
        self.js.get_key_value(CATALOG_BUCKET).await.map_err(|e| {
            ClusterError::Nats(format!(
                "cannot open the bucket {CATALOG_BUCKET} ({e}); a new cluster needs `sessionizer cluster init`"
            ))
        })
    }

    pub async fn catalog(&self) -> Result<Catalog, ClusterError> {
        Ok(Catalog::new(self.catalog_bucket().await?))
    }

    pub(crate) async fn leases(&self) -> Result<kv::Store, ClusterError> {
        self.js.get_key_value(LEASE_BUCKET).await.map_err(|e| {
            ClusterError::Nats(format!(
                "cannot open the bucket {LEASE_BUCKET} ({e}); a new cluster needs `sessionizer cluster init`"
            ))
        })
    }

    /// Publishes one request's events, each on its partition's subject with its
    /// dedup key as `Nats-Msg-Id`, and returns once the stream acknowledged all
    /// of them. On an error some events may be stored: a retry of the request
    /// stores none twice (within the duplicate window) when its events have insert ids.
    pub async fn publish(&self, project: i64, events: Vec<NewEvent>) -> Result<Published, ClusterError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let partition = partition_of(project, &event.user_key(), self.config.partitions);
            let event_key = match &event.insert_id {
                Some(id) => format!("i:{id}"),
                // No insert id: an id of our own, so a worker's replay still stores it once.
                None => format!("g:{}", random_hex(16)?),
            };
            let message = EventMessage::new(project, event_key, event);
            let publish =
                PublishMessage::build().payload(Bytes::from(message.encode())).message_id(message.message_id());
            let ack = self
                .js
                .send_publish(format!("{EVENT_SUBJECT_PREFIX}{partition}"), publish)
                .await
                .map_err(|e| ClusterError::Nats(format!("publish failed: {e}")))?;
            acks.push(ack);
        }
        let mut published = Published::default();
        for ack in acks {
            let ack = ack.await.map_err(|e| ClusterError::Nats(format!("the stream did not acknowledge: {e}")))?;
            if ack.duplicate {
                published.duplicates += 1;
            } else {
                published.accepted += 1;
            }
        }
        Ok(published)
    }
}
