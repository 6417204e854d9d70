//! A tree of files as a [`Manifest`]: saved from a tar stream, its files'
//! contents stored as objects; written back as a tar stream, each file
//! checked against its digest as it is read.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Component;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::{Digest, Objects, ObjectsError};

/// Files and directories one tree may list. A manifest entry takes about
/// 200 bytes in memory, so the largest manifest is about 50 MB; a big
/// `node_modules` holds about 100,000 files.
pub const MAX_TREE_ENTRIES: usize = 250_000;

/// The largest manifest read back: [`MAX_TREE_ENTRIES`] entries with long
/// paths.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Files up to this size are hashed in memory and uploaded from there;
/// larger ones go through a temporary file first (their digest, hence
/// their name, is known only once they are read whole).
const SMALL_FILE_BYTES: u64 = 4 << 20;

/// Small files read ahead of a restore's tar writer: enough to keep both
/// cores busy hashing while the writer writes, with at most 32 MiB held.
const PREFETCHED_FILES: usize = 8;

/// Small files uploaded at once: enough to hide an S3 server's latency
/// (10,000 files one after the other at 5 ms each would take 50 s), with at
/// most 32 MiB held.
const UPLOADS_IN_FLIGHT: usize = 8;

/// The buffer between the synchronous tar code and the asynchronous stream
/// it reads or writes.
const BRIDGE_BUFFER_BYTES: usize = 256 << 10;

/// The manifest format this version writes and reads.
const MANIFEST_VERSION: u32 = 1;

/// A saved tree: what [`Objects::save_tar`] stores and
/// [`Objects::write_tar`] restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format's version.
    pub version: u32,
    /// Its entries, parents before what they hold.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// An empty directory: what a cache that missed restores, so that its
    /// directory exists, owned by the job's user.
    pub fn empty_directory() -> Self {
        Self {
            version: MANIFEST_VERSION,
            entries: vec![Entry {
                path: String::new(),
                kind: EntryKind::Directory,
                mode: 0o755,
                mtime: 0,
                size: 0,
                digest: None,
                target: None,
            }],
        }
    }

    /// The bytes its files hold.
    pub fn size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// How many files it holds.
    pub fn files(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count()
    }

    /// The entry at `path` (relative to the tree's root).
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

/// One file, directory or symbolic link of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its path beneath the tree's root, `/`-separated; empty for the root
    /// itself (a directory, or the file a single-file tree is).
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its permission bits.
    pub mode: u32,
    /// When it was last modified, in seconds since the Unix epoch.
    pub mtime: u64,
    /// A file's size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// A file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// A symbolic link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a tree's entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link, kept as a link (never followed).
    Symlink,
}

/// How to save a tree.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// What is saved, for errors: `artifact "dist"`, `cache "npm-1f2e"`.
    pub what: String,
    /// Only files whose path beneath the root matches (`*.xml`,
    /// `**/report-*.json`), with the directories that lead to them.
    pub pattern: Option<glob::Pattern>,
    /// The most its files may hold.
    pub max_bytes: u64,
    /// Which limit `max_bytes` is, for errors: ` (the project's cacheSize
    /// limit)`.
    pub limit_name: String,
    /// The most files, directories and links it may list (at most
    /// [`MAX_TREE_ENTRIES`]).
    pub max_entries: usize,
}

impl SaveOptions {
    /// An artifact's save: the files beneath its path that `pattern` picks,
    /// in at most `room` bytes (what the event's artifacts have left under
    /// the project's `artifactSize` limit, `quota`, said as a quantity).
    pub fn artifact(name: &str, pattern: Option<&str>, room: u64, quota: &str) -> Self {
        Self {
            what: format!("artifact \"{name}\""),
            pattern: pattern.and_then(|p| glob::Pattern::new(p).ok()),
            max_bytes: room,
            limit_name: format!(
                " (the room left of the event's artifacts under the project's artifactSize limit of {quota})"
            ),
            max_entries: MAX_TREE_ENTRIES,
        }
    }

