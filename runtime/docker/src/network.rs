//! Each event's network: every container of the event's jobs and services
//! joins it (a pod through its infra container), services by their names
//! as aliases, so that a job reaches `db` by name and nothing of another
//! event at all. Podman's bridges route to each other unless a network is
//! created isolated; Docker isolates user-defined bridges by default.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use mizzen_runtime::executor::EventContext;
use tokio::sync::OnceCell;

use crate::images::engine_message;
use crate::isolation;
use crate::{LABEL_EVENT, LABEL_MANAGED, LABEL_OWNER, LABEL_PROJECT, SharedState};

/// The networks of events with containers here, each created once.
#[derive(Default)]
pub(crate) struct EventNetworks {
    created: std::sync::Mutex<HashMap<String, Arc<EventNetwork>>>,
    /// Whether the engine is Podman, asked once.
    podman: OnceCell<bool>,
}

/// One event's network: its name once made, and the lock that its members'
/// joining and leaving take.
#[derive(Default)]
struct EventNetwork {
    name: OnceCell<String>,
    /// Held while a container joins the network (is started) or leaves it
    /// (is stopped and removed). Podman's netavark 1.4 rewrites the
    /// network's name-server file when a container leaves without the lock
    /// it takes when one joins, so a container that joins meanwhile can be
    /// dropped from the file: the network's name server then no longer
    /// knows it and answers none of its questions (`db` does not resolve
    /// for the job started as a one-shot service ended).
    membership: Arc<tokio::sync::Mutex<()>>,
}

/// The event's network could not be created.
#[derive(Debug, thiserror::Error)]
#[error(
    "creating the event's network {name} failed: {}",
    engine_message(source)
)]
pub(crate) struct NetworkError {
    name: String,
    #[source]
    source: bollard::errors::Error,
}

/// The name of an event's network.
pub(crate) fn name_of(event_id: &str) -> String {
    format!("mizzen_{event_id}")
}

/// The event's network, created at its first container.
pub(crate) async fn ensure(
    state: &SharedState,
    event: &EventContext,
) -> Result<String, NetworkError> {
    let network = state
        .networks
        .created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(event.event_id.clone())
        .or_default()
        .clone();
    network
        .name
        .get_or_try_init(|| create(state, event))
        .await
        .cloned()
}

/// Holds the event's network still while a container joins or leaves it
/// (see [`EventNetwork::membership`]); `None` once the network is gone.
pub(crate) async fn membership_change(
    state: &SharedState,
    event_id: &str,
) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    let network = state
        .networks
        .created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(event_id)
        .cloned()?;
    Some(network.membership.clone().lock_owned().await)
}

async fn create(state: &SharedState, event: &EventContext) -> Result<String, NetworkError> {
    let docker = &state.engine.docker;
    let name = name_of(&event.event_id);
    let podman = *state
        .networks
        .podman
        .get_or_init(|| async {
            docker.version().await.is_ok_and(|version| {
                version
                    .components
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.name.contains("Podman"))
            })
        })
        .await;
    // The bridge is named after the event, for the firewall rule of Mizzen's
    // own that Podman's isolation needs (see `isolation`).
    let bridge = isolation::bridge_name(&event.event_id);
    let mut options =
        HashMap::from([("com.docker.network.bridge.name".to_string(), bridge.clone())]);
    if podman {
        options.insert("isolate".to_string(), "true".to_string());
    }
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_OWNER.to_string(), state.owner.clone()),
        (LABEL_EVENT.to_string(), event.event_id.clone()),
        (LABEL_PROJECT.to_string(), event.project_id.clone()),
    ]);
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        options: Some(options),
        labels: Some(labels),
        ..NetworkCreateRequest::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {}
        // A process that restarted finds its event's network made.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {}
        Err(source) => return Err(NetworkError { name, source }),
    }
    if podman {
        isolation::isolate(&bridge).await;
    }
    Ok(name)
}

/// Removes the event's network, once its containers are gone.
pub(crate) async fn remove(state: &SharedState, event_id: &str) {
    state
        .networks
        .created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(event_id);
    let name = name_of(event_id);
    isolation::release(&isolation::bridge_name(event_id)).await;
    match state.engine.docker.remove_network(&name).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            tracing::warn!(network = %name, error = %engine_message(&e), "could not remove an event's network")
        }
    }
}

/// The events whose networks this executor made, with their owners.
pub(crate) async fn managed(state: &SharedState) -> Vec<(String, String)> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
    let options = ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    match state.engine.docker.list_networks(Some(options)).await {
        Ok(networks) => networks
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels?;
                Some((
                    labels.get(LABEL_EVENT)?.clone(),
                    labels.get(LABEL_OWNER)?.clone(),
                ))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %engine_message(&e), "could not list networks to remove leftovers");
            Vec::new()
        }
    }
}
