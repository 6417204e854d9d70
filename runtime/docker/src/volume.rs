//! Named volumes on the engine, and the host paths containers bind.
//!
//! An event's volume (`mizzen_<event>_<name>`) is made by the first
//! container that mounts it and removed when the event ends, or by the
//! sweep once the process that made it is gone. A project's volume
//! (`mizzen_project_<project>_<name>`, for a name the project declares) is
//! kept between events: the executor measures it against its declared size
//! as each job that mounts it starts (an engine volume has no quota of its
//! own on most file systems), and lists and deletes it for the API. Names
//! cannot collide: neither project ids nor volume names hold `_`.
//!
//! Anonymous volumes need nothing here: the engine makes one per container
//! and removes it with the container.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use mizzen_runtime::executor::{EventContext, ExecutorError, StoredVolume};
use mizzen_runtime::volume::{HostPaths, is_volume_name};

use crate::images::engine_message;
use crate::scratch::{measure, size};
use crate::{LABEL_EVENT, LABEL_MANAGED, LABEL_OWNER, LABEL_PROJECT, SharedState, owner_is_alive};

/// The volume's name as the script gives it.
const LABEL_VOLUME: &str = "sh.mizzen.volume";
/// `event` or `project`: whether the volume ends with its event.
const LABEL_SCOPE: &str = "sh.mizzen.volume-scope";
const SCOPE_EVENT: &str = "event";
const SCOPE_PROJECT: &str = "project";

/// A volume a job mounts could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    /// The engine would not create it.
    #[error(
        "creating the volume \"{name}\" ({engine_name}) failed: {}",
        engine_message(source)
    )]
    Create {
        name: String,
        engine_name: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A project volume holds more than its declared size.
    #[error(
        "the project's volume \"{name}\" holds more than its size of {} ({} measured as the job started); delete files from it, or the volume (mizzen project volumes delete), or declare it larger in spec.workerTemplate.volumes",
        size(*limit),
        size(*used)
    )]
    OverSize { name: String, limit: u64, used: u64 },
    /// A project volume could not be measured.
    #[error("measuring the project's volume \"{name}\" ({}) against its size failed: {source}", mountpoint.display())]
    Measure {
        name: String,
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A host path to bind does not exist on this host.
    #[error("the host path {} (volume {volume:?}) does not exist on this host", path.display())]
    HostPathMissing { volume: String, path: PathBuf },
    /// A host path leads, through a link, out of the allowed paths.
    #[error(
        "the host path {} (volume {volume:?}) leads, through a symbolic link, out of the project's spec.workerTemplate.jobPolicies.allowedHostPaths",
        path.display()
    )]
    HostPathEscapes { volume: String, path: PathBuf },
}

/// The engine's name of the event's volume `name`.
fn engine_name(event: &EventContext, name: &str) -> String {
    if event.volumes.project.contains_key(name) {
        project_volume_name(&event.project_id, name)
    } else {
        format!("mizzen_{}_{name}", event.event_id)
    }
}

fn project_volume_name(project_id: &str, name: &str) -> String {
    format!("{}{name}", project_volume_prefix(project_id))
}

/// What the engine's names of a project's volumes start with. A project's
/// volumes are found by name, not by label: when a deletion falls between a
/// job's check of the volume and its container's creation, the engine makes
/// the volume again, bare, and it must still be listed and deletable.
fn project_volume_prefix(project_id: &str) -> String {
    format!("mizzen_project_{project_id}_")
}

/// Held, shared, while a volume is made ready and the containers that
/// mount it are made, and alone while it is deleted: Podman fails a
/// creation and a removal of one volume that overlap (a half-made
/// directory, "directory not empty"), while jobs starting on one volume
/// need not wait for each other. Only this process's operations are
/// ordered: a volume another process deletes between the two is made again
/// by the engine as the container is created.
pub(crate) type VolumeLock = tokio::sync::OwnedRwLockReadGuard<()>;

/// The lock of the engine's volume `engine_name`.
fn lock_of(state: &SharedState, engine_name: &str) -> std::sync::Arc<tokio::sync::RwLock<()>> {
    let mut locks = state.volume_locks.lock().unwrap_or_else(|e| e.into_inner());
    // Locks nobody holds or waits for go, so that the map holds only
    // volumes in use.
    locks.retain(|_, mutex| std::sync::Arc::strong_count(mutex) > 1);
    locks.entry(engine_name.to_string()).or_default().clone()
}

