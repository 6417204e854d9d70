//! The fake's state: objects, their change history (for watches), the
//! request log, and the Status errors the API answers with.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, LockResult, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::kubelet::{PodRun, PodScript};
use super::rbac::RoleRule;
use super::schema::{FieldValidation, decode};
use super::{Denied, RecordedRequest};

/// The range Service cluster IPs come from (kube-apiserver's default
/// `--service-cluster-ip-range`).
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/16";
const SERVICE_NETWORK: u32 = 0x0A60_0000;

fn in_service_cidr(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> 16 == SERVICE_NETWORK >> 16
}

/// The elements of an array field, none if it is not an array.
fn array_mut(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value.as_array_mut().into_iter().flatten()
}

/// The callback that chooses how the fake kubelet plays a pod.
pub(crate) type PodScripter = dyn Fn(&Value) -> PodScript + Send + Sync;

/// The resources the fake serves, all namespaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Resource {
    Pods,
    Secrets,
    PersistentVolumeClaims,
    Services,
    NetworkPolicies,
}

impl Resource {
    pub(crate) const ALL: [Resource; 5] = [
        Resource::Pods,
        Resource::Secrets,
        Resource::PersistentVolumeClaims,
        Resource::Services,
        Resource::NetworkPolicies,
    ];

    /// The resource a path names: its API group (`""` for core), version
    /// and plural.
    pub(crate) fn parse(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && r.version() == version && r.plural() == plural)
    }

    /// Parses a test-side resource name (a plural: they are unique across
    /// the groups served); a typo there is the test's bug.
    pub(crate) fn named(plural: &str) -> Resource {
        Resource::ALL
            .into_iter()
            .find(|r| r.plural() == plural)
            .unwrap_or_else(|| {
                let served: Vec<&str> = Resource::ALL.iter().map(|r| r.plural()).collect();
                panic!("the fake serves {}, not {plural:?}", served.join(", "))
            })
    }

    pub(crate) fn group(self) -> &'static str {
        match self {
            Resource::NetworkPolicies => "networking.k8s.io",
            _ => "",
        }
    }

    pub(crate) fn version(self) -> &'static str {
        "v1"
    }

    /// `v1` for the core group, `group/v1` otherwise.
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Resource::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Secrets => "secrets",
            Resource::PersistentVolumeClaims => "persistentvolumeclaims",
            Resource::Services => "services",
            Resource::NetworkPolicies => "networkpolicies",
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Secrets => "Secret",
            Resource::PersistentVolumeClaims => "PersistentVolumeClaim",
            Resource::Services => "Service",
            Resource::NetworkPolicies => "NetworkPolicy",
        }
    }

    /// `pods`, `networkpolicies.networking.k8s.io`: how the API server
    /// names a resource in its messages.
    pub(crate) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// Whether a DELETE answers with the deleted object (true of the
    /// resources whose registry sets ReturnDeletedObject) rather than a
    /// Success Status.
    pub(crate) fn returns_deleted_object(self) -> bool {
        matches!(
            self,
            Resource::Pods | Resource::PersistentVolumeClaims | Resource::Services
        )
    }

    /// The field selectors the real API server accepts for the resource;
    /// anything else is a 400 there, so it is here.
    pub(crate) fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Resource::Secrets => &["metadata.name", "metadata.namespace", "type"],
            Resource::Services => &[
                "metadata.name",
                "metadata.namespace",
                "spec.clusterIP",
                "spec.type",
            ],
            Resource::PersistentVolumeClaims | Resource::NetworkPolicies => {
                &["metadata.name", "metadata.namespace"]
            }
        }
    }
}

/// A watch event's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object, kept so that a watch can start from any
/// resourceVersion the fake has not forgotten.
pub(crate) struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
}

