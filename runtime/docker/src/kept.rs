//! A job's artifacts and caches on the local engine: restored into its
//! primary container through the engine's archive API (`docker cp`'s) after
//! the container is made and before it starts, and saved from it the same
//! way after it exits, before it is removed.
//!
//! The archive API rather than bind mounts: it reaches any path of the
//! container (a cache in `/root/.npm`, an artifact in the image's build
//! directory) without a mount declared for it, the files restored are owned
//! by the container's user (a host directory would be owned by whoever
//! made it), and a stopped container's files are read through its mounts
//! as well as its own layer.

use std::sync::Arc;

use bollard::Docker;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use mizzen_host_api::types::ArtifactInfo;
use mizzen_objects::{
    ArtifactReadError, CacheKept, Digest, JobStorage, KeptArtifact, KeptCache, Manifest,
    ObjectsError, SaveOptions, TarOwner,
};
use mizzen_runtime::executor::{ContainerUser, EventContext, ExecutorError, JobOutput};
use mizzen_runtime::kept::KeptPath;
use mizzen_runtime::limits::LimitValue;

use crate::images::engine_message;
use crate::job::JobContext;

/// Why restoring or saving failed: the job's failure reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeptError {
    /// An artifact to restore is not in the catalog.
    #[error(
        "artifact \"{name}\" is not there to restore: the job that saves it has not ended, or ended without saving it (a failed job saves only the artifacts marked onFailure)"
    )]
    NoArtifact {
        /// The artifact.
        name: String,
    },
    /// A path to save does not exist in the container.
    #[error("{what}: {path} does not exist in the primary container")]
    NoPath {
        /// `artifact "dist"`.
        what: String,
        /// The path.
        path: String,
    },
    /// The engine refused to read or write the container's files.
    #[error("{what}: the engine could not copy {path}: {}", engine_message(source))]
    Engine {
        /// `artifact "dist"`.
        what: String,
        /// The path.
        path: String,
        /// What the engine said.
        source: bollard::errors::Error,
    },
    /// Storing or reading the tree failed (a quota, a corrupt object).
    #[error("{}", prefixed(what, source))]
    Objects {
        /// `artifact "dist"`.
        what: String,
        /// Why.
        source: ObjectsError,
    },
    /// The catalog refused (a name taken, a quota) or failed.
    #[error("{what}: {source}")]
    Catalog {
        /// `artifact "dist"`.
        what: String,
        /// Why.
        source: mizzen_objects::CatalogError,
    },
}

/// `what: error`, unless the error names `what` already.
fn prefixed(what: &str, error: &ObjectsError) -> String {
    let text = error.to_string();
    if text.starts_with(what) {
        text
    } else {
        format!("{what}: {text}")
    }
}

/// What a job restores, found before its container is made.
pub(crate) struct Restores {
    trees: Vec<Restore>,
    /// The caches declared: whether each one's own key was found (a hit
    /// saves nothing after the job).
    caches: Vec<(String, String, bool)>,
}

struct Restore {
    what: String,
    /// `None` for a cache that missed: an empty directory, so that the job
    /// (whichever user it runs as) can fill it.
    tree: Option<Digest>,
    target: String,
    /// For a cache's entry: its key, forgotten when the entry is found
    /// corrupt, so that the next job that declares it misses and saves it
    /// anew rather than failing on it for ever.
    cache_key: Option<String>,
}

