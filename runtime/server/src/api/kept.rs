//! What jobs keep: an event's artifacts (listed, their files listed and
//! downloaded one by one, streamed and checked) and a project's caches
//! (listed and deleted). Who may read an event may read its artifacts; who
//! may see a project may list its caches, and its admins may delete them.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use base64::Engine as _;
use futures_util::StreamExt;
use mizzen_objects::{Catalog, EntryKind, KeptArtifact, KeptCache, Manifest, ObjectsError};
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, AppState, AppStateRef, list, ok, require_project, visible_head,
    visible_project,
};
use crate::auth::Principal;
use crate::store::rfc3339;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/events/{id}/artifacts", get(list_artifacts))
        .route("/v2/events/{id}/artifacts/{name}", get(get_artifact))
        .route(
            "/v2/events/{id}/artifacts/{name}/files/{*path}",
            get(download_file),
        )
        .route(
            "/v2/events/{id}/artifacts/{name}/files",
            get(download_root_file),
        )
        .route(
            "/v2/events/{id}/artifacts/{name}/archive",
            get(download_archive),
        )
        .route("/v2/projects/{id}/caches", get(list_caches))
        .route("/v2/projects/{id}/caches/{*key}", delete(delete_cache))
}

fn artifact_json(artifact: &KeptArtifact) -> Value {
    json!({
        "name": artifact.name,
        "job": artifact.job,
        "path": artifact.path,
        "tree": artifact.tree,
        "sizeBytes": artifact.bytes,
        "files": artifact.files,
        "created": rfc3339(artifact.created),
    })
}

fn cache_json(cache: &KeptCache) -> Value {
    json!({
        "key": cache.key,
        "tree": cache.tree,
        "sizeBytes": cache.bytes,
        "files": cache.files,
        "created": rfc3339(cache.created),
        "lastUsed": rfc3339(cache.last_used),
    })
}

fn catalog_error(e: mizzen_objects::CatalogError) -> ApiError {
    ApiError::Internal(Box::new(e))
}

/// What reading a stored object said: a corrupt or missing object is the
/// server's fault, said as such (and logged), never served.
fn objects_error(e: ObjectsError) -> ApiError {
    match e {
        ObjectsError::Storage { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Internal(Box::new(other)),
    }
}

/// The artifact and its manifest, when the caller may read its event.
async fn visible_artifact(
    state: &AppState,
    who: &Principal,
    id: &str,
    name: &str,
) -> ApiResult<(KeptArtifact, Manifest)> {
    visible_head(state, who, id).await?;
    let artifact = state
        .store
        .artifact(id, name)
        .await
        .map_err(catalog_error)?
        .ok_or_else(|| ApiError::NotFound {
            kind: "Artifact",
            id: name.to_string(),
        })?;
    let manifest = state
        .storage
        .objects
        .manifest(&artifact.tree)
        .await
        .map_err(objects_error)?;
    Ok((artifact, manifest))
}

async fn list_artifacts(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    visible_head(&state, &who, &id).await?;
    let artifacts = state.store.artifacts(&id).await.map_err(catalog_error)?;
    let items = artifacts.iter().map(artifact_json).collect();
    ok(StatusCode::OK, list("ArtifactList", items, None, 0))
}

/// An artifact with its entries: each file's path, mode, size and sha256.
async fn get_artifact(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    let (artifact, manifest) = visible_artifact(&state, &who, &id, &name).await?;
    let entries: Vec<Value> = manifest
        .entries
        .iter()
        .map(|entry| {
            let mut value = json!({
                "path": entry.path,
                "kind": entry.kind,
                "mode": entry.mode,
            });
            if entry.kind == EntryKind::File {
                value["sizeBytes"] = json!(entry.size);
                value["sha256"] = json!(entry.digest.map(|d| d.hex()));
            }
            if let Some(target) = &entry.target {
                value["target"] = json!(target);
            }
            value
        })
        .collect();
    let mut body = artifact_json(&artifact);
    body["apiVersion"] = json!(super::API_VERSION);
    body["kind"] = json!("Artifact");
    body["entries"] = json!(entries);
    ok(StatusCode::OK, body)
}

/// One file of an artifact (`path` beneath its root; empty for an
/// artifact that is a single file), streamed with its length and its
/// SHA-256 (`Repr-Digest`, RFC 9530). Its content is checked as it is
/// read; a stored object found corrupt mid-way ends the response early, so
/// that the client sees a short body rather than wrong bytes.
async fn download_file(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name, path)): Path<(String, String, String)>,
) -> ApiResult {
    download(&state, &who, &id, &name, &path).await
}

/// The whole artifact as one tar stream (its first path component the
/// artifact's name), each file checked as it is read: a download of many
/// files reads the artifact's manifest once, not once per file. A stored
/// object found corrupt ends the stream early (a cut tar).
async fn download_archive(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    let (_, manifest) = visible_artifact(&state, &who, &id, &name).await?;
    let (writer, reader) = tokio::io::duplex(1 << 16);
    let objects = state.storage.objects.clone();
    let owner = mizzen_objects::TarOwner { uid: 0, gid: 0 };
    tokio::spawn(async move {
        if let Err(e) = objects.write_tar(manifest, name, owner, writer).await {
            tracing::error!(error = %e, "an artifact's archive was cut short");
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// The file an artifact of one file is.
async fn download_root_file(
    State(state): AppStateRef,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    download(&state, &who, &id, &name, "").await
}

async fn download(
    state: &AppState,
    who: &Principal,
    id: &str,
    name: &str,
    path: &str,
) -> ApiResult {
    let (_, manifest) = visible_artifact(state, who, id, name).await?;
    let path = path.trim_matches('/');
    let not_found = || ApiError::NotFound {
        kind: "ArtifactFile",
        id: format!("{name}/{path}"),
    };
    let entry = manifest.entry(path).ok_or_else(not_found)?;
    let (Some(digest), EntryKind::File) = (entry.digest, entry.kind) else {
        return Err(not_found());
    };
    let stream = state
        .storage
        .objects
        .stream(&digest, Some(entry.size))
        .await
        .map_err(objects_error)?;
    let body = stream.map(move |chunk| {
        chunk.map_err(|e| {
            tracing::error!(error = %e, "an artifact's file was cut short: its stored object is corrupt");
            std::io::Error::other(e)
        })
    });
    let digest_b64 = base64::engine::general_purpose::STANDARD.encode(digest.as_bytes());
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, entry.size.to_string()),
            (header::ETAG, format!("\"{digest}\"")),
            (
                header::HeaderName::from_static("repr-digest"),
                format!("sha-256=:{digest_b64}:"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn list_caches(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    let caches = state.store.caches(&id).await?;
    let used: u64 = caches.iter().map(|c| c.bytes).sum();
    let items = caches.iter().map(cache_json).collect();
    let mut body = list("CacheList", items, None, 0);
    body["usedBytes"] = json!(used);
    ok(StatusCode::OK, body)
}

async fn delete_cache(
    State(state): AppStateRef,
    who: Principal,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    if !state.store.delete_cache(&id, &key).await? {
        return Err(ApiError::NotFound {
            kind: "Cache",
            id: key,
        });
    }
    ok(StatusCode::OK, json!({}))
}
