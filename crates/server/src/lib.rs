//! sessionizer's HTTP server: the only crate that knows HTTP.
//!
//! Routes (see `docs/http-api.md` and `/openapi.json`):
//! * `POST /v1/events` (write key) and the SDK formats ([`sdk_routes`]): ingest;
//!   200 only once the batch is durable.
//! * The query API ([`query`], read key): statistics, sessions, users,
//!   cohorts, the change feed, the timeout preview.
//! * `GET /v1/export/events|sessions?from_ms=&to_ms=&format=` (read key): streamed exports.
//! * The dashboard ([`dashboard`]) under `/dashboard/`, signed in with a read key.
//! * The browser SDK ([`browser_sdk`]): `GET /sdk.js` (script tag) and `GET /sdk.mjs` (ES module).
//! * `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`.
//!
//! Writes go through one writer thread ([`writer`]); reads use a small pool
//! of read-only connections on blocking threads, so neither blocks the runtime.

mod auth;
mod board;
mod browser_sdk;
#[cfg(feature = "cluster")]
mod cluster_reads;
mod cors;
mod dashboard;
mod error;
#[cfg(feature = "cluster")]
mod feed_cursor;
mod ingest;
pub mod limits;
mod metrics;
mod query;
pub mod rate_limit;
mod reads;
mod sdk;
mod sdk_routes;
mod session_cursor;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sessionizer_store::{IngestLog, KeyRole, LogReader, Store, StoreError};
use tokio::sync::oneshot;

pub use error::{ApiError, EventProblem};
pub use ingest::{decode_body, parse_batch};
pub use rate_limit::RateLimits;
pub use reads::write_stored_session;
pub use writer::Ingested;

use crate::auth::Keys;
use crate::metrics::{Metrics, RejectReason};
use crate::reads::Readers;
use crate::writer::{WriteRequest, WriterHandle};

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Requests that may wait for the writer (1 ..= [`limits::MAX_WRITE_QUEUE_REQUESTS`]).
    pub write_queue_requests: usize,
    /// Per-key rate limits.
    pub rate_limits: RateLimits,
    /// How long a client may take to send its request.
    pub timeouts: Timeouts,
    /// When the writer applies acknowledged events to events and sessions.
    pub apply: ApplyBatching,
}

/// When the writer applies the events waiting in the ingest log: once
/// `min_events` have gathered, once the oldest has waited `max_delay`, or at
/// once for a read. Larger batches share more index pages (fewer bytes
/// written and less CPU per event: docs/benchmarks.md); a read that arrives
/// while a batch is being applied waits for it, so they make such reads slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyBatching {
    /// 1 ..= [`limits::MAX_APPLY_BATCH_EVENTS`].
    min_events: usize,
    /// Above zero, at most [`limits::MAX_APPLY_DELAY_MS`].
    max_delay: Duration,
}

impl ApplyBatching {
    /// The batch size the writer waits for.
    pub fn min_events(&self) -> usize {
        self.min_events
    }

    /// The longest an acknowledged event waits to be applied.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Checks the bounds (the only way to build one besides `default`); the
    /// error says which and why.
    pub fn new(min_events: usize, max_delay: Duration) -> Result<ApplyBatching, String> {
        let max_events = limits::MAX_APPLY_BATCH_EVENTS;
        if !(1..=max_events).contains(&min_events) {
            return Err(format!("apply_batch_events must be between 1 and {max_events}, got {min_events}"));
        }
        let max_ms = limits::MAX_APPLY_DELAY_MS;
        if max_delay.is_zero() || max_delay > Duration::from_millis(max_ms) {
            return Err(format!(
                "apply_delay must be above zero and at most {} s, got {} ms",
                max_ms / 1_000,
                max_delay.as_millis()
            ));
        }
        Ok(ApplyBatching { min_events, max_delay })
    }
}

impl Default for ApplyBatching {
    fn default() -> Self {
        ApplyBatching {
            min_events: limits::DEFAULT_APPLY_BATCH_EVENTS,
            max_delay: Duration::from_millis(limits::DEFAULT_APPLY_DELAY_MS),
        }
    }
}

/// Bounds on slow clients (slowloris, slow POST): a connection that sends its
/// request too slowly is closed, so a few sockets cannot hold the server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest time from the start of a request (or of an idle keep-alive
    /// connection's wait for the next one) to the end of its header; then the
    /// connection is closed without an answer (hyper's own header read timeout).
    pub header_read: Duration,
    /// Longest wait for the next piece of a request body; then 408 and the connection closes.
    pub body_idle: Duration,
    /// Longest time to receive a whole request body, however steadily it trickles
    /// in (with [`limits::MAX_BODY_BYTES`], a minimum rate); then 408.
    pub body_total: Duration,
}

