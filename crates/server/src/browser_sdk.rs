//! The browser SDK (`assets/sdk/sessionizer.js`, docs/browser-sdk.md), served
//! as `GET /sdk.js`, a classic script that defines `window.sessionizer`, and
//! `GET /sdk.mjs`, an ES module with a default and named exports.
//!
//! Both are the one source file with a few lines around it, joined at compile
//! time: there is no build step and the two cannot drift apart. Sites load
//! them from other origins (a module script needs CORS), so both allow any
//! origin; they hold no data.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// The classic script: the source in a function scope, `window.sessionizer`
/// pointed at the server the script was loaded from.
const CLASSIC: &str = concat!(
    "(function () {\n",
    include_str!("../assets/sdk/sessionizer.js"),
    "window.sessionizer = window.sessionizer || createSessionizer(document.currentScript && document.currentScript.src);\n",
    "})();\n",
);

/// The ES module: the same source, with its URL from `import.meta`.
const MODULE: &str = concat!(
    include_str!("../assets/sdk/sessionizer.js"),
    "const sessionizer = createSessionizer(import.meta.url);\n",
    "export default sessionizer;\n",
    "export const { init, openSession, track, changeUser, getSessionId, flush, reset } = sessionizer;\n",
);

/// How long browsers and CDNs may keep a copy without asking again; after
/// that the ETag makes the check a `304`.
const CACHE_CONTROL: &str = "public, max-age=3600";

/// A script as served: the text, its gzip (sent to clients that accept it), its ETag.
struct Script {
    text: &'static str,
    gzip: Vec<u8>,
    etag: HeaderValue,
}

impl Script {
    fn new(text: &'static str) -> Script {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(text.as_bytes()).expect("gzip into memory");
        let gzip = encoder.finish().expect("gzip into memory");
        // The same text gives the same tag in every build of this version (SipHash with fixed keys).
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        let etag = HeaderValue::from_str(&format!("\"{}-{:016x}\"", env!("CARGO_PKG_VERSION"), hasher.finish()))
            .expect("an ETag is ASCII");
        Script { text, gzip, etag }
    }
}

static CLASSIC_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLASSIC));
static MODULE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MODULE));

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdk.js", get(|headers: HeaderMap| async move { serve(&CLASSIC_SCRIPT, &headers) }))
        .route("/sdk.mjs", get(|headers: HeaderMap| async move { serve(&MODULE_SCRIPT, &headers) }))
}

fn serve(script: &Script, request: &HeaderMap) -> Response {
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == "*" || tag.trim() == script.etag));
    let gzip = accepts_gzip(request);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        ([(header::CONTENT_ENCODING, "gzip")], script.gzip.clone()).into_response()
    } else {
        script.text.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    headers.insert(header::ETAG, script.etag.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Whether `Accept-Encoding` lists gzip with a non-zero weight.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap())).collect()
    }

    #[test]
    fn both_scripts_wrap_the_one_source() {
        let source = include_str!("../assets/sdk/sessionizer.js");
        assert!(CLASSIC.contains(source) && MODULE.contains(source));
        assert!(CLASSIC.contains("window.sessionizer ="));
        assert!(!CLASSIC.contains("import.meta"), "import.meta is a syntax error in a classic script");
        assert!(MODULE.contains("export default sessionizer;"));
    }

    #[test]
    fn gzip_is_negotiated() {
        assert!(accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "br;q=1.0, GZIP;q=0.5")])));
        assert!(!accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
        let mut decoded = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&CLASSIC_SCRIPT.gzip[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, CLASSIC);
    }

    #[test]
    fn a_matching_etag_is_not_modified() {
        let etag = CLASSIC_SCRIPT.etag.to_str().unwrap().to_string();
        let response = serve(&CLASSIC_SCRIPT, &headers(&[(header::IF_NONE_MATCH, &etag)]));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = serve(&CLASSIC_SCRIPT, &headers(&[(header::IF_NONE_MATCH, "\"other\"")]));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_ne!(CLASSIC_SCRIPT.etag, MODULE_SCRIPT.etag);
    }
}