/// Finds what the job restores: its artifacts (each must have been saved)
/// and, for each cache, the entry of its key or of a restore key.
pub(crate) async fn find(
    storage: &JobStorage,
    context: &JobContext,
) -> Result<Restores, KeptError> {
    let request = &context.request;
    let spec = &request.spec;
    let working_directory = &spec.primary_container.working_directory;
    let event = &request.event;
    let mut found = Restores {
        trees: Vec::new(),
        caches: Vec::new(),
    };
    for artifact in &spec.artifacts.restore {
        let what = format!("artifact \"{}\"", artifact.name);
        let kept = storage
            .catalog
            .artifact(&event.event_id, &artifact.name)
            .await
            .map_err(|source| KeptError::Catalog {
                what: what.clone(),
                source,
            })?;
        let Some(kept) = kept else {
            return Err(KeptError::NoArtifact {
                name: artifact.name.clone(),
            });
        };
        let target = if artifact.path.is_empty() {
            kept.path.clone()
        } else {
            // The rules checked it.
            KeptPath::parse(&artifact.path, working_directory)
                .map(|p| p.base)
                .unwrap_or_else(|_| kept.path.clone())
        };
        found.trees.push(Restore {
            what,
            tree: Some(kept.tree),
            target,
            cache_key: None,
        });
    }
    for cache in &spec.caches {
        let what = format!("cache \"{}\"", cache.key);
        let base = KeptPath::parse(&cache.path, working_directory)
            .map(|p| p.base)
            .unwrap_or_default();
        let hit = storage
            .catalog
            .find_cache(&event.project_id, &cache.key, &cache.restore_keys)
            .await
            .map_err(|source| KeptError::Catalog {
                what: what.clone(),
                source,
            })?;
        let exact = hit.as_ref().is_some_and(|hit| hit.key == cache.key);
        let (what, tree, cache_key) = match hit {
            Some(hit) if exact => (what, Some(hit.tree), Some(hit.key)),
            Some(hit) => (
                format!(
                    "{what} (from the entry of restore key match \"{}\")",
                    hit.key
                ),
                Some(hit.tree),
                Some(hit.key),
            ),
            None => (what, None, None),
        };
        found.trees.push(Restore {
            what,
            tree,
            target: base.clone(),
            cache_key,
        });
        found.caches.push((cache.key.clone(), base, exact));
    }
    Ok(found)
}

/// Restores what [`find`] found into container `id` (made, not started),
/// owned by the primary container's user.
pub(crate) async fn restore(
    docker: &Docker,
    storage: &JobStorage,
    id: &str,
    context: &JobContext,
    restores: &Restores,
) -> Result<(), KeptError> {
    let user = ContainerUser::of(&context.request.spec.primary_container);
    let owner = TarOwner {
        uid: user.uid.into(),
        gid: user.gid.into(),
    };
    for restore in &restores.trees {
        let restored = restore_one(docker, storage, id, context, restore, owner).await;
        if let (Err(KeptError::Objects { source, .. }), Some(key)) = (&restored, &restore.cache_key)
            && matches!(
                source,
                ObjectsError::Corrupt { .. } | ObjectsError::Missing { .. }
            )
        {
            let project = &context.request.event.project_id;
            match storage.catalog.forget_cache(project, key).await {
                Ok(()) => say(
                    context,
                    &format!(
                        "cache entry \"{key}\" is damaged and was deleted: the next job that declares it starts empty and saves it again"
                    ),
                ),
                Err(e) => say(
                    context,
                    &format!("cache entry \"{key}\" is damaged, and deleting it failed: {e}"),
                ),
            }
        }
        restored?;
    }
    Ok(())
}

