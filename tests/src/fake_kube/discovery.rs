//! What every authenticated user may read in a real cluster (the
//! system:discovery and system:public-info-viewer roles), answered in
//! Kubernetes' shapes so that clients that ask are not refused: the version,
//! the legacy discovery documents (kubectl maps kinds to paths with them),
//! and OpenAPI v3, which kubectl reads before a create to learn that the
//! server validates fields itself (`fieldValidation`).

use std::fmt::Write as _;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use super::store::{ApiError, Resource, Shared};

/// The answer to a GET of a non-resource path, None for a resource path.
pub(crate) fn serve(shared: &Shared, segments: &[&str]) -> Option<Response> {
    let body = match segments {
        ["version"] => json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        ["healthz" | "livez" | "readyz"] => {
            return Some(([(header::CONTENT_TYPE, "text/plain")], "ok").into_response());
        }
        ["api"] => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                { "clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string() },
            ],
        }),
        ["apis"] => {
            let groups: Vec<Value> = group_versions()
                .into_iter()
                .filter(|(group, _)| !group.is_empty())
                .map(|(group, version)| {
                    let version = json!({
                        "groupVersion": format!("{group}/{version}"),
                        "version": version,
                    });
                    json!({
                        "name": group,
                        "versions": [version],
                        "preferredVersion": version,
                    })
                })
                .collect();
            json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
        }
        ["api", "v1"] => resource_list("", "v1"),
        ["apis", group, version] if group_versions().contains(&(*group, *version)) => {
            resource_list(group, version)
        }
        ["openapi", "v3"] => {
            let paths: Map<String, Value> = group_versions()
                .into_iter()
                .map(|(group, version)| {
                    let path = gv_path(group, version);
                    let hash = hash(&openapi(group, version));
                    let url = format!("/openapi/v3/{path}?hash={hash}");
                    (path, json!({ "serverRelativeURL": url }))
                })
                .collect();
            json!({ "paths": paths })
        }
        ["openapi", "v3", rest @ ..] => {
            let path = rest.join("/");
            let found = group_versions()
                .into_iter()
                .find(|(group, version)| gv_path(group, version) == path);
            match found {
                Some((group, version)) => openapi(group, version),
                None => return Some(ApiError::no_such_path().into_response()),
            }
        }
        // Readable by anyone (system:discovery), so absent rather than
        // forbidden: /openapi/v2 is one, which kubectl reads only when v3
        // fails.
        ["openapi", ..] => return Some(ApiError::no_such_path().into_response()),
        _ => return None,
    };
    Some((StatusCode::OK, axum::Json(body)).into_response())
}

/// The group versions served, core first.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut versions: Vec<_> = Resource::ALL
        .iter()
        .map(|r| (r.group(), r.version()))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// `api/v1`, `apis/networking.k8s.io/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn resources_of(group: &str, version: &str) -> impl Iterator<Item = Resource> {
    Resource::ALL
        .into_iter()
        .filter(move |r| r.group() == group && r.version() == version)
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn short_names(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Pods => &["po"],
        Resource::PersistentVolumeClaims => &["pvc"],
        Resource::Services => &["svc"],
        Resource::NetworkPolicies => &["netpol"],
        Resource::Secrets => &[],
    }
}

/// An APIResourceList (legacy discovery) for one group version.
fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for resource in resources_of(group, version) {
        let mut entry = json!({
            "name": resource.plural(),
            "singularName": resource.kind().to_ascii_lowercase(),
            "namespaced": true,
            "kind": resource.kind(),
            "verbs": VERBS,
        });
        if !short_names(resource).is_empty() {
            entry["shortNames"] = json!(short_names(resource));
        }
        // What `kubectl get all` lists.
        if matches!(resource, Resource::Pods | Resource::Services) {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        if resource == Resource::Pods {
            resources.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut list = json!({
        "kind": "APIResourceList",
        "groupVersion": group_version,
        "resources": resources,
    });
    // The core group's list has no apiVersion; the others' have one.
    if !group.is_empty() {
        list["apiVersion"] = json!("v1");
    }
    list
}

/// The OpenAPI v3 document of one group version: its paths and operations,
/// with the query parameters the fake honours, tagged with the kinds they
/// serve as the API server tags them. No schemas (`kubectl explain` gets
/// nothing from it): kubectl's create only looks for `fieldValidation` on the
/// kind's PATCH.
fn openapi(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for resource in resources_of(group, version) {
        let collection = format!(
            "/{}/namespaces/{{namespace}}/{}",
            gv_path(group, version),
            resource.plural()
        );
        let gvk = json!({ "group": group, "version": version, "kind": resource.kind() });
        let operation = |verb: &str, action: &str, params: &[&str]| {
            // createCoreV1NamespacedPod, patchNetworkingV1NamespacedNetworkPolicy.
            let group_name = match group.split('.').next() {
                Some("") | None => "Core".to_owned(),
                Some(first) => capitalise(first),
            };
            let parameters: Vec<Value> = params
                .iter()
                .map(|name| {
                    json!({
                        "name": name, "in": "query",
                        "schema": { "type": if *name == "timeoutSeconds" { "integer" } else { "string" } },
                    })
                })
                .collect();
            json!({
                "operationId": format!("{verb}{group_name}{}Namespaced{}", capitalise(version), resource.kind()),
                "parameters": parameters,
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let selection = [
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "timeoutSeconds",
            "watch",
        ];
        paths.insert(
            collection.clone(),
            json!({
                "get": operation("list", "list", &selection),
                "post": operation("create", "post", &["fieldValidation"]),
                "delete": operation("deleteCollection", "deletecollection", &selection[..2]),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation("read", "get", &[]),
                "put": operation("replace", "put", &["fieldValidation"]),
                "patch": operation("patch", "patch", &["fieldValidation"]),
                "delete": operation("delete", "delete", &[]),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1.33.0-fake" },
        "paths": paths,
    })
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The document's hash, as the API server puts it in serverRelativeURL so
/// that a client's cache knows when it changed: SHA-512, upper-case hex.
fn hash(document: &Value) -> String {
    let digest = Sha512::digest(document.to_string().as_bytes());
    digest.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02X}");
        hex
    })
}
