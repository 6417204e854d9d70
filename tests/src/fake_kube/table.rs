//! Server-side printing: the `Table` (meta.k8s.io/v1) that kubectl asks for
//! in its `Accept` header for its default output, with the columns and cells
//! of Kubernetes' own printers (pkg/printers/internalversion) for the
//! resources the fake serves. The server always fills the wide (priority 1)
//! columns; kubectl shows them for `-o wide`.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::store::{ApiError, Resource, now, str_at};

/// What a Table request asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableRequest {
    /// `v1` or `v1beta1` of meta.k8s.io.
    version: &'static str,
    include: Include,
}

/// `includeObject`: what each row's `object` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Include {
    /// A PartialObjectMetadata (the default).
    Metadata,
    Object,
    None,
}

impl TableRequest {
    /// The Table an `Accept` header asks for, if its first acceptable media
    /// range is one (`application/json;as=Table;v=v1;g=meta.k8s.io`).
    pub(crate) fn from_accept(
        accept: &str,
        include_object: Option<&str>,
    ) -> Result<Option<TableRequest>, ApiError> {
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
            let param = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            if !matches!(media, "application/json" | "*/*" | "application/*") {
                continue;
            }
            if param("as") != Some("Table") {
                // Plain JSON is acceptable: it is what the fake answers.
                return Ok(None);
            }
            let version = match (param("g"), param("v")) {
                (Some("meta.k8s.io"), Some("v1")) => "v1",
                (Some("meta.k8s.io"), Some("v1beta1")) => "v1beta1",
                _ => continue,
            };
            let include = match include_object {
                None | Some("" | "Metadata") => Include::Metadata,
                Some("Object") => Include::Object,
                Some("None") => Include::None,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unrecognized includeObject value: \"{other}\""
                    )));
                }
            };
            return Ok(Some(TableRequest { version, include }));
        }
        Ok(None)
    }

    /// The Table of `objects` (one for a get or a watch event, any number
    /// for a list); `resource_version` is the list's, or the object's.
    /// Without headers (a watch's events after the first), no column
    /// definitions.
    pub(crate) fn table(
        self,
        resource: Resource,
        objects: &[&Value],
        resource_version: &str,
        headers: bool,
    ) -> Value {
        let rows: Vec<Value> = objects
            .iter()
            .map(|object| {
                let mut row = json!({ "cells": cells(resource, object) });
                if resource == Resource::Pods {
                    // Kubernetes marks finished pods' rows.
                    let (reason, message) = match str_at(object, "/status/phase") {
                        Some("Succeeded") => ("Succeeded", "The pod has completed successfully."),
                        Some("Failed") => ("Failed", "The pod failed."),
                        _ => ("", ""),
                    };
                    if !reason.is_empty() {
                        row["conditions"] = json!([{
                            "type": "Completed", "status": "True",
                            "reason": reason, "message": message,
                        }]);
                    }
                }
                row["object"] = match self.include {
                    Include::Object => (*object).clone(),
                    Include::Metadata => json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": format!("meta.k8s.io/{}", self.version),
                        "metadata": object["metadata"],
                    }),
                    Include::None => Value::Null,
                };
                row
            })
            .collect();
        let columns: Vec<Value> = if headers {
            columns(resource)
                .iter()
                .map(|&(name, kind, priority)| {
                    json!({
                        "name": name,
                        "type": kind,
                        "format": if name == "Name" { "name" } else { "" },
                        "description": description(name),
                        "priority": priority,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        json!({
            "kind": "Table",
            "apiVersion": format!("meta.k8s.io/{}", self.version),
            "metadata": { "resourceVersion": resource_version },
            "columnDefinitions": columns,
            "rows": rows,
        })
    }
}

/// (name, type, priority) of each column, as Kubernetes' printers define
/// them.
fn columns(resource: Resource) -> &'static [(&'static str, &'static str, u8)] {
    match resource {
        Resource::Pods => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        Resource::Secrets => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        Resource::PersistentVolumeClaims => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        Resource::Services => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        Resource::NetworkPolicies => &[
            ("Name", "string", 0),
            ("Pod-Selector", "string", 0),
            ("Age", "string", 0),
        ],
    }
}

/// A short description of a column (Kubernetes takes them from its API
/// documentation; no client reads them).
fn description(column: &str) -> &'static str {
    match column {
        "Name" => "Name must be unique within a namespace.",
        "Age" => {
            "CreationTimestamp is a timestamp representing the server time when this object was created."
        }
        _ => "",
    }
}

fn string<'a>(object: &'a Value, pointer: &str) -> &'a str {
    str_at(object, pointer).unwrap_or_default()
}

