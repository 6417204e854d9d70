//! A job's artifacts and caches on Kubernetes. The executor cannot reach
//! into a Pod's containers, so each path the job keeps is a volume of the
//! Pod (an `emptyDir`), and Mizzen's own image does the rest beside the
//! job: an init container (`mizzen job-files restore`) fills the volumes
//! before the primary container starts, and a native sidecar (`mizzen
//! job-files save`), which Kubernetes stops once the primary has exited,
//! sends them to the server. Both show the server a token for this job
//! alone (in the job's Secret, mounted only into them: never in the Pod's
//! spec, an environment or a log), which opens the entries the job's spec
//! declares and nothing else. The sidecar hands the server's signed
//! receipts on in its termination message; the executor, which saw how the
//! primary container ended, keeps what applies (artifacts on success, or
//! marked `onFailure`; caches on success), so neither the helper nor the
//! job's own containers decide what is kept.

use std::sync::Arc;

use mizzen_host_api::types::JobSpec;
use mizzen_objects::{JobClaim, JobStorage, KeptArtifact, KeptCache};
use mizzen_runtime::executor::{EventContext, ExecutorError, JobOutput, JobRequest};
use mizzen_runtime::kept::KeptPath;
use mizzen_runtime::limits::LimitValue;

/// The init container that restores.
pub const RESTORE_CONTAINER: &str = "mizzen-restore";
/// The native sidecar that saves.
pub const SAVE_CONTAINER: &str = "mizzen-save";
/// The Secret key of the job's token (environment keys are
/// `<container>.<variable>`, always with a dot: this one cannot collide).
pub(crate) const TOKEN_KEY: &str = "mizzen-job-token";
/// Where the helpers find the token.
pub(crate) const TOKEN_DIR: &str = "/var/run/mizzen/job";
/// Where the helpers mount the kept volumes: `/mizzen/kept/<n>`.
pub(crate) const KEPT_ROOT: &str = "/mizzen/kept";

/// How long the saving sidecar may take once the primary container has
/// exited: the Pod's termination grace period. Ten minutes sends 10 GiB
/// (the default quota) at 17 MB/s, a slow link inside a cluster.
pub const SAVE_GRACE_SECONDS: u64 = 600;

/// How long a job's token outlives the job's timeout: the Pod may wait to
/// be scheduled and for its images before its deadline starts counting,
/// and the sidecar saves within its grace period after.
const TOKEN_MARGIN_SECONDS: u64 = 1800;

/// The image of Mizzen's own helpers by default: this version's.
pub const DEFAULT_JOB_FILES_IMAGE: &str =
    concat!("ghcr.io/mizzen-dev/mizzen:", env!("CARGO_PKG_VERSION"));

/// How jobs' artifacts and caches are kept: where their helpers reach the
/// server, the image they run, and the storage the server keeps them in.
#[derive(Debug, Clone)]
pub struct JobFilesConfig {
    /// The server's URL as the job's Pods reach it.
    pub server_url: String,
    /// Mizzen's image, for the helpers.
    pub image: String,
    /// The server's storage of artifacts and caches.
    pub storage: JobStorage,
}

/// A job's kept paths as its Pod holds them.
#[derive(Debug, Clone)]
pub struct PodFiles {
    /// Each path of the primary container that is kept, a volume each.
    pub paths: Vec<String>,
    /// The job's restores (their index among `artifacts.restore`, then
    /// `caches`) and the volume (an index into `paths`) each fills.
    pub restores: Vec<(usize, usize)>,
    /// The job's saves (`artifacts.save`, then `caches`) and the volume
    /// each is sent from.
    pub saves: Vec<(usize, usize)>,
    /// The job's token.
    pub token: String,
    /// The server's URL as the Pod reaches it.
    pub server_url: String,
    /// Mizzen's image.
    pub image: String,
}

