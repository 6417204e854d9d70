//! Projects: creating, reading, changing and deleting them.

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use mizzen_host_api::types::Phase;
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::dependencies::{ConfigFiles, NPM_TOKEN_SECRET};
use mizzen_runtime::executor::ExecutorError;
use mizzen_runtime::limits::LimitValue;
use mizzen_runtime::project::{Project, server_clone_url_problem};
use mizzen_runtime::schedule::Schedule;
use serde::Deserialize;
use serde_json::{Value, json};

use super::query::{Flag, PageQuery, Query};
use super::{
    API_VERSION, ApiError, ApiResult, AppState, AppStateRef, list, ok, parse_body, require,
    require_project, visible_project,
};
use crate::auth::{PROJECT_ROLES, Principal, PrincipalKind};
use crate::store::{EventFilter, ProjectRecord, RoleAssignment, rfc3339};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/projects", post(create_project).get(list_projects))
        .route(
            "/v2/projects/{id}",
            get(get_project).put(update_project).delete(delete_project),
        )
}

fn project_json(project: &ProjectRecord) -> Value {
    let mut document = project.document.clone();
    document["apiVersion"] = json!(API_VERSION);
    document["kind"] = json!("Project");
    document["metadata"]["id"] = json!(project.id);
    document["metadata"]["created"] = json!(rfc3339(project.created));
    document
}

/// Parses and validates a project body with the same rules as project files,
/// and its limits against the server's ceilings; stores its inline compiled
/// script, if it has one, where its events find it by its hash.
async fn parse_project(state: &AppState, body: &Bytes) -> ApiResult<(Project, Value)> {
    let document: Value = parse_body(body, "project")?;
    let text = document.to_string();
    let invalid = |detail: String| ApiError::BadRequest {
        reason: "the project is not valid".into(),
        details: vec![detail],
    };
    // Checking an inline module reads all of it (up to 16 MiB, some 100 ms),
    // and a schedule's interval walks its calendar: not on a thread that
    // serves other requests.
    let min_interval = state.min_schedule_interval;
    let project = tokio::task::spawn_blocking(move || {
        let project =
            Project::parse(FsPath::new("request body"), &text).map_err(|e| e.to_string())?;
        check_schedules(min_interval, &project)?;
        Ok::<_, String>(project)
    })
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?
    .map_err(invalid)?;
    project
        .worker
        .limits
        .check_within(state.scheduler.limit_ceilings())
        .map_err(|e| invalid(e.to_string()))?;
    let (limits, _) =
        WorkerLimits::for_project(&project.worker.limits, state.scheduler.limit_ceilings());
    let declared = project.worker.declared_volume_bytes();
    if declared > limits.volume_bytes {
        return Err(invalid(format!(
            "spec.workerTemplate.volumes: the volumes' sizes add up to {}, over the project's volume quota of {} (the volumeSize limit under this server's ceiling)",
            LimitValue::Bytes(declared),
            LimitValue::Bytes(limits.volume_bytes)
        )));
    }
    if let Some(problem) = project
        .worker
        .git
        .as_ref()
        .filter(|git| !git.clone_url.is_empty())
        .and_then(|git| server_clone_url_problem(&git.clone_url))
    {
        return Err(invalid(format!("spec.workerTemplate.git.{problem}")));
    }
    if let Some((hash, text)) = crate::project_cache::module_script(&document) {
        state.store.put_script(&hash, text).await?;
    }
    Ok((project, document))
}

/// Refuses a schedule that ticks more often than the server allows
/// (`--min-schedule-interval`): each tick is a worker its project runs.
fn check_schedules(min: std::time::Duration, project: &Project) -> Result<(), String> {
    for (event_type, _, schedule) in project.schedules() {
        let Some(shortest) = schedule.shortest_interval(jiff::Timestamp::now()) else {
            continue;
        };
        if shortest < min {
            return Err(format!(
                "project {:?}, type {event_type:?}: schedule {:?} ticks every {} at times; this server allows at least {} between ticks (--min-schedule-interval)",
                project.id,
                schedule.expression(),
                humantime::format_duration(shortest),
                humantime::format_duration(min),
            ));
        }
    }
    Ok(())
}

