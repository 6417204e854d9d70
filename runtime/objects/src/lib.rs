//! Content-addressed storage of file trees: what Mizzen keeps of a job's
//! files after the job (its artifacts, its caches).
//!
//! A tree is saved from a tar stream (what a container engine's archive API
//! gives for a path in a container) and restored as one. Each file's content
//! is an object named by its SHA-256, so a file that two trees (or two saves
//! of one cache) hold is stored once; the tree itself is a [`Manifest`]
//! (paths, modes, sizes, digests), stored as an object too and named by its
//! own digest. Whoever keeps artifacts and caches keeps that one digest.
//!
//! Objects live in an [`object_store`] store: a directory (the data
//! directory, the default) or an S3-compatible bucket (shared by replicas).
//! An object becomes visible whole or not at all (a rename on disk, a
//! completed upload on S3), and every read is checked against its name: a
//! stored object that was altered or cut is a named error, never content.
//!
//! [`JobTokens`] signs what a job's own helper shows the server to restore
//! and save that job's trees (on Kubernetes), and the receipts it hands on.

mod catalog;
mod job_token;
mod tree;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest as _, Sha256};

pub use catalog::{
    ArtifactReadError, CacheKept, Catalog, CatalogError, JobStorage, KeptArtifact, KeptCache,
    MAX_CACHE_ENTRIES, SweepError, micros_now,
};
pub use job_token::{JOB_TOKEN_KEY_BYTES, JobClaim, JobTokenError, JobTokens, Receipt};
pub use tree::{Entry, EntryKind, MAX_TREE_ENTRIES, Manifest, SaveOptions, SavedTree, TarOwner};

/// Why storing or reading objects failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The storage could not be reached or refused.
    #[error("object storage {location}: {source}")]
    Storage {
        /// Where the objects are (a directory, a bucket).
        location: String,
        /// What the storage said.
        source: Box<object_store::Error>,
    },
    /// An object the tree names is not stored (deleted, or never written).
    #[error("object {digest} is missing from {location}")]
    Missing {
        /// The object's digest.
        digest: Digest,
        /// Where the objects are.
        location: String,
    },
    /// A stored object's content is not what its name says.
    #[error(
        "object {digest} in {location} is corrupt: {why}; it was not used, and is deleted so that the next save stores it anew"
    )]
    Corrupt {
        /// The object's digest.
        digest: Digest,
        /// Where the objects are.
        location: String,
        /// What was wrong (its hash, its length).
        why: String,
    },
    /// The tree to save is larger than it may be.
    #[error("{what} holds more than {limit} bytes{why}")]
    TooLarge {
        /// What was being saved.
        what: String,
        /// The limit.
        limit: u64,
        /// Which limit it is.
        why: String,
    },
    /// The tree to save has more entries than a manifest may list.
    #[error("{what} has more than {limit} files and directories")]
    TooManyEntries {
        /// What was being saved.
        what: String,
        /// The limit ([`tree::MAX_TREE_ENTRIES`]).
        limit: usize,
    },
    /// The tar stream to save could not be read, or the one restored
    /// could not be written.
    #[error("{what}: {source}")]
    Archive {
        /// What was being saved or restored.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored manifest does not parse (it was written by another version,
    /// or altered in a way that kept its hash: never by accident).
    #[error("manifest {digest}: {why}")]
    BadManifest {
        /// Its digest.
        digest: Digest,
        /// Why it does not parse.
        why: String,
    },
    /// The storage's address is not one Mizzen can use.
    #[error("object storage {url:?}: {why}")]
    Url {
        /// The address given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A SHA-256, the name of an object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest a hasher has computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hexadecimal digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Where the object is kept: `sha256/ab/abcdef…`, two levels so that no
    /// directory of a local store holds millions of entries.
    fn location(&self) -> ObjectPath {
        let hex = self.hex();
        ObjectPath::from(format!("{OBJECTS_PREFIX}/{}/{hex}", &hex[..2]))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    /// `sha256:` and 64 hexadecimal digits, or the digits alone.
    fn from_str(text: &str) -> Result<Self, String> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes)
            .map_err(|_| format!("{text:?} is not a SHA-256 (64 hexadecimal digits)"))?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where objects are kept beneath the store's root.
const OBJECTS_PREFIX: &str = "sha256";

/// Objects kept in a directory or a bucket.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    location: Arc<str>,
    /// The directory of a local store: where a crash may have left staging
    /// files, which the store does not list.
    local_dir: Option<Arc<Path>>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("location", &self.location)
            .finish()
    }
}

/// What a sweep of unreferenced objects did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Objects kept: referenced, or too recent to judge.
    pub kept: u64,
    /// Objects deleted.
    pub deleted: u64,
    /// The bytes they held.
    pub deleted_bytes: u64,
}

