//! The SDK-compatible routes: each reads its format with `sdk`, stores
//! through the same writer as the native route, and answers the way its SDK
//! expects. CORS (for browser SDKs) is added by `cors` to these routes only.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sessionizer_store::KeyRole;

use crate::AppState;
use crate::error::{ApiError, EventProblem};
use crate::ingest::decode_body;
use crate::metrics::RejectReason;
use crate::sdk::{self, Context, Translated};
use crate::writer::Ingested;

/// Whether a format rejects a batch with any invalid event, or keeps the valid ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    AllOrNothing,
    KeepValid,
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/2/httpapi", post(amplitude))
        .route("/batch", post(amplitude_or_posthog))
        .route("/batch/", post(amplitude_or_posthog))
        .route("/v1/batch", post(segment_batch))
        .route("/v1/track", post(segment_track))
        .route("/v1/page", post(segment_page))
        .route("/v1/screen", post(segment_screen))
        .route("/v1/identify", post(segment_identify))
        .route("/v1/group", post(segment_group))
        .route("/v1/alias", post(segment_alias))
        // analytics.js (analytics-next) posts one message to `<apiHost>/<first
        // letter of its type>`, as Segment's API also accepts.
        .route("/v1/t", post(segment_track))
        .route("/v1/p", post(segment_page))
        .route("/v1/s", post(segment_screen))
        .route("/v1/i", post(segment_identify))
        .route("/v1/g", post(segment_group))
        .route("/v1/a", post(segment_alias))
        .route("/v1/b", post(segment_batch))
        .route("/v1/projects/{write_key}/settings", get(segment_settings))
        .route("/e", post(posthog))
        .route("/e/", post(posthog))
        .route("/capture", post(posthog))
        .route("/capture/", post(posthog))
        .route("/i/v0/e", post(posthog))
        .route("/i/v0/e/", post(posthog))
        .route("/array/{token}/config", get(posthog_config).post(posthog_config))
        .route("/track", get(mixpanel).post(mixpanel))
        .route("/track/", get(mixpanel).post(mixpanel))
        .route("/import", get(mixpanel).post(mixpanel))
        .route("/import/", get(mixpanel).post(mixpanel))
}

/// Body bytes, bounded, and decompressed when gzip (by header or by magic bytes).
async fn read_body(state: &AppState, request: Request) -> Result<(axum::http::request::Parts, Vec<u8>), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = crate::read_ingest_body(state, body).await?;
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let body = decode_body(encoding, &bytes)?;
    Ok((parts, body))
}

fn context(client: SocketAddr, basic_user: Option<&str>) -> Context<'_> {
    Context { now_ms: jiff::Timestamp::now().as_millisecond(), client_ip: Some(client.ip()), basic_user }
}

/// Authorizes, applies the policy, stores; the stored count and the dropped problems.
async fn store(
    state: &AppState,
    headers: &HeaderMap,
    translated: Translated,
    policy: Policy,
) -> Result<(Ingested, Vec<EventProblem>), ApiError> {
    let project = match translated.key.as_deref() {
        Some(key) => state.keys.authorize_key(key.trim(), KeyRole::Write),
        // PostHog's v1 capture mode and our own clients send a bearer token instead.
        None => state.keys.authorize(headers, KeyRole::Write),
    }
    .inspect_err(|_| state.metrics.reject(RejectReason::Unauthorized, 1))?;
    let Translated { events, problems, .. } = translated;
    if !problems.is_empty() {
        state.metrics.reject(RejectReason::Invalid, crate::error::distinct_events(&problems));
        if policy == Policy::AllOrNothing {
            return Err(ApiError::InvalidEvents(problems));
        }
    }
    if events.is_empty() {
        return Ok((Ingested { accepted: 0, duplicates: 0 }, problems));
    }
    let ingested = crate::submit_events(state, project, events).await?;
    Ok((ingested, problems))
}

// ---- Amplitude ----

async fn amplitude(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (parts, body) = read_body(&state, request).await?;
        let translated = sdk::amplitude(&body, context(client, None))?;
        if translated.key.is_none() {
            return Err(ApiError::BadRequest("missing_field:api_key".into()));
        }
        let size = body.len();
        store(&state, &parts.headers, translated, Policy::AllOrNothing).await.map(|(ingested, _)| (ingested, size))
    }
    .await;
    state.metrics.ingest_latency.observe(started.elapsed());
    amplitude_answer(result)
}