/// Default [`Timeouts::header_read`] (`serve --header-read-timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Timeouts::body_idle`] (`serve --body-idle-timeout`).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Timeouts::body_total`] (`serve --body-total-timeout`): 5 MiB in
/// 120 s is a minimum rate of about 44 KB/s for the largest body.
pub const BODY_TOTAL_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { header_read: HEADER_READ_TIMEOUT, body_idle: BODY_IDLE_TIMEOUT, body_total: BODY_TOTAL_TIMEOUT }
    }
}

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("another sessionizer server is using {0} (its lock file is held)")]
    DataDirInUse(PathBuf),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Name of the lock file a running server holds in its data directory.
pub const LOCK_FILE: &str = "server.lock";

/// Whether a server currently holds the lock on `data_dir`.
pub fn server_running(data_dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(data_dir.join(LOCK_FILE)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    sink: Sink,
    keys: Arc<Keys>,
    readers: Arc<Readers>,
    metrics: Arc<Metrics>,
    board: Arc<board::BoardState>,
    source: ReadSource,
    ingest_limit: Arc<rate_limit::Limiter>,
    read_limit: Arc<rate_limit::Limiter>,
}

/// Where reads are answered from.
#[derive(Debug, Clone)]
pub(crate) enum ReadSource {
    /// The embedded store (`readers`) and its board index (`board`): the single binary.
    Embedded,
    /// A cluster's ClickHouse shards (`serve --role query` or `all`).
    #[cfg(feature = "cluster")]
    Cluster(Arc<cluster_reads::ClusterReads>),
}

/// Where accepted events go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// The embedded store's writer: the single binary.
    Writer(WriterHandle),
    /// A cluster's event stream (`serve --role ingest`): 200 once the stream acknowledged every event.
    #[cfg(feature = "cluster")]
    Stream(Arc<sessionizer_cluster::Cluster>),
}

impl AppState {
    /// The project a read request may read (header or dashboard cookie), within the key's rate limit.
    pub(crate) fn authorize_read(&self, headers: &HeaderMap) -> Result<i64, ApiError> {
        let project = self.keys.authorize(headers, KeyRole::Read)?;
        self.read_limit.take(project, 1, Instant::now()).map_err(ApiError::RateLimited)?;
        Ok(project)
    }
}

/// Runs the server until `shutdown` resolves, then drains in-flight requests,
/// lets the writer finish its queue and returns.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Store::open(&config.data_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(config.data_dir.join(LOCK_FILE))?;
    if lock.try_lock().is_err() {
        return Err(ServeError::DataDirInUse(config.data_dir.clone()));
    }
    let metrics = Arc::new(Metrics::default());
    let keys = Arc::new(Keys::load(&store)?);
    let log = IngestLog::open(&config.data_dir)?;
    let log_reader = LogReader::open(&config.data_dir)?;
    let (writer, applied, writer_thread) =
        writer::start(store, log, log_reader, metrics.clone(), config.write_queue_requests, config.apply)?;
    let readers = Arc::new(Readers::new(config.data_dir.clone(), Some(applied)));
    let board = Arc::new(board::BoardState::default());
    board.start_loading(config.data_dir.clone());
    let ingest_limit = Arc::new(rate_limit::Limiter::new(config.rate_limits.ingest_events_per_s));
    let read_limit = Arc::new(rate_limit::Limiter::new(config.rate_limits.read_requests_per_s));
    let state = AppState {
        sink: Sink::Writer(writer),
        keys: keys.clone(),
        readers,
        metrics,
        board,
        source: ReadSource::Embedded,
        ingest_limit,
        read_limit,
    };
    let refresher = tokio::spawn(auth::refresh_periodically(keys, config.data_dir.clone()));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, data = %config.data_dir.display(), "sessionizer serving");
    let app = router(state).layer(axum::middleware::from_fn_with_state(config.timeouts, body_deadline));
    accept_connections(listener, app, config.timeouts, shutdown).await;
    tracing::info!("HTTP server stopped; finishing queued writes");
    refresher.abort();
    // The router (and with it every writer handle) is gone: the writer drains its queue and stops.
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(|_| std::io::Error::other("the writer thread panicked"))?;
    drop(lock);
    Ok(())
}

