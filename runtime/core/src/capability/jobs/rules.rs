//! The rules a job must follow before an executor sees it: Brigade's (job
//! and container names, unknown container properties rejected), the
//! project's policies (privileged containers, the host's Docker socket, the
//! shared workspace), the host's own safety rules (absolute mount paths
//! without `..`, well-formed image references), and the project's secrets
//! put where a job refers to them. A broken rule is an error the script can
//! catch; it names the job, the container and the rule.

use mizzen_host_api::types::{
    ContainerSpec, DEFAULT_READINESS_TIMEOUT_SECONDS, EventProject, JobSpec, JobStartRequest,
    Readiness, ServiceStartRequest,
};
use mizzen_host_api::{ErrorCode, HostError};
use serde_json::Value;

use crate::environment_file::EnvironmentFileRef;
use crate::wasm_job::{IMAGE_PREFIX, ModuleRef};

use crate::executor::{ContainerUser, EventContext, PortMapping};
use crate::project::is_dns_label;
use crate::volume::{HostPaths, MAX_VOLUMES_PER_CONTAINER, Shown, VolumeMount, VolumeSource};
use crate::worker::human_bytes;

/// Brigade's observer killed jobs after 24 hours at the latest
/// (`MAX_JOB_LIFETIME`); a longer timeout is refused rather than silently cut.
pub const MAX_JOB_TIMEOUT_SECONDS: f64 = 24.0 * 60.0 * 60.0;

/// Sidecars per job. Kubernetes has no fixed limit, but a pod of more than a
/// few containers is a design smell, and each sidecar costs a container.
pub const MAX_SIDECARS: usize = 16;

/// Ports per service or sidecar: a server listens on a few, and each one
/// published is a host resource taken from every other tenant.
pub const MAX_PORTS: usize = 16;

/// `"${{ secrets.name }}"` as the whole of an environment value: the job
/// gets the project's secret `name`, which its script may not be allowed to
/// read itself (`spec.workerTemplate.scriptSecrets`).
fn secret_reference(value: &str) -> Option<&str> {
    let inner = value.trim().strip_prefix("${{")?.strip_suffix("}}")?.trim();
    let key = inner.strip_prefix("secrets.")?;
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some(key)
}

/// Replaces each secret reference in the job's environment (every
/// container's) with the secret's value; a reference to a secret the project
/// does not have refuses the job, naming the variable.
pub(crate) fn resolve_secret_references(
    job: &mut JobStartRequest,
    project: &EventProject,
) -> Result<(), HostError> {
    let name = job.name.clone();
    let spec = &mut job.spec;
    let containers = std::iter::once((&name, &mut spec.primary_container))
        .chain(spec.sidecar_containers.iter_mut());
    for (container, container_spec) in containers {
        resolve_container_secrets(
            &format!("job \"{name}\": container \"{container}\""),
            container_spec,
            project,
        )?;
    }
    Ok(())
}

/// Replaces the secret references in one container's environment; `who`
/// names the container in the error.
pub(crate) fn resolve_container_secrets(
    who: &str,
    container: &mut ContainerSpec,
    project: &EventProject,
) -> Result<(), HostError> {
    for (variable, value) in &mut container.environment {
        let Some(key) = secret_reference(value) else {
            continue;
        };
        let Some(secret) = project.secrets.get(key) else {
            return Err(HostError::new(
                ErrorCode::NotFound,
                format!(
                    "{who}: environment variable {variable} refers to secret \"{key}\", which project \"{}\" does not have",
                    project.id
                ),
            ));
        };
        *value = secret.clone();
    }
    Ok(())
}

/// Decodes a guest's `job.start` request and checks it against the event's
/// project: what the host accepts before any executor sees a job.
pub fn decode_start(request: &[u8], event: &EventContext) -> Result<JobStartRequest, HostError> {
    let job = parse_start(request)?;
    validate(&job, event)?;
    Ok(job)
}

