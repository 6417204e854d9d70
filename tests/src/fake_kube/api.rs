//! The HTTP side: routing, authorization, and the verbs (get, list, watch,
//! create, update, patch, delete, pods/log), answering in JSON, or in a
//! Table for a client that asks for one (see [`super::table`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::discovery;
use super::kubelet;
use super::rbac::{forbidden_message, forbidden_path_message};
use super::schema::FieldValidation;
use super::select::{FieldSelector, LabelSelector};
use super::store::{ApiError, Resource, Shared, str_at};
use super::table::TableRequest;
use super::{Denied, RecordedRequest, USER, panic_message};

/// Larger than any object a test sends; a body beyond it is a 400.
const BODY_LIMIT: usize = 16 << 20;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// One request as the fake sees it.
struct Incoming {
    method: Method,
    path: String,
    params: Vec<(String, String)>,
    content_type: String,
    accept: String,
    body: Bytes,
}

impl Incoming {
    /// The first value of a query parameter, as Go's `url.Values.Get`.
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    /// The media type of the body, without parameters.
    fn media_type(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
    }

    /// The object of a create or replace, which the fake reads in JSON
    /// only. The API server also reads YAML and protobuf (which kubectl's
    /// typed commands such as `kubectl create secret` send); the fake
    /// refuses them as the API server refuses a format it does not know, with
    /// a 415 rather than a misleading "not JSON".
    fn object_body(&self) -> Result<Value, ApiError> {
        match self.media_type() {
            "application/json" | "" => self.json_body(),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json (the fake cannot read {other})"
            ))),
        }
    }

    fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        FieldValidation::parse(self.param("fieldValidation"))
    }

    fn table(&self) -> Result<Option<TableRequest>, ApiError> {
        TableRequest::from_accept(&self.accept, self.param("includeObject"))
    }
}

/// A JSON answer with the API server's `Warning` headers (RFC 7234 style,
/// code 299), which kubectl prints as `Warning: ...`.
fn with_warnings(status: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut headers = HeaderMap::new();
    for warning in warnings {
        let text = format!("299 - {}", Value::String(warning.clone()));
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.append(header::WARNING, value);
        }
    }
    (status, headers, axum::Json(body)).into_response()
}

