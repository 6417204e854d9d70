//! What a job keeps after it ends: its artifacts (`job.artifacts`, kept with
//! the event for later jobs and for people) and its caches (`job.caches`,
//! kept for the project's later events). This module owns their rules and
//! the paths they name; the executors save and restore them, and
//! `mizzen-objects` stores them.

use mizzen_host_api::types::JobSpec;
use serde::{Deserialize, Serialize};

use crate::limits::WorkerLimits;

use mizzen_host_api::{ErrorCode, HostError};

/// Artifacts one job may save, and restore: a build's packages, reports
/// and logs are a handful; each is a tree saved or restored on its own.
pub const MAX_JOB_ARTIFACTS: usize = 16;

/// Caches one job may declare: a build caches its package manager's
/// directory and perhaps a compiler's; each is restored before it starts.
pub const MAX_JOB_CACHES: usize = 8;

/// The longest artifact name: as long as a job's name may be.
pub const MAX_ARTIFACT_NAME: usize = 63;

/// The longest cache key or restore key: GitHub's limit, so that keys made
/// for GitHub's cache fit.
pub const MAX_CACHE_KEY: usize = 512;

/// Restore keys one cache may try: GitHub's limit.
pub const MAX_RESTORE_KEYS: usize = 10;

/// What the event's artifacts and the project's caches may hold: the
/// project's `artifactSize` and `cacheSize` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptQuotas {
    /// Bytes the event's artifacts may hold in all.
    pub artifact_bytes: u64,
    /// Bytes the project's caches may hold in all.
    pub cache_bytes: u64,
}

impl KeptQuotas {
    /// The quotas among a worker's limits.
    pub fn of(limits: &WorkerLimits) -> Self {
        Self {
            artifact_bytes: limits.artifact_bytes,
            cache_bytes: limits.cache_bytes,
        }
    }
}

impl Default for KeptQuotas {
    fn default() -> Self {
        Self::of(&WorkerLimits::default())
    }
}

/// A path in a job's primary container that an artifact or cache names: a
/// directory or file (`base`), and under it, for an artifact, only what a
/// pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptPath {
    /// The absolute path of the directory or file saved or restored, without
    /// a trailing `/`.
    pub base: String,
    /// The pattern its entries must match (`*.xml`, `**/*.json`), relative
    /// to `base`.
    pub pattern: Option<String>,
}

impl KeptPath {
    /// Reads `path` (absolute, or relative to `working_directory`); the
    /// first component holding `*`, `?` or `[` starts the pattern.
    pub fn parse(path: &str, working_directory: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Err("the path is empty".into());
        }
        if path.chars().any(char::is_control) {
            return Err(format!("path {path:?} holds control characters"));
        }
        let full = if path.starts_with('/') {
            path.to_string()
        } else if working_directory.starts_with('/') {
            format!("{}/{path}", working_directory.trim_end_matches('/'))
        } else {
            return Err(format!(
                "path {path:?} is relative, and the primary container has no workingDirectory to resolve it against; make it absolute"
            ));
        };
        let mut base = Vec::new();
        let mut pattern = Vec::new();
        for part in full.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(format!("path {path:?} must not contain '..'"));
            }
            if pattern.is_empty() && !part.contains(['*', '?', '[']) {
                base.push(part);
            } else {
                pattern.push(part);
            }
        }
        if base.is_empty() {
            return Err(format!(
                "path {path:?} names the root directory; name the directory to keep"
            ));
        }
        let pattern = (!pattern.is_empty()).then(|| pattern.join("/"));
        if let Some(pattern) = &pattern {
            glob::Pattern::new(pattern)
                .map_err(|e| format!("path {path:?}: the pattern {pattern:?} is not valid: {e}"))?;
        }
        Ok(Self {
            base: format!("/{}", base.join("/")),
            pattern,
        })
    }
}

/// `1 file`, `2 files`: how messages count a tree's files.
pub fn files(count: u64) -> String {
    if count == 1 {
        "1 file".to_string()
    } else {
        format!("{count} files")
    }
}

fn is_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ARTIFACT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn is_cache_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_CACHE_KEY && !key.chars().any(char::is_control)
}