/// Decodes a guest's `service.start` request and checks it against the
/// event's project. The names it comes `after` are checked against the
/// event's services by the jobs capability, which knows them.
pub fn decode_service_start(
    request: &[u8],
    event: &EventContext,
) -> Result<ServiceStartRequest, HostError> {
    let service: ServiceStartRequest = serde_json::from_slice(request)
        .map_err(|e| HostError::invalid(format!("invalid service.start request: {e}")))?;
    let name = &service.name;
    if !is_dns_label(name) || name.len() > 63 {
        return Err(HostError::invalid(format!(
            "service name {name:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be at most 63 characters (it is the host name jobs reach it by)"
        )));
    }
    let who = format!("service \"{name}\"");
    let container = &service.container;
    if container.image.starts_with(IMAGE_PREFIX) {
        return Err(HostError::invalid(format!(
            "{who}: a service must be a container image; a Wasm module (image \"wasm:...\") runs as a job"
        )));
    }
    validate_container(&who, false, container, event)?;
    if let Some(readiness) = &container.readiness {
        validate_readiness(&who, readiness, MAX_JOB_TIMEOUT_SECONDS)?;
    }
    validate_ports(&who, container, event, true)?;
    if container.after.iter().any(|after| after == name) {
        return Err(HostError::invalid(format!(
            "{who}: it cannot come after itself (after)"
        )));
    }
    Ok(service)
}

/// Parses a `job.start` request, naming the container whose fields are wrong
/// (Brigade rejected unknown container properties through its schema).
fn parse_start(request: &[u8]) -> Result<JobStartRequest, HostError> {
    let invalid = |what: &str, e: serde_json::Error| HostError::invalid(format!("{what}: {e}"));
    let mut value: Value =
        serde_json::from_slice(request).map_err(|e| invalid("invalid job.start request", e))?;
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let job = format!("job \"{name}\"");
    // Check each container on its own, so that the error says which.
    if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(primary) = spec.get("primaryContainer") {
            serde_json::from_value::<ContainerSpec>(primary.clone())
                .map_err(|e| invalid(&format!("{job}: primaryContainer"), e))?;
        }
        if let Some(Value::Object(sidecars)) = spec.get("sidecarContainers") {
            for (sidecar, container) in sidecars {
                serde_json::from_value::<ContainerSpec>(container.clone())
                    .map_err(|e| invalid(&format!("{job}: sidecar \"{sidecar}\""), e))?;
            }
        }
    }
    serde_json::from_value(value).map_err(|e| invalid(&job, e))
}

/// Checks a job against Brigade's rules, the project's policies and the
/// host's safety rules.
pub(crate) fn validate(job: &JobStartRequest, event: &EventContext) -> Result<(), HostError> {
    let name = &job.name;
    if !is_dns_label(name) || name.len() > 63 {
        return Err(HostError::invalid(format!(
            "job name {name:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be at most 63 characters"
        )));
    }
    let spec: &JobSpec = &job.spec;
    let timeout = spec.timeout_seconds;
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= MAX_JOB_TIMEOUT_SECONDS) {
        return Err(HostError::invalid(format!(
            "job \"{name}\": timeoutSeconds must be more than 0 and at most {MAX_JOB_TIMEOUT_SECONDS} (24 hours), not {timeout}"
        )));
    }
    match spec.host.os.as_deref() {
        None | Some("") | Some("linux") | Some("windows") => {}
        Some(other) => {
            return Err(HostError::invalid(format!(
                "job \"{name}\": host.os {other:?} must be \"linux\" or \"windows\""
            )));
        }
    }
    if spec.sidecar_containers.len() > MAX_SIDECARS {
        return Err(HostError::new(
            ErrorCode::LimitExceeded,
            format!(
                "job \"{name}\" has {} sidecars; the limit is {MAX_SIDECARS}",
                spec.sidecar_containers.len()
            ),
        ));
    }
    let job = format!("job \"{name}\"");
    validate_container(
        &format!("{job}: primaryContainer"),
        true,
        &spec.primary_container,
        event,
    )?;
    if spec.primary_container.image.starts_with(IMAGE_PREFIX) && !spec.sidecar_containers.is_empty()
    {
        return Err(HostError::invalid(format!(
            "job \"{name}\": a Wasm job cannot have sidecars (sidecarContainers): its module runs in the sandbox, not in a pod; use a container image for a job with services"
        )));
    }
    if spec.primary_container.readiness.is_some() {
        return Err(HostError::invalid(format!(
            "job \"{name}\": readiness applies to sidecars; the primary container starts when they are ready"
        )));
    }
    for (sidecar, container) in &spec.sidecar_containers {
        let place = format!("sidecar \"{sidecar}\"");
        if !is_dns_label(sidecar) || sidecar.len() > 63 {
            return Err(HostError::invalid(format!(
                "job \"{name}\": sidecar name {sidecar:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be at most 63 characters"
            )));
        }
        if sidecar == name {
            return Err(HostError::invalid(format!(
                "job \"{name}\": {place} has the job's name, which is the primary container's"
            )));
        }
        let who = format!("{job}: {place}");
        validate_container(&who, false, container, event)?;
        if let Some(readiness) = &container.readiness {
            validate_readiness(&who, readiness, spec.timeout_seconds)?;
        }
        validate_ports(&who, container, event, false)?;
    }
    if !spec.primary_container.ports.is_empty() {
        return Err(HostError::invalid(format!(
            "{job}: primaryContainer: ports are for services and sidecars (nothing connects to a job's primary container)"
        )));
    }
    if spec.primary_container.image.starts_with(IMAGE_PREFIX)
        && (!spec.artifacts.is_empty() || !spec.caches.is_empty())
    {
        return Err(HostError::invalid(format!(
            "{job}: artifacts and caches are for container jobs; a Wasm job's module reaches the workspace (workspaceMountPath), which later jobs of the event share"
        )));
    }
    crate::kept::validate(name, spec)?;
    validate_start_order(&job, spec)
}