/// Amplitude's answers: the SDK reads `code` from the body.
fn amplitude_answer(result: Result<(Ingested, usize), ApiError>) -> Response {
    let now = jiff::Timestamp::now().as_millisecond();
    match result {
        Ok((ingested, size)) => {
            let body = json!({
                "code": 200,
                "events_ingested": ingested.accepted + ingested.duplicates,
                "payload_size_bytes": size,
                "server_upload_time": now,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(ApiError::InvalidEvents(problems)) => {
            (StatusCode::BAD_REQUEST, axum::Json(sdk::amplitude_invalid(&problems))).into_response()
        }
        Err(ApiError::BadRequest(message)) if message.starts_with("missing_field:") => {
            let field = message.trim_start_matches("missing_field:");
            let body = json!({"code": 400, "error": "Request missing required field", "missing_field": field});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        Err(ApiError::MissingKey | ApiError::BadKey | ApiError::Forbidden(_)) => {
            // The SDK drops the batch on "Invalid API key".
            let body = json!({"code": 400, "error": "Invalid API key: use the project's write key"});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        Err(ApiError::TooLarge(_)) => {
            (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(json!({"code": 413, "error": "Payload too large"})))
                .into_response()
        }
        Err(error @ (ApiError::Busy | ApiError::RateLimited(_))) => {
            // Amplitude's throttling answer; no event is singled out, so the SDK retries them all at its next flush.
            let retry = match &error {
                ApiError::RateLimited(wait) => crate::error::retry_seconds(wait),
                _ => 1,
            };
            let body = json!({
                "code": 429,
                "error": format!("Too many requests: {error}"),
                "throttled_events": [],
                "throttled_devices": {},
                "throttled_users": {},
            });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
            response
        }
        Err(error) => {
            let status = error.status();
            let body = json!({"code": status.as_u16(), "error": error.to_string()});
            if let ApiError::Internal(detail) = &error {
                tracing::error!(error = %detail, "internal error");
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

/// `/batch` is Amplitude's batch API (`events`) and PostHog's batch endpoint (`batch`).
async fn amplitude_or_posthog(state: State<AppState>, client: ConnectInfo<SocketAddr>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match crate::read_ingest_body(&state, body).await {
        Ok(bytes) => bytes,
        // Amplitude reads the code from the body, PostHog only the status: Amplitude's answer serves both.
        Err(error) => return amplitude_answer(Err(error)),
    };
    /// Which format: only whether the top level has `events`, without building the document.
    #[derive(serde::Deserialize)]
    struct Probe {
        events: Option<serde::de::IgnoredAny>,
    }
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let is_amplitude = decode_body(encoding, &bytes)
        .ok()
        .and_then(|body| serde_json::from_slice::<Probe>(&body).ok())
        .is_some_and(|probe| probe.events.is_some());
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    if is_amplitude {
        amplitude(state, client, request).await
    } else {
        posthog(state, client, Query(PosthogQuery::default()), request).await
    }
}

// ---- Segment and RudderStack ----

type Client = ConnectInfo<SocketAddr>;

async fn segment_batch(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, None).await
}

async fn segment_track(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("track")).await
}

async fn segment_page(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("page")).await
}

async fn segment_screen(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("screen")).await
}

async fn segment_identify(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("identify")).await
}

async fn segment_group(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("group")).await
}

async fn segment_alias(state: State<AppState>, client: Client, request: Request) -> Response {
    segment(state, client, request, Some("alias")).await
}

/// Bound on the write key echoed by [`segment_settings`] (keys are far shorter).
const MAX_SETTINGS_KEY_BYTES: usize = 200;

/// Segment's CDN settings, which analytics.js (`AnalyticsBrowser.load({writeKey,
/// cdnURL})`) fetches from `<cdnURL>/v1/projects/<writeKey>/settings`: they
/// point its `Segment.io` destination back at this server (the host the page
/// asked, `https` behind a proxy that says so) and turn off what would call
/// Segment (device-mode destinations, remote plugins, metrics). Public, like
/// Segment's CDN and PostHog's config: the write key only comes back.
async fn segment_settings(Path(write_key): Path<String>, headers: HeaderMap) -> Response {
    if write_key.is_empty() || write_key.len() > MAX_SETTINGS_KEY_BYTES {
        return ApiError::BadRequest(format!("the write key has 1 to {MAX_SETTINGS_KEY_BYTES} bytes")).into_response();
    }
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let host = header_text("x-forwarded-host").or(header_text("host")).filter(|host| {
        !host.is_empty()
            && host.len() <= 255
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let Some(host) = host else {
        return ApiError::BadRequest("a Host header naming this server is needed".into()).into_response();
    };
    let protocol = if header_text("x-forwarded-proto") == Some("https") { "https" } else { "http" };
    (StatusCode::OK, axum::Json(segment_settings_json(&write_key, &format!("{host}/v1"), protocol))).into_response()
}

/// The settings document analytics.js needs, and nothing that makes it call
/// anywhere but `api_host`.
fn segment_settings_json(write_key: &str, api_host: &str, protocol: &str) -> Value {
    json!({
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": protocol, "unbundledIntegrations": [],
                           "addBundledMetadata": false, "maybeBundledConfigIds": {}},
        },
        "plan": {"track": {"__default": {"enabled": true, "integrations": {}}}, "identify": {"__default": {"enabled": true}},
                 "group": {"__default": {"enabled": true}}},
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
    })
}

async fn segment(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    single_type: Option<&'static str>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (parts, body) = read_body(&state, request).await?;
        let basic = sdk::basic_user(parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        let translated = sdk::segment(&body, single_type, context(client, basic.as_deref()))?;
        store(&state, &parts.headers, translated, Policy::KeepValid).await
    }
    .await;
    state.metrics.ingest_latency.observe(started.elapsed());
    match result {
        Ok((ingested, dropped)) => {
            let body = json!({"success": true, "accepted": ingested.accepted, "duplicates": ingested.duplicates,
                              "dropped": dropped_indexes(&dropped)});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

fn dropped_indexes(problems: &[EventProblem]) -> Vec<usize> {
    let mut indexes: Vec<usize> = problems.iter().map(|p| p.index).collect();
    indexes.dedup();
    indexes
}

// ---- PostHog ----

#[derive(Debug, Default, serde::Deserialize)]
struct PosthogQuery {
    compression: Option<String>,
}

async fn posthog(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(query): Query<PosthogQuery>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (parts, mut body) = read_body(&state, request).await?;
        if query.compression.as_deref() == Some("base64") {
            // sendBeacon: base64, possibly as a `data=` form field.
            let text = String::from_utf8_lossy(&body).into_owned();
            let data = sdk::form_value(&text, "data").map(sdk::percent_decode).unwrap_or(text);
            body = decode_body(None, &sdk::decode_base64(&data)?)?;
        } else if body.starts_with(b"data=") {
            let text = String::from_utf8_lossy(&body).into_owned();
            let data = sdk::percent_decode(sdk::form_value(&text, "data").unwrap_or(""));
            body =
                if data.trim_start().starts_with(['{', '[']) { data.into_bytes() } else { sdk::decode_base64(&data)? };
        }
        let translated = sdk::posthog(&body, context(client, None))?;
        store(&state, &parts.headers, translated, Policy::KeepValid).await
    }
    .await;
    state.metrics.ingest_latency.observe(started.elapsed());
    match result {
        Ok(_) => (StatusCode::OK, axum::Json(json!({"status": 1}))).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn posthog_config() -> Response {
    (StatusCode::OK, axum::Json(sdk::posthog_config())).into_response()
}

// ---- Mixpanel ----

/// Mixpanel's query parameters, read by hand (see `mixpanel`).
#[derive(Debug)]
struct MixpanelQuery {
    data: Option<String>,
    verbose: Option<String>,
    ip: Option<String>,
    api_key: Option<String>,
}

async fn mixpanel(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    request: Request,
) -> Response {
    let started = Instant::now();
    // Parsed by hand: a form decoder would turn the base64 `+` into a space.
    let raw_query = uri.query().unwrap_or("").to_string();
    let query = MixpanelQuery {
        data: sdk::form_value(&raw_query, "data").map(sdk::percent_decode),
        verbose: sdk::form_value(&raw_query, "verbose").map(str::to_string),
        ip: sdk::form_value(&raw_query, "ip").map(str::to_string),
        api_key: sdk::form_value(&raw_query, "api_key").map(sdk::percent_decode),
    };
    let verbose = query.verbose.as_deref() == Some("1");
    let result = async {
        let (parts, body) = read_body(&state, request).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let data = match sdk::form_value(&text, "data") {
            Some(data) => sdk::percent_decode(data),
            None => query.data.clone().ok_or_else(|| ApiError::BadRequest("missing data parameter".into()))?,
        };
        let basic = sdk::basic_user(parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        let import_key = basic.or_else(|| query.api_key.clone());
        let mut translated = sdk::mixpanel(&data, import_key.as_deref(), context(client, None))?;
        if query.ip.as_deref() == Some("1") {
            for event in &mut translated.events {
                event.ip.get_or_insert_with(|| client.ip().to_string());
            }
        }
        store(&state, &parts.headers, translated, Policy::AllOrNothing).await
    }
    .await;
    state.metrics.ingest_latency.observe(started.elapsed());
    match (result, verbose) {
        (Ok(_), false) => (StatusCode::OK, "1").into_response(),
        (Ok(_), true) => (StatusCode::OK, axum::Json(json!({"status": 1, "error": null}))).into_response(),
        (Err(error), verbose) => {
            if let ApiError::Internal(detail) = &error {
                tracing::error!(error = %detail, "internal error");
            }
            let status = error.status();
            if verbose {
                (status, axum::Json(json!({"status": 0, "error": error.to_string()}))).into_response()
            } else {
                (status, "0").into_response()
            }
        }
    }
}
