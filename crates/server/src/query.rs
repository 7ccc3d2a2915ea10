//! The query API (read key, one project's data): board statistics, session
//! lists and details, app usage, cohorts, the change feed, the timeout
//! preview and session exports. See `docs/http-api.md` and `/openapi.json`.
//!
//! Days are civil dates in the project's time zone; a range `from..=to` is
//! inclusive, and a session counts on the day it starts.

use std::str::FromStr;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sessionizer_engine::UserKey;
use sessionizer_store::{
    ChangeRecord, CohortFilter, Project, SESSIONS_PER_USER_BUCKETS, SessionFilter, Store, sessionize_stored,
};

use crate::error::ApiError;
use crate::limits::{
    DEFAULT_SESSIONS_PER_PAGE, MAX_CHANGES_PER_PAGE, MAX_COHORT_USERS_SHOWN, MAX_LENGTH_BOUNDS, MAX_PREVIEW_EVENTS,
    MAX_PREVIEW_TIMEOUTS, MAX_QUERY_RANGE_DAYS, MAX_SESSION_EVENTS_SHOWN, MAX_SESSIONS_PER_RESPONSE,
    RECENT_SESSIONS_SHOWN,
};
use crate::reads::session_json;
use crate::session_cursor::{decode_session_cursor, encode_session_cursor};
use crate::{AppState, ReadSource};

/// Default bounds of the length distribution: 10 s, 30 s, 1, 2, 5, 10, 30 min, 1 h, 2 h.
pub(crate) const DEFAULT_LENGTH_BOUNDS_MS: [i64; 9] =
    [10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000];

/// Bucket bounds of the timeout preview's gap histogram.
const GAP_BOUNDS_MS: [i64; 14] = [
    10_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
];

const DAY_MS: i64 = 86_400_000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/project", get(project_info))
        .route("/v1/stats/range", get(stats_range))
        .route("/v1/stats/daily", get(stats_daily))
        .route("/v1/stats/length-distribution", get(stats_length_distribution))
        .route("/v1/stats/summary", get(stats_summary))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{session_uid}", get(session_detail))
        .route("/v1/users/{user_id}", get(user_usage))
        .route("/v1/cohorts/preview", post(cohort_preview))
        .route("/v1/changes", get(changes))
        .route("/v1/timeout-preview", get(timeout_preview))
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

fn json_response(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The project a read key may read, with its settings.
pub(crate) fn project_of(store: &Store, id: i64) -> Result<Project, ApiError> {
    store
        .projects()?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::NotFound("the key's project no longer exists".into()))
}

fn time_zone_of(project: &Project) -> TimeZone {
    TimeZone::get(&project.settings.time_zone).unwrap_or(TimeZone::UTC)
}

/// An inclusive range of days and the instants it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DayRange {
    pub(crate) from: Date,
    pub(crate) to: Date,
    pub(crate) from_day: i32,
    pub(crate) to_day: i32,
    /// Start of `from` in the project's time zone.
    pub(crate) from_ms: i64,
    /// Start of the day after `to`.
    pub(crate) to_ms: i64,
}

/// Days since 1970-01-01 of a civil date.
pub(crate) fn day_number(date: Date) -> i32 {
    let seconds = date.to_zoned(TimeZone::UTC).map(|z| z.timestamp().as_second()).unwrap_or(0);
    seconds.div_euclid(86_400) as i32
}

fn date_of_day(day: i32) -> Date {
    Timestamp::from_second(i64::from(day) * 86_400).map(|t| t.to_zoned(TimeZone::UTC).date()).unwrap_or_default()
}

fn start_of(date: Date, time_zone: &TimeZone) -> Result<i64, ApiError> {
    date.to_zoned(time_zone.clone())
        .map(|zoned| zoned.timestamp().as_millisecond())
        .map_err(|e| ApiError::BadRequest(format!("{date} has no start in the project's time zone: {e}")))
}

fn parse_date(name: &str, text: &str) -> Result<Date, ApiError> {
    let well_formed = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    match Date::from_str(text) {
        Ok(date) if well_formed => Ok(date),
        _ => Err(ApiError::BadRequest(format!("{name}: expected a date as YYYY-MM-DD, got {text:?}"))),
    }
}