/// Restores one tree into container `id`.
async fn restore_one(
    docker: &Docker,
    storage: &JobStorage,
    id: &str,
    context: &JobContext,
    restore: &Restore,
    owner: TarOwner,
) -> Result<(), KeptError> {
    let objects_error = |source| KeptError::Objects {
        what: restore.what.clone(),
        source,
    };
    let manifest = match &restore.tree {
        Some(tree) => storage
            .objects
            .manifest(tree)
            .await
            .map_err(objects_error)?,
        None => Manifest::empty_directory(),
    };
    let (files, bytes) = (manifest.files(), manifest.size());
    // The tar's first component is the whole target path, extracted at
    // `/`, so that directories missing on the way are made.
    let (writer, reader) = tokio::io::duplex(1 << 16);
    let writing = storage.objects.write_tar(
        manifest,
        restore.target.trim_start_matches('/').to_string(),
        owner,
        writer,
    );
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(reader));
    let options = UploadToContainerOptionsBuilder::default().path("/").build();
    let uploading = docker.upload_to_container(id, Some(options), body);
    let (written, uploaded) = tokio::join!(writing, uploading);
    // A corrupt object cuts the tar short; its error says why, not the
    // engine's complaint about the cut.
    written.map_err(objects_error)?;
    uploaded.map_err(|source| KeptError::Engine {
        what: restore.what.clone(),
        path: restore.target.clone(),
        source,
    })?;
    let line = match restore.tree {
        Some(_) => format!(
            "restored {} into {} ({}, {})",
            restore.what,
            restore.target,
            mizzen_runtime::kept::files(files as u64),
            LimitValue::Bytes(bytes)
        ),
        None => format!(
            "{} has no entry (nor has any restore key): {} starts empty",
            restore.what, restore.target
        ),
    };
    say(context, &line);
    Ok(())
}

/// Saves from container `id` (exited) the job's artifacts (those saved on
/// failure too, when it failed) and, when it succeeded, its caches whose
/// key was not found.
pub(crate) async fn save(
    docker: &Docker,
    storage: &JobStorage,
    id: &str,
    context: &JobContext,
    restores: &Restores,
    succeeded: bool,
) -> Result<(), KeptError> {
    let request = &context.request;
    let event = &request.event;
    let working_directory = &request.spec.primary_container.working_directory;
    let _saving = storage.saving.read().await;
    for artifact in &request.spec.artifacts.save {
        if !(succeeded || artifact.on_failure) {
            continue;
        }
        let what = format!("artifact \"{}\"", artifact.name);
        let path = KeptPath::parse(&artifact.path, working_directory).map_err(|why| {
            KeptError::NoPath {
                what: what.clone(),
                path: why,
            }
        })?;
        let used: u64 = storage
            .catalog
            .artifacts(&event.event_id)
            .await
            .map_err(|source| KeptError::Catalog {
                what: what.clone(),
                source,
            })?
            .iter()
            .map(|a| a.bytes)
            .sum();
        let quota = event.kept.artifact_bytes;
        let options = SaveOptions::artifact(
            &artifact.name,
            path.pattern.as_deref(),
            quota.saturating_sub(used),
            &LimitValue::Bytes(quota).to_string(),
        );
        let Some(saved) = save_tree(docker, storage, id, &path.base, options, !succeeded).await?
        else {
            say(
                context,
                &format!("{what} was not saved: {} does not exist", path.base),
            );
            continue;
        };
        let kept = KeptArtifact {
            event_id: event.event_id.clone(),
            project_id: event.project_id.clone(),
            name: artifact.name.clone(),
            job: request.name.clone(),
            path: path.base.clone(),
            tree: saved.manifest,
            bytes: saved.bytes,
            files: saved.files,
            created: mizzen_objects::micros_now(),
        };
        storage
            .catalog
            .keep_artifact(&kept, quota)
            .await
            .map_err(|source| KeptError::Catalog {
                what: what.clone(),
                source,
            })?;
        say(
            context,
            &format!(
                "saved {what} from {}{} ({}, {}; {} new)",
                path.base,
                path.pattern
                    .as_deref()
                    .map(|p| format!("/{p}"))
                    .unwrap_or_default(),
                mizzen_runtime::kept::files(saved.files),
                LimitValue::Bytes(saved.bytes),
                LimitValue::Bytes(saved.written_bytes)
            ),
        );
    }
    if !succeeded {
        return Ok(());
    }
    let quota = event.kept.cache_bytes;
    for (key, base, exact) in &restores.caches {
        if *exact {
            continue;
        }
        let what = format!("cache \"{key}\"");
        let options = SaveOptions::cache(key, quota, &LimitValue::Bytes(quota).to_string());
        let Some(saved) = save_tree(docker, storage, id, base, options, true).await? else {
            say(
                context,
                &format!("{what} was not saved: {base} does not exist"),
            );
            continue;
        };
        let now = mizzen_objects::micros_now();
        let kept = KeptCache {
            project_id: event.project_id.clone(),
            key: key.clone(),
            tree: saved.manifest,
            bytes: saved.bytes,
            files: saved.files,
            created: now,
            last_used: now,
        };
        let outcome = storage
            .catalog
            .keep_cache(&kept, quota)
            .await
            .map_err(|source| KeptError::Catalog {
                what: what.clone(),
                source,
            })?;
        let line = match outcome {
            CacheKept::AlreadyKept => {
                format!("{what} was saved by another job first; kept that one")
            }
            CacheKept::Kept { evicted } => format!(
                "saved {what} from {base} ({}, {}; {} new){}",
                mizzen_runtime::kept::files(saved.files),
                LimitValue::Bytes(saved.bytes),
                LimitValue::Bytes(saved.written_bytes),
                if evicted.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; evicted {} least recently used entr{} to stay under the cacheSize limit",
                        evicted.len(),
                        if evicted.len() == 1 { "y" } else { "ies" }
                    )
                }
            ),
        };
        say(context, &line);
    }
    Ok(())
}