/// A Kubernetes `Status` failure, the body of every error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> ApiError {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    /// Status details name the resource by its plural, and its group when
    /// it has one.
    fn with_details(mut self, group: &str, plural: &str, name: &str) -> ApiError {
        let mut details = json!({ "name": name, "kind": plural });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        self.details = Some(details);
        self
    }

    fn for_resource(self, resource: Resource, name: &str) -> ApiError {
        self.with_details(resource.group(), resource.plural(), name)
    }

    pub(crate) fn not_found(resource: Resource, name: &str) -> ApiError {
        let qualified = resource.qualified();
        ApiError::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .for_resource(resource, name)
    }

    pub(crate) fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .with_details("", "namespaces", namespace)
    }

    pub(crate) fn no_such_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
        )
    }

    pub(crate) fn already_exists(resource: Resource, name: &str) -> ApiError {
        let qualified = resource.qualified();
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .for_resource(resource, name)
    }

    pub(crate) fn conflict(resource: Resource, name: &str) -> ApiError {
        let qualified = resource.qualified();
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
        .for_resource(resource, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message.into())
    }

    /// A 422: the kind is qualified by the group, as `Kind.group "name"`.
    pub(crate) fn invalid(resource: Resource, name: &str, causes: &str) -> ApiError {
        let kind = match resource.group() {
            "" => resource.kind().to_owned(),
            group => format!("{}.{group}", resource.kind()),
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {causes}"),
        )
        .for_resource(resource, name)
    }

    pub(crate) fn forbidden(
        message: String,
        group: &str,
        resource: &str,
        name: Option<&str>,
    ) -> ApiError {
        let error = ApiError::new(403, "Forbidden", message);
        if resource.is_empty() {
            error
        } else {
            error.with_details(group, resource, name.unwrap_or_default())
        }
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_owned(),
        )
    }

    pub(crate) fn unsupported_media_type(message: String) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    /// A watch from a resourceVersion the fake has forgotten. Kubernetes says
    /// `Expired` here (kube only looks at the 410).
    pub(crate) fn expired(asked: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    pub(crate) fn internal(message: String) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.status())).into_response()
    }
}

/// Everything the fake knows, behind one lock so that a status change, the
/// log lines before it and its watch event are seen together.
pub(crate) struct State {
    pub namespaces: Vec<String>,
    pub rules: Vec<RoleRule>,
    /// (verb, resource) refusals added on top of the rules.
    pub forbidden: Vec<(String, String)>,
    pub rv: u64,
    pub objects: BTreeMap<(Resource, String, String), Value>,
    /// Sorted by rv.
    pub history: Vec<Change>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    pub oldest_rv: u64,
    pub requests: Vec<RecordedRequest>,
    pub denied: Vec<Denied>,
    pub on_pod: Option<Arc<PodScripter>>,
    /// The fake kubelet's pods by uid.
    pub pods: HashMap<String, PodRun>,
    /// Bumped to end every open watch (or log) stream.
    pub watch_epoch: u64,
    pub log_epoch: u64,
    /// Set once the fake has panicked or been dropped: from then on every
    /// request fails and every stream ends, so a test fails instead of
    /// waiting forever for an event.
    pub broken: Option<String>,
}

/// The state plus what wakes the streams that wait on it.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, to wake watch and log streams.
    changed: watch::Sender<u64>,
    pub runtime: tokio::runtime::Handle,
    pub addr: SocketAddr,
}

impl Shared {
    pub(crate) fn new(state: State, runtime: tokio::runtime::Handle, addr: SocketAddr) -> Shared {
        Shared {
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
            runtime,
            addr,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the fake Kubernetes API's state was poisoned by a panic")
    }

    /// The lock even if poisoned, for tearing down.
    pub(crate) fn state_for_drop(&self) -> LockResult<MutexGuard<'_, State>> {
        self.state.lock()
    }

    /// Wakes every stream; call after releasing the lock.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks the fake as broken (see [`State::broken`]); works even when a
    /// panic poisoned the lock, as that is when it is needed.
    pub(crate) fn break_down(&self, why: String) {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.broken.is_none() {
                tracing::error!("fake Kubernetes API: {why}");
                state.broken = Some(why);
            }
        }
        self.notify();
    }
}

