//! An in-process fake of the Kubernetes API, at the HTTP level, for testing
//! the Kubernetes executor without a cluster. It is checked against two real
//! clients: kube-rs (tests/fake_kube.rs, tests/kubernetes/services.rs) and
//! kubectl (tests/kubernetes/kubectl.rs).
//!
//! It serves, in the namespaces it is given:
//!
//! - core/v1 `pods` (with `pods/log`: follow, timestamps, tailLines),
//!   `secrets` (`stringData` merged into `data`, as the API server does),
//!   `persistentvolumeclaims` (left Pending; a pod that mounts one that
//!   does not exist stays unscheduled, `PodScheduled` False, until it
//!   does) and `services` (a cluster IP from 10.96.0.0/16, unique among
//!   live Services, unless headless; `type` ClusterIP and the other
//!   defaults);
//! - networking.k8s.io/v1 `networkpolicies` (stored, not enforced);
//!
//! each with create (409 for a taken name), get, replace, merge patch,
//! delete and deletecollection (the garbage collector following
//! ownerReferences), list and watch (label and field selectors,
//! resourceVersions, resuming watches, 410 after [`FakeKube::expire_history`]);
//! bodies decoded into the resource's type (quantities parsed) and
//! validated where clients go wrong (names, labels, a pod's containers,
//! volumes and mounts, a claim's access modes and storage request), with
//! `fieldValidation` (Strict, Warn with `Warning` headers, Ignore); `Table`
//! answers for a client that asks for one (kubectl's default output), with
//! Kubernetes' columns. Every request is authorised with one Role's rules
//! ([`RoleRule`], by verb, API group and resource) and refused with the API
//! server's words. Anyone may read `/version`, the discovery documents (`/api`,
//! `/apis`, each group version's resource list) and OpenAPI v3 (the paths,
//! kinds and parameters, without schemas). A fake kubelet plays each pod's
//! life from a [`PodScript`] the test chooses.
//!
//! What it does not do: protobuf bodies (kubectl's typed commands, such as
//! `kubectl create secret`, send them: a 415 says so), server-side apply,
//! JSON patches, `limit`/`continue` paging, graceful deletion (objects go
//! at once; so a claim in use goes at once too, where a cluster's
//! `kubernetes.io/pvc-protection` finalizer keeps it until no pod uses it),
//! scheduling (pods get no node), and anything cluster-scoped.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use mizzen_tests::fake_kube::{FakeConfig, FakeKube, RoleRule};
//!
//! let fake = FakeKube::start(FakeConfig {
//!     namespaces: vec!["jobs".into()],
//!     rules: vec![RoleRule::new(&["*"], &["pods", "pods/log", "secrets"])],
//! })
//! .await;
//! fake.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "jobs")?;
//! // … point a kube::Client at it, then inspect fake.requests(), fake.denied().
//! # Ok(())
//! # }
//! ```

mod api;
mod discovery;
mod kubelet;
mod rbac;
mod schema;
mod select;
mod store;
mod table;

use std::any::Any;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError};

use serde_json::Value;
use tokio::task::AbortHandle;

pub use kubelet::{ContainerScript, PodScript};
pub use rbac::RoleRule;

use schema::FieldValidation;
use store::{Resource, Shared, State};

/// The user every request is made as, in refusals' messages.
pub const USER: &str = "system:serviceaccount:mizzen:mizzen";

/// What the fake serves.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// The namespaces that exist; creating in another is a 404.
    pub namespaces: Vec<String>,
    /// The Role granted in every one of `namespaces`; anything it does not
    /// allow is a 403 (see [`RoleRule::from_role_yaml`]).
    pub rules: Vec<RoleRule>,
}