fn array<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn cells(resource: Resource, object: &Value) -> Vec<Value> {
    let name = json!(string(object, "/metadata/name"));
    let age = json!(age(object));
    match resource {
        Resource::Pods => pod_cells(object),
        Resource::Secrets => {
            let data = object["data"].as_object().map_or(0, serde_json::Map::len);
            vec![name, json!(string(object, "/type")), json!(data), age]
        }
        Resource::PersistentVolumeClaims => {
            let phase = if object["metadata"]["deletionTimestamp"].is_null() {
                string(object, "/status/phase")
            } else {
                "Terminating"
            };
            let volume = string(object, "/spec/volumeName");
            let (capacity, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    string(object, "/status/capacity/storage").to_owned(),
                    access_modes(array(object, "/status/accessModes")),
                )
            };
            let class = str_at(object, "/spec/storageClassName")
                .or_else(|| {
                    str_at(
                        object,
                        "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
                    )
                })
                .unwrap_or_default();
            let attributes = str_at(object, "/spec/volumeAttributesClassName").unwrap_or("<unset>");
            let mode = str_at(object, "/spec/volumeMode").unwrap_or("<unset>");
            vec![
                name,
                json!(phase),
                json!(volume),
                json!(capacity),
                json!(modes),
                json!(class),
                json!(attributes),
                age,
                json!(mode),
            ]
        }
        Resource::Services => {
            let kind = string(object, "/spec/type");
            let cluster_ip = array(object, "/spec/clusterIPs")
                .first()
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            let external: Vec<&str> = array(object, "/spec/externalIPs")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let external = match kind {
                "ClusterIP" | "NodePort" if !external.is_empty() => external.join(","),
                "ClusterIP" | "NodePort" => "<none>".to_owned(),
                "ExternalName" => string(object, "/spec/externalName").to_owned(),
                "LoadBalancer" if external.is_empty() => "<pending>".to_owned(),
                "LoadBalancer" => external.join(","),
                _ => "<unknown>".to_owned(),
            };
            let ports: Vec<String> = array(object, "/spec/ports")
                .iter()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or_default();
                    match p["nodePort"].as_i64() {
                        Some(node) if node > 0 => format!("{}:{node}/{protocol}", p["port"]),
                        _ => format!("{}/{protocol}", p["port"]),
                    }
                })
                .collect();
            let ports = if ports.is_empty() {
                "<none>".to_owned()
            } else {
                ports.join(",")
            };
            let selector = object["spec"]["selector"]
                .as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".to_owned());
            vec![
                name,
                json!(kind),
                json!(cluster_ip),
                json!(external),
                json!(ports),
                age,
                json!(selector),
            ]
        }
        Resource::NetworkPolicies => {
            vec![
                name,
                json!(label_selector(&object["spec"]["podSelector"])),
                age,
            ]
        }
    }
}

