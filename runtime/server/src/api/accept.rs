//! Accepting new events: checking one, copying it to every project that
//! subscribes to it (Brigade's fan-out) and storing the copies durably. Event
//! creation, retries, clones, the webhook gateways and projects' schedules
//! all go through here.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use mizzen_host_api::types::Phase;
use mizzen_runtime::project::{
    EventDetails, EventSubscription, MAX_LABEL_LEN, is_event_source_char, is_label_char,
    server_clone_url_problem,
};
use mizzen_runtime::schedule::{CRON_SOURCE, Schedule, TICK_LABEL, tick_label};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::documents::held_answer;
use super::events::event_json;
use super::projects::project_gone;
use super::{ApiError, ApiResult, AppState, MAX_PAGE};
use crate::auth::Principal;
use crate::gateways;
use crate::store::{EventDocument, EventRecord, NewEvent, ScheduleRecord, TickOutcome, now_micros};
use crate::traces::EventTrace;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventBody {
    #[serde(rename = "projectID", default)]
    pub(super) project_id: String,
    #[serde(default)]
    pub(super) source: String,
    #[serde(rename = "type", default)]
    pub(super) event_type: String,
    #[serde(default)]
    pub(super) qualifiers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) short_title: String,
    #[serde(default)]
    pub(super) long_title: String,
    #[serde(default)]
    pub(super) git: Option<Value>,
    #[serde(default)]
    pub(super) payload: String,
}

pub(super) fn validate_event(body: &EventBody) -> ApiResult<()> {
    let mut details = Vec::new();
    if body.source.is_empty() {
        details.push("source: required".to_string());
    } else if !body.source.chars().all(is_event_source_char) || body.source.len() > MAX_LABEL_LEN {
        details.push(format!(
            "source {:?}: must match ^[\\w:/\\-\\.\\?=@]*$ (at most 255 characters)",
            body.source
        ));
    }
    if body.event_type.is_empty() {
        details.push("type: required".to_string());
    } else if !body.event_type.chars().all(is_label_char) || body.event_type.len() > MAX_LABEL_LEN {
        details.push(format!(
            "type {:?}: must match ^[\\w:/\\-\\.\\?=\\*]*$ (at most 255 characters)",
            body.event_type
        ));
    }
    for (field, map) in [("qualifiers", &body.qualifiers), ("labels", &body.labels)] {
        for (key, value) in map.iter().flatten() {
            if !value.chars().all(is_label_char) || value.len() > MAX_LABEL_LEN {
                details.push(format!(
                    "{field}.{key}: value {value:?} must match ^[\\w:/\\-\\.\\?=\\*]*$"
                ));
            }
        }
    }
    let clone_url = body
        .git
        .as_ref()
        .and_then(|git| git.get("cloneURL"))
        .map(|url| url.as_str().unwrap_or("(not a string)"))
        .filter(|url| !url.is_empty());
    if let Some(problem) = clone_url.and_then(server_clone_url_problem) {
        details.push(format!("git.{problem}"));
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest {
            reason: "the event is not valid".into(),
            details,
        })
    }
}

/// Whether `who` may create an event of `source` (for `project`, if named).
pub(super) fn may_create(who: &Principal, source: &str, project: &str) -> bool {
    who.has("EVENT_CREATOR", source)
        || (!project.is_empty() && who.has_project_role("PROJECT_USER", project))
}