async fn handle(AxumState(shared): AxumState<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return ApiError::bad_request(format!("reading the body: {e}")).into_response(),
    };
    let params = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let incoming = Incoming {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        params,
        content_type: header_text(&parts.headers, header::CONTENT_TYPE),
        accept: header_text(&parts.headers, header::ACCEPT),
        body,
    };
    tracing::debug!(method = %incoming.method, uri = %parts.uri, "fake Kubernetes API request");
    shared.lock().requests.push(RecordedRequest {
        method: incoming.method.to_string(),
        path: incoming.path.clone(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        params: incoming.params.clone(),
        body: serde_json::from_slice(&incoming.body).ok(),
    });
    match AssertUnwindSafe(route(&shared, &incoming))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let why = format!(
                "the fake Kubernetes API panicked on {} {}: {}",
                incoming.method,
                incoming.path,
                panic_message(panic.as_ref())
            );
            shared.break_down(why.clone());
            ApiError::internal(why).into_response()
        }
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn route(shared: &Arc<Shared>, req: &Incoming) -> Response {
    if let Some(why) = shared.lock().broken.clone() {
        return ApiError::internal(why).into_response();
    }
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    if req.method == Method::GET
        && let Some(response) = discovery::serve(shared, &segments)
    {
        return response;
    }
    let Some(info) = RequestInfo::parse(&req.method, &segments, req.flag("watch")) else {
        return deny_path(shared, req).into_response();
    };
    if let Err(refusal) = authorize(shared, &info, &req.path) {
        return refusal.into_response();
    }
    serve(shared, &info, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Kubernetes' reading of a resource path (k8s.io/apiserver's RequestInfo).
struct RequestInfo {
    verb: &'static str,
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl RequestInfo {
    fn parse(method: &Method, segments: &[&str], watch_param: bool) -> Option<RequestInfo> {
        let (group, version, rest) = match segments {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (rest, legacy_watch) = match rest {
            ["watch", rest @ ..] => (rest, true),
            rest => (rest, false),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            rest => (None, rest),
        };
        let resource = (*rest.first()?).to_owned();
        let name = rest.get(1).map(|s| (*s).to_owned());
        let subresource = rest.get(2).map(|s| (*s).to_owned());
        let verb = match *method {
            Method::GET | Method::HEAD if legacy_watch || watch_param => "watch",
            Method::GET | Method::HEAD if name.is_some() => "get",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_some() => "delete",
            Method::DELETE => "deletecollection",
            _ => return None,
        };
        Some(RequestInfo {
            verb,
            group: group.to_owned(),
            version: version.to_owned(),
            namespace,
            resource,
            name,
            subresource,
        })
    }

    /// `pods` or `pods/log`, as RBAC rules name it.
    fn full_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

fn deny_path(shared: &Shared, req: &Incoming) -> ApiError {
    let verb = req.method.as_str().to_ascii_lowercase();
    let message = forbidden_path_message(USER, &verb, &req.path);
    shared.lock().denied.push(Denied {
        verb,
        group: String::new(),
        resource: String::new(),
        namespace: None,
        name: None,
        path: req.path.clone(),
        message: message.clone(),
    });
    ApiError::forbidden(message, "", "", None)
}

/// The Role's rules, in any of the fake's namespaces (as if bound there),
/// less the test's refusals; nothing cluster-wide.
fn authorize(shared: &Shared, info: &RequestInfo, path: &str) -> Result<(), ApiError> {
    let mut state = shared.lock();
    let full = info.full_resource();
    let allowed = info.namespace.is_some()
        && state
            .rules
            .iter()
            .any(|rule| rule.allows(info.verb, &info.group, &full, info.name.as_deref()))
        && !state.forbidden.iter().any(|(verb, resource)| {
            (verb == "*" || verb == info.verb) && (resource == "*" || *resource == full)
        });
    if allowed {
        return Ok(());
    }
    let message = forbidden_message(
        USER,
        info.verb,
        &info.group,
        &info.resource,
        info.subresource.as_deref(),
        info.namespace.as_deref(),
        info.name.as_deref(),
    );
    state.denied.push(Denied {
        verb: info.verb.to_owned(),
        group: info.group.clone(),
        resource: full,
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        path: path.to_owned(),
        message: message.clone(),
    });
    Err(ApiError::forbidden(
        message,
        &info.group,
        &info.resource,
        info.name.as_deref(),
    ))
}

async fn serve(
    shared: &Arc<Shared>,
    info: &RequestInfo,
    req: &Incoming,
) -> Result<Response, ApiError> {
    let resource = Resource::parse(&info.group, &info.version, &info.resource);
    let (Some(ns), Some(resource)) = (&info.namespace, resource) else {
        return Err(ApiError::no_such_path());
    };
    let name = info.name.as_deref();
    match (info.verb, name, info.subresource.as_deref()) {
        ("get", Some(name), Some("log")) if resource == Resource::Pods => {
            logs(shared, ns, name, req)
        }
        (_, _, Some(_)) => Err(ApiError::no_such_path()),
        ("get", Some(name), None) => {
            let table = req.table()?;
            let state = shared.lock();
            let object = state
                .get(resource, ns, name)
                .ok_or_else(|| ApiError::not_found(resource, name))?;
            Ok(match table {
                Some(table) => {
                    let rv = str_at(object, "/metadata/resourceVersion").unwrap_or_default();
                    axum::Json(table.table(resource, &[object], rv, true)).into_response()
                }
                None => axum::Json(object).into_response(),
            })
        }
        ("list", None, None) => list(shared, resource, ns, req),
        ("watch", name, None) => watch(shared, resource, ns, name, req),
        ("create", None, None) => {
            let (object, validation) = (req.object_body()?, req.field_validation()?);
            let (created, warnings) = shared
                .lock()
                .create(resource, ns, object, false, validation)?;
            shared.notify();
            if resource == Resource::Pods {
                kubelet::start(shared, &created);
            }
            Ok(with_warnings(StatusCode::CREATED, &created, &warnings))
        }
        ("update", Some(name), None) => {
            let (object, validation) = (req.object_body()?, req.field_validation()?);
            let (replaced, warnings) = shared
                .lock()
                .replace(resource, ns, name, object, validation)?;
            shared.notify();
            Ok(with_warnings(StatusCode::OK, &replaced, &warnings))
        }
        ("patch", Some(name), None) => {
            let media = req.media_type();
            if !matches!(
                media,
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                return Err(ApiError::unsupported_media_type(format!(
                    "the fake supports merge patches only, not {media:?}"
                )));
            }
            let (patch, validation) = (req.json_body()?, req.field_validation()?);
            let (patched, warnings) = shared
                .lock()
                .patch(resource, ns, name, &patch, validation)?;
            shared.notify();
            Ok(with_warnings(StatusCode::OK, &patched, &warnings))
        }
        ("delete", Some(name), None) => delete(shared, resource, ns, name, req),
        ("deletecollection", None, None) => {
            let (labels, fields) = selectors(resource, req)?;
            let orphan = delete_options(req)?.0;
            let mut state = shared.lock();
            let names: Vec<String> = state
                .list(resource, ns)
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .filter_map(|o| str_at(o, "/metadata/name").map(str::to_owned))
                .collect();
            let mut items = Vec::new();
            for name in names {
                // An earlier deletion's garbage collection may have taken it.
                if let Ok(object) = state.delete(resource, ns, &name, orphan) {
                    items.push(object);
                }
            }
            let rv = state.rv;
            drop(state);
            shared.notify();
            Ok(axum::Json(list_body(resource, rv, items)).into_response())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn selectors(
    resource: Resource,
    req: &Incoming,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default(), resource)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list_body(resource: Resource, rv: u64, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": { "resourceVersion": rv.to_string() },
        "items": items,
    })
}

/// Ignores `limit` and `continue`: everything in one page.
fn list(
    shared: &Shared,
    resource: Resource,
    ns: &str,
    req: &Incoming,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(resource, req)?;
    let table = req.table()?;
    let state = shared.lock();
    let matching = state
        .list(resource, ns)
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o));
    if let Some(table) = table {
        let objects: Vec<&Value> = matching.collect();
        let body = table.table(resource, &objects, &state.rv.to_string(), true);
        return Ok(axum::Json(body).into_response());
    }
    let items = matching
        .map(|o| {
            // The API server leaves kind and apiVersion out of list items.
            let mut item = o.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("kind");
                fields.remove("apiVersion");
            }
            item
        })
        .collect();
    Ok(axum::Json(list_body(resource, state.rv, items)).into_response())
}

/// (orphan dependents, preconditions) from a DeleteOptions body.
fn delete_options(req: &Incoming) -> Result<(bool, Value), ApiError> {
    if req.body.is_empty() {
        return Ok((false, Value::Null));
    }
    let options = req.json_body()?;
    let orphan = options["propagationPolicy"] == "Orphan" || options["orphanDependents"] == true;
    Ok((orphan, options["preconditions"].clone()))
}

fn delete(
    shared: &Shared,
    resource: Resource,
    ns: &str,
    name: &str,
    req: &Incoming,
) -> Result<Response, ApiError> {
    let (orphan, preconditions) = delete_options(req)?;
    let deleted = {
        let mut state = shared.lock();
        let current = state
            .get(resource, ns, name)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(wanted) = preconditions[field].as_str() {
                let actual = str_at(current, &format!("/metadata/{field}")).unwrap_or_default();
                if wanted != actual {
                    let mut conflict = ApiError::conflict(resource, name);
                    conflict.message = format!(
                        "Precondition failed: {what} in precondition: {wanted}, {what} in object \
                         meta: {actual}"
                    );
                    return Err(conflict);
                }
            }
        }
        state.delete(resource, ns, name, orphan)?
    };
    shared.notify();
    // Pods, claims and services come back as the object, secrets and
    // network policies as a Success Status: clients must take both.
    if !resource.returns_deleted_object() {
        let mut details = json!({
            "name": name,
            "kind": resource.plural(),
            "uid": deleted["metadata"]["uid"],
        });
        if !resource.group().is_empty() {
            details["group"] = json!(resource.group());
        }
        return Ok(axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }))
        .into_response());
    }
    Ok(axum::Json(deleted).into_response())
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: &str,
    name: Option<&str>,
    req: &Incoming,
) -> Result<Response, ApiError> {
    let (labels, mut fields) = selectors(resource, req)?;
    if let Some(name) = name {
        fields = fields.and(FieldSelector::name(name));
    }
    let deadline = match req.param("timeoutSeconds") {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => None,
    }
    .map(|s| Instant::now() + Duration::from_secs(s));
    let initial_events = req.flag("sendInitialEvents");
    let version = req.param("resourceVersion").unwrap_or_default();
    let table = req.table()?;
    // Subscribed before reading the state: no change can fall in between.
    let changes = shared.subscribe();
    let state = shared.lock();
    let mut cursor = WatchCursor {
        shared: Arc::clone(shared),
        changes,
        resource,
        namespace: ns.to_owned(),
        labels,
        fields,
        after: state.rv,
        epoch: state.watch_epoch,
        deadline,
        table: table.map(|t| (t, true)),
        pending: VecDeque::new(),
        done: false,
    };
    if version.is_empty() || version == "0" || initial_events {
        // "Any version": the current objects as ADDED, then what changes.
        for object in state.list(resource, ns) {
            if cursor.matches(object) {
                cursor.push_object("ADDED", object);
            }
        }
        if initial_events {
            let bookmark = json!({
                "kind": resource.kind(),
                "apiVersion": resource.api_version(),
                "metadata": {
                    "resourceVersion": state.rv.to_string(),
                    "annotations": { "k8s.io/initial-events-end": "true" },
                },
            });
            cursor.pending.push_back(event_line("BOOKMARK", &bookmark));
        }
    } else {
        let asked: u64 = version
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {version:?}")))?;
        if asked < state.oldest_rv {
            let gone = ApiError::expired(asked, state.oldest_rv).status();
            cursor.pending.push_back(event_line("ERROR", &gone));
            cursor.done = true;
        }
        cursor.after = asked;
    }
    drop(state);
    let body = Body::from_stream(futures_util::stream::unfold(cursor, WatchCursor::next));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// An open watch: replays the history after `after`, then waits for more.
struct WatchCursor {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    resource: Resource,
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    /// The resourceVersion of the last change looked at.
    after: u64,
    epoch: u64,
    deadline: Option<Instant>,
    /// Each object as a Table, the column definitions in the first only.
    table: Option<(TableRequest, bool)>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl WatchCursor {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Queues an ADDED, MODIFIED or DELETED event.
    fn push_object(&mut self, kind: &str, object: &Value) {
        let line = match &mut self.table {
            Some((table, headers)) => {
                let rv = str_at(object, "/metadata/resourceVersion").unwrap_or_default();
                let converted = table.table(self.resource, &[object], rv, *headers);
                *headers = false;
                event_line(kind, &converted)
            }
            None => event_line(kind, object),
        };
        self.pending.push_back(line);
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, WatchCursor)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((Ok(line), self));
            }
            if self.done {
                return None;
            }
            self.changes.borrow_and_update();
            {
                let shared = Arc::clone(&self.shared);
                let state = shared.lock();
                // An error, not the end: the connection drops without the
                // closing chunk, as when an API server goes away.
                let abort = match &state.broken {
                    Some(why) => Some(why.clone()),
                    None if state.watch_epoch != self.epoch => {
                        Some("the fake dropped its watches".to_owned())
                    }
                    None => None,
                };
                if let Some(why) = abort {
                    drop(state);
                    self.done = true;
                    return Some((Err(std::io::Error::other(why)), self));
                }
                let start = state.history.partition_point(|c| c.rv <= self.after);
                for change in &state.history[start..] {
                    if change.resource == self.resource
                        && change.namespace == self.namespace
                        && self.matches(&change.object)
                    {
                        self.push_object(change.event.as_str(), &change.object);
                    }
                    self.after = change.rv;
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            let deadline = self.deadline;
            let timeout = async move {
                match deadline {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changes.changed() => self.done = changed.is_err(),
                // timeoutSeconds: the server ends the watch cleanly.
                () = timeout => self.done = true,
            }
        }
    }
}

fn logs(shared: &Arc<Shared>, ns: &str, name: &str, req: &Incoming) -> Result<Response, ApiError> {
    let state = shared.lock();
    let pod = state
        .get(Resource::Pods, ns, name)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (init, main) = (names("initContainers"), names("containers"));
    let container = match req.param("container") {
        Some(c) => c.to_owned(),
        None if main.len() == 1 => main[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}] or one \
                 of the init containers: [{}]",
                main.join(" "),
                init.join(" ")
            )));
        }
    };
    if !init.contains(&container) && !main.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    if req.flag("previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    // The kubelet's words (validateContainerLogStatus).
    let waiting = match container_state(pod, &container) {
        Some(state) if state.get("running").is_some() || state.get("terminated").is_some() => None,
        Some(state) => Some(match state["waiting"]["reason"].as_str() {
            Some("ErrImagePull") => "image can't be pulled",
            Some("ImagePullBackOff") => "trying and failing to pull image",
            Some(reason) => reason,
            None => "ContainerCreating",
        }),
        None => Some("ContainerCreating"),
    };
    if let Some(why) = waiting {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {why}"
        )));
    }
    let uid = str_at(pod, "/metadata/uid").unwrap_or_default().to_owned();
    let count = state
        .pods
        .get(&uid)
        .and_then(|run| run.logs.get(&container))
        .map_or(0, Vec::len);
    let first = match req.param("tailLines") {
        Some(n) => count.saturating_sub(
            n.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid tailLines {n:?}")))?,
        ),
        None => 0,
    };
    let mut cursor = LogCursor {
        shared: Arc::clone(shared),
        changes: shared.subscribe(),
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid,
        container,
        timestamps: req.flag("timestamps"),
        next_line: first,
        epoch: state.log_epoch,
        pending: VecDeque::new(),
        done: false,
    };
    drop(state);
    let headers = [(header::CONTENT_TYPE, "text/plain")];
    if req.flag("follow") {
        let body = Body::from_stream(futures_util::stream::unfold(cursor, LogCursor::next));
        return Ok((headers, body).into_response());
    }
    cursor.poll().map_err(ApiError::internal)?;
    let text: Vec<u8> = cursor.pending.into_iter().flatten().collect();
    Ok((headers, text).into_response())
}

