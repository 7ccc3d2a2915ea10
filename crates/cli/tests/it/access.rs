//! The authorization matrix: every route of the server against every kind of
//! caller (no key, an unknown key, revoked keys, the project's write and read
//! keys, another project's keys). Anything not explicitly allowed must be
//! refused, a refused write must store nothing, and a read key must never see
//! another project's data. The test fails when a route is added to the server
//! without a row here.

use std::collections::BTreeSet;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

use super::BIN;
use super::server::{TestProject, TestServer, create_project, free_port, now_ms};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (static files, health, the SDK's config).
    Public,
    /// The project's read key (header, or the dashboard's cookie).
    Read { shows_user: bool },
    /// The project's write key, sent the way the route's SDK sends it.
    Write(KeyIn),
    /// The dashboard's sign-in: a read key in the body.
    SignIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyIn {
    Bearer,
    AmplitudeBody,
    SegmentBasic,
    PostHogBody,
    MixpanelToken,
}

/// One row: method, route template, concrete path, access.
struct Route {
    method: &'static str,
    template: &'static str,
    path: String,
    access: Access,
}

/// The user whose data only project A holds.
const SECRET_USER: &str = "matrix-secret-user";

fn routes(session_uid: &str) -> Vec<Route> {
    use Access::*;
    use KeyIn::*;
    let row = |method, template, path: &str, access| Route { method, template, path: path.to_string(), access };
    let read = Read { shows_user: false };
    let read_user = Read { shows_user: true };
    vec![
        row("GET", "/", "/", Public),
        row("GET", "/dashboard", "/dashboard", Public),
        row("GET", "/dashboard/", "/dashboard/", Public),
        row("GET", "/dashboard/app.js", "/dashboard/app.js", Public),
        row("GET", "/dashboard/app.css", "/dashboard/app.css", Public),
        row("POST", "/dashboard/sign-out", "/dashboard/sign-out", Public),
        row("POST", "/dashboard/sign-in", "/dashboard/sign-in", SignIn),
        row("GET", "/openapi.json", "/openapi.json", Public),
        row("GET", "/sdk.js", "/sdk.js", Public),
        row("GET", "/sdk.mjs", "/sdk.mjs", Public),
        row("GET", "/healthz", "/healthz", Public),
        row("GET", "/readyz", "/readyz", Public),
        row("GET", "/metrics", "/metrics", Public),
        row("GET", "/array/{token}/config", "/array/anything/config", Public),
        row("POST", "/array/{token}/config", "/array/anything/config", Public),
        row("GET", "/v1/project", "/v1/project", read),
        row("GET", "/v1/stats/range", "/v1/stats/range", read),
        row("GET", "/v1/stats/daily", "/v1/stats/daily", read),
        row("GET", "/v1/stats/length-distribution", "/v1/stats/length-distribution", read),
        row("GET", "/v1/stats/summary", "/v1/stats/summary", read),
        row("GET", "/v1/sessions", "/v1/sessions", read_user),
        row("GET", "/v1/sessions/{session_uid}", &format!("/v1/sessions/{session_uid}"), read_user),
        row("GET", "/v1/users/{user_id}", &format!("/v1/users/{SECRET_USER}"), read_user),
        row("POST", "/v1/cohorts/preview", "/v1/cohorts/preview", read_user),
        row("GET", "/v1/changes", "/v1/changes", read_user),
        row("GET", "/v1/timeout-preview", "/v1/timeout-preview", read),
        row("GET", "/v1/export/events", "/v1/export/events", read_user),
        row("GET", "/v1/export/sessions", "/v1/export/sessions", read_user),
        row("POST", "/v1/events", "/v1/events", Write(Bearer)),
        row("POST", "/2/httpapi", "/2/httpapi", Write(AmplitudeBody)),
        row("POST", "/batch", "/batch", Write(AmplitudeBody)),
        row("POST", "/batch/", "/batch/", Write(PostHogBody)),
        row("POST", "/v1/batch", "/v1/batch", Write(SegmentBasic)),
        row("POST", "/v1/track", "/v1/track", Write(SegmentBasic)),
        row("POST", "/v1/page", "/v1/page", Write(SegmentBasic)),
        row("POST", "/v1/screen", "/v1/screen", Write(SegmentBasic)),
        row("POST", "/v1/identify", "/v1/identify", Write(SegmentBasic)),
        row("POST", "/v1/group", "/v1/group", Write(SegmentBasic)),
        row("POST", "/v1/alias", "/v1/alias", Write(SegmentBasic)),
        row("POST", "/v1/t", "/v1/t", Write(SegmentBasic)),
        row("POST", "/v1/p", "/v1/p", Write(SegmentBasic)),
        row("POST", "/v1/s", "/v1/s", Write(SegmentBasic)),
        row("POST", "/v1/i", "/v1/i", Write(SegmentBasic)),
        row("POST", "/v1/g", "/v1/g", Write(SegmentBasic)),
        row("POST", "/v1/a", "/v1/a", Write(SegmentBasic)),
        row("POST", "/v1/b", "/v1/b", Write(SegmentBasic)),
        // analytics.js's settings: public like Segment's CDN (the key in the path only comes back).
        row("GET", "/v1/projects/{write_key}/settings", "/v1/projects/anything/settings", Public),
        row("POST", "/e", "/e", Write(PostHogBody)),
        row("POST", "/e/", "/e/", Write(PostHogBody)),
        row("POST", "/capture", "/capture", Write(PostHogBody)),
        row("POST", "/capture/", "/capture/", Write(PostHogBody)),
        row("POST", "/i/v0/e", "/i/v0/e", Write(PostHogBody)),
        row("POST", "/i/v0/e/", "/i/v0/e/", Write(PostHogBody)),
        row("GET", "/track", "/track", Write(MixpanelToken)),
        row("POST", "/track", "/track", Write(MixpanelToken)),
        row("GET", "/track/", "/track/", Write(MixpanelToken)),
        row("POST", "/import", "/import", Write(MixpanelToken)),
        row("GET", "/import/", "/import/", Write(MixpanelToken)),
    ]
}

/// The kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoKey,
    UnknownKey,
    RevokedWrite,
    RevokedRead,
    OwnWrite,
    OwnRead,
    OtherWrite,
    OtherRead,
}