/// Makes the event's volume `name` ready to mount, and returns the engine's
/// name for it (created if need be, and a project's measured against its
/// size) with its lock, to hold until the containers that mount it are made.
pub(crate) async fn ensure(
    state: &SharedState,
    event: &EventContext,
    name: &str,
) -> Result<(String, VolumeLock), VolumeError> {
    let docker = &state.engine.docker;
    let engine_name = engine_name(event, name);
    // The declared size of a project's volume; none for the event's.
    let project_size = event.volumes.project.get(name).copied();
    let held = lock_of(state, &engine_name).read_owned().await;
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_PROJECT.to_string(), event.project_id.clone()),
        (LABEL_VOLUME.to_string(), name.to_string()),
    ]);
    if project_size.is_some() {
        labels.insert(LABEL_SCOPE.to_string(), SCOPE_PROJECT.to_string());
    } else {
        labels.insert(LABEL_SCOPE.to_string(), SCOPE_EVENT.to_string());
        labels.insert(LABEL_EVENT.to_string(), event.event_id.clone());
        labels.insert(LABEL_OWNER.to_string(), state.owner.clone());
    }
    let request = VolumeCreateRequest {
        name: Some(engine_name.clone()),
        labels: Some(labels),
        ..VolumeCreateRequest::default()
    };
    // Docker answers a second create of a name with the volume it has;
    // Podman refuses it. Either way the volume is there.
    let volume = match docker.create_volume(request).await {
        Ok(volume) => volume,
        Err(source) => match docker.inspect_volume(&engine_name).await {
            Ok(volume) => volume,
            Err(_) => {
                return Err(VolumeError::Create {
                    name: name.to_string(),
                    engine_name,
                    source,
                });
            }
        },
    };
    if let Some(limit) = project_size {
        let mountpoint = PathBuf::from(&volume.mountpoint);
        match usage(&mountpoint, limit).await {
            Ok(Some(used)) if used > limit => {
                return Err(VolumeError::OverSize {
                    name: name.to_string(),
                    limit,
                    used,
                });
            }
            Ok(_) => {}
            Err(source) => {
                return Err(VolumeError::Measure {
                    name: name.to_string(),
                    mountpoint,
                    source,
                });
            }
        }
    }
    Ok((engine_name, held))
}