/// A readiness check: exactly one kind, and a timeout within `max_seconds`.
fn validate_readiness(who: &str, readiness: &Readiness, max_seconds: f64) -> Result<(), HostError> {
    let timeout = readiness
        .timeout_seconds
        .unwrap_or(DEFAULT_READINESS_TIMEOUT_SECONDS);
    let one_kind = readiness.tcp_port.is_some() != readiness.exited;
    if !one_kind || readiness.tcp_port == Some(0) {
        return Err(HostError::invalid(format!(
            "{who}: readiness must be either {{ tcpPort: <1-65535> }} or {{ exited: true }}"
        )));
    }
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= max_seconds) {
        return Err(HostError::invalid(format!(
            "{who}: readiness.timeoutSeconds must be more than 0 and at most {max_seconds} (the job's timeoutSeconds for a sidecar)"
        )));
    }
    Ok(())
}

/// Ports a service or sidecar may have: how many, that they parse, and host
/// ports only under the project's policy. An ephemeral host port is told
/// to the event's jobs, so only a service may ask for one.
fn validate_ports(
    who: &str,
    container: &ContainerSpec,
    event: &EventContext,
    service: bool,
) -> Result<(), HostError> {
    if container.ports.len() > MAX_PORTS {
        return Err(HostError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{who}: {} ports; the limit is {MAX_PORTS}",
                container.ports.len()
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for port in &container.ports {
        let mapping =
            PortMapping::parse(port).map_err(|e| HostError::invalid(format!("{who}: {e}")))?;
        if !seen.insert(mapping.container_port) {
            return Err(HostError::invalid(format!(
                "{who}: container port {} is listed twice (ports)",
                mapping.container_port
            )));
        }
        let Some(host) = mapping.host else { continue };
        if !event.policies.allow_host_ports {
            return Err(HostError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{who}: port {port:?} publishes a host port, which the project's policy forbids (spec.workerTemplate.jobPolicies.allowHostPorts is not true); its jobs reach it by name without one"
                ),
            ));
        }
        if host.port == 0 && !service {
            return Err(HostError::invalid(format!(
                "{who}: port {port:?} asks for a host port the engine chooses, which only a service's is told (as MIZZEN_SERVICE_<NAME>_PORT_<PORT>); name the host port"
            )));
        }
    }
    Ok(())
}