/// Resolves `from`/`to` (default: the last 30 days up to today in the
/// project's time zone) and checks them.
pub(crate) fn day_range(
    from: Option<&str>,
    to: Option<&str>,
    time_zone: &TimeZone,
    now_ms: i64,
) -> Result<DayRange, ApiError> {
    let today = Timestamp::from_millisecond(now_ms).map(|t| t.to_zoned(time_zone.clone()).date()).unwrap_or_default();
    let to = match to.filter(|t| !t.is_empty()) {
        Some(text) => parse_date("to", text)?,
        None => today,
    };
    let from = match from.filter(|t| !t.is_empty()) {
        Some(text) => parse_date("from", text)?,
        None => date_of_day(day_number(to) - 29),
    };
    let (from_day, to_day) = (day_number(from), day_number(to));
    if from_day > to_day {
        return Err(ApiError::BadRequest(format!("from ({from}) is after to ({to})")));
    }
    let days = to_day - from_day + 1;
    if days > MAX_QUERY_RANGE_DAYS {
        return Err(ApiError::BadRequest(format!(
            "the range covers {days} days; at most {MAX_QUERY_RANGE_DAYS} are allowed"
        )));
    }
    let from_ms = start_of(from, time_zone)?;
    let to_ms = start_of(date_of_day(to_day + 1), time_zone)?;
    Ok(DayRange { from, to, from_day, to_day, from_ms, to_ms })
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DistributionQuery {
    from: Option<String>,
    to: Option<String>,
    bounds_ms: Option<String>,
}

fn project_json(project: &Project) -> Value {
    json!({
        "project_id": project.public_id,
        "name": project.name,
        "time_zone": project.settings.time_zone,
        "timeout_ms": project.settings.timeout_ms,
        "settings": project.settings,
    })
}

async fn project_info(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let body = match &state.source {
        ReadSource::Embedded => state.readers.run(move |store| Ok(project_json(&project_of(store, project)?))).await?,
        #[cfg(feature = "cluster")]
        ReadSource::Cluster(cluster) => project_json(&cluster.project(project)?),
    };
    Ok(json_response(body))
}

/// The first and last day with a session start, in the project's time zone.
fn start_range_json(project: &Project, range: Option<(i64, i64)>) -> Value {
    let time_zone = time_zone_of(project);
    let date = |ms: i64| -> Value {
        let date = Timestamp::from_millisecond(ms).map(|t| t.to_zoned(time_zone.clone()).date());
        date.map_or(Value::Null, |d| json!(d.to_string()))
    };
    match range {
        Some((first, last)) => json!({"first_date": date(first), "last_date": date(last)}),
        None => json!({"first_date": null, "last_date": null}),
    }
}

async fn stats_range(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let body = match &state.source {
        ReadSource::Embedded => {
            state
                .readers
                .run(move |store| {
                    let project = project_of(store, project)?;
                    Ok(start_range_json(&project, store.session_start_range(project.id)?))
                })
                .await?
        }
        #[cfg(feature = "cluster")]
        ReadSource::Cluster(cluster) => {
            let project = cluster.project(project)?;
            start_range_json(&project, cluster.session_start_range(project.id).await?)
        }
    };
    Ok(json_response(body))
}

/// Which of the board's figures a statistics route shows: the embedded board
/// index computes them all in one pass; a query node asks ClickHouse for these
/// only (the cluster crate's `FigureParts`, which builds without it cannot name).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
struct Needs {
    days: bool,
    lengths: bool,
    users: bool,
}

/// The board's figures for the request's day range, shaped by `answer`: the
/// one path of the three statistics routes.
async fn board_figures(
    state: &AppState,
    headers: &HeaderMap,
    (from, to): (Option<String>, Option<String>),
    (bounds_ms, needs): (Vec<i64>, Needs),
    answer: impl FnOnce(&Project, &DayRange, &sessionizer_store::BoardFigures, &[i64]) -> Value + Send + 'static,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(headers)?;
    #[cfg(not(feature = "cluster"))]
    let _ = needs;
    #[cfg(feature = "cluster")]
    if let ReadSource::Cluster(cluster) = &state.source {
        let project = cluster.project(project)?;
        let range = day_range(from.as_deref(), to.as_deref(), &time_zone_of(&project), now_ms())?;
        let parts = crate::cluster_reads::FigureParts { days: needs.days, lengths: needs.lengths, users: needs.users };
        let figures = cluster.figures(&project, (range.from_day, range.to_day), &bounds_ms, parts).await?;
        return Ok(json_response(answer(&project, &range, &figures, &bounds_ms)));
    }
    let board = state.board.clone();
    let body = state
        .readers
        .run(move |store| {
            let project = project_of(store, project)?;
            let range = day_range(from.as_deref(), to.as_deref(), &time_zone_of(&project), now_ms())?;
            let figures = board.read(store, |b| b.figures(project.id, range.from_day, range.to_day, &bounds_ms))?;
            Ok(answer(&project, &range, &figures, &bounds_ms))
        })
        .await?;
    Ok(json_response(body))
}

async fn stats_daily(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let needs = Needs { days: true, lengths: false, users: false };
    board_figures(&state, &headers, (query.from, query.to), (Vec::new(), needs), |project, range, figures, _| {
        let days: Vec<Value> = figures
            .days
            .iter()
            .enumerate()
            .map(|(i, day)| {
                json!({
                    "date": date_of_day(range.from_day + i as i32).to_string(),
                    "sessions": day.sessions,
                    "total_length_ms": day.total_length_ms,
                    "users": day.users,
                    "avg_length_ms": average(day.total_length_ms, day.sessions),
                })
            })
            .collect();
        json!({
            "from": range.from.to_string(),
            "to": range.to.to_string(),
            "time_zone": project.settings.time_zone,
            "days": days,
        })
    })
    .await
}

/// Mean in whole ms, rounded half up; 0 with no sessions.
fn average(total_ms: i64, count: u64) -> i64 {
    if count == 0 { 0 } else { (2 * total_ms + count as i64).div_euclid(2 * count as i64) }
}

fn parse_bounds(text: Option<&str>) -> Result<Vec<i64>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(DEFAULT_LENGTH_BOUNDS_MS.to_vec()) };
    let mut bounds = Vec::new();
    for part in text.split(',') {
        let bound: i64 = part
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("bounds_ms: {part:?} is not a whole number of milliseconds")))?;
        if bound <= 0 {
            return Err(ApiError::BadRequest(format!("bounds_ms: {bound} is not positive")));
        }
        if bounds.last().is_some_and(|&last| bound <= last) {
            return Err(ApiError::BadRequest("bounds_ms must be strictly increasing".into()));
        }
        bounds.push(bound);
    }
    if bounds.len() > MAX_LENGTH_BOUNDS {
        return Err(ApiError::BadRequest(format!("bounds_ms: at most {MAX_LENGTH_BOUNDS} bounds")));
    }
    Ok(bounds)
}