/// Checks a job's `artifacts` and `caches`: counts, names, keys and paths,
/// each error naming the job and the entry.
pub fn validate(job: &str, spec: &JobSpec) -> Result<(), HostError> {
    let artifacts = &spec.artifacts;
    let working_directory = &spec.primary_container.working_directory;
    if artifacts.save.len() > MAX_JOB_ARTIFACTS || artifacts.restore.len() > MAX_JOB_ARTIFACTS {
        return Err(HostError::new(
            ErrorCode::LimitExceeded,
            format!(
                "job \"{job}\" saves {} and restores {} artifacts; the limit is {MAX_JOB_ARTIFACTS} of each",
                artifacts.save.len(),
                artifacts.restore.len()
            ),
        ));
    }
    if spec.caches.len() > MAX_JOB_CACHES {
        return Err(HostError::new(
            ErrorCode::LimitExceeded,
            format!(
                "job \"{job}\" declares {} caches; the limit is {MAX_JOB_CACHES}",
                spec.caches.len()
            ),
        ));
    }
    let name_rule = format!(
        "must be letters, digits, '-', '_' and '.', not starting with '.', and at most {MAX_ARTIFACT_NAME} characters"
    );
    let mut saved = std::collections::BTreeSet::new();
    for (i, artifact) in artifacts.save.iter().enumerate() {
        let place = format!("job \"{job}\": artifacts.save[{i}]");
        if !is_artifact_name(&artifact.name) {
            return Err(HostError::invalid(format!(
                "{place}: name {:?} {name_rule}",
                shown(&artifact.name)
            )));
        }
        if !saved.insert(artifact.name.as_str()) {
            return Err(HostError::invalid(format!(
                "{place}: artifact \"{}\" is saved twice by this job",
                artifact.name
            )));
        }
        KeptPath::parse(&artifact.path, working_directory)
            .map_err(|why| HostError::invalid(format!("{place}: {why}")))?;
    }
    for (i, artifact) in artifacts.restore.iter().enumerate() {
        let place = format!("job \"{job}\": artifacts.restore[{i}]");
        if !is_artifact_name(&artifact.name) {
            return Err(HostError::invalid(format!(
                "{place}: name {:?} {name_rule}",
                shown(&artifact.name)
            )));
        }
        if !artifact.path.is_empty() {
            let path = KeptPath::parse(&artifact.path, working_directory)
                .map_err(|why| HostError::invalid(format!("{place}: {why}")))?;
            if path.pattern.is_some() {
                return Err(HostError::invalid(format!(
                    "{place}: path {:?} is where the artifact goes, and cannot be a pattern",
                    artifact.path
                )));
            }
        }
    }
    let mut paths = std::collections::BTreeSet::new();
    for (i, cache) in spec.caches.iter().enumerate() {
        let place = format!("job \"{job}\": caches[{i}]");
        if !is_cache_key(&cache.key) {
            return Err(HostError::invalid(format!(
                "{place}: key {:?} must be 1 to {MAX_CACHE_KEY} bytes without control characters",
                shown(&cache.key)
            )));
        }
        if cache.restore_keys.len() > MAX_RESTORE_KEYS {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{place}: {} restore keys; the limit is {MAX_RESTORE_KEYS}",
                    cache.restore_keys.len()
                ),
            ));
        }
        if let Some(bad) = cache.restore_keys.iter().find(|k| !is_cache_key(k)) {
            return Err(HostError::invalid(format!(
                "{place}: restore key {:?} must be 1 to {MAX_CACHE_KEY} bytes without control characters",
                shown(bad)
            )));
        }
        let path = KeptPath::parse(&cache.path, working_directory)
            .map_err(|why| HostError::invalid(format!("{place}: {why}")))?;
        if path.pattern.is_some() {
            return Err(HostError::invalid(format!(
                "{place}: path {:?} must be a directory, not a pattern",
                cache.path
            )));
        }
        if !paths.insert(path.base.clone()) {
            return Err(HostError::invalid(format!(
                "{place}: {} is cached twice by this job",
                path.base
            )));
        }
    }
    Ok(())
}

/// At most 80 characters of what a tenant sent, for an error.
fn shown(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_working_directory_and_split_at_a_pattern() {
        let parse = |path: &str, wd: &str| KeptPath::parse(path, wd);
        assert_eq!(
            parse("dist/", "/src"),
            Ok(KeptPath {
                base: "/src/dist".into(),
                pattern: None
            })
        );
        assert_eq!(
            parse("/src/reports/**/*.xml", ""),
            Ok(KeptPath {
                base: "/src/reports".into(),
                pattern: Some("**/*.xml".into())
            })
        );
        assert!(
            parse("dist", "")
                .unwrap_err()
                .contains("no workingDirectory")
        );
        assert!(parse("/src/../etc", "").unwrap_err().contains("'..'"));
        assert!(parse("/*.xml", "").unwrap_err().contains("root directory"));
        assert!(parse("/src/[", "").unwrap_err().contains("not valid"));
    }
}
