//! Which saved trees are kept as what: an event's artifacts by name, a
//! project's caches by key. The catalog is a database (the server's store);
//! the trees themselves are objects ([`crate::Objects`]).

use async_trait::async_trait;
use serde::Serialize;

use crate::{Digest, Objects};

/// Entries one project may keep in its caches, however small: each is a
/// row, and a lookup by restore key reads the project's keys.
pub const MAX_CACHE_ENTRIES: u64 = 10_000;

/// Why the catalog refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database failed.
    #[error("the artifact and cache catalog failed: {0}")]
    Database(String),
    /// An artifact of that name exists in the event already.
    #[error(
        "artifact {name:?} was saved already in this event (by job {job:?}); artifact names are unique within an event"
    )]
    ArtifactExists {
        /// The name.
        name: String,
        /// The job that saved it.
        job: String,
    },
    /// Keeping the artifact would take the event's artifacts past their
    /// quota.
    #[error(
        "artifact {name:?} ({bytes} bytes) would take the event's artifacts to {total} bytes, over the project's artifactSize limit of {quota} bytes"
    )]
    ArtifactQuota {
        /// The name.
        name: String,
        /// Its size.
        bytes: u64,
        /// The event's artifacts with it.
        total: u64,
        /// The limit.
        quota: u64,
    },
    /// The project is gone (deleted while the job ran).
    #[error("project {0:?} does not exist")]
    NoProject(String),
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The catalog could not list what it keeps.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The objects could not be listed or deleted.
    #[error(transparent)]
    Objects(#[from] crate::ObjectsError),
}

/// An artifact kept with its event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptArtifact {
    /// The event's id.
    pub event_id: String,
    /// The project's id.
    pub project_id: String,
    /// Its name.
    pub name: String,
    /// The job that saved it.
    pub job: String,
    /// The path in the job's container it was saved from (without a
    /// pattern): where it is restored unless a job says otherwise.
    pub path: String,
    /// Its tree.
    pub tree: Digest,
    /// The bytes its files hold.
    pub bytes: u64,
    /// How many files it holds.
    pub files: u64,
    /// When it was saved, in microseconds since the Unix epoch.
    pub created: i64,
}

/// A cache entry kept for a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptCache {
    /// The project's id.
    pub project_id: String,
    /// Its key.
    pub key: String,
    /// Its tree.
    pub tree: Digest,
    /// The bytes its files hold.
    pub bytes: u64,
    /// How many files it holds.
    pub files: u64,
    /// When it was saved, in microseconds since the Unix epoch.
    pub created: i64,
    /// When it was last restored (or saved).
    pub last_used: i64,
}

/// How keeping a cache entry went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKept {
    /// Kept; these keys were evicted (least recently used first) to make
    /// room under the project's quota.
    Kept {
        /// The keys evicted.
        evicted: Vec<String>,
    },
    /// Another job kept an entry under the key first; entries are never
    /// replaced (a key names one content).
    AlreadyKept,
}

/// Where artifacts and caches are recorded.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Artifact `name` of event `event_id`.
    async fn artifact(
        &self,
        event_id: &str,
        name: &str,
    ) -> Result<Option<KeptArtifact>, CatalogError>;

    /// Every artifact of event `event_id`, by name.
    async fn artifacts(&self, event_id: &str) -> Result<Vec<KeptArtifact>, CatalogError>;

    /// Keeps `artifact`, unless its name is taken in the event or the
    /// event's artifacts would hold more than `quota` bytes with it.
    async fn keep_artifact(&self, artifact: &KeptArtifact, quota: u64) -> Result<(), CatalogError>;

    /// The entry of project `project_id` to restore for `key`: its own, or
    /// else the newest whose key starts with the first of `restore_keys`
    /// that has one. Its `last_used` becomes now.
    async fn find_cache(
        &self,
        project_id: &str,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<KeptCache>, CatalogError>;

    /// Keeps `cache`, evicting the project's least recently used entries
    /// until its entries hold at most `quota` bytes and number at most
    /// [`MAX_CACHE_ENTRIES`].
    async fn keep_cache(&self, cache: &KeptCache, quota: u64) -> Result<CacheKept, CatalogError>;

    /// Forgets cache entry `key` of project `project_id` (found damaged).
    async fn forget_cache(&self, project_id: &str, key: &str) -> Result<(), CatalogError>;

    /// The trees every artifact and cache entry names: what a sweep keeps.
    async fn kept_trees(&self) -> Result<Vec<Digest>, CatalogError>;
}

