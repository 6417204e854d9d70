//! Volumes that a job's containers and an event's services mount, written as
//! Docker Compose writes them (`volumes: ["/path", "name:/path",
//! "/host/path:/path:ro"]`): what each entry means, which names are the
//! project's (kept between events) and which the event's, and which host
//! paths a project may bind.
//!
//! Three kinds:
//! - **anonymous** (`/path`): fresh for each container, gone with it;
//! - **named** (`name:/path`): the event's, shared by its jobs and services
//!   and removed when the event ends — unless the project declares the name
//!   in `spec.workerTemplate.volumes`, which makes it the **project's**:
//!   kept between events, its declared sizes counted against the project's
//!   quota (the `volumeSize` limit), listed and deleted through the API;
//! - **host** (`/host/path:/path`): a directory of the host, only under a
//!   path the project's `jobPolicies.allowedHostPaths` lists, and never on a
//!   server that forbids host paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mizzen_host_api::types::ContainerSpec;
use serde::{Deserialize, Serialize};

/// Volumes one container may mount. Compose files rarely list more than a
/// handful; each is a mount the engine sets up and a volume it may create,
/// so a script listing hundreds is a mistake or an attack on the engine.
pub const MAX_VOLUMES_PER_CONTAINER: usize = 16;

/// Volumes a project may declare. Each is kept on the engine's disk (or a
/// cluster's storage) between events; a project that needs more than this
/// many separate stores should share one.
pub const MAX_PROJECT_VOLUMES: usize = 16;

/// A project volume's size when its declaration gives none: enough for a
/// test database or a package cache, and what Kubernetes claims are
/// commonly given.
pub const DEFAULT_PROJECT_VOLUME_BYTES: u64 = 1024 * 1024 * 1024;

/// One entry of a container's `volumes`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// What is mounted.
    pub source: VolumeSource,
    /// Where, inside the container.
    pub path: String,
    /// Whether the container may only read it.
    pub read_only: bool,
}

/// What a volume entry mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A volume of the container's own, fresh when it starts.
    Anonymous,
    /// A volume by name: the project's when the project declares it, the
    /// event's otherwise.
    Named(String),
    /// A directory of the host.
    Host(PathBuf),
}

impl VolumeMount {
    /// Parses `"/path"`, `"name:/path"` or `"/host/path:/path"`, each
    /// optionally followed by `:ro` or `:rw`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shown = Shown(text);
        let parts: Vec<&str> = text.split(':').collect();
        let (source, path, mode) = match parts.as_slice() {
            [path] => (None, *path, None),
            // An anonymous volume with its mode, as Compose reads it.
            [path, mode @ ("ro" | "rw")] => (None, *path, Some(*mode)),
            [source, path] => (Some(*source), *path, None),
            [source, path, mode] => (Some(*source), *path, Some(*mode)),
            _ => {
                return Err(format!(
                    "volume {shown} must be \"/path\", \"name:/path\" or \"/host/path:/path\", with \":ro\" after it for read-only"
                ));
            }
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                return Err(format!(
                    "volume {shown}: mode {} must be \"ro\" or \"rw\"",
                    Shown(other)
                ));
            }
        };
        container_path(path).map_err(|problem| {
            format!(
                "volume {shown}: the path in the container {} {problem}",
                Shown(path)
            )
        })?;
        let source = match source {
            None => VolumeSource::Anonymous,
            Some(host) if host.starts_with('/') => {
                host_path(host).map_err(|problem| {
                    format!("volume {shown}: the host path {} {problem}", Shown(host))
                })?;
                VolumeSource::Host(PathBuf::from(host.trim_end_matches('/')))
            }
            Some(name) => {
                if !is_volume_name(name) {
                    return Err(format!(
                        "volume {shown}: the name {} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be at most {MAX_VOLUME_NAME} characters (a host path starts with '/')",
                        Shown(name)
                    ));
                }
                VolumeSource::Named(name.to_string())
            }
        };
        Ok(Self {
            source,
            path: path.to_string(),
            read_only,
        })
    }

    /// The container's volumes; the job's rules refused those that do not
    /// parse before any executor sees them.
    pub fn all(container: &ContainerSpec) -> Vec<Self> {
        container
            .volumes
            .iter()
            .filter_map(|volume| Self::parse(volume).ok())
            .collect()
    }
}

/// A script's text in an error: quoted, and cut after
/// [`SHOWN_CHARS`] characters, so that an error about a megabyte of input
/// is not a megabyte itself.
pub struct Shown<'a>(pub &'a str);

/// What an error shows of a script's text: more than any honest path.
const SHOWN_CHARS: usize = 256;

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len()),
        }
    }
}

/// The longest volume name: executors put it in engine volume and claim
/// names beside the event's or project's id, and Kubernetes names stop at
/// 253 characters, labels at 63.
pub const MAX_VOLUME_NAME: usize = 40;

/// `^[a-z][a-z\d-]*[a-z\d]$`, at most [`MAX_VOLUME_NAME`] characters: a
/// name every engine and Kubernetes accepts inside their own names.
pub fn is_volume_name(name: &str) -> bool {
    name.len() <= MAX_VOLUME_NAME && crate::project::is_dns_label(name)
}

/// A path inside a container: absolute, not `/`, no `.` or `..`, no control
/// characters, none of `:` and `,` (which mount syntaxes split on).
fn container_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path");
    }
    if path.split('/').any(|part| part == ".." || part == ".") {
        return Err("must not contain '.' or '..'");
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("must not be the root directory");
    }
    if path.chars().any(|c| c.is_control() || c == ',') {
        return Err("must not contain control characters or ','");
    }
    Ok(())
}