/// The copies of an event for every project that subscribes to it
/// (Brigade's fan-out, [`Project::subscribes_to`](mizzen_runtime::project::Project::subscribes_to)):
/// only `project_id`'s when it is set. A Docker Hub `push` also reaches projects
/// subscribed to the older `image_push`.
pub(super) async fn fan_out(
    state: &AppState,
    mut body: EventBody,
    extra_labels: &BTreeMap<String, String>,
) -> ApiResult<Vec<NewEvent>> {
    // The payload (up to the body limit) is not copied for the
    // subscriptions, which do not look at it, and is moved into the last
    // copy of the event.
    let payload = std::mem::take(&mut body.payload);
    let projects = if body.project_id.is_empty() {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = state.store.projects(&after, MAX_PAGE, None).await?;
            let last = page.items.last().map(|p| p.id.clone());
            all.extend(page.items);
            match (page.next, last) {
                (Some(_), Some(last)) => after = last,
                _ => break,
            }
        }
        all
    } else {
        match state.store.project(&body.project_id).await? {
            Some(project) => vec![project],
            None => {
                return Err(ApiError::NotFound {
                    kind: "Project",
                    id: body.project_id.clone(),
                });
            }
        }
    };
    let mut labels = body.labels.clone().unwrap_or_default();
    labels.extend(extra_labels.clone());
    let details = EventDetails {
        source: body.source.clone(),
        event_type: body.event_type.clone(),
        qualifiers: body.qualifiers.clone().unwrap_or_default(),
        labels: labels.clone(),
        short_title: body.short_title.clone(),
        long_title: body.long_title.clone(),
        payload: String::new(),
    };
    let legacy =
        (body.source == gateways::DOCKERHUB_SOURCE && body.event_type == "push").then(|| {
            EventDetails {
                event_type: gateways::LEGACY_PUSH_TYPE.to_string(),
                ..details.clone()
            }
        });
    let now = now_micros();
    let mut events = Vec::new();
    for project in projects {
        let Ok(parsed) = state.projects.parse(&project.id, &project.document) else {
            tracing::warn!(project = %project.id, "stored project no longer parses; skipped in fan-out");
            continue;
        };
        let event_type = if parsed.project.subscribes_to(&details) {
            details.event_type.clone()
        } else if let Some(legacy) = legacy.as_ref().filter(|l| parsed.project.subscribes_to(l)) {
            legacy.event_type.clone()
        } else {
            continue;
        };
        events.push(NewEvent {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.id.clone(),
            created: now,
            source: body.source.clone(),
            event_type,
            document: EventDocument {
                qualifiers: details.qualifiers.clone(),
                labels: labels.clone(),
                short_title: body.short_title.clone(),
                long_title: body.long_title.clone(),
                git: body.git.clone(),
                payload: String::new(),
                source_state: BTreeMap::new(),
                project: parsed.snapshot.clone(),
                trace: None,
            },
            inherited_jobs: Vec::new(),
        });
    }
    if let Some((last, others)) = events.split_last_mut() {
        for event in others {
            event.document.payload = payload.clone();
        }
        last.document.payload = payload;
    }
    Ok(events)
}

/// Stores events (durably); the JSON of those stored, as Brigade's API
/// shows them. An event whose project was deleted meanwhile is not stored
/// and not shown.
pub(super) async fn accept(
    state: &AppState,
    mut events: Vec<NewEvent>,
    request: Option<&HeaderMap>,
) -> ApiResult<Vec<Value>> {
    start_traces(&mut events, request);
    let records: Vec<EventRecord> = events
        .iter()
        .map(|e| EventRecord {
            seq: 0,
            id: e.id.clone(),
            project_id: e.project_id.clone(),
            created: e.created,
            source: e.source.clone(),
            event_type: e.event_type.clone(),
            document: e.document.clone(),
            summary: String::new(),
            phase: Phase::Pending,
            started: None,
            ended: None,
            attempts: 0,
        })
        .collect();
    let (_, gone) = store_events(state, events, None).await?;
    Ok(records
        .into_iter()
        .filter(|r| !gone.contains(&r.project_id))
        .map(|r| event_json(r, &[]))
        .collect())
}

/// Gives each event its own span in a trace: the caller's, when the
/// request carried a `traceparent`. A retry or a clone gets a span of its
/// own, never the original's.
fn start_traces(events: &mut [NewEvent], request: Option<&HeaderMap>) {
    for event in events {
        event.document.trace = Some(EventTrace::start(request));
    }
}

/// Stores events durably, counts them and wakes the scheduler; how many
/// were stored, and the projects deleted meanwhile whose events were not.
/// `request` is the request that brought them, whose `traceparent` their
/// traces continue.
pub(super) async fn store_events(
    state: &AppState,
    mut events: Vec<NewEvent>,
    request: Option<&HeaderMap>,
) -> ApiResult<(usize, std::collections::BTreeSet<String>)> {
    if events.iter().any(|e| e.document.trace.is_none()) {
        start_traces(&mut events, request);
    }
    let projects: Vec<String> = events.iter().map(|e| e.project_id.clone()).collect();
    let said: Vec<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            let trace = e.document.trace.as_ref().map(|t| t.trace_id.clone());
            (
                e.id.clone(),
                e.source.clone(),
                e.event_type.clone(),
                trace.unwrap_or_default(),
            )
        })
        .collect();
    let gone = state.store.insert_events(events).await?;
    for ((id, source, event_type, trace), project) in said.iter().zip(&projects) {
        if !gone.contains(project) {
            tracing::info!(event = %id, project = %project, source = %source, r#type = %event_type, trace_id = %trace, "event accepted");
        }
    }
    let mut count = 0;
    for project in projects.iter().filter(|p| !gone.contains(*p)) {
        state.metrics.event_accepted(project);
        count += 1;
    }
    state.scheduler.wake();
    Ok((count, gone))
}

