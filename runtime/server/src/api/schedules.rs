//! A project's cron schedules as the ticker sees them (Mizzen's addition):
//! `GET /v2/projects/{id}/schedules`, for whoever may read the project.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use mizzen_runtime::schedule::Schedule;
use serde_json::{Value, json};

use super::{ApiResult, AppState, AppStateRef, list, ok, visible_project};
use crate::auth::Principal;
use crate::store::{ScheduleRecord, now_micros, rfc3339, timestamp};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v2/projects/{id}/schedules", get(list_schedules))
}

/// A tick in its schedule's zone, as the events' titles show it.
fn zoned(schedule: Option<&Schedule>, micros: i64) -> Value {
    match schedule {
        Some(schedule) => {
            let zone =
                jiff::tz::TimeZone::get(schedule.time_zone()).unwrap_or(jiff::tz::TimeZone::UTC);
            json!(
                timestamp(micros)
                    .to_zoned(zone)
                    .strftime("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string()
            )
        }
        None => json!(rfc3339(micros)),
    }
}

fn schedule_json(record: &ScheduleRecord, now: i64) -> Value {
    let schedule = Schedule::parse(&record.expression, Some(&record.time_zone)).ok();
    // A tick due but not yet fired (every replica was down) is the latest
    // due one: the one that fires next, by the rule for missed ticks.
    let next = if record.next_tick <= now {
        schedule
            .as_ref()
            .and_then(|s| s.latest_at_or_before(timestamp(now)))
            .map(|tick| tick.timestamp().as_microsecond())
    } else {
        Some(record.next_tick).filter(|t| *t != i64::MAX)
    };
    json!({
        "type": record.event_type,
        "schedule": record.expression,
        "timeZone": record.time_zone,
        "since": rfc3339(record.since),
        "lastTick": record.last_tick.map(|t| zoned(schedule.as_ref(), t)),
        "lastEventID": record.last_event,
        "nextTick": next.map(|t| zoned(schedule.as_ref(), t)),
    })
}

async fn list_schedules(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    let now = now_micros();
    let items = state
        .store
        .project_schedules(&id)
        .await?
        .iter()
        .map(|record| schedule_json(record, now))
        .collect();
    ok(StatusCode::OK, list("ScheduleList", items, None, 0))
}