/// What the volume at `mountpoint` holds, counted up to just past
/// `stop_above`; `None` when this process may not read it (a rootless
/// engine's files belong to the containers' mapped users), where the
/// volume's size is not enforced.
async fn usage(mountpoint: &Path, stop_above: u64) -> io::Result<Option<u64>> {
    let mountpoint = mountpoint.to_path_buf();
    let measured = tokio::task::spawn_blocking(move || {
        let dir = Dir::open_ambient_dir(&mountpoint, ambient_authority())?;
        measure(&dir, stop_above)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    match measured {
        Ok(bytes) => Ok(Some(bytes)),
        // Podman makes a new volume's directory at its first mount.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(0)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::warn!(error = %e, "a project volume could not be read to measure it; its size is not enforced");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Checks a host path to bind where it leads on this host: it exists, and
/// its links do not lead out of the allowed paths (the rules compared only
/// its spelling).
pub(crate) fn check_host_path(
    host_paths: &HostPaths,
    volume: &str,
    path: &Path,
) -> Result<(), VolumeError> {
    match host_paths.allows_resolved(path) {
        None => Err(VolumeError::HostPathMissing {
            volume: volume.to_string(),
            path: path.to_path_buf(),
        }),
        Some(false) => Err(VolumeError::HostPathEscapes {
            volume: volume.to_string(),
            path: path.to_path_buf(),
        }),
        Some(true) => Ok(()),
    }
}

/// Volumes with all of these labels. The engine is asked for the first
/// only and the others are checked here: Podman 4.3 lists volumes with
/// *any* of several label filters (unlike containers and networks), so an
/// event's clean-up asking for two would have taken other events' volumes.
async fn labelled(
    state: &SharedState,
    labels: &[(&str, &str)],
) -> Result<Vec<bollard::models::Volume>, bollard::errors::Error> {
    let Some((key, value)) = labels.first() else {
        return Ok(Vec::new());
    };
    let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let options = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let listed = state.engine.docker.list_volumes(Some(options)).await?;
    Ok(listed
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter(|volume| {
            labels
                .iter()
                .all(|(key, value)| volume.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .collect())
}

/// Removes the event's volumes, once its containers are gone.
pub(crate) async fn remove_event_volumes(state: &SharedState, event_id: &str) {
    let volumes = match labelled(
        state,
        &[(LABEL_EVENT, event_id), (LABEL_SCOPE, SCOPE_EVENT)],
    )
    .await
    {
        Ok(volumes) => volumes,
        Err(e) => {
            tracing::warn!(event = %event_id, error = %engine_message(&e), "could not list an event's volumes to remove them");
            return;
        }
    };
    for volume in volumes {
        remove(state, &volume.name).await;
    }
}

/// Removes events' volumes whose process is gone.
pub(crate) async fn sweep(state: &SharedState) {
    let Ok(volumes) = labelled(
        state,
        &[(LABEL_SCOPE, SCOPE_EVENT), (LABEL_MANAGED, "true")],
    )
    .await
    else {
        return;
    };
    for volume in volumes {
        let owner = volume.labels.get(LABEL_OWNER).map(String::as_str);
        if owner.is_some_and(|owner| !owner_is_alive(owner)) {
            tracing::info!(volume = %volume.name, "removing a volume left behind by a process that ended");
            remove(state, &volume.name).await;
        }
    }
}

async fn remove(state: &SharedState, engine_name: &str) {
    let options = RemoveVolumeOptionsBuilder::default().force(false).build();
    match state
        .engine
        .docker
        .remove_volume(engine_name, Some(options))
        .await
    {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            tracing::warn!(volume = %engine_name, error = %engine_message(&e), "could not remove an event's volume")
        }
    }
}

/// The project's volumes on the engine, each measured up to just past
/// `measure_up_to`.
pub(crate) async fn list_project(
    state: &SharedState,
    project_id: &str,
    measure_up_to: u64,
) -> Result<Vec<StoredVolume>, ExecutorError> {
    let prefix = project_volume_prefix(project_id);
    let filters = HashMap::from([("name".to_string(), vec![prefix.clone()])]);
    let options = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let volumes = state
        .engine
        .docker
        .list_volumes(Some(options))
        .await
        .map_err(|e| {
            ExecutorError::Unavailable(format!(
                "listing the project's volumes failed: {}",
                engine_message(&e)
            ))
        })?
        .volumes
        .unwrap_or_default();
    let mut stored = Vec::with_capacity(volumes.len());
    for volume in volumes {
        // The engine's name filter matches anywhere in the name.
        let Some(name) = volume
            .name
            .strip_prefix(&prefix)
            .filter(|name| is_volume_name(name))
        else {
            continue;
        };
        let used_bytes = usage(Path::new(&volume.mountpoint), measure_up_to)
            .await
            .ok()
            .flatten();
        stored.push(StoredVolume {
            name: name.to_string(),
            used_bytes,
        });
    }
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stored)
}

/// Deletes the project's volume `name`: refused while a container uses it.
pub(crate) async fn delete_project(
    state: &SharedState,
    project_id: &str,
    name: &str,
) -> Result<(), ExecutorError> {
    let engine_name = project_volume_name(project_id, name);
    let lock = lock_of(state, &engine_name);
    let _held = lock.write().await;
    let docker = &state.engine.docker;
    let not_found = || {
        ExecutorError::NotFound(format!(
            "project \"{project_id}\" has no volume \"{name}\" on this engine"
        ))
    };
    let options = RemoveVolumeOptionsBuilder::default().force(false).build();
    match docker.remove_volume(&engine_name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(not_found()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Err(ExecutorError::InUse(format!(
            "the volume \"{name}\" is in use by a container of a running event; delete it once the event ends"
        ))),
        Err(e) => Err(ExecutorError::Unavailable(format!(
            "deleting the volume \"{name}\" failed: {}",
            engine_message(&e)
        ))),
    }
}