/// A job's start order: each container's `after` names sidecars of the job
/// (not itself), and no sidecars wait for each other in a cycle. Checked
/// before anything starts, so that a job never half-starts on a typo.
fn validate_start_order(job: &str, spec: &JobSpec) -> Result<(), HostError> {
    let containers = std::iter::once(("primaryContainer".to_string(), &spec.primary_container))
        .chain(
            spec.sidecar_containers
                .iter()
                .map(|(name, c)| (format!("sidecar \"{name}\""), c)),
        );
    for (place, container) in containers {
        for after in &container.after {
            if !spec.sidecar_containers.contains_key(after) {
                return Err(HostError::invalid(format!(
                    "{job}: {place}: it comes after {after:?}, which is not a sidecar of this job (after names sidecars of the same job)"
                )));
            }
            if place == format!("sidecar \"{after}\"") {
                return Err(HostError::invalid(format!(
                    "{job}: {place}: it cannot come after itself (after)"
                )));
            }
        }
    }
    // Depth-first, remembering the path, so that a cycle is named whole.
    fn visit<'a>(
        name: &'a str,
        spec: &'a JobSpec,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<&str> = path[start..].to_vec();
            cycle.push(name);
            return Err(cycle.join(" → "));
        }
        path.push(name);
        for after in &spec.sidecar_containers[name].after {
            visit(after, spec, path, done)?;
        }
        path.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = std::collections::BTreeSet::new();
    for name in spec.sidecar_containers.keys() {
        visit(name, spec, &mut Vec::new(), &mut done).map_err(|cycle| {
            HostError::invalid(format!(
                "{job}: its sidecars wait for each other in a cycle (after): {cycle}"
            ))
        })?;
    }
    Ok(())
}

/// One container's fields against the rules and the project's policies;
/// `who` names it in errors (`job "build": sidecar "db"`, `service "db"`).
fn validate_container(
    who: &str,
    primary: bool,
    container: &ContainerSpec,
    event: &EventContext,
) -> Result<(), HostError> {
    let fail = |problem: String| HostError::invalid(format!("{who}: {problem}"));
    let deny =
        |problem: String| HostError::new(ErrorCode::PermissionDenied, format!("{who}: {problem}"));
    match ModuleRef::parse(&container.image) {
        None => validate_image(&container.image).map_err(|e| fail(e.to_string()))?,
        Some(module) => validate_wasm(container, primary, module, event)
            .map_err(|(code, problem)| HostError::new(code, format!("{who}: {problem}")))?,
    }
    for (field, path) in [
        ("workspaceMountPath", &container.workspace_mount_path),
        ("sourceMountPath", &container.source_mount_path),
        ("workingDirectory", &container.working_directory),
    ] {
        if !path.is_empty() {
            validate_container_path(path).map_err(|p| fail(format!("{field} {path:?} {p}")))?;
        }
    }
    if !container.workspace_mount_path.is_empty() && !event.use_workspace {
        return Err(deny(
            "asks for the shared workspace (workspaceMountPath), but the project does not set spec.workerTemplate.useWorkspace: true".into(),
        ));
    }
    if !container.source_mount_path.is_empty() && event.source.is_none() {
        return Err(deny(
            "asks for the project's source (sourceMountPath), but the project has no source (spec.workerTemplate.git)".into(),
        ));
    }
    if !container.environment_file.is_empty() {
        match EnvironmentFileRef::parse(&container.environment_file)
            .map_err(|e| fail(format!("environmentFile: {e}")))?
        {
            EnvironmentFileRef::Workspace(_) if !event.use_workspace => {
                return Err(deny(
                    "reads its environment file from the workspace (environmentFile \"workspace:...\"), but the project does not set spec.workerTemplate.useWorkspace: true".into(),
                ));
            }
            EnvironmentFileRef::Source(_) if event.source.is_none() => {
                return Err(deny(
                    "reads its environment file from the project's source (environmentFile), but the project has no source (spec.workerTemplate.git)".into(),
                ));
            }
            _ => {}
        }
    }
    let user = ContainerUser::parse(&container.user).map_err(fail)?;
    if user.is_some_and(ContainerUser::is_root)
        && !event.policies.allow_root
        && !(container.privileged || container.use_host_docker_socket)
    {
        return Err(deny(format!(
            "runs as root (user {:?}), which the project's policy forbids (spec.workerTemplate.jobPolicies.allowRoot is not true); containers run as nobody unless they name another user",
            container.user
        )));
    }
    if container.privileged && !event.policies.allow_privileged {
        return Err(deny(
            "is privileged, which the project's policy forbids (spec.workerTemplate.jobPolicies.allowPrivileged is not true)".into(),
        ));
    }
    if container.use_host_docker_socket && !event.policies.allow_docker_socket_mount {
        return Err(deny(
            "mounts the host's Docker socket, which the project's policy forbids (spec.workerTemplate.jobPolicies.allowDockerSocketMount is not true); a Docker-in-Docker sidecar is the safer way".into(),
        ));
    }
    validate_volumes(container, event)
        .map_err(|(code, problem)| HostError::new(code, format!("{who}: {problem}")))?;
    for (key, value) in &container.environment {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(fail(format!(
                "environment variable {key:?} must have a non-empty name without '=' or NUL, and a value without NUL"
            )));
        }
    }
    for arg in container.command.iter().chain(&container.arguments) {
        if arg.contains('\0') {
            return Err(fail("command and arguments must not contain NUL".into()));
        }
    }
    Ok(())
}