impl PodFiles {
    /// The helpers' arguments for `entries`: `INDEX=/mizzen/kept/N` each.
    pub(crate) fn entries(entries: &[(usize, usize)]) -> Vec<String> {
        entries
            .iter()
            .map(|(index, volume)| format!("{index}={KEPT_ROOT}/{volume}"))
            .collect()
    }
}

fn refused(job: &str, why: String) -> ExecutorError {
    ExecutorError::Unsupported(format!("job \"{job}\": {why}"))
}

/// The Pod's share of the job's artifacts and caches: each path a volume,
/// the token made. An artifact restored where it was saved from is looked
/// up here, so that one not saved (yet) fails the job before its Pod is
/// made.
pub(crate) async fn plan(
    files: Option<&JobFilesConfig>,
    job: &JobRequest,
) -> Result<Option<PodFiles>, ExecutorError> {
    let spec = &job.spec;
    if spec.artifacts.is_empty() && spec.caches.is_empty() {
        return Ok(None);
    }
    let Some(files) = files else {
        return Err(refused(
            &job.name,
            "it declares artifacts or caches, which on Kubernetes its Pod's helpers send to and fetch from the server: start the server with --kubernetes-job-files-url (the URL the Pods reach it at); mizzen run --executor kubernetes has no server for them to reach".into(),
        ));
    };
    let working_directory = &spec.primary_container.working_directory;
    let base = |path: &str| {
        KeptPath::parse(path, working_directory)
            .map(|p| p.base)
            .map_err(|why| refused(&job.name, why))
    };
    let mut paths: Vec<String> = Vec::new();
    let mut volume = |path: String| -> Result<usize, ExecutorError> {
        if path == "/" {
            return Err(refused(
                &job.name,
                "on Kubernetes each kept path is a volume of its own, and \"/\" cannot be one"
                    .into(),
            ));
        }
        if let Some(index) = paths.iter().position(|p| *p == path) {
            return Ok(index);
        }
        if let Some(other) = paths
            .iter()
            .find(|p| path.starts_with(&format!("{p}/")) || p.starts_with(&format!("{path}/")))
        {
            return Err(refused(
                &job.name,
                format!(
                    "kept paths {other} and {path} are nested: on Kubernetes each is a volume of its own"
                ),
            ));
        }
        paths.push(path);
        Ok(paths.len() - 1)
    };
    let mut restores = Vec::new();
    for (index, artifact) in spec.artifacts.restore.iter().enumerate() {
        let target = if artifact.path.is_empty() {
            let kept = files
                .storage
                .catalog
                .artifact(&job.event.event_id, &artifact.name)
                .await
                .map_err(|e| ExecutorError::Unavailable(e.to_string()))?
                .ok_or_else(|| {
                    refused(
                        &job.name,
                        format!(
                            "artifact \"{}\" is not there to restore: the job that saves it has not ended, or ended without saving it (a failed job saves only the artifacts marked onFailure)",
                            artifact.name
                        ),
                    )
                })?;
            kept.path
        } else {
            base(&artifact.path)?
        };
        restores.push((index, volume(target)?));
    }
    let mut saves = Vec::new();
    for (index, artifact) in spec.artifacts.save.iter().enumerate() {
        saves.push((index, volume(base(&artifact.path)?)?));
    }
    for (index, cache) in spec.caches.iter().enumerate() {
        let at = volume(base(&cache.path)?)?;
        restores.push((spec.artifacts.restore.len() + index, at));
        saves.push((spec.artifacts.save.len() + index, at));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lifetime = spec.timeout_seconds.ceil() as u64 + SAVE_GRACE_SECONDS + TOKEN_MARGIN_SECONDS;
    let token = files.storage.tokens.issue(&JobClaim {
        event_id: job.event.event_id.clone(),
        project_id: job.event.project_id.clone(),
        job: job.name.clone(),
        expires: i64::try_from(now + lifetime).unwrap_or(i64::MAX),
        artifact_bytes: job.event.kept.artifact_bytes,
        cache_bytes: job.event.kept.cache_bytes,
    });
    Ok(Some(PodFiles {
        paths,
        restores,
        saves,
        token,
        server_url: files.server_url.clone(),
        image: files.image.clone(),
    }))
}

/// What the executor keeps once the job's Pod has ended.
pub(crate) struct KeptCommit {
    pub storage: JobStorage,
    pub event: EventContext,
    pub job: String,
    pub spec: JobSpec,
    pub output: Arc<dyn JobOutput>,
}

impl KeptCommit {
    fn say(&self, line: &str) {
        self.output.line(&self.job, &format!("[mizzen] {line}"));
    }

    /// Keeps what the saving sidecar sent, by its receipts, as the job
    /// ended (`succeeded`); `saver` is how the sidecar ended (its exit code
    /// and termination message), `None` if it did not within its grace
    /// period. An error says why the job fails, if it succeeded.
    pub(crate) async fn commit(
        &self,
        succeeded: bool,
        saver: Option<(i32, String)>,
    ) -> Result<(), String> {
        let Some((code, message)) = saver else {
            return Err(format!(
                "the job's artifacts and caches were not saved: {SAVE_CONTAINER} did not finish within {SAVE_GRACE_SECONDS}s of the job's end"
            ));
        };
        if code != 0 {
            return Err(format!(
                "saving the job's artifacts and caches failed ({SAVE_CONTAINER} exited with code {code}): {}",
                message.trim().trim_start_matches("error: ")
            ));
        }
        let saved_artifacts = self.spec.artifacts.save.len();
        for line in message.lines().filter(|l| !l.trim().is_empty()) {
            let receipt = self
                .storage
                .tokens
                .check_receipt(&self.event.event_id, &self.job, line)
                .map_err(|e| format!("{SAVE_CONTAINER}'s termination message: {e}"))?;
            let now = mizzen_objects::micros_now();
            if let Some(artifact) = self.spec.artifacts.save.get(receipt.save) {
                if !(succeeded || artifact.on_failure) {
                    continue;
                }
                let path = KeptPath::parse(
                    &artifact.path,
                    &self.spec.primary_container.working_directory,
                )
                .map(|p| p.base)
                .unwrap_or_default();
                let kept = KeptArtifact {
                    event_id: self.event.event_id.clone(),
                    project_id: self.event.project_id.clone(),
                    name: artifact.name.clone(),
                    job: self.job.clone(),
                    path: path.clone(),
                    tree: receipt.tree,
                    bytes: receipt.bytes,
                    files: receipt.files,
                    created: now,
                };
                self.storage
                    .catalog
                    .keep_artifact(&kept, self.event.kept.artifact_bytes)
                    .await
                    .map_err(|e| format!("artifact \"{}\": {e}", artifact.name))?;
                self.say(&format!(
                    "saved artifact \"{}\" from {path} ({}, {})",
                    artifact.name,
                    mizzen_runtime::kept::files(receipt.files),
                    LimitValue::Bytes(receipt.bytes)
                ));
            } else if let Some(cache) = self.spec.caches.get(receipt.save - saved_artifacts) {
                if !succeeded {
                    continue;
                }
                let kept = KeptCache {
                    project_id: self.event.project_id.clone(),
                    key: cache.key.clone(),
                    tree: receipt.tree,
                    bytes: receipt.bytes,
                    files: receipt.files,
                    created: now,
                    last_used: now,
                };
                self.storage
                    .catalog
                    .keep_cache(&kept, self.event.kept.cache_bytes)
                    .await
                    .map_err(|e| format!("cache \"{}\": {e}", cache.key))?;
                self.say(&format!(
                    "saved cache \"{}\" ({}, {})",
                    cache.key,
                    mizzen_runtime::kept::files(receipt.files),
                    LimitValue::Bytes(receipt.bytes)
                ));
            }
        }
        Ok(())
    }
}