impl Objects {
    /// Objects in directory `dir` (created if need be). Each is written to
    /// a staging name, synced and renamed, so that a crash leaves either the
    /// whole object or none.
    pub fn local(dir: &Path) -> Result<Self, ObjectsError> {
        let url = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| ObjectsError::Url {
            url: url.clone(),
            why: format!("cannot create the directory: {e}"),
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| ObjectsError::Url {
                url: url.clone(),
                why: e.to_string(),
            })?
            .with_fsync(true)
            .with_automatic_cleanup(false);
        Ok(Self {
            store: Arc::new(store),
            location: url.into(),
            local_dir: Some(dir.into()),
        })
    }

    /// Objects at `url`: `s3://BUCKET[/PREFIX][?KEY=VALUE&...]`, or a
    /// directory (`file:///path` or a plain path). For S3, the endpoint,
    /// region and credentials come from the usual `AWS_*` variables
    /// (`AWS_ENDPOINT` for an S3-compatible server, `AWS_ALLOW_HTTP=true`
    /// for one without TLS), and query parameters may set any of
    /// object_store's S3 options by their `aws_` names (`aws_endpoint`,
    /// `aws_region`, `aws_allow_http`...), overriding the variables.
    pub fn open(url: &str) -> Result<Self, ObjectsError> {
        let bad = |why: String| ObjectsError::Url {
            url: url.to_string(),
            why,
        };
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(Path::new(path));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            if url.contains("://") {
                return Err(bad(
                    "expected s3://BUCKET[/PREFIX], file:///PATH or a directory".into(),
                ));
            }
            return Self::local(Path::new(url));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named".into()));
        }
        // The HTTP client's TLS needs a crypto provider: ring, as the rest of
        // Mizzen's clients (a binary that installed one already keeps it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = key.parse().map_err(|_| {
                bad(format!(
                    "{key:?} is not an S3 option (aws_endpoint, aws_region, aws_allow_http...)"
                ))
            })?;
            builder = builder.with_config(key, value);
        }
        let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        // Credentials never reach messages.
        Ok(Self {
            store,
            location: format!("s3://{location}").into(),
            local_dir: None,
        })
    }

    /// Where the objects are, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn storage_error(&self, source: object_store::Error) -> ObjectsError {
        ObjectsError::Storage {
            location: self.location.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether object `digest` is stored.
    pub async fn contains(&self, digest: &Digest) -> Result<bool, ObjectsError> {
        match self.store.head(&digest.location()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.storage_error(e)),
        }
    }

    /// Whether object `digest` is stored already, whole (`size` bytes), so
    /// that a save may name it instead of storing it again; an object of
    /// another size (cut short by a crash, or altered) is stored anew over
    /// it. A local object's modification time becomes now: a sweep keeps
    /// what was written since it started, and an old object no tree named
    /// until this save would otherwise be fair game to a sweep in another
    /// process (`mizzen run`s sharing a data directory), which the
    /// in-process lock (`JobStorage::saving`) does not hold back.
    async fn reuse(&self, digest: &Digest, size: u64) -> Result<bool, ObjectsError> {
        match self.store.head(&digest.location()).await {
            Ok(meta) if meta.size == size => {}
            Ok(_) | Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.storage_error(e)),
        }
        if let Some(dir) = &self.local_dir {
            let hex = digest.hex();
            let path = dir.join(OBJECTS_PREFIX).join(&hex[..2]).join(&hex);
            let touched = tokio::task::spawn_blocking(move || {
                std::fs::File::options()
                    .write(true)
                    .open(&path)?
                    .set_modified(SystemTime::now())
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            if touched.is_err() {
                // Deleted since: store it again.
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Stores `bytes` (whose digest is `digest`) unless an object of that
    /// name is there already. Two writers of one object write the same
    /// bytes, so whichever rename or upload lands last changes nothing.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<bool, ObjectsError> {
        if self.reuse(digest, bytes.len() as u64).await? {
            return Ok(false);
        }
        self.store
            .put(&digest.location(), bytes.into())
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(true)
    }

    /// Stores a file's content from `file` (its digest `digest`, `size`
    /// bytes) in parts, for content too large to hold in memory. The object
    /// is visible once the last part is written.
    async fn put_file(
        &self,
        digest: &Digest,
        file: std::fs::File,
        size: u64,
    ) -> Result<bool, ObjectsError> {
        use tokio::io::AsyncReadExt;
        if self.reuse(digest, size).await? {
            return Ok(false);
        }
        let upload = self
            .store
            .put_multipart(&digest.location())
            .await
            .map_err(|e| self.storage_error(e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut file = tokio::fs::File::from_std(file);
        let mut left = size;
        let mut buffer = vec![0u8; 1 << 20];
        let written: Result<(), ObjectsError> = async {
            while left > 0 {
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(|source| ObjectsError::Archive {
                        what: format!("object {digest}'s staging file"),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.storage_error(e))?;
                writer.write(&buffer[..n]);
                left = left.saturating_sub(n as u64);
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // An upload left open costs storage (S3 keeps its parts until it
            // is aborted) and is never visible.
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.storage_error(e))?;
        Ok(true)
    }

    /// The whole content of object `digest`, checked against its name;
    /// at most `max` bytes (a larger object is an error, not read).
    pub async fn read(&self, digest: &Digest, max: u64) -> Result<Bytes, ObjectsError> {
        let mut stream = self.stream(digest, None).await?;
        let mut content = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (content.len() + chunk.len()) as u64 > max {
                return Err(ObjectsError::TooLarge {
                    what: format!("object {digest}"),
                    limit: max,
                    why: String::new(),
                });
            }
            content.extend_from_slice(&chunk);
        }
        Ok(content.into())
    }

    /// Object `digest`'s content as a stream of chunks, checked as it is
    /// read: once its bytes are all read, a last error instead of the end
    /// when they are not what the digest (and `size`, when known) says. A
    /// reader that forwards chunks before the end (a download) must stop
    /// at that error.
    pub async fn stream(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, ObjectsError>>, ObjectsError>
    {
        let result = match self.store.get(&digest.location()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ObjectsError::Missing {
                    digest: *digest,
                    location: self.location.to_string(),
                });
            }
            Err(e) => return Err(self.storage_error(e)),
        };
        let this = self.clone();
        let digest = *digest;
        let chunks = match result.payload {
            object_store::GetResultPayload::File(file, _) => file_chunks(file),
            object_store::GetResultPayload::Stream(stream) => stream,
        };
        let state = (chunks, Sha256::new(), 0u64, false);
        Ok(futures_util::stream::try_unfold(
            state,
            move |(mut inner, mut hasher, mut read, done)| {
                let this = this.clone();
                async move {
                    if done {
                        return Ok(None);
                    }
                    match inner.try_next().await.map_err(|e| this.storage_error(e))? {
                        Some(chunk) => {
                            hasher.update(&chunk);
                            read += chunk.len() as u64;
                            if let Some(size) = size.filter(|size| read > *size) {
                                return Err(this
                                    .corrupt(
                                        &digest,
                                        format!("it holds more than the {size} bytes listed"),
                                    )
                                    .await);
                            }
                            Ok(Some((chunk, (inner, hasher, read, false))))
                        }
                        None => {
                            if let Some(size) = size.filter(|size| read != *size) {
                                return Err(this
                                    .corrupt(
                                        &digest,
                                        format!("it holds {read} bytes, not the {size} listed"),
                                    )
                                    .await);
                            }
                            let actual = Digest::from_hasher(hasher);
                            if actual != digest {
                                return Err(this
                                    .corrupt(&digest, format!("its content hashes to {actual}"))
                                    .await);
                            }
                            Ok(Some((Bytes::new(), (inner, Sha256::new(), read, true))))
                        }
                    }
                }
            },
        )
        .try_filter(|chunk| futures_util::future::ready(!chunk.is_empty()))
        .boxed())
    }

    /// Object `digest`'s whole content, `size` bytes, checked: read at once
    /// (a local file on one blocking task), for files small enough to hold.
    async fn read_checked(&self, digest: &Digest, size: u64) -> Result<Bytes, ObjectsError> {
        let result = match self.store.get(&digest.location()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ObjectsError::Missing {
                    digest: *digest,
                    location: self.location.to_string(),
                });
            }
            Err(e) => return Err(self.storage_error(e)),
        };
        let content = match result.payload {
            object_store::GetResultPayload::File(mut file, _) => {
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut content = Vec::with_capacity(size as usize);
                    // One byte past the size tells a longer object.
                    (&mut file).take(size + 1).read_to_end(&mut content)?;
                    Ok::<_, std::io::Error>(Bytes::from(content))
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                .map_err(|e| {
                    self.storage_error(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    })
                })?
            }
            object_store::GetResultPayload::Stream(_) => {
                result.bytes().await.map_err(|e| self.storage_error(e))?
            }
        };
        if content.len() as u64 != size {
            return Err(self
                .corrupt(
                    digest,
                    format!("it holds {} bytes, not the {size} listed", content.len()),
                )
                .await);
        }
        let actual = Digest::of(&content);
        if actual != *digest {
            return Err(self
                .corrupt(digest, format!("its content hashes to {actual}"))
                .await);
        }
        Ok(content)
    }

    /// The error for object `digest` found corrupt, once the object is
    /// deleted: every tree naming it is damaged already, and a save that
    /// found it stored would name it again instead of storing it anew.
    async fn corrupt(&self, digest: &Digest, why: String) -> ObjectsError {
        if let Err(e) = self.store.delete(&digest.location()).await {
            tracing::warn!(%digest, error = %e, "a corrupt object could not be deleted");
        }
        ObjectsError::Corrupt {
            digest: *digest,
            location: self.location.to_string(),
            why,
        }
    }

    /// Tree `digest`'s manifest, checked against its name.
    pub async fn manifest(&self, digest: &Digest) -> Result<Manifest, ObjectsError> {
        let bytes = self.read(digest, tree::MAX_MANIFEST_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(|e| ObjectsError::BadManifest {
            digest: *digest,
            why: e.to_string(),
        })
    }

    /// Deletes every object that none of `manifests` (the trees still kept)
    /// names and that was written before `written_before`: an object younger
    /// than that may belong to a tree being saved right now, whose manifest
    /// is not kept yet. A manifest that cannot be read keeps nothing of its
    /// own, so its tree's objects are deleted: the tree was unreadable anyway.
    pub async fn sweep(
        &self,
        manifests: impl IntoIterator<Item = Digest>,
        written_before: SystemTime,
    ) -> Result<Sweep, ObjectsError> {
        let mut keep = HashSet::new();
        for digest in manifests {
            if !keep.insert(digest) {
                continue;
            }
            match self.manifest(&digest).await {
                Ok(manifest) => keep.extend(manifest.entries.iter().filter_map(|e| e.digest)),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "a kept tree's manifest is unreadable")
                }
            }
        }
        let cutoff = micros(written_before);
        let mut sweep = Sweep::default();
        let mut listing = self.store.list(Some(&ObjectPath::from(OBJECTS_PREFIX)));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.storage_error(e))?;
            let name = meta.location.filename().unwrap_or_default();
            let referenced = name.parse::<Digest>().is_ok_and(|d| keep.contains(&d));
            let recent = meta.last_modified.timestamp_micros() >= cutoff;
            if referenced || recent {
                sweep.kept += 1;
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    sweep.deleted += 1;
                    sweep.deleted_bytes += meta.size;
                }
                Err(e) => return Err(self.storage_error(e)),
            }
        }
        if let Some(dir) = &self.local_dir {
            let dir = dir.clone();
            let (deleted, bytes) =
                tokio::task::spawn_blocking(move || sweep_staging(&dir, written_before))
                    .await
                    .unwrap_or_default();
            sweep.deleted += deleted;
            sweep.deleted_bytes += bytes;
        }
        Ok(sweep)
    }
}