async fn stats_length_distribution(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DistributionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let bounds = parse_bounds(query.bounds_ms.as_deref())?;
    let needs = Needs { days: false, lengths: true, users: false };
    board_figures(&state, &headers, (query.from, query.to), (bounds, needs), |_, range, figures, bounds| {
        let buckets: Vec<Value> = figures
            .length_buckets
            .iter()
            .enumerate()
            .map(|(i, &sessions)| {
                let min = if i == 0 { 0 } else { bounds[i - 1] };
                json!({"min_length_ms": min, "max_length_ms": bounds.get(i), "sessions": sessions})
            })
            .collect();
        json!({"from": range.from.to_string(), "to": range.to.to_string(), "bounds_ms": bounds, "buckets": buckets})
    })
    .await
}

async fn stats_summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let needs = Needs { days: true, lengths: true, users: true };
    board_figures(&state, &headers, (query.from, query.to), (Vec::new(), needs), |_, range, f, _| {
        let distribution: Vec<Value> = SESSIONS_PER_USER_BUCKETS
            .iter()
            .zip(f.sessions_per_user)
            .map(|(&(label, _, _), users)| json!({"label": label, "users": users}))
            .collect();
        let ratio = |part: u64, whole: u64| if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
        json!({
            "from": range.from.to_string(),
            "to": range.to.to_string(),
            "sessions": f.sessions,
            "users": f.users,
            "total_length_ms": f.total_length_ms,
            "avg_length_ms": average(f.total_length_ms, f.sessions),
            "median_length_ms": f.median_length_ms,
            "p90_length_ms": f.p90_length_ms,
            "sessions_per_user": {"mean": ratio(f.sessions, f.users), "distribution": distribution},
            "single_event_share": ratio(f.single_event_sessions, f.sessions),
            "open_sessions": f.open_sessions,
        })
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionsQuery {
    from: Option<String>,
    to: Option<String>,
    min_length_ms: Option<i64>,
    max_length_ms: Option<i64>,
    user_id: Option<String>,
    device_id: Option<String>,
    event_type: Option<String>,
    order: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let user =
        match (query.user_id.clone().filter(|u| !u.is_empty()), query.device_id.clone().filter(|d| !d.is_empty())) {
            (Some(_), Some(_)) => return Err(ApiError::BadRequest("give at most one of user_id and device_id".into())),
            (Some(user_id), None) => Some(UserKey::User(user_id.into())),
            (None, Some(device_id)) => Some(UserKey::Device(device_id.into())),
            (None, None) => None,
        };
    let newest_first = match query.order.as_deref().unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => return Err(ApiError::BadRequest(format!("order: {other:?} is not asc or desc"))),
    };
    let limit = query.limit.unwrap_or(DEFAULT_SESSIONS_PER_PAGE);
    if limit == 0 || limit > MAX_SESSIONS_PER_RESPONSE {
        return Err(ApiError::BadRequest(format!("limit: between 1 and {MAX_SESSIONS_PER_RESPONSE}")));
    }
    if let (Some(min), Some(max)) = (query.min_length_ms, query.max_length_ms)
        && min > max
    {
        return Err(ApiError::BadRequest(format!("min_length_ms ({min}) is above max_length_ms ({max})")));
    }
    let cursor = query.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_session_cursor).transpose()?;
    let filter_of = move |project: &Project| -> Result<SessionFilter, ApiError> {
        // A user's history: all of it unless a range is asked for.
        let whole_history = user.is_some() && query.from.is_none() && query.to.is_none();
        let (from_ms, to_ms) = if whole_history {
            (i64::MIN, i64::MAX)
        } else {
            let range = day_range(query.from.as_deref(), query.to.as_deref(), &time_zone_of(project), now_ms())?;
            (range.from_ms, range.to_ms)
        };
        Ok(SessionFilter {
            from_ms,
            to_ms,
            min_length_ms: query.min_length_ms,
            max_length_ms: query.max_length_ms,
            user,
            event_type: query.event_type.filter(|t| !t.is_empty()),
            after: cursor,
            newest_first,
        })
    };
    let mut sessions = match &state.source {
        ReadSource::Embedded => {
            state
                .readers
                .run(move |store| {
                    let project = project_of(store, project)?;
                    Ok(store.sessions_page(project.id, &filter_of(&project)?, limit + 1)?)
                })
                .await?
        }
        #[cfg(feature = "cluster")]
        ReadSource::Cluster(cluster) => {
            let project = cluster.project(project)?;
            cluster.sessions_page(project.id, &filter_of(&project)?, limit + 1).await?
        }
    };
    let more = sessions.len() > limit;
    sessions.truncate(limit);
    let next_cursor = if more { sessions.last().map(|s| encode_session_cursor(s.start_ms, &s.user)) } else { None };
    let list: Vec<Value> = sessions.iter().map(session_json).collect();
    Ok(json_response(json!({"sessions": list, "next_cursor": next_cursor})))
}