/// The time now (jiff's own `now` needs its `std` feature, which
/// k8s-openapi does not enable).
pub(crate) fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let nanos = i32::try_from(since.subsec_nanos()).unwrap_or_default();
    Timestamp::new(seconds, nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A timestamp as Kubernetes writes metadata ones: whole seconds.
pub(crate) fn now_seconds() -> String {
    Timestamp::from_second(now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

impl State {
    pub(crate) fn new(namespaces: Vec<String>, rules: Vec<RoleRule>) -> State {
        State {
            namespaces,
            rules,
            forbidden: Vec::new(),
            rv: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            oldest_rv: 0,
            requests: Vec::new(),
            denied: Vec::new(),
            on_pod: None,
            pods: HashMap::new(),
            watch_epoch: 0,
            log_epoch: 0,
            broken: None,
        }
    }

    fn key(resource: Resource, namespace: &str, name: &str) -> (Resource, String, String) {
        (resource, namespace.to_owned(), name.to_owned())
    }

    pub(crate) fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&State::key(resource, namespace, name))
    }

    pub(crate) fn list(&self, resource: Resource, namespace: &str) -> Vec<&Value> {
        // Objects are keyed by (resource, namespace, name): one range per
        // namespace, in name order like the API server's.
        let start = State::key(resource, namespace, "");
        self.objects
            .range(start..)
            .take_while(|((r, ns, _), _)| *r == resource && ns == namespace)
            .map(|(_, object)| object)
            .collect()
    }

    /// Stamps the object with the next resourceVersion and records the change.
    fn commit(
        &mut self,
        resource: Resource,
        namespace: &str,
        event: EventType,
        object: &mut Value,
    ) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.history.push(Change {
            rv: self.rv,
            resource,
            namespace: namespace.to_owned(),
            event,
            object: object.clone(),
        });
    }

    /// Creates an object as POST does: decoded (see [`decode`]), validated,
    /// with the server's metadata and defaults. `keep_metadata` keeps a uid
    /// and creationTimestamp the caller set (for objects inserted by the
    /// test as pre-existing). Returns the object and the warnings to send.
    pub(crate) fn create(
        &mut self,
        resource: Resource,
        namespace: &str,
        mut object: Value,
        keep_metadata: bool,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        }
        let warnings = decode(resource, &mut object, validation)?;
        if !self.namespaces.iter().any(|ns| ns == namespace) {
            return Err(ApiError::namespace_not_found(namespace));
        }
        let Some(fields) = object.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        };
        fields.insert("apiVersion".to_owned(), json!(resource.api_version()));
        fields.insert("kind".to_owned(), json!(resource.kind()));
        let metadata = fields
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(ApiError::bad_request("metadata is not an object"));
        };
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on \
                     the request",
                ));
            }
            _ => {}
        }
        metadata.insert("namespace".to_owned(), json!(namespace));
        let mut name = metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            let prefix = metadata.get("generateName").and_then(Value::as_str);
            let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            name = format!("{prefix}{}", random_suffix());
            metadata.insert("name".to_owned(), json!(name));
        }
        if !keep_metadata || !metadata.contains_key("uid") {
            metadata.insert("uid".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
        }
        if !keep_metadata || !metadata.contains_key("creationTimestamp") {
            metadata.insert("creationTimestamp".to_owned(), json!(now_seconds()));
        }
        validate(resource, &name, &object)?;
        let key = State::key(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        match resource {
            Resource::Pods => {
                let terminal = matches!(
                    str_at(&object, "/status/phase"),
                    Some("Succeeded" | "Failed")
                );
                // A pod the test inserts as already finished stays as it is;
                // any other starts from the beginning, for the kubelet to play.
                if !(keep_metadata && terminal) {
                    object["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
                }
            }
            Resource::PersistentVolumeClaims => {
                // No provisioner binds it: it stays Pending, as in a cluster
                // whose storage class waits for a first consumer.
                object["status"] = json!({ "phase": "Pending" });
            }
            _ => {}
        }
        self.apply_defaults(resource, &name, &mut object, None)?;
        self.commit(resource, namespace, EventType::Added, &mut object);
        self.objects.insert(key, object.clone());
        Ok((object, warnings))
    }

    /// Replaces an object as PUT does; a pod's or claim's status is kept (it
    /// is a subresource the client cannot write this way), and so is a
    /// Service's cluster IP when the new object leaves it out.
    pub(crate) fn replace(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        mut object: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        }
        let warnings = decode(resource, &mut object, validation)?;
        if str_at(&object, "/metadata/name") != Some(name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let Some(current) = self.get(resource, namespace, name) else {
            return Err(ApiError::not_found(resource, name));
        };
        if let Some(rv) = str_at(&object, "/metadata/resourceVersion")
            && Some(rv) != str_at(current, "/metadata/resourceVersion")
        {
            return Err(ApiError::conflict(resource, name));
        }
        let current = current.clone();
        for field in ["uid", "creationTimestamp", "namespace"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind());
        if matches!(
            resource,
            Resource::Pods | Resource::PersistentVolumeClaims | Resource::Services
        ) {
            object["status"] = current["status"].clone();
        }
        validate(resource, name, &object)?;
        self.apply_defaults(resource, name, &mut object, Some(&current))?;
        self.commit(resource, namespace, EventType::Modified, &mut object);
        self.objects
            .insert(State::key(resource, namespace, name), object.clone());
        Ok((object, warnings))
    }

    /// Applies a JSON merge patch (RFC 7386), which is also how the fake
    /// reads strategic merge patches: close enough for metadata changes.
    pub(crate) fn patch(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        patch: &Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let Some(current) = self.get(resource, namespace, name) else {
            return Err(ApiError::not_found(resource, name));
        };
        let mut object = current.clone();
        merge_patch(&mut object, patch);
        object["metadata"]["name"] = json!(name);
        if let Some(rv) = current["metadata"].get("resourceVersion") {
            object["metadata"]["resourceVersion"] = rv.clone();
        }
        if let Some(rv) = str_at(patch, "/metadata/resourceVersion")
            && Some(rv) != str_at(current, "/metadata/resourceVersion")
        {
            return Err(ApiError::conflict(resource, name));
        }
        self.replace(resource, namespace, name, object, validation)
    }

    /// What the API server fills in or converts on every write (`current`
    /// is the object being replaced, if any).
    fn apply_defaults(
        &self,
        resource: Resource,
        name: &str,
        object: &mut Value,
        current: Option<&Value>,
    ) -> Result<(), ApiError> {
        match resource {
            Resource::Secrets => {
                // stringData is write-only: the API server merges it into
                // data (base64, its entries winning) and never returns it.
                if let Some(Value::Object(strings)) =
                    object.as_object_mut().and_then(|o| o.remove("stringData"))
                {
                    for (key, value) in strings {
                        let text = value.as_str().unwrap_or_default();
                        object["data"][key] = json!(BASE64.encode(text));
                    }
                }
                if str_at(object, "/type").is_none_or(str::is_empty) {
                    object["type"] = json!("Opaque");
                }
            }
            Resource::PersistentVolumeClaims => {
                if object["spec"]["volumeMode"].is_null() {
                    object["spec"]["volumeMode"] = json!("Filesystem");
                }
            }
            Resource::Services => self.default_service(name, object, current)?,
            Resource::NetworkPolicies => {
                // Ingress is always a policy type; Egress when egress rules
                // are given.
                if object["spec"]["policyTypes"].is_null() {
                    let mut types = vec!["Ingress"];
                    if object["spec"]["egress"].is_array() {
                        types.push("Egress");
                    }
                    object["spec"]["policyTypes"] = json!(types);
                }
                for direction in ["ingress", "egress"] {
                    for rule in array_mut(&mut object["spec"][direction]) {
                        for port in array_mut(&mut rule["ports"]) {
                            if port["protocol"].is_null() {
                                port["protocol"] = json!("TCP");
                            }
                        }
                    }
                }
            }
            Resource::Pods => {}
        }
        Ok(())
    }

    /// A Service's defaults and its cluster IP: kept from `current`,
    /// allocated from [`SERVICE_CIDR`] (unique among live Services), or
    /// none for a headless (`None`) or ExternalName Service.
    fn default_service(
        &self,
        name: &str,
        object: &mut Value,
        current: Option<&Value>,
    ) -> Result<(), ApiError> {
        let spec = &mut object["spec"];
        if str_at(spec, "/type").is_none_or(str::is_empty) {
            spec["type"] = json!("ClusterIP");
        }
        if spec["sessionAffinity"].is_null() {
            spec["sessionAffinity"] = json!("None");
        }
        for port in array_mut(&mut spec["ports"]) {
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
            if port["targetPort"].is_null() {
                port["targetPort"] = port["port"].clone();
            }
        }
        let invalid = |field: &str, value: &str, why: &str| {
            ApiError::invalid(
                Resource::Services,
                name,
                &format!("{field}: Invalid value: \"{value}\": {why}"),
            )
        };
        let old = current.and_then(|c| str_at(c, "/spec/clusterIP"));
        let asked = str_at(spec, "/clusterIP")
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned);
        if spec["type"] == "ExternalName" {
            return Ok(());
        }
        let ip = match (asked, old) {
            (Some(asked), Some(old)) if asked != old => {
                return Err(invalid("spec.clusterIP", &asked, "field is immutable"));
            }
            (Some(asked), Some(_)) => asked,
            (None, Some(old)) => old.to_owned(),
            (Some(asked), None) if asked == "None" => asked,
            (Some(asked), None) => {
                let parsed: Option<Ipv4Addr> = asked.parse().ok();
                if !parsed.is_some_and(in_service_cidr) {
                    return Err(invalid(
                        "spec.clusterIPs",
                        &asked,
                        &format!(
                            "failed to allocate IP {asked}: the provided IP ({asked}) is not in \
                             the valid range. The range of valid IPs is {SERVICE_CIDR}"
                        ),
                    ));
                }
                if self.cluster_ip_taken(&asked) {
                    return Err(invalid(
                        "spec.clusterIPs",
                        &asked,
                        &format!("failed to allocate IP {asked}: provided IP is already allocated"),
                    ));
                }
                asked
            }
            (None, None) => self.allocate_cluster_ip().ok_or_else(|| {
                ApiError::internal(format!(
                    "failed to allocate a serviceIP: range is full ({SERVICE_CIDR})"
                ))
            })?,
        };
        let headless = ip == "None";
        if !headless && spec["ports"].as_array().is_none_or(Vec::is_empty) {
            return Err(ApiError::invalid(
                Resource::Services,
                name,
                "spec.ports: Required value",
            ));
        }
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        // A single-stack IPv4 cluster's families, headless Services' too.
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
        if spec["internalTrafficPolicy"].is_null() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
        if object["status"].is_null() {
            object["status"] = json!({ "loadBalancer": {} });
        }
        Ok(())
    }

    fn cluster_ip_taken(&self, ip: &str) -> bool {
        self.objects.iter().any(|((r, _, _), o)| {
            *r == Resource::Services && str_at(o, "/spec/clusterIP") == Some(ip)
        })
    }

    /// A free address of [`SERVICE_CIDR`], from a random start as the API
    /// server's allocator picks at random (so no client can rely on an
    /// order); never the network or broadcast address.
    fn allocate_cluster_ip(&self) -> Option<String> {
        let random = uuid::Uuid::new_v4();
        let start = u32::from(u16::from_le_bytes([
            random.as_bytes()[0],
            random.as_bytes()[1],
        ]));
        (0..=u32::from(u16::MAX))
            .map(|i| (start + i) % (1 << 16))
            .filter(|offset| *offset != 0 && *offset != u32::from(u16::MAX))
            .map(|offset| Ipv4Addr::from(SERVICE_NETWORK + offset).to_string())
            .find(|ip| !self.cluster_ip_taken(ip))
    }

    /// Updates a pod's status for the fake kubelet; false if the pod is gone
    /// (or is another pod of the same name by now).
    pub(crate) fn set_pod_status(
        &mut self,
        namespace: &str,
        name: &str,
        uid: &str,
        status: Value,
    ) -> bool {
        let key = State::key(Resource::Pods, namespace, name);
        let Some(mut pod) = self.objects.get(&key).cloned() else {
            return false;
        };
        if str_at(&pod, "/metadata/uid") != Some(uid) {
            return false;
        }
        pod["status"] = status;
        self.commit(Resource::Pods, namespace, EventType::Modified, &mut pod);
        self.objects.insert(key, pod);
        true
    }

    /// Deletes an object and, unless `orphan`, collects its dependents as
    /// the garbage collector does: every object whose ownerReferences name
    /// a deleted uid and no owner that still exists.
    pub(crate) fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        orphan: bool,
    ) -> Result<Value, ApiError> {
        let Some(deleted) = self.remove(resource, namespace, name) else {
            return Err(ApiError::not_found(resource, name));
        };
        if !orphan {
            let mut gone = vec![
                str_at(&deleted, "/metadata/uid")
                    .unwrap_or_default()
                    .to_owned(),
            ];
            while let Some(owner) = gone.pop() {
                for (r, n) in self.dependents(namespace, &owner) {
                    if let Some(object) = self.remove(r, namespace, &n) {
                        gone.push(
                            str_at(&object, "/metadata/uid")
                                .unwrap_or_default()
                                .to_owned(),
                        );
                    }
                }
            }
        }
        Ok(deleted)
    }

    fn dependents(&self, namespace: &str, owner_uid: &str) -> Vec<(Resource, String)> {
        let living: Vec<&str> = self
            .objects
            .iter()
            .filter(|((_, ns, _), _)| ns == namespace)
            .filter_map(|(_, o)| str_at(o, "/metadata/uid"))
            .collect();
        self.objects
            .iter()
            .filter(|((_, ns, _), _)| ns == namespace)
            .filter(|(_, object)| {
                let owners: Vec<&str> = object["metadata"]["ownerReferences"]
                    .as_array()
                    .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str()).collect())
                    .unwrap_or_default();
                owners.contains(&owner_uid) && !owners.iter().any(|uid| living.contains(uid))
            })
            .map(|((r, _, n), _)| (*r, n.clone()))
            .collect()
    }

    fn remove(&mut self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&State::key(resource, namespace, name))?;
        if resource == Resource::Pods
            && let Some(uid) = str_at(&object, "/metadata/uid")
            && let Some(run) = self.pods.remove(uid)
        {
            run.stop();
        }
        // Gone at once, as after a zero grace period.
        object["metadata"]["deletionTimestamp"] = json!(now_seconds());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        self.commit(resource, namespace, EventType::Deleted, &mut object);
        Some(object)
    }
}