    /// A cache's save: its whole directory, in at most `quota` bytes (the
    /// project's `cacheSize` limit; `quota_text` says it as a quantity).
    pub fn cache(key: &str, quota: u64, quota_text: &str) -> Self {
        Self {
            what: format!("cache \"{key}\""),
            pattern: None,
            max_bytes: quota,
            limit_name: format!(" (the project's cacheSize limit of {quota_text})"),
            max_entries: MAX_TREE_ENTRIES,
        }
    }
}

/// A tree saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedTree {
    /// Its manifest's digest, the tree's name.
    pub manifest: Digest,
    /// The bytes its files hold.
    pub bytes: u64,
    /// How many files it holds.
    pub files: u64,
    /// The bytes this save wrote: files not stored before, and the manifest.
    pub written_bytes: u64,
}

/// Who owns what a restore writes: the user its container runs as, so that
/// a cache restored is one the job can write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarOwner {
    /// The user id.
    pub uid: u64,
    /// The group id.
    pub gid: u64,
}

impl Objects {
    /// Saves the tree a tar stream holds: every entry beneath its first
    /// path component (the saved path's name, as `docker cp` writes it),
    /// regular files as objects, directories and symbolic links as
    /// entries; hard links become copies of the file they name; devices
    /// and pipes are left out. An entry whose path leads out of the tree
    /// (`..`, absolute) is refused.
    pub async fn save_tar<R>(&self, tar: R, options: SaveOptions) -> Result<SavedTree, ObjectsError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let this = self.clone();
        let handle = Handle::current();
        // The tar parser reads 512 bytes at a time; each read of the bridge
        // is a trip to the runtime.
        let reader = std::io::BufReader::with_capacity(BRIDGE_BUFFER_BYTES, SyncIoBridge::new(tar));
        tokio::task::spawn_blocking(move || this.save_blocking(reader, &options, &handle))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn save_blocking(
        &self,
        reader: impl Read,
        options: &SaveOptions,
        handle: &Handle,
    ) -> Result<SavedTree, ObjectsError> {
        let what = &options.what;
        let archive_error = |source: std::io::Error| ObjectsError::Archive {
            what: what.clone(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        let mut entries: Vec<Entry> = Vec::new();
        // Under a pattern, directories wait here until a file beneath them
        // is kept.
        let mut waiting_dirs: BTreeMap<String, Entry> = BTreeMap::new();
        let mut files_by_path: HashMap<String, (Digest, u64)> = HashMap::new();
        let mut links: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut uploads = tokio::task::JoinSet::new();
        let mut saved = SavedTree {
            manifest: Digest([0; 32]),
            bytes: 0,
            files: 0,
            written_bytes: 0,
        };
        let match_options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        for tar_entry in archive.entries().map_err(archive_error)? {
            let mut tar_entry = tar_entry.map_err(archive_error)?;
            let path = tar_entry.path().map_err(archive_error)?.into_owned();
            let path = tree_path(&path).map_err(|why| {
                archive_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("entry {:?}: {why}", path.display()),
                ))
            })?;
            let header = tar_entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let mtime = header.mtime().unwrap_or(0);
            let entry_type = header.entry_type();
            let kind = match entry_type {
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
                    EntryKind::File
                }
                tar::EntryType::Directory => EntryKind::Directory,
                tar::EntryType::Symlink => EntryKind::Symlink,
                _ => continue,
            };
            // A real tree has nothing beneath a link; a crafted one that
            // had would write through the link when restored.
            let mut ancestor = path.as_str();
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if links.contains(parent) {
                    return Err(archive_error(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("entry {path:?} lies beneath the symbolic link {parent:?}"),
                    )));
                }
                ancestor = parent;
            }
            if kind == EntryKind::Symlink {
                links.insert(path.clone());
            }
            let kept = path.is_empty()
                || options
                    .pattern
                    .as_ref()
                    .is_none_or(|p| p.matches_with(&path, match_options));
            if kind == EntryKind::Directory && options.pattern.is_some() && !path.is_empty() {
                waiting_dirs.insert(
                    path.clone(),
                    Entry {
                        path,
                        kind,
                        mode,
                        mtime,
                        size: 0,
                        digest: None,
                        target: None,
                    },
                );
                continue;
            }
            if !kept {
                continue;
            }
            // The directories that lead to it, first.
            let mut parent = path.as_str();
            let mut parents = Vec::new();
            while let Some((up, _)) = parent.rsplit_once('/') {
                if let Some(dir) = waiting_dirs.remove(up) {
                    parents.push(dir);
                }
                parent = up;
            }
            entries.extend(parents.into_iter().rev());
            let max_entries = options.max_entries.min(MAX_TREE_ENTRIES);
            if entries.len() >= max_entries {
                return Err(ObjectsError::TooManyEntries {
                    what: what.clone(),
                    limit: max_entries,
                });
            }
            let mut entry = Entry {
                path,
                kind,
                mode,
                mtime,
                size: 0,
                digest: None,
                target: None,
            };
            match (kind, entry_type) {
                (EntryKind::Symlink, _) => {
                    let target = tar_entry
                        .link_name()
                        .map_err(archive_error)?
                        .unwrap_or_default();
                    entry.target = Some(target.to_string_lossy().into_owned());
                }
                (EntryKind::File, tar::EntryType::Link) => {
                    // A hard link names a file earlier in the stream.
                    let target = tar_entry
                        .link_name()
                        .map_err(archive_error)?
                        .unwrap_or_default();
                    let target = tree_path(&target).unwrap_or_default();
                    let Some((digest, size)) = files_by_path.get(&target).copied() else {
                        continue;
                    };
                    saved.bytes += size;
                    saved.files += 1;
                    entry.size = size;
                    entry.digest = Some(digest);
                }
                (EntryKind::File, _) => {
                    let size = tar_entry.header().size().map_err(archive_error)?;
                    saved.bytes += size;
                    saved.files += 1;
                    if saved.bytes > options.max_bytes {
                        return Err(ObjectsError::TooLarge {
                            what: what.clone(),
                            limit: options.max_bytes,
                            why: options.limit_name.clone(),
                        });
                    }
                    while uploads.len() >= UPLOADS_IN_FLIGHT {
                        saved.written_bytes += joined(handle.block_on(uploads.join_next()))?;
                    }
                    let digest = if size <= SMALL_FILE_BYTES {
                        let mut content = Vec::with_capacity(size as usize);
                        (&mut tar_entry)
                            .take(size)
                            .read_to_end(&mut content)
                            .map_err(archive_error)?;
                        let digest = Digest::of(&content);
                        let this = self.clone();
                        uploads.spawn_on(
                            async move {
                                let written = this.put(&digest, Bytes::from(content)).await?;
                                Ok(if written { size } else { 0 })
                            },
                            handle,
                        );
                        digest
                    } else {
                        let mut staged = tempfile::tempfile().map_err(archive_error)?;
                        let mut hasher = Sha256::new();
                        let mut buffer = vec![0u8; 1 << 20];
                        loop {
                            let n = tar_entry.read(&mut buffer).map_err(archive_error)?;
                            if n == 0 {
                                break;
                            }
                            hasher.update(&buffer[..n]);
                            staged.write_all(&buffer[..n]).map_err(archive_error)?;
                        }
                        let digest = Digest::from_hasher(hasher);
                        use std::io::Seek;
                        staged
                            .seek(std::io::SeekFrom::Start(0))
                            .map_err(archive_error)?;
                        if handle.block_on(self.put_file(&digest, staged, size))? {
                            saved.written_bytes += size;
                        }
                        digest
                    };
                    files_by_path.insert(entry.path.clone(), (digest, size));
                    entry.size = size;
                    entry.digest = Some(digest);
                }
                _ => {}
            }
            entries.push(entry);
        }
        while let Some(upload) = handle.block_on(uploads.join_next()) {
            saved.written_bytes += joined(Some(upload))?;
        }
        if entries.is_empty() {
            return Err(ObjectsError::Archive {
                what: what.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "nothing to save"),
            });
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            entries,
        };
        let json = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let digest = Digest::of(&json);
        let size = json.len() as u64;
        if handle.block_on(self.put(&digest, json.into()))? {
            saved.written_bytes += size;
        }
        saved.manifest = digest;
        Ok(saved)
    }

    /// Writes tree `manifest` to `out` as a tar stream whose first path
    /// component is `root` (the name the tree is restored under), owned by
    /// `owner`. Each file is checked against its digest as it is read; a
    /// corrupt or missing object ends the stream with that error (so the
    /// tar is cut short, and whoever reads it must not use it).
    pub async fn write_tar<W>(
        &self,
        manifest: Manifest,
        root: String,
        owner: TarOwner,
        out: W,
    ) -> Result<(), ObjectsError>
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        // Small files are read and checked ahead of the writer, a few at
        // once, in the manifest's order: opening, reading and hashing one
        // file after another left the tar reader waiting (a restore took
        // three times as long as tar's).
        let small: Vec<(Digest, u64)> = manifest
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.size <= SMALL_FILE_BYTES)
            .filter_map(|e| e.digest.map(|d| (d, e.size)))
            .collect();
        let (sender, prefetched) = tokio::sync::mpsc::channel(PREFETCHED_FILES);
        let this = self.clone();
        tokio::spawn(async move {
            let mut contents = futures_util::stream::iter(small)
                .map(|(digest, size)| {
                    let this = this.clone();
                    async move { this.read_checked(&digest, size).await }
                })
                .buffered(PREFETCHED_FILES);
            while let Some(content) = contents.next().await {
                if sender.send(content).await.is_err() {
                    return;
                }
            }
        });
        let this = self.clone();
        let handle = Handle::current();
        let writer = SyncIoBridge::new(out);
        tokio::task::spawn_blocking(move || {
            this.write_blocking(&manifest, &root, owner, writer, prefetched, &handle)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn write_blocking<W: AsyncWrite + Unpin>(
        &self,
        manifest: &Manifest,
        root: &str,
        owner: TarOwner,
        writer: SyncIoBridge<W>,
        mut prefetched: tokio::sync::mpsc::Receiver<Result<Bytes, ObjectsError>>,
        handle: &Handle,
    ) -> Result<(), ObjectsError> {
        let what = format!("restoring {root:?}");
        let error = |e: std::io::Error| match e.into_inner() {
            Some(inner) => match inner.downcast::<ObjectsError>() {
                Ok(objects) => *objects,
                Err(other) => ObjectsError::Archive {
                    what: what.clone(),
                    source: std::io::Error::other(other),
                },
            },
            None => ObjectsError::Archive {
                what: what.clone(),
                source: std::io::Error::other("the stream was closed"),
            },
        };
        // The tar builder writes headers of 512 bytes and content 8 KiB at a
        // time; each write of the bridge is a trip to the runtime.
        let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(
            BRIDGE_BUFFER_BYTES,
            writer,
        ));
        for entry in &manifest.entries {
            let path = if entry.path.is_empty() {
                root.to_string()
            } else {
                format!("{root}/{}", entry.path)
            };
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_mtime(entry.mtime);
            header.set_uid(owner.uid);
            header.set_gid(owner.gid);
            match entry.kind {
                EntryKind::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, &path, std::io::empty())
                        .map_err(error)?;
                }
                EntryKind::Symlink => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    let target = entry.target.as_deref().unwrap_or_default();
                    builder
                        .append_link(&mut header, &path, target)
                        .map_err(error)?;
                }
                EntryKind::File => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(entry.size);
                    let Some(digest) = entry.digest else {
                        return Err(ObjectsError::BadManifest {
                            digest: Digest::of(b""),
                            why: format!("file {path:?} has no digest"),
                        });
                    };
                    if entry.size <= SMALL_FILE_BYTES {
                        let content =
                            prefetched
                                .blocking_recv()
                                .ok_or_else(|| ObjectsError::Archive {
                                    what: what.clone(),
                                    source: std::io::Error::other(
                                        "the files read ahead ended early",
                                    ),
                                })??;
                        builder
                            .append_data(&mut header, &path, &content[..])
                            .map_err(error)?;
                        continue;
                    }
                    let stream = handle.block_on(self.stream(&digest, Some(entry.size)))?;
                    let content = CheckedReader {
                        stream,
                        chunk: Bytes::new(),
                        handle,
                    };
                    builder
                        .append_data(&mut header, &path, content)
                        .map_err(error)?;
                }
            }
        }
        let writer = builder.into_inner().map_err(error)?;
        let mut writer = writer.into_inner().map_err(|e| error(e.into_error()))?;
        writer.flush().map_err(error)?;
        writer.shutdown().map_err(error)?;
        Ok(())
    }
}

