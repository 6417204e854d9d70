//! A project's volumes (`spec.workerTemplate.volumes`, kept between
//! events): listed with their declared sizes and what they hold, and
//! deleted with what they hold.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::executor::ExecutorError;
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, AppState, AppStateRef, list, ok, require_project, visible_project,
};
use crate::auth::Principal;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/projects/{id}/volumes", get(list_volumes))
        .route("/v2/projects/{id}/volumes/{name}", delete(delete_volume))
}

/// The project's volumes: each it declares (with `size`), and each the
/// executor keeps (with `usedBytes` where the executor can measure it, and
/// `declared: false` for one the project no longer declares, which only
/// takes room until it is deleted).
async fn list_volumes(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    let record = visible_project(&state, &who, &id).await?;
    let project = state
        .projects
        .parse(&id, &record.document)
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .project
        .clone();
    let (limits, _) =
        WorkerLimits::for_project(&project.worker.limits, state.scheduler.limit_ceilings());
    let executor = state.scheduler.executor().ok_or_else(no_executor)?;
    // Measured no further than the project's whole quota: a volume that
    // holds more reads as over it, and a request costs no more than that.
    let stored = executor
        .project_volumes(&id, limits.volume_bytes)
        .await
        .map_err(|e| executor_error(e, &id))?;
    let mut items: Vec<Value> = project
        .worker
        .volumes
        .iter()
        .map(|declared| {
            let kept = stored.iter().find(|s| s.name == declared.name);
            json!({
                "name": declared.name,
                "declared": true,
                "sizeBytes": declared.size_bytes,
                "created": kept.is_some(),
                "usedBytes": kept.and_then(|k| k.used_bytes),
            })
        })
        .collect();
    for kept in &stored {
        if !project.worker.volumes.iter().any(|d| d.name == kept.name) {
            items.push(json!({
                "name": kept.name,
                "declared": false,
                "sizeBytes": null,
                "created": true,
                "usedBytes": kept.used_bytes,
            }));
        }
    }
    let mut body = list("VolumeList", items, None, 0);
    body["quotaBytes"] = json!(limits.volume_bytes);
    body["declaredBytes"] = json!(project.worker.declared_volume_bytes());
    ok(StatusCode::OK, body)
}

async fn delete_volume(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    if !mizzen_runtime::volume::is_volume_name(&name) {
        return Err(ApiError::NotFound {
            kind: "Volume",
            id: name,
        });
    }
    let executor = state.scheduler.executor().ok_or_else(no_executor)?;
    executor
        .delete_project_volume(&id, &name)
        .await
        .map_err(|e| executor_error(e, &name))?;
    ok(StatusCode::OK, json!({}))
}

fn no_executor() -> ApiError {
    ApiError::NotSupported(
        "this server has no job executor, so it keeps no volumes (start `mizzen server` where a container engine answers)".into(),
    )
}

/// The executor's answer about the volume `name` (or the project's
/// volumes).
fn executor_error(e: ExecutorError, name: &str) -> ApiError {
    match e {
        ExecutorError::NotFound(_) => ApiError::NotFound {
            kind: "Volume",
            id: name.to_string(),
        },
        ExecutorError::InUse(reason) => ApiError::Conflict {
            kind: "Volume",
            id: name.to_string(),
            reason,
        },
        ExecutorError::Unsupported(reason) => ApiError::NotSupported(reason),
        ExecutorError::Unavailable(reason) => ApiError::Unavailable(reason),
    }
}