/// A host path: as a container path, and written the one way (no `//`), so
/// that comparing it with the allowed paths compares what it names.
fn host_path(path: &str) -> Result<(), &'static str> {
    container_path(path)?;
    if path.trim_end_matches('/').contains("//") {
        return Err("must not contain '//'");
    }
    Ok(())
}

/// A volume the project declares (`spec.workerTemplate.volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectVolume {
    /// Its name, as containers mount it.
    pub name: String,
    /// Its size: what it may hold, counted against the project's quota.
    pub size_bytes: u64,
}

/// What an executor and the job's rules know of an event's volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventVolumes {
    /// The project's volumes, by name, with their sizes in bytes.
    pub project: BTreeMap<String, u64>,
    /// What the project's volumes may declare in all (the `volumeSize`
    /// limit, under the server's ceiling).
    pub quota_bytes: u64,
    /// Which host paths containers may bind.
    pub host_paths: HostPaths,
}

impl EventVolumes {
    /// The size the project's volumes declare in all.
    pub fn declared_bytes(&self) -> u64 {
        self.project
            .values()
            .fold(0, |sum, size| sum.saturating_add(*size))
    }
}

/// Which host directories an event's containers may bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPaths {
    /// None: the server forbids host paths whatever projects allow.
    Forbidden,
    /// Those under these (the project's `jobPolicies.allowedHostPaths`;
    /// none when it lists none).
    Under(Vec<PathBuf>),
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths::Under(Vec::new())
    }
}

impl HostPaths {
    /// Whether `path` may be bound, compared by whole components (`/data`
    /// allows `/data/x`, not `/database`). This is the written path; an
    /// executor that binds it on its own host also checks where it leads
    /// ([`HostPaths::allows_resolved`]).
    pub fn allows(&self, path: &Path) -> bool {
        match self {
            HostPaths::Forbidden => false,
            HostPaths::Under(allowed) => allowed.iter().any(|root| path.starts_with(root)),
        }
    }

    /// Whether `path`, with its symbolic links followed on this host, is
    /// under an allowed path with its own links followed: a link inside an
    /// allowed directory that points out of it is refused. `None` when the
    /// path does not exist.
    pub fn allows_resolved(&self, path: &Path) -> Option<bool> {
        let HostPaths::Under(allowed) = self else {
            return Some(false);
        };
        let real = std::fs::canonicalize(path).ok()?;
        Some(
            allowed
                .iter()
                .any(|root| std::fs::canonicalize(root).is_ok_and(|root| real.starts_with(root))),
        )
    }
}

/// Checks a host path a project lists in `allowedHostPaths`: absolute, one
/// spelling, and not `/` (which would allow the whole host).
pub fn validate_allowed_host_path(path: &str) -> Result<PathBuf, &'static str> {
    host_path(path)?;
    Ok(PathBuf::from(path.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_parse_with_their_modes() {
        let anonymous = VolumeMount::parse("/var/lib/mysql").unwrap();
        assert_eq!(anonymous.source, VolumeSource::Anonymous);
        assert_eq!(anonymous.path, "/var/lib/mysql");
        assert!(!anonymous.read_only);
        let anonymous = VolumeMount::parse("/var/lib/mysql:ro").unwrap();
        assert_eq!(anonymous.source, VolumeSource::Anonymous);
        assert!(anonymous.read_only);
        let named = VolumeMount::parse("datavolume:/var/lib/mysql:ro").unwrap();
        assert_eq!(named.source, VolumeSource::Named("datavolume".into()));
        assert!(named.read_only);
        let host = VolumeMount::parse("/opt/data/:/var/lib/mysql:rw").unwrap();
        assert_eq!(host.source, VolumeSource::Host("/opt/data".into()));
        assert!(!host.read_only);
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, expected) in [
            ("data", "must be an absolute path"),
            ("a:b:c:d", "must be \"/path\""),
            ("data:/x:rx", "mode \"rx\""),
            ("Data:/x", "the name \"Data\""),
            ("data:/", "must not be the root directory"),
            ("/opt/../etc:/x", "must not contain '.' or '..'"),
            ("/opt//data:/x", "must not contain '//'"),
            ("data:/x/./y", "must not contain '.' or '..'"),
        ] {
            let error = VolumeMount::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let long = format!("{}:/x", "a".repeat(MAX_VOLUME_NAME + 1));
        assert!(VolumeMount::parse(&long).is_err());
    }

    #[test]
    fn host_paths_are_allowed_by_whole_components() {
        let paths = HostPaths::Under(vec!["/data".into()]);
        assert!(paths.allows(Path::new("/data")));
        assert!(paths.allows(Path::new("/data/cache")));
        assert!(!paths.allows(Path::new("/database")));
        assert!(!HostPaths::Forbidden.allows(Path::new("/data")));
        assert!(!HostPaths::default().allows(Path::new("/data")));
        assert!(validate_allowed_host_path("/").is_err());
        assert!(validate_allowed_host_path("relative").is_err());
    }

    #[test]
    fn a_link_out_of_an_allowed_directory_is_refused_where_it_leads() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), allowed.path().join("escape")).unwrap();
        std::fs::create_dir(allowed.path().join("inside")).unwrap();
        let paths = HostPaths::Under(vec![allowed.path().to_path_buf()]);
        assert!(paths.allows(&allowed.path().join("escape")));
        assert_eq!(
            paths.allows_resolved(&allowed.path().join("escape")),
            Some(false)
        );
        assert_eq!(
            paths.allows_resolved(&allowed.path().join("inside")),
            Some(true)
        );
        assert_eq!(paths.allows_resolved(&allowed.path().join("missing")), None);
    }
}