/// What a Wasm job may not ask for, and where its module may come from.
fn validate_wasm(
    container: &ContainerSpec,
    primary: bool,
    module: Result<ModuleRef, String>,
    event: &EventContext,
) -> Result<(), (ErrorCode, String)> {
    let refuse = |problem: &str| Err((ErrorCode::InvalidRequest, problem.to_string()));
    let module = module.map_err(|e| (ErrorCode::InvalidRequest, format!("image: {e}")))?;
    if !primary {
        return refuse(
            "a sidecar cannot be a Wasm module (image \"wasm:...\"); only a job's primary container can",
        );
    }
    if container.privileged {
        return refuse(
            "a Wasm job cannot be privileged: its module runs in the sandbox, with no privileges to give",
        );
    }
    if container.use_host_docker_socket {
        return refuse(
            "a Wasm job cannot mount the host's Docker socket (useHostDockerSocket): its module has no sockets",
        );
    }
    if !container.user.is_empty() {
        return refuse(
            "user is for containers; a Wasm job's module has no user: it reaches only the directories it is given",
        );
    }
    if !container.volumes.is_empty() {
        return refuse(
            "volumes are for containers; a Wasm job's module reaches only the workspace and the source (workspaceMountPath, sourceMountPath)",
        );
    }
    if !container.working_directory.is_empty() {
        return refuse(
            "workingDirectory is for containers; a Wasm job's module opens files beneath workspaceMountPath or sourceMountPath by their full paths",
        );
    }
    match module {
        ModuleRef::Workspace(_) if !event.use_workspace => Err((
            ErrorCode::PermissionDenied,
            "reads its module from the workspace (wasm:workspace:...), but the project does not set spec.workerTemplate.useWorkspace: true".into(),
        )),
        ModuleRef::Source(_) if event.source.is_none() => Err((
            ErrorCode::PermissionDenied,
            "reads its module from the project's source (wasm:PATH), but the project has no source (spec.workerTemplate.git)".into(),
        )),
        _ => Ok(()),
    }
}