/// Stores the one event a retry or a clone made and answers with it (an
/// Event, as Brigade's API did, not a list), holding `share` until written.
pub(super) async fn accept_one(
    state: &AppState,
    event: NewEvent,
    share: Option<OwnedSemaphorePermit>,
) -> ApiResult {
    let project = event.project_id.clone();
    match accept(state, vec![event], None).await?.pop() {
        Some(value) => Ok(held_answer(StatusCode::CREATED, &value, share)),
        None => Err(project_gone(&project)),
    }
}

/// Fires `tick` of a project's schedule: the event its `brigade.sh/cron`
/// subscription gets (with the subscription's qualifiers and labels, the
/// tick's label and a title naming the schedule), made by the same fan-out
/// as an event created through the API, and stored with the tick's key in
/// one transaction ([`crate::store::Store::fire_tick`]). `None` when the
/// project no longer subscribes to it, or is gone.
pub(crate) async fn fire_tick(
    state: &AppState,
    record: &ScheduleRecord,
    subscription: &EventSubscription,
    schedule: &Schedule,
    tick: &jiff::Zoned,
    next_tick: i64,
) -> ApiResult<Option<TickOutcome>> {
    let mut labels = subscription.labels.clone();
    labels.insert(TICK_LABEL.to_string(), tick_label(tick));
    let title = schedule.title(tick);
    let body = EventBody {
        project_id: record.project_id.clone(),
        source: CRON_SOURCE.to_string(),
        event_type: record.event_type.clone(),
        qualifiers: Some(subscription.qualifiers.clone()),
        labels: Some(labels),
        short_title: title.clone(),
        long_title: title,
        ..EventBody::default()
    };
    let mut events = match fan_out(state, body, &BTreeMap::new()).await {
        Ok(events) => events,
        Err(ApiError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(mut event) = events.pop() else {
        return Ok(None);
    };
    start_traces(std::slice::from_mut(&mut event), None);
    let tick_micros = tick.timestamp().as_microsecond();
    let outcome = state
        .store
        .fire_tick(record, tick_micros, next_tick, &event)
        .await?;
    if outcome == TickOutcome::Fired {
        let trace = event.document.trace.as_ref().map(|t| t.trace_id.as_str());
        tracing::info!(event = %event.id, project = %event.project_id, source = %event.source, r#type = %event.event_type, tick = %tick, trace_id = trace.unwrap_or_default(), "event accepted");
        state.metrics.event_accepted(&event.project_id);
        state.scheduler.wake();
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, event_type: &str, label: &str) -> EventBody {
        EventBody {
            source: source.into(),
            event_type: event_type.into(),
            labels: Some(BTreeMap::from([("key".to_string(), label.to_string())])),
            ..EventBody::default()
        }
    }

    /// One rule with the gateways: Brigade's patterns, `\w` being ASCII.
    #[test]
    fn events_follow_brigades_label_and_source_patterns() {
        assert!(validate_event(&event("mailto:a@b.c", "push:delete", "v1.0_*=?/")).is_ok());
        for (source, event_type, label) in [
            ("brigade.sh/*", "exec", "v"),
            ("brigade.sh/cli", "ex@c", "v"),
            ("brigade.sh/cli", "exec", "a@b"),
            ("brigade.sh/cli", "exec", "é"),
            ("brigade.sh/cafe\u{301}", "exec", "v"),
        ] {
            let Err(ApiError::BadRequest { details, .. }) =
                validate_event(&event(source, event_type, label))
            else {
                panic!("{source} {event_type} {label} was accepted");
            };
            assert_eq!(details.len(), 1, "{details:?}");
        }
    }
}
