//! What a job's own helper reaches (on Kubernetes, Mizzen's image beside
//! the job's containers, `mizzen job-files`): the trees the job restores
//! and the trees it saves, as tar streams, with a job token and nothing
//! else.
//!
//! The token names one job of one event (see `mizzen_objects::JobTokens`);
//! what it opens is what that job's spec, as the worker recorded it,
//! declares: `GET /v2/job-files/restores/{i}` the i-th of its restores
//! (`artifacts.restore`, then `caches`), `PUT /v2/job-files/saves/{i}` the
//! i-th of its saves (`artifacts.save`, then `caches`). Another job's
//! entry, another event's artifact, another project's cache cannot even be
//! named. A save stores the tree and answers a signed receipt; it keeps
//! nothing in the catalog: the executor, which alone sees how the job ended,
//! keeps what applies.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use mizzen_host_api::types::JobSpec;
use mizzen_objects::{JobClaim, ObjectsError, Receipt, SaveOptions, TarOwner};
use mizzen_runtime::executor::ContainerUser;
use mizzen_runtime::kept::KeptPath;
use mizzen_runtime::limits::LimitValue;

use super::{ApiError, ApiResult, AppState, AppStateRef};
use crate::auth;

/// The root every restored tree's tar stream has: the helper extracts what
/// is beneath it into the directory it restores.
pub const TREE_ROOT: &str = "tree";

/// The header that says what a restore found: `hit`, `restored from KEY`
/// (a restore key's entry), `miss`, or the artifact's name.
pub const RESTORED_HEADER: &str = "mizzen-restored";

/// How long a save's body may pause: a helper sends its tree as fast as it
/// reads it from disk, so a minute without a byte is a helper gone.
const SAVE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/job-files/restores/{index}", get(restore))
        .route("/v2/job-files/saves/{index}", put(save).get(save_wanted))
}