/// A container's volumes: how many, that they parse, one mount per path, the
/// project's quota for its volumes, and host paths only where the project's
/// policy and the server allow them.
fn validate_volumes(
    container: &ContainerSpec,
    event: &EventContext,
) -> Result<(), (ErrorCode, String)> {
    let invalid = |problem: String| (ErrorCode::InvalidRequest, problem);
    let deny = |problem: String| Err((ErrorCode::PermissionDenied, problem));
    if container.volumes.len() > MAX_VOLUMES_PER_CONTAINER {
        return Err((
            ErrorCode::LimitExceeded,
            format!(
                "{} volumes; the limit is {MAX_VOLUMES_PER_CONTAINER}",
                container.volumes.len()
            ),
        ));
    }
    let mut paths: Vec<String> = [
        &container.workspace_mount_path,
        &container.source_mount_path,
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .map(|p| p.trim_end_matches('/').to_string())
    .collect();
    for text in &container.volumes {
        let shown = Shown(text);
        let volume = VolumeMount::parse(text).map_err(invalid)?;
        let path = volume.path.trim_end_matches('/').to_string();
        if paths.contains(&path) {
            return Err(invalid(format!(
                "volume {shown} mounts at {}, where something else is mounted already (another volume, workspaceMountPath or sourceMountPath)",
                Shown(&path)
            )));
        }
        paths.push(path);
        match &volume.source {
            VolumeSource::Anonymous => {}
            VolumeSource::Named(name) => {
                let volumes = &event.volumes;
                if volumes.project.contains_key(name)
                    && volumes.declared_bytes() > volumes.quota_bytes
                {
                    return Err((
                        ErrorCode::LimitExceeded,
                        format!(
                            "volume {shown} is one of the project's volumes, whose sizes add up to {}, over the project's volume quota of {} (the volumeSize limit); make spec.workerTemplate.volumes smaller",
                            human_bytes(volumes.declared_bytes()),
                            human_bytes(volumes.quota_bytes)
                        ),
                    ));
                }
            }
            VolumeSource::Host(host) => match &event.volumes.host_paths {
                HostPaths::Forbidden => {
                    return deny(format!(
                        "volume {shown} binds a host path, which this server forbids (mizzen server --forbid-host-paths) whatever the project allows; use a named volume"
                    ));
                }
                paths @ HostPaths::Under(_) if !paths.allows(host) => {
                    return deny(format!(
                        "volume {shown} binds the host path {}, which is under none of the project's spec.workerTemplate.jobPolicies.allowedHostPaths; use a named volume, or list the directory there",
                        Shown(&host.to_string_lossy())
                    ));
                }
                HostPaths::Under(_) => {}
            },
        }
    }
    Ok(())
}

/// A path inside a container: absolute, not `/`, no `..`, no control
/// characters, and none of `:` and `,` (which bind-mount syntaxes split on).
fn validate_container_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path");
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'");
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("must not be the root directory");
    }
    if path.chars().any(|c| c.is_control() || c == ':' || c == ',') {
        return Err("must not contain control characters, ':' or ','");
    }
    Ok(())
}