/// RFC 7386: objects merge, null deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(target) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn random_suffix() -> String {
    // Kubernetes' generateName alphabet: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

const SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
     characters or '-', and must start and end with an alphanumeric character";

/// What the real API server rejects with 422 and a client is likely to get
/// wrong (names derived from user input): names, container names, labels.
fn validate(resource: Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    let invalid = |field: &str, value: &str, rule: &str| {
        ApiError::invalid(
            resource,
            name,
            &format!("{field}: Invalid value: \"{value}\": {rule}"),
        )
    };
    if !is_dns_subdomain(name) {
        return Err(invalid("metadata.name", name, SUBDOMAIN_RULE));
    }
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        for (key, value) in labels {
            let Some(value) = value.as_str() else {
                return Err(ApiError::bad_request(format!(
                    "label {key:?} does not have a string value"
                )));
            };
            if !is_label_value(value) {
                return Err(invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric \
                     characters, '-', '_' or '.', and must start and end with an alphanumeric \
                     character, at most 63 characters",
                ));
            }
        }
    }
    if resource == Resource::Services {
        let ports = object["spec"]["ports"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, port) in ports.iter().enumerate() {
            let number = port["port"].as_i64().unwrap_or_default();
            if !(1..=65535).contains(&number) {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    &format!(
                        "spec.ports[{i}].port: Invalid value: {number}: must be between 1 and \
                         65535, inclusive"
                    ),
                ));
            }
            // Several ports need names to tell them apart.
            if ports.len() > 1 && port["name"].as_str().is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    &format!("spec.ports[{i}].name: Required value"),
                ));
            }
        }
    }
    if resource == Resource::Pods {
        let mut names = Vec::new();
        for list in ["initContainers", "containers"] {
            for (i, container) in object["spec"][list]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let container_name = container["name"].as_str().unwrap_or_default();
                if !is_dns_label(container_name) {
                    return Err(invalid(
                        &format!("spec.{list}[{i}].name"),
                        container_name,
                        LABEL_RULE,
                    ));
                }
                if names.contains(&container_name) {
                    return Err(ApiError::invalid(
                        resource,
                        name,
                        &format!("spec.{list}[{i}].name: Duplicate value: \"{container_name}\""),
                    ));
                }
                names.push(container_name);
            }
        }
        if object["spec"]["containers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            return Err(ApiError::invalid(
                resource,
                name,
                "spec.containers: Required value",
            ));
        }
        validate_pod_volumes(name, object)?;
    }
    if resource == Resource::PersistentVolumeClaims {
        validate_claim(name, object)?;
    }
    Ok(())
}