/// The job the request's token speaks for, and its spec.
async fn job_of(state: &AppState, headers: &HeaderMap) -> ApiResult<(JobClaim, JobSpec)> {
    let token = auth::bearer_token(headers).ok_or_else(|| {
        ApiError::Unauthenticated(
            "no job token: send an Authorization: Bearer <job token> header".into(),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claim = state
        .storage
        .tokens
        .verify(token, now)
        .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    let gone = || {
        ApiError::Forbidden(format!(
            "job \"{}\" of event {} is not there any more",
            claim.job, claim.event_id
        ))
    };
    let record = state
        .store
        .job(&claim.event_id, &claim.job)
        .await?
        .ok_or_else(gone)?;
    // The helpers work while the job runs (the executor records its end
    // only once the saving sidecar is done): an ended job's token, however
    // long before its expiry, opens nothing.
    if record.phase.is_terminal() {
        return Err(ApiError::Forbidden(format!(
            "job \"{}\" of event {} has ended ({}): its token opens nothing any more",
            claim.job, claim.event_id, record.phase
        )));
    }
    let spec: JobSpec = serde_json::from_value(record.spec).map_err(|e| {
        ApiError::Internal(format!("job \"{}\"'s stored spec: {e}", claim.job).into())
    })?;
    Ok((claim, spec))
}

fn bad_request(reason: String) -> ApiError {
    ApiError::BadRequest {
        reason,
        details: Vec::new(),
    }
}

fn objects_error(e: ObjectsError) -> ApiError {
    match e {
        ObjectsError::TooLarge { .. }
        | ObjectsError::TooManyEntries { .. }
        | ObjectsError::Archive { .. } => bad_request(e.to_string()),
        ObjectsError::Storage { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Internal(Box::new(other)),
    }
}

fn catalog_error(e: mizzen_objects::CatalogError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// Restore `index` of the token's job: the tree as a tar stream beneath
/// [`TREE_ROOT`], owned by the job's primary container's user; 204 for a
/// cache that has no entry (nor has any restore key).
async fn restore(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(index): Path<usize>,
) -> ApiResult<Response> {
    let (claim, spec) = job_of(&state, &headers).await?;
    let catalog = &state.storage.catalog;
    let artifacts = &spec.artifacts.restore;
    let (tree, said, cache_key) = if let Some(artifact) = artifacts.get(index) {
        let kept = catalog
            .artifact(&claim.event_id, &artifact.name)
            .await
            .map_err(catalog_error)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "Artifact",
                id: artifact.name.clone(),
            })?;
        (kept.tree, format!("artifact {}", artifact.name), None)
    } else if let Some(cache) = spec.caches.get(index - artifacts.len()) {
        let hit = catalog
            .find_cache(&claim.project_id, &cache.key, &cache.restore_keys)
            .await
            .map_err(catalog_error)?;
        match hit {
            None => {
                return Ok((StatusCode::NO_CONTENT, [(RESTORED_HEADER, "miss")]).into_response());
            }
            Some(hit) if hit.key == cache.key => (hit.tree, "hit".to_string(), Some(hit.key)),
            Some(hit) => (
                hit.tree,
                format!("restored from {}", hit.key),
                Some(hit.key),
            ),
        }
    } else {
        return Err(no_entry(
            &claim,
            "restores",
            artifacts.len() + spec.caches.len(),
        ));
    };
    let manifest = state
        .storage
        .objects
        .manifest(&tree)
        .await
        .map_err(objects_error)?;
    let user = ContainerUser::of(&spec.primary_container);
    let owner = TarOwner {
        uid: user.uid.into(),
        gid: user.gid.into(),
    };
    let (writer, reader) = tokio::io::duplex(1 << 16);
    let storage = state.storage.clone();
    let project = claim.project_id.clone();
    tokio::spawn(async move {
        let written = storage
            .objects
            .write_tar(manifest, TREE_ROOT.to_string(), owner, writer)
            .await;
        // A damaged cache entry is forgotten, as on the local engine, so
        // that the next job that declares it starts empty and saves it anew.
        if let Err(e) = written {
            tracing::warn!(error = %e, "a job's restore was cut short");
            if let (Some(key), ObjectsError::Corrupt { .. } | ObjectsError::Missing { .. }) =
                (cache_key, &e)
                && let Err(e) = storage.catalog.forget_cache(&project, &key).await
            {
                tracing::warn!(error = %e, "a damaged cache entry could not be forgotten");
            }
        }
    });
    let said = HeaderValue::from_str(&said).unwrap_or(HeaderValue::from_static("restored"));
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-tar"),
            ),
            (header::HeaderName::from_static(RESTORED_HEADER), said),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// Whether save `index` of the token's job is wanted: 204 for a cache whose
/// key has an entry already (entries are never replaced, so the helper need
/// not send it), 200 otherwise.
async fn save_wanted(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(index): Path<usize>,
) -> ApiResult<Response> {
    let (claim, spec) = job_of(&state, &headers).await?;
    let artifacts = spec.artifacts.save.len();
    if index < artifacts {
        return Ok(StatusCode::OK.into_response());
    }
    let Some(cache) = spec.caches.get(index - artifacts) else {
        return Err(no_entry(&claim, "saves", artifacts + spec.caches.len()));
    };
    let kept = state
        .storage
        .catalog
        .find_cache(&claim.project_id, &cache.key, &[])
        .await
        .map_err(catalog_error)?;
    Ok(match kept {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::OK,
    }
    .into_response())
}

/// Save `index` of the token's job: the request's body, a tar stream of the
/// saved directory beneath one root component, stored as a tree; answers
/// the signed receipt the executor keeps it by.
async fn save(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(index): Path<usize>,
    body: Body,
) -> ApiResult<Response> {
    let (claim, spec) = job_of(&state, &headers).await?;
    let artifacts = &spec.artifacts.save;
    let options = if let Some(artifact) = artifacts.get(index) {
        let working_directory = &spec.primary_container.working_directory;
        let path = KeptPath::parse(&artifact.path, working_directory)
            .map_err(|why| bad_request(format!("artifact \"{}\": {why}", artifact.name)))?;
        let used: u64 = state
            .storage
            .catalog
            .artifacts(&claim.event_id)
            .await
            .map_err(catalog_error)?
            .iter()
            .map(|a| a.bytes)
            .sum();
        SaveOptions::artifact(
            &artifact.name,
            path.pattern.as_deref(),
            claim.artifact_bytes.saturating_sub(used),
            &LimitValue::Bytes(claim.artifact_bytes).to_string(),
        )
    } else if let Some(cache) = spec.caches.get(index - artifacts.len()) {
        SaveOptions::cache(
            &cache.key,
            claim.cache_bytes,
            &LimitValue::Bytes(claim.cache_bytes).to_string(),
        )
    } else {
        return Err(no_entry(
            &claim,
            "saves",
            artifacts.len() + spec.caches.len(),
        ));
    };
    let chunks = futures_util::stream::unfold(body.into_data_stream(), |mut chunks| async move {
        let chunk = match tokio::time::timeout(SAVE_IDLE_TIMEOUT, chunks.next()).await {
            Ok(chunk) => chunk?.map_err(std::io::Error::other),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "nothing of the tree arrived for {}s",
                    SAVE_IDLE_TIMEOUT.as_secs()
                ),
            )),
        };
        Some((chunk, chunks))
    });
    let tar = tokio_util::io::StreamReader::new(Box::pin(chunks));
    let saved = {
        let _saving = state.storage.saving.read().await;
        state
            .storage
            .objects
            .save_tar(tar, options)
            .await
            .map_err(objects_error)?
    };
    let receipt = Receipt {
        save: index,
        tree: saved.manifest,
        bytes: saved.bytes,
        files: saved.files,
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        state.storage.tokens.sign_receipt(&claim, &receipt),
    )
        .into_response())
}

fn no_entry(claim: &JobClaim, what: &str, count: usize) -> ApiError {
    ApiError::NotFound {
        kind: "JobFiles",
        id: format!(
            "job \"{}\" declares {count} {what}: there is no {what} entry of that index",
            claim.job
        ),
    }
}