pub(crate) fn change_json(change: &ChangeRecord) -> Value {
    json!({
        "seq": change.seq,
        "kind": change.kind,
        "user_id": change.user.user_id(),
        "device_id": change.user.device_id(),
        "session_id": change.session_id,
        "session_uid": change.session_uid,
        "start_ms": change.start_ms,
        "end_ms": change.end_ms,
        "length_ms": change.end_ms - change.start_ms,
        "last_event_ms": change.last_event_ms,
        "event_count": change.event_count,
        "end_reason": change.end_reason,
        "concluded": change.concluded,
        "superseded_by": change.superseded_by,
        "raised_at_ms": change.raised_at_ms,
    })
}

async fn session_detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(session_uid): Path<String>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let parsed_uid = uuid::Uuid::parse_str(&session_uid)
        .map_err(|_| ApiError::BadRequest(format!("{session_uid:?} is not a session uid (a UUID)")))?;
    let uid = parsed_uid.to_string();
    #[cfg(feature = "cluster")]
    if let ReadSource::Cluster(cluster) = &state.source {
        let project = cluster.project(project)?;
        let Some(session) = cluster.session_by_uid(project.id, &uid).await? else {
            return Err(ApiError::NotFound(format!("no session {uid}")));
        };
        let (_, classifier) = project.settings.compile()?;
        let excluded: Vec<&str> = classifier.excluded_event_types().collect();
        let events = cluster.session_events(project.id, &session, &excluded, MAX_SESSION_EVENTS_SHOWN + 1).await?;
        let history = cluster.session_changes(project.id, &uid, MAX_CHANGES_PER_PAGE).await?;
        return Ok(json_response(session_detail_json(&session, &events, &history)));
    }
    let body = state
        .readers
        .run(move |store| {
            let project = project_of(store, project)?;
            let history = store.session_history(project.id, &parsed_uid, MAX_CHANGES_PER_PAGE)?;
            let Some(session) = store.session_by_uid(project.id, &uid)? else {
                let successor = history.iter().rev().find_map(|c| c.superseded_by.clone());
                return Err(ApiError::NotFound(match (history.is_empty(), successor) {
                    (true, _) => format!("no session {uid}"),
                    (false, Some(by)) => format!("session {uid} no longer exists: it was merged into {by}"),
                    (false, None) => format!("session {uid} no longer exists: a rebuild removed it"),
                }));
            };
            let (_, classifier) = project.settings.compile()?;
            let classify = |event_type: &str, passive: bool| classifier.classify(event_type, passive);
            let events = store.session_events(project.id, &session, &classify, MAX_SESSION_EVENTS_SHOWN + 1)?;
            Ok(session_detail_json(&session, &events, &history))
        })
        .await?;
    Ok(json_response(body))
}