/// The volume types of core/v1's Volume: a volume has exactly one.
const VOLUME_TYPES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// A Pod's volumes and its containers' mounts, as the API server checks
/// them (ValidatePodSpec's validateVolumes and validateVolumeMounts): each
/// volume named by a unique DNS label and of one type, a claim named; each
/// mount naming a volume of the Pod, at a path no other mount of its
/// container uses.
fn validate_pod_volumes(name: &str, object: &Value) -> Result<(), ApiError> {
    let invalid = |causes: String| ApiError::invalid(Resource::Pods, name, &causes);
    let volumes = object["spec"]["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        let volume_name = volume["name"].as_str().unwrap_or_default();
        if volume_name.is_empty() {
            return Err(invalid(format!("spec.volumes[{i}].name: Required value")));
        }
        if !is_dns_label(volume_name) {
            return Err(invalid(format!(
                "spec.volumes[{i}].name: Invalid value: \"{volume_name}\": {LABEL_RULE}"
            )));
        }
        if names.contains(&volume_name) {
            return Err(invalid(format!(
                "spec.volumes[{i}].name: Duplicate value: \"{volume_name}\""
            )));
        }
        names.push(volume_name);
        let types: Vec<&str> = volume
            .as_object()
            .into_iter()
            .flat_map(|fields| fields.keys())
            .map(String::as_str)
            .filter(|key| VOLUME_TYPES.contains(key))
            .collect();
        match types.as_slice() {
            [] => {
                return Err(invalid(format!(
                    "spec.volumes[{i}]: Required value: must specify a volume type"
                )));
            }
            [_] => {}
            [_, second, ..] => {
                return Err(invalid(format!(
                    "spec.volumes[{i}].{second}: Forbidden: may not specify more than 1 volume \
                     type"
                )));
            }
        }
        if volume["persistentVolumeClaim"].is_object()
            && str_at(volume, "/persistentVolumeClaim/claimName").is_none_or(str::is_empty)
        {
            return Err(invalid(format!(
                "spec.volumes[{i}].persistentVolumeClaim.claimName: Required value"
            )));
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, container) in object["spec"][list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let mut paths = Vec::new();
            for (j, mount) in container["volumeMounts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let field = format!("spec.{list}[{i}].volumeMounts[{j}]");
                let mount_name = mount["name"].as_str().unwrap_or_default();
                if !names.contains(&mount_name) {
                    return Err(invalid(format!(
                        "{field}.name: Not found: \"{mount_name}\""
                    )));
                }
                let path = mount["mountPath"].as_str().unwrap_or_default();
                if path.is_empty() {
                    return Err(invalid(format!("{field}.mountPath: Required value")));
                }
                if paths.contains(&path) {
                    return Err(invalid(format!(
                        "{field}.mountPath: Invalid value: \"{path}\": must be unique"
                    )));
                }
                paths.push(path);
            }
        }
    }
    Ok(())
}

/// The access modes a claim may ask for.
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// A claim's spec, as the API server checks it
/// (ValidatePersistentVolumeClaimSpec): access modes it knows, at least
/// one, and a storage request.
fn validate_claim(name: &str, object: &Value) -> Result<(), ApiError> {
    let invalid =
        |causes: String| ApiError::invalid(Resource::PersistentVolumeClaims, name, &causes);
    let modes = object["spec"]["accessModes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if modes.is_empty() {
        return Err(invalid(
            "spec.accessModes: Required value: at least 1 access mode is required".to_owned(),
        ));
    }
    for mode in modes {
        let mode = mode.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&mode) {
            let supported: Vec<String> = ACCESS_MODES.iter().map(|m| format!("\"{m}\"")).collect();
            return Err(invalid(format!(
                "spec.accessModes: Unsupported value: \"{mode}\": supported values: {}",
                supported.join(", ")
            )));
        }
    }
    if str_at(object, "/spec/resources/requests/storage").is_none() {
        return Err(invalid(
            "spec.resources[storage]: Required value".to_owned(),
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}
