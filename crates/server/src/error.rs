//! The one mapping from errors to HTTP statuses and JSON bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sessionizer_store::StoreError;

/// One problem with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventProblem {
    /// Position of the event in the request's `events` array.
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// Whole seconds to wait, at least 1 (what `Retry-After` can say).
pub(crate) fn retry_seconds(wait: &std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// How many distinct events a list of problems names.
pub(crate) fn distinct_events(problems: &[EventProblem]) -> u64 {
    problems.iter().map(|p| p.index).collect::<std::collections::BTreeSet<_>>().len() as u64
}

/// Every error a route can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{} invalid events; none of the batch was stored", .0.len())]
    InvalidEvents(Vec<EventProblem>),
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("unknown or revoked API key")]
    BadKey,
    #[error("this key may not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("the server is busy: retry later")]
    Busy,
    #[error("this key's rate limit is reached: retry in {} s", retry_seconds(.0))]
    RateLimited(std::time::Duration),
    #[error("the server is not accepting writes: {0}")]
    Unavailable(String),
    #[error("{0}: retry shortly")]
    Loading(String),
    /// A read cannot yet see every acknowledged event (they wait in the ingest log).
    #[error("{0}: retry shortly")]
    ReadBehind(String),
    /// A cluster's storage (ClickHouse) did not answer a read; the detail is logged, once.
    #[error("the cluster's storage did not answer: retry shortly")]
    StorageUnavailable(String),
    #[error("the disk is full: nothing of this request was stored")]
    DiskFull,
    #[error("stored data is damaged: this request cannot be answered (the operator can run `sessionizer check`)")]
    StorageCorrupt(String),
    /// A write failed as it committed (an fsync error): logged by the writer, once.
    #[error(
        "a storage write failed as it committed: this request may or may not be stored; retry it with the same insert ids (they are deduplicated)"
    )]
    WriteOutcomeUnknown,
    #[error("internal error")]
    Internal(String),
}

/// Whether a corruption was logged already: the first one is worth an operator's
/// attention, the same damage met by every later read is not worth a log line each.
static CORRUPTION_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingKey | ApiError::BadKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy
            | ApiError::Unavailable(_)
            | ApiError::Loading(_)
            | ApiError::ReadBehind(_)
            | ApiError::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) | ApiError::StorageCorrupt(_) | ApiError::WriteOutcomeUnknown => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable, machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidEvents(_) => "invalid_events",
            ApiError::MissingKey => "missing_key",
            ApiError::BadKey => "bad_key",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Busy => "busy",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Loading(_) => "loading",
            ApiError::ReadBehind(_) => "read_behind",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::DiskFull => "disk_full",
            ApiError::StorageCorrupt(_) => "storage_corrupt",
            ApiError::WriteOutcomeUnknown => "write_outcome_unknown",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DiskFull(_) => ApiError::DiskFull,
            StoreError::Corrupt(detail) => ApiError::StorageCorrupt(detail),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [EventProblem]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            // Logged once, here; the client gets no internals.
            tracing::error!(error = %detail, "internal error");
        }
        if let ApiError::StorageUnavailable(detail) = &self {
            tracing::warn!(error = %detail, "a read could not reach the cluster's storage");
        }
        if let ApiError::StorageCorrupt(detail) = &self {
            if !CORRUPTION_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(error = %detail, "stored data is damaged: reads that reach it answer 500 storage_corrupt; stop the server and run `sessionizer check`");
            } else {
                tracing::debug!(error = %detail, "stored data is damaged");
            }
        }
        let events = match &self {
            ApiError::InvalidEvents(problems) => Some(problems.as_slice()),
            _ => None,
        };
        let body = Body { error: ErrorBody { code: self.code(), message: self.to_string(), events } };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            self,
            ApiError::Busy
                | ApiError::Unavailable(_)
                | ApiError::Loading(_)
                | ApiError::ReadBehind(_)
                | ApiError::StorageUnavailable(_)
        ) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::DiskFull = &self {
            // Space comes back when an operator acts: worth a longer wait than a busy queue.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        if let ApiError::RateLimited(wait) = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_seconds(wait)));
        }
        response
    }
}