/// The `state` of a container's status, if the pod has one for it.
fn container_state<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|list| pod["status"][list].as_array())
        .flatten()
        .find(|s| s["name"] == container)
        .map(|s| &s["state"])
}

/// An open `follow=true` log: the lines so far, then each new one, until
/// the container has terminated (or the pod is gone).
struct LogCursor {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    namespace: String,
    pod: String,
    uid: String,
    container: String,
    timestamps: bool,
    next_line: usize,
    epoch: u64,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl LogCursor {
    /// Takes the new lines; Err to abort the stream.
    fn poll(&mut self) -> Result<(), String> {
        let state = self.shared.lock();
        if let Some(why) = &state.broken {
            return Err(why.clone());
        }
        if state.log_epoch != self.epoch {
            return Err("the fake dropped its log streams".to_owned());
        }
        let pod = state
            .get(Resource::Pods, &self.namespace, &self.pod)
            .filter(|p| str_at(p, "/metadata/uid") == Some(self.uid.as_str()));
        let Some(pod) = pod else {
            self.done = true;
            return Ok(());
        };
        // Read together with the lines: a container terminates only after
        // its last line, so nothing is lost by ending here.
        let terminated =
            container_state(pod, &self.container).is_some_and(|s| s.get("terminated").is_some());
        let lines = state
            .pods
            .get(&self.uid)
            .and_then(|run| run.logs.get(&self.container))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for line in lines.iter().skip(self.next_line) {
            let text = if self.timestamps {
                format!("{} {}\n", line.at, line.text)
            } else {
                format!("{}\n", line.text)
            };
            self.pending.push_back(Bytes::from(text));
        }
        self.next_line = self.next_line.max(lines.len());
        self.done = terminated;
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, LogCursor)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((Ok(line), self));
            }
            if self.done {
                return None;
            }
            self.changes.borrow_and_update();
            if let Err(why) = self.poll() {
                self.done = true;
                return Some((Err(std::io::Error::other(why)), self));
            }
            if self.pending.is_empty() && !self.done && self.changes.changed().await.is_err() {
                self.done = true;
            }
        }
    }
}
