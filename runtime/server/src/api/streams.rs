//! Streams: a worker's and a job's status (watched until it ends), and
//! logs (followed), as concatenated JSON or Server-Sent Events.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt, stream};
use mizzen_host_api::types::Phase;
use serde::Deserialize;
use serde_json::{Value, json};

use super::events::{job_json, status_json};
use super::query::{Flag, Query};
use super::{API_VERSION, ApiError, ApiResult, AppState, AppStateRef, ok, visible_head};
use crate::auth::Principal;
use crate::scheduler::WORKER_CONTAINER;
use crate::store::{JobRecord, rfc3339};

/// Log lines read from the store per query while streaming.
const LOG_BATCH: i64 = 500;

/// How often a stream re-reads the store when nothing on this replica
/// signalled a change (another replica may have made one).
const STREAM_POLL: Duration = Duration::from_millis(500);

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/events/{id}/worker/status", get(worker_status))
        .route("/v2/events/{id}/worker/jobs/{job}/status", get(job_status))
        .route("/v2/events/{id}/logs", get(logs))
        .route("/v2/event-watches", get(watch_events))
}

/// Events one watch follows at most: a page of the event list.
const MAX_WATCHED: usize = 100;

/// The least time between two reads of a watch's events after a change:
/// quick enough to look live, slow enough that a thousand open dashboards
/// do not read the store on every one of a busy server's changes.
const WATCH_SETTLE: Duration = Duration::from_millis(250);

/// `GET /v2/event-watches`' parameters.
#[derive(Deserialize)]
struct WatchQuery {
    /// The events whose phases to follow, comma-separated.
    #[serde(default)]
    ids: String,
    /// Say when a newer event of this project (or of any the caller sees)
    /// is accepted.
    #[serde(rename = "projectID", default)]
    project_id: String,
}

/// Server-Sent Events for a page of the event list (the dashboard's): a
/// `phase` message whenever one of the events' phase or times change
/// (first their state when the watch starts), and a `newer` message when an
/// event newer than any seen is accepted. Only what the caller may see:
/// an event of another tenant is as unknown as to `GET /v2/events/{id}`,
/// and `newer` counts the caller's events only. The watch holds the ids
/// and their last state, never a document.
async fn watch_events(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<WatchQuery>,
) -> ApiResult {
    let ids: Vec<String> = query
        .ids
        .split(',')
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > MAX_WATCHED {
        return Err(ApiError::bad(format!(
            "{} ids; a watch follows at most {MAX_WATCHED} events",
            ids.len()
        )));
    }
    let filter = crate::store::EventFilter {
        project_id: Some(query.project_id).filter(|p| !p.is_empty()),
        visible_projects: who.visible_projects(),
        ..Default::default()
    };
    let updates = state.store.status_updates();
    let seen: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    let stream = stream::unfold(
        (
            state,
            who,
            ids,
            filter,
            updates,
            seen,
            None::<Option<i64>>,
            Vec::<Value>::new(),
        ),
        |(state, who, ids, filter, mut updates, mut seen, mut newest, mut ready)| async move {
            loop {
                if let Some(message) = ready.pop() {
                    return Some((
                        (None, message),
                        (state, who, ids, filter, updates, seen, newest, ready),
                    ));
                }
                for id in &ids {
                    let Ok(head) = visible_head(&state, &who, id).await else {
                        continue;
                    };
                    let now = json!({
                        "kind": "phase",
                        "id": head.id,
                        "status": status_json(head.phase, head.started, head.ended),
                    });
                    if seen.get(id) != Some(&now) {
                        seen.insert(id.clone(), now.clone());
                        ready.push(now);
                    }
                }
                if let Ok(page) = state.store.event_page(&filter, None, 1, u64::MAX).await {
                    // The newest when the watch started (perhaps none) is the
                    // baseline; anything newer after it is news.
                    let top = page.items.first().map(|slot| slot.seq);
                    match newest {
                        Some(known) if top > known => {
                            ready.push(json!({"kind": "newer"}));
                            newest = Some(top);
                        }
                        Some(_) => {}
                        None => newest = Some(top),
                    }
                }
                if ready.is_empty() {
                    tokio::select! {
                        // A busy server changes statuses many times a
                        // second: a watch reads its page at most every
                        // WATCH_SETTLE, whatever the rate.
                        _ = updates.changed() => tokio::time::sleep(WATCH_SETTLE).await,
                        _ = tokio::time::sleep(STREAM_POLL) => {}
                    }
                }
            }
        },
    );
    Ok(stream_response(stream, true))
}