/// What a cluster node's HTTP side needs (`serve --role ingest|query|all`).
#[cfg(feature = "cluster")]
#[derive(Debug, Clone)]
pub struct ClusterNodeConfig {
    pub listen: SocketAddr,
    pub rate_limits: RateLimits,
    pub timeouts: Timeouts,
    /// Serve the ingestion routes (into the cluster's event stream).
    pub ingest: bool,
    /// Serve the query API and the dashboard (from ClickHouse).
    pub query: bool,
}

/// The HTTP side of a cluster node (docs/scale-out.md). An ingest node has the
/// ingestion routes of the single binary (native and SDK formats, same
/// validation and answers), publishing to the cluster's event stream. A query
/// node has the query API and the dashboard, answered from ClickHouse. Keys
/// and project settings come from the cluster's catalog.
#[cfg(feature = "cluster")]
pub async fn serve_cluster_node(
    config: ClusterNodeConfig,
    cluster: sessionizer_cluster::Cluster,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cluster_error = |e: sessionizer_cluster::ClusterError| ServeError::Cluster(e.to_string());
    let catalog = cluster.catalog().await.map_err(cluster_error)?;
    let projects = catalog.projects().await.map_err(cluster_error)?;
    let keys = Arc::new(Keys::from_keys(sessionizer_cluster::api_keys_of(&projects)));
    let store =
        sessionizer_cluster::clickhouse::ClickHouseStore::from_config(&cluster.config).map_err(cluster_error)?;
    let reads = Arc::new(cluster_reads::ClusterReads::new(
        store,
        cluster.config.partitions,
        projects.iter().map(|p| p.project()).collect(),
    ));
    let refresher = tokio::spawn(cluster_reads::refresh_from_catalog(keys.clone(), reads.clone(), catalog));
    let state = AppState {
        sink: Sink::Stream(Arc::new(cluster)),
        keys,
        // Never used: reads go to `source`.
        readers: Arc::new(Readers::new(PathBuf::new(), None)),
        metrics: Arc::new(Metrics::default()),
        board: Arc::new(board::BoardState::default()),
        source: ReadSource::Cluster(reads),
        ingest_limit: Arc::new(rate_limit::Limiter::new(config.rate_limits.ingest_events_per_s)),
        read_limit: Arc::new(rate_limit::Limiter::new(config.rate_limits.read_requests_per_s)),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let roles = match (config.ingest, config.query) {
        (true, true) => "ingest and query",
        (true, false) => "ingest",
        _ => "query",
    };
    tracing::info!(listen = %listener.local_addr()?, roles, "sessionizer cluster node serving");
    let app = routes(state, config.ingest, config.query)
        .layer(axum::middleware::from_fn_with_state(config.timeouts, body_deadline));
    accept_connections(listener, app, config.timeouts, shutdown).await;
    refresher.abort();
    Ok(())
}

/// The HTTP/1 connection loop (what `axum::serve` does, plus hyper's header
/// read timeout, which needs a timer that `axum::serve` does not give it).
/// On `shutdown`: stops accepting, lets in-flight requests finish, closes idle connections.
async fn accept_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(timeouts.header_read);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning, as axum::serve does.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
            let mut app = app.clone();
            tower_service::Service::call(&mut app, request)
        });
        let connection = graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Timeouts and resets are the client's doing: not worth more than debug.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reads a request body of at most [`limits::MAX_BODY_BYTES`]. A longer one is
/// `413`; one that cannot be read (a timeout, which [`body_deadline`] answers
/// with 408, or a client gone) counts as `body_read`, not as too large.
/// Reads an ingestion request's body (bounded by `MAX_BODY_BYTES`), then
/// refuses it (503) when the writer's backlog is full: parsing is the costly
/// part of a request, and under overload it would only be thrown away.
pub(crate) async fn read_ingest_body(state: &AppState, body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    let body = axum::body::to_bytes(body, limits::MAX_BODY_BYTES).await.map_err(|error| {
        if error.into_inner().is::<http_body_util::LengthLimitError>() {
            state.metrics.reject(RejectReason::TooLarge, 1);
            ApiError::TooLarge(format!("the body exceeds {} bytes", limits::MAX_BODY_BYTES))
        } else {
            state.metrics.reject(RejectReason::BodyRead, 1);
            ApiError::BadRequest("the request body could not be read".into())
        }
    })?;
    if let Sink::Writer(writer) = &state.sink
        && writer.backlogged()
    {
        state.metrics.reject(RejectReason::Busy, 1);
        return Err(ApiError::Busy);
    }
    Ok(body)
}