/// An image reference that breaks the grammar, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {reference:?} {problem}")]
pub struct InvalidImage {
    /// The reference.
    pub reference: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// An OCI image reference, by the grammar of distribution/reference:
/// `[host[:port]/]path[:tag][@algorithm:hex]`, path components lowercase.
pub fn validate_image(reference: &str) -> Result<(), InvalidImage> {
    let bad = |problem: &'static str| {
        Err(InvalidImage {
            reference: reference.to_string(),
            problem,
        })
    };
    if reference.is_empty() {
        return bad("is empty");
    }
    if reference.len() > 512
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("is not an image reference (spaces, control characters or too long)");
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return bad("has a malformed digest (expected @sha256:<64 hex digits>)");
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return bad("has a malformed tag (letters, digits, '_', '.', '-', at most 128)");
        }
    }
    if name.len() > 255 {
        return bad("has a name longer than 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        let (host, port) = first.split_once(':').unwrap_or((first, ""));
        let host_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_ok || !(port.is_empty() || port.parse::<u16>().is_ok()) {
            return bad("has a malformed registry host");
        }
        components.remove(0);
    }
    for component in components {
        if !is_path_component(component) {
            return bad(
                "has a malformed name: each part must be lowercase letters and digits, joined by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-'))
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::JobPolicies;

    fn event() -> EventContext {
        EventContext {
            event_id: "e".into(),
            project_id: "p".into(),
            use_workspace: false,
            source: None,
            policies: JobPolicies::default(),
            image_pull_secrets: Vec::new(),
            pull_secrets: Vec::new(),
            workspace_size: None,
            container_limits: Default::default(),
            kept: Default::default(),
            volumes: Default::default(),
        }
    }

    fn job(json: &str) -> Result<JobStartRequest, HostError> {
        parse_start(json.as_bytes()).and_then(|job| validate(&job, &event()).map(|()| job))
    }

    fn error(json: &str) -> String {
        job(json).unwrap_err().message
    }

    #[test]
    fn secret_references_are_the_whole_value() {
        assert_eq!(secret_reference("${{ secrets.token }}"), Some("token"));
        assert_eq!(secret_reference("${{secrets.token}}"), Some("token"));
        for not_one in [
            "token",
            "${{ secrets. }}",
            "prefix ${{ secrets.token }}",
            "${{ env.token }}",
            "${{ secrets.a b }}",
            "${ secrets.token }",
        ] {
            assert_eq!(secret_reference(not_one), None, "{not_one:?}");
        }
    }

    #[test]
    fn a_plain_job_is_valid() {
        job(r#"{"name":"build","spec":{"primaryContainer":{"image":"debian"}}}"#).unwrap();
    }

    #[test]
    fn job_and_sidecar_names_follow_brigades_rule() {
        for bad in [
            "", "a", "Build", "build_1", "-build", "build-", "bu ild", "bаd",
        ] {
            let message = error(&format!(
                r#"{{"name":"{bad}","spec":{{"primaryContainer":{{"image":"debian"}}}}}}"#
            ));
            assert!(message.contains("must match"), "{bad:?}: {message}");
        }
        let long = "a".repeat(64);
        assert!(
            error(&format!(
                r#"{{"name":"{long}","spec":{{"primaryContainer":{{"image":"debian"}}}}}}"#
            ))
            .contains("at most 63")
        );
        let message = error(
            r#"{"name":"build","spec":{"primaryContainer":{"image":"x"},"sidecarContainers":{"Redis":{"image":"redis"}}}}"#,
        );
        assert!(message.contains("sidecar name \"Redis\""), "{message}");
    }

    #[test]
    fn unknown_container_properties_are_named_with_their_container() {
        let message =
            error(r#"{"name":"build","spec":{"primaryContainer":{"image":"x","env":{}}}}"#);
        assert!(
            message.starts_with("job \"build\": primaryContainer: unknown field `env`"),
            "{message}"
        );
        let message = error(
            r#"{"name":"build","spec":{"primaryContainer":{"image":"x"},"sidecarContainers":{"db":{"image":"y","expose":[1]}}}}"#,
        );
        assert!(
            message.starts_with("job \"build\": sidecar \"db\": unknown field `expose`"),
            "{message}"
        );
    }

    #[test]
    fn an_environment_file_needs_where_it_is_read_from_and_a_relative_path() {
        for (file, expected) in [
            (
                ".env",
                "job \"build\": sidecar \"db\": reads its environment file from the project's source (environmentFile), but the project has no source",
            ),
            (
                "workspace:ci.env",
                "job \"build\": sidecar \"db\": reads its environment file from the workspace (environmentFile \"workspace:...\"), but the project does not set spec.workerTemplate.useWorkspace: true",
            ),
            (
                "ci/../../x.env",
                "job \"build\": sidecar \"db\": environmentFile: \"ci/../../x.env\" must not contain '..'",
            ),
        ] {
            let message = error(&format!(
                r#"{{"name":"build","spec":{{"primaryContainer":{{"image":"x"}},"sidecarContainers":{{"db":{{"image":"y","environmentFile":"{file}"}}}}}}}}"#
            ));
            assert!(message.starts_with(expected), "{file}: {message}");
        }
    }

    #[test]
    fn mount_paths_must_be_absolute_and_stay_put() {
        for (path, expected) in [
            ("share", "absolute"),
            ("/a/../b", "'..'"),
            ("/", "root"),
            ("/a:b", "':'"),
        ] {
            let message = error(&format!(
                r#"{{"name":"build","spec":{{"primaryContainer":{{"image":"x","sourceMountPath":"{path}"}}}}}}"#
            ));
            assert!(message.contains(expected), "{path}: {message}");
        }
    }

    #[test]
    fn policies_and_project_settings_are_named_when_they_refuse() {
        let denied = |json: &str| job(json).unwrap_err();
        let e = denied(
            r#"{"name":"dind","spec":{"primaryContainer":{"image":"docker","privileged":true}}}"#,
        );
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(
            e.message.contains("jobPolicies.allowPrivileged"),
            "{}",
            e.message
        );
        let e = denied(
            r#"{"name":"dood","spec":{"primaryContainer":{"image":"docker","useHostDockerSocket":true}}}"#,
        );
        assert!(
            e.message.contains("jobPolicies.allowDockerSocketMount"),
            "{}",
            e.message
        );
        let e = denied(
            r#"{"name":"ws","spec":{"primaryContainer":{"image":"x","workspaceMountPath":"/share"}}}"#,
        );
        assert!(e.message.contains("useWorkspace"), "{}", e.message);
    }

    #[test]
    fn volumes_are_checked_by_entry_with_their_container_named() {
        let spec = |volumes: &str| {
            format!(
                r#"{{"name":"build","spec":{{"primaryContainer":{{"image":"x","workspaceMountPath":"","volumes":{volumes}}}}}}}"#
            )
        };
        assert!(job(&spec(r#"["/cache","data:/data:ro","/tmp/x:ro"]"#)).is_ok());
        let e = error(&spec(r#"["data"]"#));
        assert!(
            e.starts_with("job \"build\": primaryContainer: volume \"data\""),
            "{e}"
        );
        let e = error(&spec(r#"["one:/data","two:/data/"]"#));
        assert!(
            e.contains("mounts at \"/data\", where something else is mounted"),
            "{e}"
        );
        let many: Vec<String> = (0..=MAX_VOLUMES_PER_CONTAINER)
            .map(|i| format!("\"/v{i}\""))
            .collect();
        let e = job(&spec(&format!("[{}]", many.join(",")))).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(e.message.contains("the limit is 16"), "{}", e.message);
        // Host paths: off unless the project lists them, never when the
        // server forbids them.
        let e = job(&spec(r#"["/opt/data:/data"]"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("allowedHostPaths"), "{}", e.message);
        let mut allowed = event();
        allowed.volumes.host_paths = HostPaths::Under(vec!["/opt".into()]);
        let request = parse_start(spec(r#"["/opt/data:/data"]"#).as_bytes()).unwrap();
        assert!(validate(&request, &allowed).is_ok());
        allowed.volumes.host_paths = HostPaths::Forbidden;
        let e = validate(&request, &allowed).unwrap_err();
        assert!(e.message.contains("--forbid-host-paths"), "{}", e.message);
        // A Wasm job has none.
        let e = error(
            r#"{"name":"wasm","spec":{"primaryContainer":{"image":"wasm:workspace:x.wasm","volumes":["/x"]}}}"#,
        );
        assert!(e.contains("volumes are for containers"), "{e}");
    }

    #[test]
    fn readiness_is_for_sidecars_and_of_one_kind() {
        let message = error(
            r#"{"name":"jb","spec":{"primaryContainer":{"image":"x","readiness":{"exited":true}}}}"#,
        );
        assert!(
            message.contains("readiness applies to sidecars"),
            "{message}"
        );
        let message = error(
            r#"{"name":"jb","spec":{"primaryContainer":{"image":"x"},"sidecarContainers":{"db":{"image":"y","readiness":{"tcpPort":5432,"exited":true}}}}}"#,
        );
        assert!(message.contains("either"), "{message}");
        job(r#"{"name":"jb","spec":{"primaryContainer":{"image":"x"},"sidecarContainers":{"db":{"image":"y","readiness":{"tcpPort":5432}}}}}"#).unwrap();
    }

    #[test]
    fn timeouts_must_be_positive_and_at_most_a_day() {
        for bad in ["0", "-1", "86401"] {
            let message = error(&format!(
                r#"{{"name":"jb","spec":{{"primaryContainer":{{"image":"x"}},"timeoutSeconds":{bad}}}}}"#
            ));
            assert!(message.contains("timeoutSeconds"), "{message}");
        }
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for good in [
            "debian",
            "debian:12",
            "library/debian:latest",
            "docker.io/library/debian:bookworm-slim",
            "localhost:5000/team/app:1.0",
            "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "my_repo/some-app__x",
        ] {
            assert!(
                validate_image(good).is_ok(),
                "{good}: {:?}",
                validate_image(good)
            );
        }
        for bad in [
            "",
            "Debian",
            "debian:",
            "a:b:c",
            "debian latest",
            "--privileged",
            "$(touch /x)",
            "debian\nlatest",
            "debian@sha256:short",
            &format!("debian:{}", "t".repeat(129)),
            "registry..io/x",
        ] {
            assert!(validate_image(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