impl FakeConfig {
    /// `namespaces`, authorised by the Role Mizzen is deployed with
    /// (`deploy/base/role.yaml`), so that a test fails when the executor
    /// needs a permission the deployment does not grant.
    pub fn deployed(namespaces: &[&str]) -> FakeConfig {
        let role = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/role.yaml");
        let role = std::fs::read_to_string(role).unwrap_or_else(|e| panic!("{role}: {e}"));
        FakeConfig {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            rules: RoleRule::from_role_yaml(&role),
        }
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/jobs/pods`.
    pub path: String,
    /// The raw query string (kube's start with `&`), empty if none.
    pub query: String,
    /// The decoded query parameters, in order.
    pub params: Vec<(String, String)>,
    /// The body, if it was JSON.
    pub body: Option<Value>,
}

impl RecordedRequest {
    /// The value of a query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A request the fake refused with 403 Forbidden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The RBAC verb (`get`, `list`, `watch`, `create`, …), or for a path
    /// that names no resource the lowercase HTTP method.
    pub verb: String,
    /// The resource's API group: `""` for the core group (and for a path
    /// that names no resource), `networking.k8s.io`, ….
    pub group: String,
    /// `pods`, `pods/log`, …; empty for a path that names no resource.
    pub resource: String,
    /// The namespace, if the request was namespaced.
    pub namespace: Option<String>,
    /// The object's name, if the request named one.
    pub name: Option<String>,
    /// The request's path.
    pub path: String,
    /// The message of the 403's Status.
    pub message: String,
}

/// The fake API server, serving on 127.0.0.1 until dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    server: AbortHandle,
}

/// A panic's payload as text.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

impl FakeKube {
    /// Starts the fake on a random port of 127.0.0.1, on the current tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if no port can be bound.
    pub async fn start(config: FakeConfig) -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Kubernetes API to 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("the fake Kubernetes API's address");
        let shared = Arc::new(Shared::new(
            State::new(config.namespaces, config.rules),
            tokio::runtime::Handle::current(),
            addr,
        ));
        let app = api::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the fake Kubernetes API stopped: {e}");
            }
        })
        .abort_handle();
        FakeKube { shared, server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A kubeconfig with one cluster (this fake), one user (with a dummy
    /// token) and one context using `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: mizzen\n  user:\n    token: fake-token\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: mizzen\n    namespace: {namespace}\n\
             current-context: fake\n",
            url = self.url(),
        )
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
    }

    /// Chooses how the kubelet plays each pod created from now on (it is
    /// called with the pod as stored). Without it every container prints
    /// nothing and exits 0 after 10 ms.
    pub fn on_pod(&self, script: impl Fn(&Value) -> PodScript + Send + Sync + 'static) {
        self.shared.lock().on_pod = Some(Arc::new(script));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The objects the client asked to create in `resource` (`pods`,
    /// `secrets`, …), as it sent them, in order.
    pub fn created(&self, resource: &str) -> Vec<Value> {
        let suffix = format!("/{resource}");
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&suffix))
            .filter_map(|r| r.body)
            .collect()
    }

    /// Every request refused with 403 so far, in order.
    pub fn denied(&self) -> Vec<Denied> {
        self.shared.lock().denied.clone()
    }

    /// Refuses `verb` on `resource` (`pods`, `pods/log`, …; `"*"` for any)
    /// from now on, whatever the rules say.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .push((verb.to_owned(), resource.to_owned()));
    }

    /// The objects of a resource in a namespace, in name order.
    ///
    /// # Panics
    ///
    /// If the fake does not serve `resource`.
    pub fn objects(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let resource = Resource::named(resource);
        self.shared
            .lock()
            .list(resource, namespace)
            .into_iter()
            .cloned()
            .collect()
    }

    /// A handle that reads what the fake stores, for a test's
    /// [`on_pod`](FakeKube::on_pod) callback (which plays the kubelet, and
    /// may need what a pod mounts: its Secret, say).
    pub fn reader(&self) -> FakeKubeReader {
        FakeKubeReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stores an object as if created earlier by someone else (e.g. a pod a
    /// previous Mizzen process left): the uid and creationTimestamp it has
    /// are kept, the rest of the metadata filled in. A pod is played by the
    /// kubelet from the start, unless its status says it is over. Returns
    /// the object as stored.
    ///
    /// # Panics
    ///
    /// If the fake does not serve `resource`, or would refuse to create the
    /// object (unknown namespace, existing name, invalid object, a field
    /// its type does not have).
    pub fn insert(&self, resource: &str, namespace: &str, object: Value) -> Value {
        let resource = Resource::named(resource);
        let (stored, _) = self
            .shared
            .lock()
            .create(resource, namespace, object, true, FieldValidation::Strict)
            .unwrap_or_else(|e| panic!("inserting into the fake Kubernetes API: {}", e.message));
        self.shared.notify();
        if resource == Resource::Pods {
            kubelet::start(&self.shared, &stored);
        }
        stored
    }

    /// Deletes an object (and collects its dependents) as another client
    /// would; false if there was no such object.
    ///
    /// # Panics
    ///
    /// If the fake does not serve `resource`.
    pub fn delete_from_outside(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let resource = Resource::named(resource);
        let deleted = self
            .shared
            .lock()
            .delete(resource, namespace, name, false)
            .is_ok();
        self.shared.notify();
        deleted
    }

    /// Ends every open watch abruptly (the connection drops mid-stream, as
    /// when the API server restarts); later watches work.
    pub fn drop_watches(&self) {
        self.shared.lock().watch_epoch += 1;
        self.shared.notify();
    }

    /// Ends every open `follow=true` log stream abruptly.
    pub fn drop_log_streams(&self) {
        self.shared.lock().log_epoch += 1;
        self.shared.notify();
    }

    /// Forgets the change history, as an etcd compaction does: a watch
    /// from a resourceVersion older than the current one gets a 410 Gone
    /// ERROR event (open watches go on).
    pub fn expire_history(&self) {
        let mut state = self.shared.lock();
        state.oldest_rv = state.rv;
    }

    /// The current resourceVersion (the last change's).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

/// Reads what the fake stores (see [`FakeKube::reader`]).
#[derive(Clone)]
pub struct FakeKubeReader {
    shared: Arc<Shared>,
}

impl FakeKubeReader {
    /// The object `name` of a resource in a namespace, as stored.
    ///
    /// # Panics
    ///
    /// If the fake does not serve `resource`.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = Resource::named(resource);
        self.shared.lock().get(resource, namespace, name).cloned()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        self.shared
            .break_down("the fake Kubernetes API was dropped".to_owned());
        let runs: Vec<_> = {
            let mut state = self
                .shared
                .state_for_drop()
                .unwrap_or_else(PoisonError::into_inner);
            state.pods.drain().map(|(_, run)| run).collect()
        };
        for run in runs {
            run.stop();
        }
    }
}