/// Saves `path` of container `id` as a tree; `None` when it does not exist
/// and `missing_is_fine`.
async fn save_tree(
    docker: &Docker,
    storage: &JobStorage,
    id: &str,
    path: &str,
    options: SaveOptions,
    missing_is_fine: bool,
) -> Result<Option<mizzen_objects::SavedTree>, KeptError> {
    let what = options.what.clone();
    let download = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(id, Some(download)).boxed();
    // The engine's answer to the request comes as the stream's first item.
    let first = match stream.next().await {
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => {
            if missing_is_fine {
                return Ok(None);
            }
            return Err(KeptError::NoPath {
                what,
                path: path.to_string(),
            });
        }
        Some(Err(source)) => {
            return Err(KeptError::Engine {
                what,
                path: path.to_string(),
                source,
            });
        }
        first => first,
    };
    let stream = futures_util::stream::iter(first)
        .chain(stream)
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    storage
        .objects
        .save_tar(reader, options)
        .await
        .map(Some)
        .map_err(|source| KeptError::Objects { what, source })
}

/// A line in the job's log, from Mizzen rather than the container.
fn say(context: &JobContext, line: &str) {
    let output: &Arc<dyn JobOutput> = &context.request.output;
    output.line(&context.request.name, &format!("[mizzen] {line}"));
}

/// The event's artifacts, for its script.
pub(crate) async fn list(
    storage: Option<&JobStorage>,
    event: &EventContext,
) -> Result<Vec<ArtifactInfo>, ExecutorError> {
    let storage = storage.ok_or_else(no_storage)?;
    storage
        .artifact_infos(&event.event_id)
        .await
        .map_err(|e| ExecutorError::Unavailable(e.to_string()))
}

/// File `path` of the event's artifact `name`, for its script.
pub(crate) async fn read(
    storage: Option<&JobStorage>,
    event: &EventContext,
    name: &str,
    path: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, ExecutorError> {
    let storage = storage.ok_or_else(no_storage)?;
    storage
        .read_artifact_file(&event.event_id, name, path, max_bytes)
        .await
        .map_err(|e| match e {
            e if e.is_not_found() => ExecutorError::NotFound(e.to_string()),
            ArtifactReadError::TooLarge { .. } => ExecutorError::Unsupported(e.to_string()),
            e => ExecutorError::Unavailable(e.to_string()),
        })
}

fn no_storage() -> ExecutorError {
    ExecutorError::Unsupported("this executor was given no storage for artifacts".into())
}