/// What a file read in chunks of: object_store reads a local object 8 KiB
/// at a time, each a task on the blocking pool, which made a restore four
/// times slower than tar; one blocking task reading 1 MiB chunks is not.
const FILE_CHUNK_BYTES: usize = 1 << 20;

/// A local object's content as a stream of chunks, read on one blocking
/// task at most two chunks ahead of the reader.
fn file_chunks(
    mut file: std::fs::File,
) -> futures_util::stream::BoxStream<'static, object_store::Result<Bytes>> {
    use std::io::Read;
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0u8; FILE_CHUNK_BYTES];
            let read = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = sender.blocking_send(Err(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    }));
                    return;
                }
            };
            chunk.truncate(read);
            if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
    });
    tokio_stream_of(receiver)
}

fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> futures_util::stream::BoxStream<'static, T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// The size of each part of an upload in parts: S3's minimum is 5 MiB.
const PART_BYTES: usize = 8 << 20;

/// Parts of one upload sent at once; with [`PART_BYTES`], 32 MiB held.
const MAX_PARTS_IN_FLIGHT: usize = 4;

/// Deletes the staging files (`NAME#N`) under a local store's `dir` last
/// written before `written_before`: what a process killed mid-write left,
/// which the store neither lists nor ever renames; how many, and their
/// bytes.
fn sweep_staging(dir: &Path, written_before: SystemTime) -> (u64, u64) {
    let (mut deleted, mut bytes) = (0, 0);
    let Ok(prefixes) = std::fs::read_dir(dir.join(OBJECTS_PREFIX)) else {
        return (0, 0);
    };
    for prefix in prefixes.flatten() {
        let Ok(files) = std::fs::read_dir(prefix.path()) else {
            continue;
        };
        for file in files.flatten() {
            if !file.file_name().to_string_lossy().contains('#') {
                continue;
            }
            let Ok(meta) = file.metadata() else { continue };
            if meta.modified().is_ok_and(|m| m < written_before)
                && std::fs::remove_file(file.path()).is_ok()
            {
                deleted += 1;
                bytes += meta.len();
            }
        }
    }
    (deleted, bytes)
}

/// Microseconds since the Unix epoch (before it, negative).
fn micros(time: SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}
