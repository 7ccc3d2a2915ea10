//! The dashboard: static files compiled into the binary (no front-end build,
//! no internet), signed in with a project's read key kept in an HttpOnly,
//! SameSite=Strict cookie; and the OpenAPI document of the HTTP API.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sessionizer_store::KeyRole;

use crate::AppState;
use crate::auth::READ_KEY_COOKIE;
use crate::error::ApiError;
use crate::limits::MAX_SIGN_IN_BYTES;

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");
const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// How long a sign-in lasts.
const SIGN_IN_SECONDS: u64 = 30 * 24 * 60 * 60;

/// Scripts, styles and data only from this server; never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/dashboard/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/dashboard/sign-in", post(sign_in))
        .route("/dashboard/sign-out", post(sign_out))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    read_key: String,
}

/// `{"read_key": "..."}`: 204 with the cookie set, or 401 for a key that is
/// not a valid read key.
async fn sign_in(State(state): State<AppState>, body: axum::body::Body) -> Result<Response, ApiError> {
    let body: Bytes = axum::body::to_bytes(body, MAX_SIGN_IN_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(format!("a sign-in is at most {MAX_SIGN_IN_BYTES} bytes")))?;
    let request: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"read_key\": \"...\"}}: {e}")))?;
    let key = request.read_key.trim();
    state.keys.authorize_key(key, KeyRole::Read).map_err(|error| match error {
        // Signing in with the write key: say so rather than "forbidden".
        ApiError::Forbidden(_) => ApiError::BadKey,
        other => other,
    })?;
    // Keys are generated as URL-safe text, so they need no cookie quoting; refuse anything else.
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ApiError::BadKey);
    }
    let cookie = format!("{READ_KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SIGN_IN_SECONDS}");
    Ok(signed(cookie))
}

async fn sign_out() -> Response {
    signed(format!("{READ_KEY_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
}

fn signed(cookie: String) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