impl Objects {
    /// Writes tree `manifest` into directory `dir` (made if need be; what
    /// it holds of the same names is replaced), owned by this process.
    pub async fn write_dir(
        &self,
        manifest: Manifest,
        dir: &std::path::Path,
    ) -> Result<(), ObjectsError> {
        let what = format!("writing {}", dir.display());
        let (parent, name) = match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string()),
            _ => {
                return Err(ObjectsError::Archive {
                    what,
                    source: std::io::Error::other("not a directory with a parent"),
                });
            }
        };
        std::fs::create_dir_all(&parent).map_err(|source| ObjectsError::Archive {
            what: what.clone(),
            source,
        })?;
        let (writer, reader) = tokio::io::duplex(1 << 16);
        let owner = TarOwner { uid: 0, gid: 0 };
        let writing = self.write_tar(manifest, name, owner, writer);
        let reader = SyncIoBridge::new(reader);
        let unpacking = tokio::task::spawn_blocking(move || {
            let mut archive = tar::Archive::new(reader);
            archive.set_preserve_ownerships(false);
            archive.unpack(parent)
        });
        let (written, unpacked) = tokio::join!(writing, unpacking);
        written?;
        unpacked
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            .map_err(|source| ObjectsError::Archive { what, source })
    }
}

/// An object's checked stream read as a file: its error (corrupt, missing,
/// cut) becomes the read's error, which ends the tar being written.
struct CheckedReader<'a> {
    stream: BoxStream<'static, Result<Bytes, ObjectsError>>,
    chunk: Bytes,
    handle: &'a Handle,
}

impl Read for CheckedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The bytes an upload wrote, or its error.
fn joined(
    upload: Option<Result<Result<u64, ObjectsError>, tokio::task::JoinError>>,
) -> Result<u64, ObjectsError> {
    match upload {
        None => Ok(0),
        Some(Ok(result)) => result,
        Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A tar entry's path beneath the tree's root (its first component): `/`
/// separated, empty for the root itself. A path that leads anywhere else
/// is refused.
fn tree_path(path: &std::path::Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or("the name is not UTF-8, which a manifest cannot hold")?,
            ),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err("it leads out of the tree");
            }
        }
    }
    Ok(parts.get(1..).unwrap_or_default().join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths_drop_the_root_and_refuse_escapes() {
        let path = |p: &str| tree_path(std::path::Path::new(p));
        assert_eq!(path("dist"), Ok(String::new()));
        assert_eq!(path("dist/a/b.js"), Ok("a/b.js".into()));
        assert_eq!(path("./dist/./a"), Ok("a".into()));
        assert!(path("dist/../../etc/passwd").is_err());
        assert!(path("/etc/passwd").is_err());
    }
}