/// Now, in microseconds since the Unix epoch: the clock of the catalog's
/// `created` and `last_used`, as whoever keeps a tree stamps it.
pub fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What jobs keep their artifacts and caches in: the objects and the
/// catalog that names them.
#[derive(Clone)]
pub struct JobStorage {
    /// The trees' objects.
    pub objects: Objects,
    /// Which trees are which artifacts and caches.
    pub catalog: std::sync::Arc<dyn Catalog>,
    /// Held (shared) by each save from its first object to its entry in the
    /// catalog, and (exclusively) by a sweep of unreferenced objects: a
    /// save may find an object it needs already stored, unreferenced and
    /// old, which a sweep at that moment would delete.
    pub saving: std::sync::Arc<tokio::sync::RwLock<()>>,
    /// Signs and checks the tokens of jobs' helpers (on Kubernetes) and
    /// their receipts.
    pub tokens: crate::JobTokens,
}

/// How long an object stays unswept after it was written, whether or not
/// anything names it yet. A Kubernetes job's helper stores a tree when the
/// job's primary container has ended, and the executor names it in the
/// catalog only once it has seen the pod end: an hour is far more than
/// that takes, and an object written but never named waits one more sweep.
const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

impl JobStorage {
    /// Deletes the objects no artifact or cache names, no save running
    /// meanwhile (see [`JobStorage::saving`]).
    pub async fn sweep(&self) -> Result<crate::Sweep, SweepError> {
        let _no_saves = self.saving.write().await;
        let written_before = std::time::SystemTime::now() - SWEEP_GRACE;
        let kept = self.catalog.kept_trees().await?;
        Ok(self.objects.sweep(kept, written_before).await?)
    }

    /// Objects named by `catalog`; helpers' tokens signed by `tokens`.
    pub fn new(
        objects: Objects,
        catalog: std::sync::Arc<dyn Catalog>,
        tokens: crate::JobTokens,
    ) -> Self {
        Self {
            objects,
            catalog,
            saving: std::sync::Arc::default(),
            tokens,
        }
    }
}

/// Why a script could not read a file of an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactReadError {
    /// No artifact of that name in the event.
    #[error("artifact \"{name}\" is not saved in this event (yet)")]
    NotSaved {
        /// The artifact.
        name: String,
    },
    /// The artifact has no such file.
    #[error("artifact \"{name}\" has no file {path:?} (saved from {saved_from})")]
    NoFile {
        /// The artifact.
        name: String,
        /// The file asked for.
        path: String,
        /// Where the artifact was saved from.
        saved_from: String,
    },
    /// The file is larger than a script reads.
    #[error(
        "file {path:?} of artifact \"{name}\" holds {size} bytes; a script reads at most {max} (download it: mizzen event artifacts get)"
    )]
    TooLarge {
        /// The artifact.
        name: String,
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The most a script reads.
        max: u64,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The objects could not be read (or were found damaged).
    #[error("artifact \"{name}\": {source}")]
    Objects {
        /// The artifact.
        name: String,
        /// Why.
        source: crate::ObjectsError,
    },
}

impl From<KeptArtifact> for mizzen_host_api::types::ArtifactInfo {
    fn from(a: KeptArtifact) -> Self {
        Self {
            name: a.name,
            job: a.job,
            path: a.path,
            size_bytes: a.bytes,
            files: a.files,
        }
    }
}

impl ArtifactReadError {
    /// Whether the artifact or its file is not there (rather than too
    /// large, or unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotSaved { .. } | Self::NoFile { .. })
    }
}

impl JobStorage {
    /// Event `event_id`'s artifacts, as its script lists them.
    pub async fn artifact_infos(
        &self,
        event_id: &str,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, CatalogError> {
        let kept = self.catalog.artifacts(event_id).await?;
        Ok(kept.into_iter().map(Into::into).collect())
    }

    /// File `path` of event `event_id`'s artifact `name`, checked, if it
    /// holds at most `max_bytes`: what a script reads of its jobs' output.
    pub async fn read_artifact_file(
        &self,
        event_id: &str,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ArtifactReadError> {
        let artifact = self
            .catalog
            .artifact(event_id, name)
            .await?
            .ok_or_else(|| ArtifactReadError::NotSaved { name: name.into() })?;
        let objects_error = |source| ArtifactReadError::Objects {
            name: name.into(),
            source,
        };
        let manifest = self
            .objects
            .manifest(&artifact.tree)
            .await
            .map_err(objects_error)?;
        let path = path.trim_matches('/');
        let no_file = || ArtifactReadError::NoFile {
            name: name.into(),
            path: path.into(),
            saved_from: artifact.path.clone(),
        };
        let entry = manifest.entry(path).ok_or_else(no_file)?;
        let Some(digest) = entry.digest else {
            return Err(no_file());
        };
        if entry.size > max_bytes {
            return Err(ArtifactReadError::TooLarge {
                name: name.into(),
                path: path.into(),
                size: entry.size,
                max: max_bytes,
            });
        }
        let content = self
            .objects
            .read(&digest, max_bytes)
            .await
            .map_err(objects_error)?;
        Ok(content.to_vec())
    }
}

impl std::fmt::Debug for JobStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStorage")
            .field("objects", &self.objects)
            .finish_non_exhaustive()
    }
}