/// Applies [`Timeouts::body_idle`] and [`Timeouts::body_total`] to the request
/// body as the handler reads it; a body that times out gets 408 and the connection
/// closes. The handlers never see a timeout as anything but a failed read, and
/// read the whole body before submitting anything, so a 408 stores nothing.
async fn body_deadline(State(timeouts): State<Timeouts>, request: Request, next: axum::middleware::Next) -> Response {
    use axum::body::HttpBody;
    use futures_util::StreamExt;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = timed_out.clone();
    let deadline = tokio::time::Instant::now() + timeouts.body_total;
    let (parts, body) = request.into_parts();
    let frames = futures_util::stream::unfold(Some(body.into_data_stream()), move |state| {
        let flag = flag.clone();
        async move {
            let mut frames = state?;
            let wait = (tokio::time::Instant::now() + timeouts.body_idle).min(deadline);
            match tokio::time::timeout_at(wait, frames.next()).await {
                Ok(Some(frame)) => Some((frame, Some(frames))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Release);
                    Some((Err(axum::Error::new("the request body timed out")), None))
                }
            }
        }
    });
    let response = next.run(Request::from_parts(parts, axum::body::Body::from_stream(frames))).await;
    if timed_out.load(Ordering::Acquire) {
        let message = format!(
            "the request body was not received in time (a pause over {} s, or over {} s in all)",
            timeouts.body_idle.as_secs_f64(),
            timeouts.body_total.as_secs_f64()
        );
        let mut response = ApiError::RequestTimeout(message).into_response();
        response.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    response
}

fn router(state: AppState) -> Router {
    routes(state, true, true)
}

/// The routes of a node that ingests, answers queries, or both.
fn routes(state: AppState, ingest: bool, query: bool) -> Router {
    let mut app = Router::new();
    if ingest {
        // Ingestion (native and SDK formats) answers browsers' CORS preflights; nothing else does.
        let ingestion = Router::new()
            .route("/v1/events", post(ingest_events))
            .merge(sdk_routes::routes())
            .layer(axum::middleware::from_fn(cors::cors));
        app = app.merge(ingestion).merge(browser_sdk::routes());
    }
    if query {
        app = app
            .merge(query::routes())
            .merge(dashboard::routes())
            .route("/v1/export/events", get(export_events))
            .route("/v1/export/sessions", get(export_sessions));
    }
    let missing = match (ingest, query) {
        (true, true) => "no such route",
        (true, false) => "no such route on an ingest node (reads are served by query nodes)",
        _ => "no such route on a query node (ingestion is served by ingest nodes)",
    };
    app.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(move || async move { ApiError::NotFound(missing.into()) })
        .with_state(state)
}

