//! Role assignments: system roles, and project roles in one project or in
//! all.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::projects::project_gone;
use super::query::Query;
use super::{
    ApiError, ApiResult, AppState, AppStateRef, list, ok, parse_body, require, require_project,
    visible_project,
};
use crate::auth::{PROJECT_ROLES, Principal, SYSTEM_ROLES};
use crate::store::RoleAssignment;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v2/projects/{id}/role-assignments",
            post(grant_project_role)
                .get(list_project_roles)
                .delete(revoke_project_role),
        )
        .route("/v2/project-role-assignments", get(list_all_project_roles))
        .route(
            "/v2/role-assignments",
            post(grant_role).get(list_roles).delete(revoke_role),
        )
}

#[derive(Deserialize)]
struct PrincipalRef {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

#[derive(Deserialize)]
struct RoleBody {
    role: String,
    principal: PrincipalRef,
    #[serde(default)]
    scope: String,
}

fn check_principal_type(kind: &str) -> ApiResult<()> {
    match kind {
        "USER" | "SERVICE_ACCOUNT" => Ok(()),
        other => Err(ApiError::bad(format!(
            "principal.type {other:?}: expected USER or SERVICE_ACCOUNT"
        ))),
    }
}

fn role_json(role: &RoleAssignment) -> Value {
    let mut value = json!({
        "role": role.role,
        "principal": {"type": role.principal_type, "id": role.principal_id},
    });
    if PROJECT_ROLES.contains(&role.role.as_str()) {
        value["projectID"] = json!(role.scope);
    } else if !role.scope.is_empty() {
        value["scope"] = json!(role.scope);
    }
    value
}

fn system_role(
    role: &str,
    principal_type: &str,
    principal_id: &str,
    scope: &str,
) -> ApiResult<RoleAssignment> {
    if !SYSTEM_ROLES.contains(&role) {
        return Err(ApiError::bad(format!(
            "role {role:?}: expected one of {}",
            SYSTEM_ROLES.join(", ")
        )));
    }
    check_principal_type(principal_type)?;
    if role == "EVENT_CREATOR" && scope.is_empty() {
        return Err(ApiError::bad(
            "EVENT_CREATOR needs a scope: the event source it may create events for",
        ));
    }
    Ok(RoleAssignment {
        role: role.to_string(),
        principal_type: principal_type.to_string(),
        principal_id: principal_id.to_string(),
        scope: if role == "EVENT_CREATOR" {
            scope.to_string()
        } else {
            String::new()
        },
    })
}

async fn principal_exists(state: &AppState, kind: &str, id: &str) -> ApiResult<()> {
    if kind == "SERVICE_ACCOUNT" && state.store.service_account(id).await?.is_none() {
        return Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id: id.to_string(),
        });
    }
    if kind == "USER" {
        return Err(ApiError::NotFound {
            kind: "User",
            id: id.to_string(),
        });
    }
    Ok(())
}

async fn grant_role(State(state): AppStateRef, who: Principal, body: Bytes) -> ApiResult {
    require(&who, "ADMIN", "")?;
    let body: RoleBody = parse_body(&body, "role assignment")?;
    let role = system_role(
        &body.role,
        &body.principal.kind,
        &body.principal.id,
        &body.scope,
    )?;
    principal_exists(&state, &role.principal_type, &role.principal_id).await?;
    state.store.grant(&role).await?;
    ok(StatusCode::OK, json!({}))
}

/// Which role assignments a request is about; a name not given is any.
#[derive(Debug, Default, Deserialize)]
struct RoleQuery {
    role: Option<String>,
    #[serde(rename = "principalType")]
    principal_type: Option<String>,
    #[serde(rename = "principalID")]
    principal_id: Option<String>,
    scope: Option<String>,
    /// The project of project roles (`project` is also understood).
    #[serde(rename = "projectID")]
    project_id: Option<String>,
    project: Option<String>,
}

/// A parameter's value, empty when it was not given.
fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or_default()
}

async fn revoke_role(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<RoleQuery>,
) -> ApiResult {
    require(&who, "ADMIN", "")?;
    let role = system_role(
        text(&query.role),
        text(&query.principal_type),
        text(&query.principal_id),
        text(&query.scope),
    )?;
    state.store.revoke(&role).await?;
    ok(StatusCode::OK, json!({}))
}

async fn list_roles(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<RoleQuery>,
) -> ApiResult {
    require(&who, "READER", "")?;
    let items = filtered_roles(&state, &query, false).await?;
    ok(StatusCode::OK, list("RoleAssignmentList", items, None, 0))
}

async fn filtered_roles(
    state: &AppState,
    query: &RoleQuery,
    project_roles: bool,
) -> ApiResult<Vec<Value>> {
    let get = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    Ok(state
        .store
        .role_assignments(None)
        .await?
        .iter()
        .filter(|r| PROJECT_ROLES.contains(&r.role.as_str()) == project_roles)
        .filter(|r| get(&query.role).is_none_or(|v| v == r.role))
        .filter(|r| get(&query.principal_type).is_none_or(|v| v == r.principal_type))
        .filter(|r| get(&query.principal_id).is_none_or(|v| v == r.principal_id))
        .filter(|r| get(&query.scope).is_none_or(|v| v == r.scope))
        .filter(|r| {
            get(&query.project_id)
                .or(get(&query.project))
                .is_none_or(|v| v == r.scope)
        })
        .map(role_json)
        .collect())
}

fn project_role(
    project: &str,
    role: &str,
    principal_type: &str,
    principal_id: &str,
) -> ApiResult<RoleAssignment> {
    if !PROJECT_ROLES.contains(&role) {
        return Err(ApiError::bad(format!(
            "role {role:?}: expected one of {}",
            PROJECT_ROLES.join(", ")
        )));
    }
    check_principal_type(principal_type)?;
    Ok(RoleAssignment {
        role: role.to_string(),
        principal_type: principal_type.to_string(),
        principal_id: principal_id.to_string(),
        scope: project.to_string(),
    })
}

async fn grant_project_role(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    let body: RoleBody = parse_body(&body, "project role assignment")?;
    let role = project_role(&id, &body.role, &body.principal.kind, &body.principal.id)?;
    principal_exists(&state, &role.principal_type, &role.principal_id).await?;
    if !state.store.grant(&role).await? {
        return Err(project_gone(&id));
    }
    ok(StatusCode::OK, json!({}))
}

async fn revoke_project_role(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
    Query(query): Query<RoleQuery>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    let role = project_role(
        &id,
        text(&query.role),
        text(&query.principal_type),
        text(&query.principal_id),
    )?;
    state.store.revoke(&role).await?;
    ok(StatusCode::OK, json!({}))
}

async fn list_project_roles(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
    Query(mut query): Query<RoleQuery>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    query.project_id = Some(id);
    let items = filtered_roles(&state, &query, true).await?;
    ok(
        StatusCode::OK,
        list("ProjectRoleAssignmentList", items, None, 0),
    )
}

async fn list_all_project_roles(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<RoleQuery>,
) -> ApiResult {
    let items = filtered_roles(&state, &query, true)
        .await?
        .into_iter()
        .filter(|r| r["projectID"].as_str().is_some_and(|p| who.sees_project(p)))
        .collect();
    ok(
        StatusCode::OK,
        list("ProjectRoleAssignmentList", items, None, 0),
    )
}