/// A session with its events (at most [`MAX_SESSION_EVENTS_SHOWN`] of
/// `events`; more marks the list truncated) and its revisions.
fn session_detail_json(
    session: &sessionizer_store::StoredSession,
    events: &[sessionizer_store::StoredEvent],
    history: &[ChangeRecord],
) -> Value {
    let truncated = events.len() > MAX_SESSION_EVENTS_SHOWN;
    let events: Vec<Value> = events
        .iter()
        .take(MAX_SESSION_EVENTS_SHOWN)
        .map(|stored| {
            let event = &stored.event;
            let properties = event.properties.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok());
            json!({
                "time_ms": event.time_ms,
                "event_type": event.event_type,
                "page": event.page,
                "insert_id": event.insert_id,
                "passive": event.passive,
                "properties": properties,
            })
        })
        .collect();
    let revisions: Vec<Value> = history.iter().map(change_json).collect();
    json!({
        "session": session_json(session),
        "events": events,
        "events_truncated": truncated,
        "revisions": revisions,
    })
}

async fn user_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let user = UserKey::User(user_id.as_str().into());
    let found = match &state.source {
        ReadSource::Embedded => {
            state
                .readers
                .run(move |store| {
                    let Some(usage) = store.user_usage(project, &user)? else { return Ok(None) };
                    let filter = SessionFilter {
                        from_ms: i64::MIN,
                        to_ms: i64::MAX,
                        user: Some(user),
                        newest_first: true,
                        ..SessionFilter::default()
                    };
                    Ok(Some((usage, store.sessions_page(project, &filter, RECENT_SESSIONS_SHOWN)?)))
                })
                .await?
        }
        #[cfg(feature = "cluster")]
        ReadSource::Cluster(cluster) => {
            let project = cluster.project(project)?;
            let sessions = cluster.sessions_of_user(project.id, &user).await?;
            let usage = (!sessions.is_empty()).then(|| sessionizer_store::UserUsage {
                session_count: sessions.len() as u64,
                first_seen_ms: sessions.iter().map(|s| s.start_ms).min().unwrap_or_default(),
                last_seen_ms: sessions.iter().map(|s| s.last_event_ms).max().unwrap_or_default(),
                total_length_ms: sessions.iter().map(|s| s.length_ms()).sum(),
            });
            usage.map(|usage| (usage, sessions.into_iter().rev().take(RECENT_SESSIONS_SHOWN).collect()))
        }
    };
    let Some((usage, recent)) = found else {
        return Err(ApiError::NotFound(format!("no sessions for user {user_id:?}")));
    };
    Ok(json_response(json!({
        "user_id": user_id,
        "session_count": usage.session_count,
        "first_seen_ms": usage.first_seen_ms,
        "last_seen_ms": usage.last_seen_ms,
        "total_length_ms": usage.total_length_ms,
        "recent_sessions": recent.iter().map(session_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CohortRequest {
    from: Option<String>,
    to: Option<String>,
    #[serde(default = "one")]
    min_sessions: u64,
    #[serde(default)]
    min_length_ms: i64,
    max_length_ms: Option<i64>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatQuery {
    format: Option<String>,
}

/// A CSV field, quoted when needed, with spreadsheet formulas neutralised
/// (a leading `=`, `+`, `-`, `@`, tab or carriage return gets a `'`).
pub(crate) fn csv_field(text: &str) -> String {
    let neutral = match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_string(),
    };
    if neutral.contains([',', '"', '\n', '\r']) { format!("\"{}\"", neutral.replace('"', "\"\"")) } else { neutral }
}

async fn cohort_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    format: Result<Query<FormatQuery>, QueryRejection>,
    request: Result<axum::Json<CohortRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let Query(format) = format.map_err(bad_query)?;
    let csv = match format.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => return Err(ApiError::BadRequest(format!("format: {other:?} is not json or csv"))),
    };
    let axum::Json(request) = request.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if request.min_length_ms < 0 || request.max_length_ms.is_some_and(|max| max < request.min_length_ms) {
        return Err(ApiError::BadRequest("min_length_ms must be at least 0 and at most max_length_ms".into()));
    }
    let filter_of = move |project: &Project| -> Result<(DayRange, CohortFilter), ApiError> {
        let range = day_range(request.from.as_deref(), request.to.as_deref(), &time_zone_of(project), now_ms())?;
        let filter = CohortFilter {
            from_day: range.from_day,
            to_day: range.to_day,
            min_sessions: request.min_sessions.max(1),
            min_length_ms: request.min_length_ms,
            max_length_ms: request.max_length_ms,
        };
        Ok((range, filter))
    };
    let (range, users) = match &state.source {
        ReadSource::Embedded => {
            let board = state.board.clone();
            state
                .readers
                .run(move |store| {
                    let project = project_of(store, project)?;
                    let (range, filter) = filter_of(&project)?;
                    let users = board
                        .read(store, |b| b.cohort(project.id, &filter).into_iter().cloned().collect::<Vec<_>>())?;
                    Ok((range, users))
                })
                .await?
        }
        #[cfg(feature = "cluster")]
        ReadSource::Cluster(cluster) => {
            let project = cluster.project(project)?;
            let (range, filter) = filter_of(&project)?;
            (range, cluster.cohort(&project, &filter).await?)
        }
    };
    if csv {
        let mut text = String::from("user_id,device_id\n");
        for user in &users {
            text.push_str(&csv_field(user.user_id().unwrap_or("")));
            text.push(',');
            text.push_str(&csv_field(user.device_id().unwrap_or("")));
            text.push('\n');
        }
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"cohort.csv\""),
            ],
            text,
        )
            .into_response());
    }
    let shown: Vec<Value> = users
        .iter()
        .take(MAX_COHORT_USERS_SHOWN)
        .map(|u| json!({"user_id": u.user_id(), "device_id": u.device_id()}))
        .collect();
    Ok(json_response(json!({
        "from": range.from.to_string(),
        "to": range.to.to_string(),
        "count": users.len(),
        "users": shown,
        "truncated": users.len() > MAX_COHORT_USERS_SHOWN,
    })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let limit = query.limit.unwrap_or(MAX_CHANGES_PER_PAGE);
    if limit == 0 || limit > MAX_CHANGES_PER_PAGE {
        return Err(ApiError::BadRequest(format!("limit: between 1 and {MAX_CHANGES_PER_PAGE}")));
    }
    #[cfg(feature = "cluster")]
    if let ReadSource::Cluster(cluster) = &state.source {
        let cursor = crate::cluster_reads::decode_feed_cursor(query.cursor.as_deref().unwrap_or(""))?;
        let (changes, next) = cluster.changes_page(project, cursor, limit).await?;
        return Ok(json_response(json!({
            "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
            "next_cursor": crate::cluster_reads::encode_feed_cursor(&next),
        })));
    }
    let after: i64 = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(text) => text
            .parse()
            .ok()
            .filter(|&seq: &i64| seq >= 0)
            .ok_or_else(|| ApiError::BadRequest(format!("cursor {text:?} is not one this server gave out")))?,
    };
    let body = state
        .readers
        .run(move |store| {
            let changes = store.changes_page(project, after, limit)?;
            let next = changes.last().map_or(after, |c| c.seq);
            Ok(json!({
                "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
                "next_cursor": next.to_string(),
            }))
        })
        .await?;
    Ok(json_response(body))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    from: Option<String>,
    to: Option<String>,
    timeouts: Option<String>,
}