const CALLERS: [Caller; 8] = [
    Caller::NoKey,
    Caller::UnknownKey,
    Caller::RevokedWrite,
    Caller::RevokedRead,
    Caller::OwnWrite,
    Caller::OwnRead,
    Caller::OtherWrite,
    Caller::OtherRead,
];

struct Keys {
    own: TestProject,
    other: TestProject,
    revoked: TestProject,
}

impl Keys {
    fn of(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::NoKey => None,
            Caller::UnknownKey => Some("sk_write_00000000000000000000000000000000"),
            Caller::RevokedWrite => Some(&self.revoked.write_key),
            Caller::RevokedRead => Some(&self.revoked.read_key),
            Caller::OwnWrite => Some(&self.own.write_key),
            Caller::OwnRead => Some(&self.own.read_key),
            Caller::OtherWrite => Some(&self.other.write_key),
            Caller::OtherRead => Some(&self.other.read_key),
        }
    }
}

/// Headers and body of a request to `route` carrying `key` as its SDK would,
/// with one event of `user` (for write routes).
fn build(route: &Route, key: Option<&str>, user: &str, time_ms: i64) -> (String, Vec<(String, String)>, Vec<u8>) {
    let iso = jiff::Timestamp::from_millisecond(time_ms).unwrap().to_string();
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let mut path = route.path.clone();
    let body = match route.access {
        Access::Public => Vec::new(),
        Access::SignIn => json!({"read_key": key.unwrap_or("")}).to_string().into_bytes(),
        Access::Read { .. } => {
            if let Some(key) = key {
                headers.push(("Authorization".into(), format!("Bearer {key}")));
            }
            if route.method == "POST" { b"{}".to_vec() } else { Vec::new() }
        }
        Access::Write(KeyIn::Bearer) => {
            if let Some(key) = key {
                headers.push(("Authorization".into(), format!("Bearer {key}")));
            }
            json!({"events": [{"user_id": user, "event_type": "e", "time": time_ms, "insert_id": user}]})
                .to_string()
                .into_bytes()
        }
        Access::Write(KeyIn::AmplitudeBody) => {
            let event = json!({"user_id": user, "event_type": "e", "time": time_ms, "insert_id": user});
            let mut body = json!({"events": [event]});
            if let Some(key) = key {
                body["api_key"] = json!(key);
            }
            body.to_string().into_bytes()
        }
        Access::Write(KeyIn::SegmentBasic) => {
            if let Some(key) = key {
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
                headers.push(("Authorization".into(), format!("Basic {basic}")));
            }
            let message = json!({"type": route.path.trim_start_matches("/v1/"), "userId": user, "event": "e",
                "name": "p", "timestamp": iso, "messageId": user});
            match route.path.as_str() {
                "/v1/batch" | "/v1/b" => json!({"batch": [json!({"type": "track", "userId": user, "event": "e",
                    "timestamp": iso, "messageId": user})]}),
                _ => message,
            }
            .to_string()
            .into_bytes()
        }
        Access::Write(KeyIn::PostHogBody) => {
            let event = json!({"event": "e", "distinct_id": user, "timestamp": iso, "uuid": user});
            let mut body = json!({"batch": [event]});
            if let Some(key) = key {
                body["api_key"] = json!(key);
            }
            body.to_string().into_bytes()
        }
        Access::Write(KeyIn::MixpanelToken) => {
            let mut properties = json!({"distinct_id": user, "time": time_ms / 1000, "$insert_id": user});
            if let Some(key) = key {
                properties["token"] = json!(key);
            }
            let data = base64::engine::general_purpose::STANDARD
                .encode(json!([{"event": "e", "properties": properties}]).to_string());
            if route.method == "GET" {
                path = format!("{path}?data={}", data.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"));
                Vec::new()
            } else {
                headers[0].1 = "application/x-www-form-urlencoded".into();
                format!("data={data}").into_bytes()
            }
        }
    };
    (path, headers, body)
}

/// The routes the server declares (`.route("...")` in its source).
fn declared_routes() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let mut found = BTreeSet::new();
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split(".route(\"").skip(1) {
                    found.insert(piece.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn every_route_refuses_every_caller_it_does_not_explicitly_allow() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let keys = Keys {
        own: create_project(data, "own"),
        other: create_project(data, "other"),
        revoked: create_project(data, "revoked"),
    };
    for key in [&keys.revoked.write_key, &keys.revoked.read_key] {
        let output =
            Command::new(BIN).args(["project", "revoke-key", "--data", data.to_str().unwrap(), key]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let server = TestServer::start(data, free_port());
    let t0 = now_ms() - 60 * 60_000;
    let seed = json!({"events": [{"user_id": SECRET_USER, "event_type": "e", "time": t0, "insert_id": "seed"}]});
    assert_eq!(server.post("/v1/events", Some(&keys.own.write_key), &seed).status, 200);
    let sessions = server.get(&format!("/v1/sessions?user_id={SECRET_USER}"), Some(&keys.own.read_key)).json();
    let session_uid = sessions["sessions"][0]["session_uid"].as_str().unwrap().to_string();

    let table = routes(&session_uid);
    let covered: BTreeSet<String> = table.iter().map(|r| r.template.to_string()).collect();
    let missing: Vec<String> = declared_routes().difference(&covered).cloned().collect();
    assert!(missing.is_empty(), "routes without a row in the authorization matrix: {missing:?}");

    let mut accepted_writes = BTreeSet::new();
    let mut other_writes = BTreeSet::new();
    for (n, route) in table.iter().enumerate() {
        for caller in CALLERS {
            let user = format!("w{n}-{caller:?}");
            let (path, headers, body) = build(route, keys.of(caller), &user, t0 + n as i64);
            let headers: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let (status, _, text) = server.request(route.method, &path, &headers, &body);
            let what = format!(
                "{} {} as {caller:?}: {status} {}",
                route.method,
                path,
                text.chars().take(200).collect::<String>()
            );
            match route.access {
                Access::Public => assert!(status < 400, "{what}"),
                Access::SignIn => {
                    let allowed = caller == Caller::OwnRead || caller == Caller::OtherRead;
                    assert_eq!(status == 204, allowed, "{what}");
                }
                Access::Read { shows_user } => match caller {
                    Caller::OwnRead => {
                        assert_eq!(status, 200, "{what}");
                        if shows_user {
                            assert!(text.contains(SECRET_USER), "the own project's data is there: {what}");
                        }
                    }
                    Caller::OtherRead => {
                        // A 404 may repeat the id asked for; an answer must hold nothing of the other project.
                        assert!(status == 200 || status == 404, "{what}");
                        assert!(status == 404 || !text.contains(SECRET_USER), "another project's data leaked: {what}");
                    }
                    Caller::OwnWrite | Caller::OtherWrite => assert_eq!(status, 403, "{what}"),
                    Caller::NoKey | Caller::UnknownKey | Caller::RevokedWrite | Caller::RevokedRead => {
                        assert_eq!(status, 401, "{what}")
                    }
                },
                Access::Write(_) => match caller {
                    Caller::OwnWrite => {
                        assert_eq!(status, 200, "{what}");
                        accepted_writes.insert(user);
                    }
                    Caller::OtherWrite => {
                        assert_eq!(status, 200, "{what}");
                        other_writes.insert(user);
                    }
                    _ => assert!((400..500).contains(&status), "{what}"),
                },
            }
        }
    }

    // Refused writes stored nothing; accepted ones went to their key's project only.
    let users_of = |key: &str| -> BTreeSet<String> {
        let export = server.get("/v1/export/events?format=ndjson", Some(key));
        assert_eq!(export.status, 200);
        export
            .body
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["user_id"].as_str().map(str::to_string))
            .collect()
    };
    let mut expected_own = accepted_writes.clone();
    expected_own.insert(SECRET_USER.to_string());
    assert_eq!(users_of(&keys.own.read_key), expected_own);
    assert_eq!(users_of(&keys.other.read_key), other_writes);
    assert!(accepted_writes.len() >= 19, "every write route accepted its own key");
}