async fn ingest_events(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let response = match ingest(&state, request).await {
        Ok(ingested) => {
            let body = serde_json::json!({"accepted": ingested.accepted, "duplicates": ingested.duplicates});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(error) => error.into_response(),
    };
    state.metrics.ingest_latency.observe(started.elapsed());
    response
}

async fn ingest(state: &AppState, request: Request) -> Result<Ingested, ApiError> {
    let (parts, body) = request.into_parts();
    let unauthorized = |_: &ApiError| state.metrics.reject(RejectReason::Unauthorized, 1);
    // The key comes in the header, or (for `navigator.sendBeacon`, which cannot
    // set headers) as the body's `write_key`, checked once the body is parsed.
    let header_project = match parts.headers.contains_key(header::AUTHORIZATION) {
        true => Some(state.keys.authorize(&parts.headers, KeyRole::Write).inspect_err(unauthorized)?),
        false => None,
    };
    let body = read_ingest_body(state, body).await?;
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let now = jiff::Timestamp::now().as_millisecond();
    let parsed =
        decode_body(encoding, &body).and_then(|body| ingest::parse_keyed_batch(&body, now)).inspect_err(|error| {
            match error {
                ApiError::TooLarge(_) => state.metrics.reject(RejectReason::TooLarge, 1),
                // The invalid events, as the SDK routes count them; the rest of the batch was refused with them.
                ApiError::InvalidEvents(problems) => {
                    state.metrics.reject(RejectReason::Invalid, error::distinct_events(problems))
                }
                _ => state.metrics.reject(RejectReason::Invalid, 1),
            }
        })?;
    let (body_key, events) = parsed;
    let project = match (header_project, body_key) {
        (Some(project), _) => project,
        (None, Some(key)) => state.keys.authorize_key(&key, KeyRole::Write).inspect_err(unauthorized)?,
        (None, None) => return Err(ApiError::MissingKey).inspect_err(unauthorized),
    };
    submit_events(state, project, events).await
}

/// Every ingestion route ends here: the key's rate limit, the write queue,
/// and the answer once the events are durable (or why not), counted in the metrics.
pub(crate) async fn submit_events(
    state: &AppState,
    project: i64,
    events: Vec<sessionizer_store::NewEvent>,
) -> Result<Ingested, ApiError> {
    let count = events.len() as u64;
    state.ingest_limit.take(project, count, Instant::now()).map_err(|wait| {
        state.metrics.reject(RejectReason::RateLimited, count);
        ApiError::RateLimited(wait)
    })?;
    // Without the cluster feature the match has one arm.
    #[cfg_attr(not(feature = "cluster"), allow(clippy::infallible_destructuring_match))]
    let writer = match &state.sink {
        Sink::Writer(writer) => writer,
        #[cfg(feature = "cluster")]
        Sink::Stream(cluster) => {
            return cluster
                .publish(project, events)
                .await
                .map(|p| Ingested { accepted: p.accepted, duplicates: p.duplicates })
                .map_err(|error| {
                    // Some events may be in the stream: a retry stores none of them twice (the dedup key).
                    tracing::error!(%error, "cannot publish events to the cluster's stream");
                    state.metrics.reject(RejectReason::Unavailable, count);
                    ApiError::Unavailable("the event stream did not acknowledge the events; retry the request".into())
                });
        }
    };
    let (reply, answer) = oneshot::channel();
    writer.submit(WriteRequest { project, events, reply }).inspect_err(|error| {
        let reason = if matches!(error, ApiError::Busy) { RejectReason::Busy } else { RejectReason::Unavailable };
        state.metrics.reject(reason, count);
        state.ingest_limit.refund(project, count);
    })?;
    let result = answer.await.map_err(|_| ApiError::Unavailable("the writer stopped".into()))?;
    result.inspect_err(|error| {
        let reason = match error {
            ApiError::DiskFull => RejectReason::DiskFull,
            ApiError::Busy => RejectReason::Busy,
            _ => RejectReason::Unavailable,
        };
        state.metrics.reject(reason, count);
        if matches!(error, ApiError::Busy) {
            // Nothing was written: the retry will spend the tokens.
            state.ingest_limit.refund(project, count);
        }
    })
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    format: Option<String>,
}

/// `from_ms`/`to_ms` of an export (default: the longest range up to now) and checks them.
fn export_range(query: &ExportQuery) -> Result<(i64, i64), ApiError> {
    let now = jiff::Timestamp::now().as_millisecond();
    let to_ms = query.to_ms.unwrap_or(now + limits::MAX_FUTURE_MS + 1);
    let from_ms = query.from_ms.unwrap_or(to_ms.saturating_sub(limits::MAX_EXPORT_RANGE_MS));
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(format!("from_ms ({from_ms}) must be before to_ms ({to_ms})")));
    }
    if to_ms - from_ms > limits::MAX_EXPORT_RANGE_MS {
        return Err(ApiError::BadRequest(format!(
            "the range covers more than {} days: export in parts",
            limits::MAX_EXPORT_RANGE_MS / 86_400_000
        )));
    }
    Ok((from_ms, to_ms))
}

async fn export_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    export(&state, &headers, query, Exported::Events).await
}

async fn export_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    export(&state, &headers, query, Exported::Sessions).await
}

#[derive(Debug, Clone, Copy)]
enum Exported {
    Events,
    Sessions,
}

async fn export(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
    exported: Exported,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(headers)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (from_ms, to_ms) = export_range(&query)?;
    let (format, content_type) = query::export_format(query.format.as_deref())?;
    #[cfg(feature = "cluster")]
    if let ReadSource::Cluster(cluster) = &state.source {
        return Ok(match exported {
            Exported::Events => {
                query::export_body(content_type, cluster.export_events(project, (from_ms, to_ms), format).await?)
            }
            Exported::Sessions => {
                query::export_body(content_type, cluster.export_sessions(project, (from_ms, to_ms), format).await?)
            }
        });
    }
    let response = match exported {
        Exported::Events => {
            query::export_body(content_type, state.readers.export_events(project, from_ms, to_ms, format).await?)
        }
        Exported::Sessions => {
            query::export_body(content_type, state.readers.export_sessions(project, from_ms, to_ms, format).await?)
        }
    };
    Ok(response)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let health = match &state.sink {
        Sink::Writer(writer) => &writer.health,
        #[cfg(feature = "cluster")]
        Sink::Stream(_) => return (StatusCode::OK, "ready\n").into_response(),
    };
    if health.poisoned.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "not accepting writes: a storage write failed\n").into_response()
    } else if !health.ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "loading live state\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