/// The types a project's schedules fire, with their schedules, as the
/// store keeps them beside the project.
fn schedules_of(project: &Project) -> Vec<(String, Schedule)> {
    project
        .schedules()
        .map(|(event_type, _, schedule)| (event_type.to_string(), schedule.clone()))
        .collect()
}

/// Preparations started ahead of events at once. Each holds a project and
/// fetches; past this, a project's first event prepares it instead.
const PREPARATIONS_AHEAD: usize = 4;

static PREPARING_AHEAD: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(PREPARATIONS_AHEAD);

/// Starts preparing an inline project's script (its npm packages fetched,
/// the bundle made) so that its first event finds it ready. A project whose
/// files are in a repository is prepared by its first event, which clones
/// it. A failure is only logged: the events that follow try again and fail
/// saying why.
fn prepare_ahead(state: &AppState, project: Project) {
    let in_repository = project
        .worker
        .git
        .as_ref()
        .is_some_and(|git| !git.clone_url.is_empty());
    let Some(script) = project.inline_script("").filter(|_| !in_repository) else {
        return;
    };
    let Ok(permit) = PREPARING_AHEAD.try_acquire() else {
        return;
    };
    let dependencies = state.projects.dependencies().clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let secrets = store.secrets(&project.id).await.unwrap_or_default();
        let files = ConfigFiles {
            dir: None,
            inline: &project.worker.default_config_files,
        };
        let token = secrets.get(NPM_TOKEN_SECRET).map(String::as_str);
        if let Err(error) = dependencies.prepare(files, script, token).await {
            tracing::info!(
                project = %project.id,
                "preparing the project's script ahead of its events failed (each event will try again): {error}"
            );
        }
    });
}

async fn create_project(State(state): AppStateRef, who: Principal, body: Bytes) -> ApiResult {
    require(&who, "PROJECT_CREATOR", "")?;
    let (parsed, document) = parse_project(&state, &body).await?;
    let id = parsed.id.clone();
    if !state
        .store
        .create_project(&id, &document, &schedules_of(&parsed))
        .await?
    {
        return Err(ApiError::Conflict {
            kind: "Project",
            id: id.clone(),
            reason: format!("a project with id {id:?} already exists"),
        });
    }
    grant_creator(&state, &who, &id).await?;
    let project = state.store.project(&id).await?.ok_or(ApiError::NotFound {
        kind: "Project",
        id: id.clone(),
    })?;
    prepare_ahead(&state, parsed);
    ok(StatusCode::CREATED, project_json(&project))
}

/// "Not found" for a project deleted while a request about it ran.
pub(super) fn project_gone(id: &str) -> ApiError {
    ApiError::NotFound {
        kind: "Project",
        id: id.to_string(),
    }
}

/// A project's creator administers it (as in Brigade).
async fn grant_creator(state: &AppState, who: &Principal, project: &str) -> ApiResult<()> {
    if who.kind == PrincipalKind::Root {
        return Ok(());
    }
    for role in PROJECT_ROLES {
        let granted = state
            .store
            .grant(&RoleAssignment {
                role: role.to_string(),
                principal_type: who.kind.as_str().to_string(),
                principal_id: who.id.clone(),
                scope: project.to_string(),
            })
            .await?;
        if !granted {
            // Deleted as soon as it was created.
            return Err(project_gone(project));
        }
    }
    Ok(())
}