/// A stream of values as Server-Sent Events (`message` frames, then
/// `done`), or as concatenated JSON objects without `sse=true`.
fn stream_response<S>(items: S, sse: bool) -> Response
where
    S: Stream<Item = (Option<i64>, Value)> + Send + 'static,
{
    if sse {
        let frames = items
            .map(|(id, value)| {
                let mut frame = SseEvent::default().event("message").data(value.to_string());
                if let Some(id) = id {
                    frame = frame.id(id.to_string());
                }
                Ok::<_, Infallible>(frame)
            })
            .chain(stream::once(async {
                Ok(SseEvent::default().event("done").data("done"))
            }));
        Sse::new(frames)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let chunks = items.map(|(_, value)| Ok::<_, Infallible>(format!("{value}\n")));
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(chunks))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// Reads a status until it is terminal, yielding each change.
fn watch_status<F, Fut>(state: Arc<AppState>, read: F) -> impl Stream<Item = (Option<i64>, Value)>
where
    F: Fn(Arc<AppState>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Phase, Value)>> + Send,
{
    let updates = state.store.status_updates();
    stream::unfold(
        (state, read, updates, None::<Value>, false),
        |(state, read, mut updates, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let (phase, status) = read(state.clone()).await?;
                if last.as_ref() != Some(&status) {
                    let next = (
                        state,
                        read,
                        updates,
                        Some(status.clone()),
                        phase.is_terminal(),
                    );
                    return Some(((None, status), next));
                }
                tokio::select! {
                    _ = updates.changed() => {}
                    _ = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        },
    )
}

/// A status request's parameters.
#[derive(Deserialize)]
struct StatusQuery {
    /// Follow the status until it ends, rather than answer it once.
    #[serde(default)]
    watch: Flag,
    /// As Server-Sent Events rather than concatenated JSON.
    #[serde(default)]
    sse: Flag,
}

async fn worker_status(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
    Query(query): Query<StatusQuery>,
) -> ApiResult {
    let event = visible_head(&state, &who, &id).await?;
    if !query.watch.0 {
        return ok(
            StatusCode::OK,
            status_json(event.phase, event.started, event.ended),
        );
    }
    let stream = watch_status(state.clone(), move |state| {
        let id = id.clone();
        async move {
            let event = state.store.event_head(&id).await.ok()??;
            Some((
                event.phase,
                status_json(event.phase, event.started, event.ended),
            ))
        }
    });
    Ok(stream_response(stream, query.sse.0))
}

fn job_status_json(job: &JobRecord) -> Value {
    job_json(job)["status"].clone()
}

async fn job_status(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
    Query(query): Query<StatusQuery>,
) -> ApiResult {
    visible_head(&state, &who, &id).await?;
    let Some(job) = state.store.job(&id, &name).await? else {
        return Err(ApiError::NotFound {
            kind: "Job",
            id: name,
        });
    };
    if !query.watch.0 {
        return ok(StatusCode::OK, job_status_json(&job));
    }
    let stream = watch_status(state.clone(), move |state| {
        let (id, name) = (id.clone(), name.clone());
        async move {
            let job = state.store.job(&id, &name).await.ok()??;
            Some((job.phase, job_status_json(&job)))
        }
    });
    Ok(stream_response(stream, query.sse.0))
}

/// A log request's parameters.
#[derive(Deserialize)]
struct LogsQuery {
    /// The job whose logs, or none for the worker's.
    job: Option<String>,
    /// The container (the job's own name for its primary).
    container: Option<String>,
    /// Where to resume (the `Last-Event-ID` header takes precedence).
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// Follow the log until whatever writes it ends.
    #[serde(default)]
    follow: Flag,
    /// As Server-Sent Events rather than concatenated JSON.
    #[serde(default)]
    sse: Flag,
}

async fn logs(
    State(state): AppStateRef,
    who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> ApiResult {
    let event = match state.store.event_head(&id).await? {
        Some(event)
            if who.has_project_role("PROJECT_USER", &event.project_id)
                || who.has("EVENT_CREATOR", &event.source) =>
        {
            event
        }
        Some(event) if who.sees_project(&event.project_id) => {
            return Err(ApiError::forbidden("PROJECT_USER", &event.project_id));
        }
        _ => return Err(ApiError::NotFound { kind: "Event", id }),
    };
    let job_name = query.job.filter(|j| !j.is_empty());
    let container = query.container.filter(|c| !c.is_empty());
    let (logs_event, container) = match &job_name {
        None => {
            let container = container.unwrap_or_else(|| WORKER_CONTAINER.to_string());
            if container != WORKER_CONTAINER {
                return Err(ApiError::NotFound {
                    kind: "Container",
                    id: container,
                });
            }
            (event.id.clone(), container)
        }
        Some(name) => {
            let Some(job) = state.store.job(&event.id, name).await? else {
                return Err(ApiError::NotFound {
                    kind: "Job",
                    id: name.clone(),
                });
            };
            let container = container.unwrap_or_else(|| name.clone());
            let sidecars = job.spec["sidecarContainers"].as_object();
            if container != *name && !sidecars.is_some_and(|s| s.contains_key(&container)) {
                return Err(ApiError::NotFound {
                    kind: "Container",
                    id: container,
                });
            }
            (job.logs_event_id.clone(), container)
        }
    };
    let after = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .or(query.last_event_id.as_deref())
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let follow = query.follow.0;
    let stream = log_stream(
        state.clone(),
        LogCursor {
            event_id: event.id.clone(),
            logs_event: logs_event.clone(),
            job: job_name.clone().unwrap_or_default(),
            container,
            after,
            follow,
        },
    );
    Ok(stream_response(stream, query.sse.0))
}

struct LogCursor {
    event_id: String,
    logs_event: String,
    job: String,
    container: String,
    after: i64,
    follow: bool,
}

/// Whether whatever writes a log stream has ended: the job, or the worker.
async fn stream_ended(state: &AppState, cursor: &LogCursor) -> bool {
    if cursor.job.is_empty() {
        return match state.store.event_head(&cursor.event_id).await {
            Ok(Some(event)) => event.phase.is_terminal(),
            _ => true,
        };
    }
    match state.store.job(&cursor.event_id, &cursor.job).await {
        Ok(Some(job)) => job.phase.is_terminal(),
        _ => true,
    }
}

fn log_stream(state: Arc<AppState>, cursor: LogCursor) -> impl Stream<Item = (Option<i64>, Value)> {
    let updates = state.store.log_updates();
    stream::unfold(
        (state, cursor, updates, false),
        |(state, mut cursor, mut updates, mut last_read)| async move {
            loop {
                let lines = match state
                    .store
                    .logs(
                        &cursor.logs_event,
                        &cursor.job,
                        &cursor.container,
                        cursor.after,
                        LOG_BATCH,
                    )
                    .await
                {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::error!(error = %e, "reading logs failed");
                        return None;
                    }
                };
                if !lines.is_empty() {
                    cursor.after = lines.last().map(|l| l.seq).unwrap_or(cursor.after);
                    let items: Vec<(Option<i64>, Value)> = lines
                        .iter()
                        .map(|line| {
                            (
                                Some(line.seq),
                                json!({"apiVersion": API_VERSION, "kind": "LogEntry",
                                       "time": rfc3339(line.time), "message": line.message}),
                            )
                        })
                        .collect();
                    return Some((stream::iter(items), (state, cursor, updates, last_read)));
                }
                if !cursor.follow || last_read {
                    return None;
                }
                if stream_ended(&state, &cursor).await {
                    // One more read after the end: lines written just before
                    // it may still have been on their way to the store.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    last_read = true;
                    continue;
                }
                tokio::select! {
                    _ = updates.changed() => {}
                    _ = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        },
    )
    .flatten()
}