fn parse_timeouts(text: Option<&str>) -> Result<Vec<i64>, ApiError> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or("5m,10m,30m,60m");
    let mut timeouts = Vec::new();
    for part in text.split(',') {
        let duration = SignedDuration::from_str(part.trim())
            .map_err(|_| ApiError::BadRequest(format!("timeouts: {part:?} is not a duration like 30m, 90s or 1h")))?;
        let ms = duration.as_millis();
        if !(1_000..=7 * DAY_MS as i128).contains(&ms) {
            return Err(ApiError::BadRequest(format!("timeouts: {part:?} is not between 1s and 7 days")));
        }
        timeouts.push(ms as i64);
    }
    if timeouts.len() > MAX_PREVIEW_TIMEOUTS {
        return Err(ApiError::BadRequest(format!("timeouts: at most {MAX_PREVIEW_TIMEOUTS}")));
    }
    timeouts.sort_unstable();
    timeouts.dedup();
    Ok(timeouts)
}

/// The nearest-rank median of `values` (sorted in place).
fn median(values: &mut [i64]) -> Option<i64> {
    values.sort_unstable();
    let rank = values.len().div_ceil(2);
    rank.checked_sub(1).and_then(|i| values.get(i).copied())
}

async fn timeout_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let timeouts = parse_timeouts(query.timeouts.as_deref())?;
    #[cfg(feature = "cluster")]
    if let ReadSource::Cluster(cluster) = &state.source {
        let project = cluster.project(project)?;
        let range = day_range(query.from.as_deref(), query.to.as_deref(), &time_zone_of(&project), now_ms())?;
        let (total_users, sampled) = cluster.sample_users(&project, &range, MAX_PREVIEW_EVENTS).await?;
        let events = cluster.events_of_users(project.id, &sampled, (range.from_ms, range.to_ms)).await?;
        let body = tokio::task::spawn_blocking(move || {
            preview_json(&project, &range, &timeouts, (total_users, sampled.len() as u64), &events)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the preview task failed: {e}")))??;
        return Ok(json_response(body));
    }
    let board = state.board.clone();
    let body = state
        .readers
        .run(move |store| {
            let project = project_of(store, project)?;
            let range = day_range(query.from.as_deref(), query.to.as_deref(), &time_zone_of(&project), now_ms())?;
            // A deterministic sample of the users active in the range (by a
            // hash of their key), as many as keep the events read under the bound.
            let mut users = board.read(store, |b| {
                b.users_in_range(project.id, range.from_day, range.to_day)
                    .into_iter()
                    .map(|(user, events)| (user.clone(), events))
                    .collect::<Vec<_>>()
            })?;
            let total_users = users.len() as u64;
            users.sort_by_key(|(user, _)| (sessionizer_engine::client_session_key(user.id()), user.clone()));
            let mut budget = 0u64;
            let sampled: Vec<&UserKey> = users
                .iter()
                .take_while(|(_, events)| {
                    budget += events;
                    budget <= MAX_PREVIEW_EVENTS as u64
                })
                .map(|(user, _)| user)
                .collect();
            let events = store.events_of_users(project.id, &sampled, range.from_ms, range.to_ms)?;
            preview_json(&project, &range, &timeouts, (total_users, sampled.len() as u64), &events)
        })
        .await?;
    Ok(json_response(body))
}

/// The timeout preview's answer from the sampled users' events: the gaps
/// between active events, and the sessions each candidate timeout would give.
fn preview_json(
    project: &Project,
    range: &DayRange,
    timeouts: &[i64],
    (total_users, sampled_users): (u64, u64),
    events: &[sessionizer_store::StoredEvent],
) -> Result<Value, ApiError> {
    let sample_fraction = if total_users == 0 { 1.0 } else { sampled_users as f64 / total_users as f64 };
    let (rules, classifier) = project.settings.compile()?;
    let gap_histogram = gap_histogram(events, &classifier);
    let mut per_timeout = Vec::new();
    for &timeout_ms in timeouts {
        let settings = sessionizer_store::ProjectSettings { timeout_ms, ..project.settings.clone() };
        let (candidate, _) = settings.compile()?;
        let sessions = sessionize_stored(&project.public_id, events, &candidate, &classifier, i64::MAX);
        let mut lengths: Vec<i64> = sessions.iter().map(|s| s.length_ms()).collect();
        let estimated =
            if sample_fraction > 0.0 { (sessions.len() as f64 / sample_fraction).round() as u64 } else { 0 };
        per_timeout.push(json!({
            "timeout_ms": timeout_ms,
            "current": timeout_ms == rules.timeout_ms(),
            "sessions": sessions.len(),
            "estimated_sessions": estimated,
            "median_length_ms": median(&mut lengths),
        }));
    }
    Ok(json!({
        "from": range.from.to_string(),
        "to": range.to.to_string(),
        "users": total_users,
        "sampled_users": sampled_users,
        "sample_fraction": sample_fraction,
        "events": events.len(),
        "gap_histogram": gap_histogram,
        "timeouts": per_timeout,
    }))
}

/// Gaps between each user's consecutive active events (excluded and passive
/// events neither open nor extend sessions, so they are left out).
fn gap_histogram(events: &[sessionizer_store::StoredEvent], classifier: &sessionizer_engine::EventClassifier) -> Value {
    let mut by_user: std::collections::HashMap<UserKey, Vec<i64>> = std::collections::HashMap::new();
    for stored in events {
        let event = &stored.event;
        if classifier.classify(&event.event_type, event.passive) == sessionizer_engine::EventClass::Active {
            by_user.entry(event.user_key()).or_default().push(event.time_ms);
        }
    }
    let mut counts = [0u64; GAP_BOUNDS_MS.len() + 1];
    for times in by_user.values_mut() {
        times.sort_unstable();
        for pair in times.windows(2) {
            counts[GAP_BOUNDS_MS.partition_point(|&b| b <= pair[1] - pair[0])] += 1;
        }
    }
    let buckets: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(i, &gaps)| {
            let min = if i == 0 { 0 } else { GAP_BOUNDS_MS[i - 1] };
            json!({"min_gap_ms": min, "max_gap_ms": GAP_BOUNDS_MS.get(i), "gaps": gaps})
        })
        .collect();
    json!(buckets)
}

/// The body of an export: `ndjson` (default), `csv` or `parquet`, with its content type.
pub(crate) fn export_format(format: Option<&str>) -> Result<(sessionizer_formats::FileFormat, &'static str), ApiError> {
    use sessionizer_formats::FileFormat;
    let format = match format.unwrap_or("ndjson") {
        "ndjson" => FileFormat::Ndjson,
        "csv" => FileFormat::Csv,
        "parquet" => FileFormat::Parquet,
        other => return Err(ApiError::BadRequest(format!("unknown format {other:?}: use ndjson, csv or parquet"))),
    };
    if format == FileFormat::Parquet && !cfg!(feature = "parquet") {
        return Err(ApiError::BadRequest("this build has no Parquet support".into()));
    }
    let content_type = match format {
        FileFormat::Ndjson => "application/x-ndjson",
        FileFormat::Csv => "text/csv; charset=utf-8",
        FileFormat::Parquet => "application/vnd.apache.parquet",
    };
    Ok((format, content_type))
}

/// `Body` for a streamed export.
pub(crate) fn export_body(
    content_type: &'static str,
    stream: impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    ([(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}