async fn list_projects(
    State(state): AppStateRef,
    who: Principal,
    Query(page): Query<PageQuery>,
) -> ApiResult {
    let limit = page.limit()?;
    let visible = who.visible_projects();
    let after = page.after.unwrap_or_default();
    let page = state
        .store
        .projects(&after, limit, visible.as_deref())
        .await?;
    let items = page.items.iter().map(project_json).collect();
    ok(
        StatusCode::OK,
        list("ProjectList", items, page.next, page.remaining),
    )
}

async fn get_project(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    let project = visible_project(&state, &who, &id).await?;
    ok(StatusCode::OK, project_json(&project))
}

/// `PUT /v2/projects/{id}`'s parameters.
#[derive(Deserialize)]
struct UpdateQuery {
    /// Create the project if there is none (Brigade's `project create`
    /// without a separate check).
    #[serde(default)]
    create: Flag,
}

async fn update_project(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
    Query(query): Query<UpdateQuery>,
    body: Bytes,
) -> ApiResult {
    let (parsed, document) = parse_project(&state, &body).await?;
    let body_id = parsed.id.clone();
    if body_id != id {
        return Err(ApiError::bad(format!(
            "metadata.id {body_id:?} does not match the project {id:?} in the path"
        )));
    }
    // A caller who may neither create projects nor change this one learns
    // the same whether or not another tenant's project has this id.
    if query.create.0
        && !who.has("PROJECT_CREATOR", "")
        && !who.has_project_role("PROJECT_DEVELOPER", &id)
    {
        require(&who, "PROJECT_CREATOR", "")?;
    }
    let exists = state.store.project(&id).await?.is_some();
    if !exists && query.create.0 {
        require(&who, "PROJECT_CREATOR", "")?;
        if state
            .store
            .create_project(&id, &document, &schedules_of(&parsed))
            .await?
        {
            grant_creator(&state, &who, &id).await?;
        }
    } else {
        require_project(&who, "PROJECT_DEVELOPER", &id)?;
        if !state
            .store
            .update_project(&id, &document, &schedules_of(&parsed))
            .await?
        {
            return Err(ApiError::NotFound {
                kind: "Project",
                id,
            });
        }
    }
    let project = state.store.project(&id).await?.ok_or(ApiError::NotFound {
        kind: "Project",
        id: id.clone(),
    })?;
    prepare_ahead(&state, parsed);
    ok(StatusCode::OK, project_json(&project))
}

async fn delete_project(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    require_project(&who, "PROJECT_ADMIN", &id)?;
    // Stop the project's running workers before their rows go.
    let running = state
        .store
        .event_heads(&EventFilter {
            project_id: Some(id.clone()),
            phases: vec![Phase::Pending, Phase::Starting, Phase::Running],
            ..EventFilter::default()
        })
        .await?;
    for event in running {
        state.store.cancel_event(&event.id).await?;
        state.scheduler.abort_local(&event.id);
    }
    if !state.store.delete_project(&id).await? {
        return Err(ApiError::NotFound {
            kind: "Project",
            id,
        });
    }
    state.projects.forget(&id);
    delete_volumes(&state, &id).await;
    ok(StatusCode::OK, json!({}))
}

/// Deletes a deleted project's volumes, so that a project made later with
/// its id does not find them. One that a cancelled event's container still
/// holds is left, with a warning; `DELETE /v2/projects/{id}/volumes/{name}`
/// removes it.
async fn delete_volumes(state: &AppState, id: &str) {
    let Some(executor) = state.scheduler.executor() else {
        return;
    };
    let volumes = match executor.project_volumes(id, 0).await {
        Ok(volumes) => volumes,
        Err(ExecutorError::Unsupported(_)) => return,
        Err(e) => {
            tracing::warn!(project = %id, error = %e, "could not list a deleted project's volumes");
            return;
        }
    };
    for volume in volumes {
        if let Err(e) = executor.delete_project_volume(id, &volume.name).await {
            tracing::warn!(project = %id, volume = %volume.name, error = %e, "could not delete a deleted project's volume");
        }
    }
}