/// `RWO,RWX`, in Kubernetes' order.
fn access_modes(modes: &[Value]) -> String {
    let has = |mode: &str| modes.iter().any(|m| m == mode);
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| has(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// A LabelSelector as metav1.FormatLabelSelector writes it: requirements
/// sorted by key, `<none>` for the empty selector.
fn label_selector(selector: &Value) -> String {
    let mut requirements: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (key, value) in labels {
            let value = value.as_str().unwrap_or_default();
            requirements.push((key.clone(), format!("{key}={value}")));
        }
    }
    for expression in array(selector, "/matchExpressions") {
        let key = string(expression, "/key");
        let mut values: Vec<&str> = array(expression, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let values = values.join(",");
        let text = match string(expression, "/operator") {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<error>".to_owned(),
        };
        requirements.push((key.to_owned(), text));
    }
    requirements.sort();
    if requirements.is_empty() {
        return "<none>".to_owned();
    }
    requirements
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(",")
}

/// The pod printer's cells: READY, STATUS and RESTARTS as `kubectl get pods`
/// shows them, computed as Kubernetes' printPod does.
fn pod_cells(pod: &Value) -> Vec<Value> {
    let init_specs = array(pod, "/spec/initContainers");
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == name && c["restartPolicy"] == "Always")
    };
    let sidecars = init_specs
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .count();
    let total = array(pod, "/spec/containers").len() + sidecars;
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let phase = string(pod, "/status/phase");
    let mut reason = str_at(pod, "/status/reason")
        .filter(|r| !r.is_empty())
        .unwrap_or(phase)
        .to_owned();
    if array(pod, "/status/conditions")
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".to_owned();
    }
    let count = |status: &Value| status["restartCount"].as_u64().unwrap_or_default();
    let mut initializing = false;
    let init_statuses = array(pod, "/status/initContainerStatuses");
    for (i, status) in init_statuses.iter().enumerate() {
        restarts += count(status);
        let is_sidecar = sidecar(string(status, "/name"));
        if is_sidecar {
            sidecar_restarts += count(status);
        }
        let terminated = &status["state"]["terminated"];
        let waiting = string(status, "/state/waiting/reason");
        if terminated["exitCode"] == 0 {
            continue;
        }
        if is_sidecar && status["started"] == true {
            if status["ready"] == true {
                ready += 1;
            }
            continue;
        }
        reason = if terminated.is_object() {
            match terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(why) => format!("Init:{why}"),
                None if terminated["signal"].as_i64().unwrap_or_default() != 0 => {
                    format!("Init:Signal:{}", terminated["signal"])
                }
                None => format!("Init:ExitCode:{}", terminated["exitCode"]),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }
    let initialized = array(pod, "/status/conditions")
        .iter()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut running = false;
        for status in array(pod, "/status/containerStatuses").iter().rev() {
            restarts += count(status);
            let waiting = string(status, "/state/waiting/reason");
            let terminated = &status["state"]["terminated"];
            if !waiting.is_empty() {
                reason = waiting.to_owned();
            } else if let Some(why) = terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = why.to_owned();
            } else if terminated.is_object() {
                reason = match terminated["signal"].as_i64() {
                    Some(signal) if signal != 0 => format!("Signal:{signal}"),
                    _ => format!("ExitCode:{}", terminated["exitCode"]),
                };
            } else if status["ready"] == true && status["state"]["running"].is_object() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = array(pod, "/status/conditions")
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_owned();
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() && !matches!(phase, "Succeeded" | "Failed") {
        reason = "Terminating".to_owned();
    }
    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_owned()
        } else {
            s.to_owned()
        }
    };
    let ip = array(pod, "/status/podIPs")
        .first()
        .map(|ip| string(ip, "/ip"))
        .or_else(|| str_at(pod, "/status/podIP"))
        .unwrap_or_default();
    let gates = array(pod, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let met = gates
            .iter()
            .filter(|gate| {
                array(pod, "/status/conditions")
                    .iter()
                    .any(|c| c["type"] == gate["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    // The fake's containers never restart, so no "(5m ago)" after the count.
    vec![
        json!(string(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(pod)),
        json!(or_none(ip)),
        json!(or_none(string(pod, "/spec/nodeName"))),
        json!(or_none(string(pod, "/status/nominatedNodeName"))),
        json!(gates),
    ]
}

/// The AGE cell: the time since creationTimestamp.
fn age(object: &Value) -> String {
    match string(object, "/metadata/creationTimestamp").parse::<Timestamp>() {
        Ok(created) => human_duration(now().as_second() - created.as_second()),
        Err(_) => "<unknown>".to_owned(),
    }
}

/// k8s.io/apimachinery's duration.HumanDuration, for whole seconds.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_as_kubectl_shows_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, shown) in cases {
            assert_eq!(human_duration(seconds), shown, "{seconds}s");
        }
    }
}
