//! An event's scratch directory on the host: its workspace and its jobs'
//! source checkouts, which the jobs' containers mount and write as they
//! please.
//!
//! Two things keep those files from hurting the host:
//! - They live under the executor's work directory, which only the user the
//!   executor runs as can enter (mode 0700): a file a job made set-user-ID
//!   root, through its own mount, is out of reach of every other user of the
//!   host. As a second line, the watcher clears set-user-ID and
//!   set-group-ID bits wherever it finds them.
//! - A watcher measures the directory while the event runs, as the kubelet
//!   measures a Pod's ephemeral storage, and once it holds more than the
//!   event's workspace size the event's running jobs fail, naming the limit,
//!   and its later jobs fail at once. A bind mount has no quota of its own;
//!   what a job writes between two measurements is the overshoot.
//!
//! A directory is created with its owner file already in it (written to a
//! temporary name, then renamed), so that another process's sweep never
//! takes a live event's directory for an abandoned one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use tokio::sync::watch;

/// Name of the file in an event's scratch directory that names its owner.
pub(crate) const OWNER_FILE: &str = "owner";

/// Prefix of a scratch directory being removed: renamed first, so that an
/// event's end never waits for its files to be deleted.
const TRASH_PREFIX: &str = ".trash-";

/// How often a scratch directory is measured at most. A job writing at
/// disk speed overshoots its limit by what it writes in this time.
const MEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// A measurement may take at most this share of the time between two, so
/// that a job that makes millions of files slows only its own watcher.
const MEASURE_SHARE: u32 = 10;

/// Directories deeper than this are not measured: the event's limit is
/// taken as exceeded rather than some of its files left uncounted.
const MAX_DEPTH: usize = 256;

/// The workspace size of an event whose project sets none: Brigade's
/// default workspace volume, and the Kubernetes executor's default claim.
pub const DEFAULT_WORKSPACE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// An event's scratch directory, measured while it lives.
pub(crate) struct EventScratch {
    dir: PathBuf,
    exceeded: watch::Receiver<Option<String>>,
    watcher: tokio::task::AbortHandle,
}

impl EventScratch {
    /// Creates `work_root/event_id`, marked as `owner`'s, and starts
    /// measuring it against `limit` bytes.
    pub fn create(work_root: &Path, event_id: &str, owner: &str, limit: u64) -> io::Result<Self> {
        let dir = work_root.join(event_id);
        create_private_dir(work_root)?;
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(format!("{OWNER_FILE}.new"));
        std::fs::write(&partial, owner)?;
        std::fs::rename(&partial, dir.join(OWNER_FILE))?;
        let root = Dir::open_ambient_dir(&dir, cap_std::ambient_authority())?;
        let (report, exceeded) = watch::channel(None);
        let watcher = tokio::spawn(watch_size(root, limit, report)).abort_handle();
        Ok(Self {
            dir,
            exceeded,
            watcher,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the event's jobs must stop, once its directory holds more than
    /// its limit; pending until then.
    pub async fn exceeded(&self) -> String {
        let mut exceeded = self.exceeded.clone();
        let reason = match exceeded.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The watcher is gone only when the event ended.
            None => std::future::pending().await,
        }
    }

    /// Stops measuring and moves the directory out of the way under a name
    /// the sweep recognises; returns where it went, to be deleted.
    pub fn retire(&self) -> io::Result<Option<PathBuf>> {
        self.watcher.abort();
        retire(&self.dir)
    }
}

impl Drop for EventScratch {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Moves `dir` (an event's scratch directory) aside for deletion; `None`
/// when there is nothing there.
pub(crate) fn retire(dir: &Path) -> io::Result<Option<PathBuf>> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    // Unique, so that one left by a process that died is no obstacle.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let trash = dir.with_file_name(format!("{TRASH_PREFIX}{name}-{stamp}"));
    match std::fs::rename(dir, &trash) {
        Ok(()) => Ok(Some(trash)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and its parents) that only this user may enter, and makes
/// an existing one so.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Measures the directory until the event ends, reporting once it holds
/// more than `limit` bytes.
async fn watch_size(root: Dir, limit: u64, report: watch::Sender<Option<String>>) {
    let root = Arc::new(root);
    loop {
        let started = Instant::now();
        let walked = root.clone();
        let measured = tokio::task::spawn_blocking(move || measure(&walked, limit))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        let problem = match measured {
            Ok(bytes) if bytes > limit => Some(format!(
                "the event's workspace and source checkouts hold {} on disk, more than its limit of {} (spec.workerTemplate.workspaceSize)",
                size(bytes),
                size(limit)
            )),
            Ok(_) => None,
            Err(e) => Some(format!(
                "the event's workspace and source checkouts could not be measured against their limit of {} (spec.workerTemplate.workspaceSize): {e}",
                size(limit)
            )),
        };
        if problem.is_some() {
            let _ = report.send(problem);
            return;
        }
        let spent = started.elapsed();
        tokio::time::sleep(MEASURE_INTERVAL.max(spent * MEASURE_SHARE)).await;
    }
}

/// The bytes the tree under `root` takes on disk (allocated blocks, so a
/// sparse or preallocated file counts for what it holds), clearing
/// set-user-ID and set-group-ID bits on the way; the walk stops once it
/// has counted more than `stop_above`. Links are not followed.
pub(crate) fn measure(root: &Dir, stop_above: u64) -> io::Result<u64> {
    let mut total = 0;
    // One open directory per level being walked.
    let mut levels = vec![root.entries()?];
    while let Some(entries) = levels.last_mut() {
        let Some(entry) = entries.next() else {
            levels.pop();
            continue;
        };
        let entry = match entry {
            Ok(entry) => entry,
            // Removed while we looked: a job at work.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total += metadata.blocks() * 512;
        if total > stop_above {
            return Ok(total);
        }
        if metadata.is_dir() {
            if levels.len() >= MAX_DEPTH {
                return Err(io::Error::other(format!(
                    "directories are nested more than {MAX_DEPTH} deep"
                )));
            }
            match entry.open_dir() {
                Ok(dir) => levels.push(dir.entries()?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else if metadata.is_file() && metadata.mode() & 0o6000 != 0 {
            clear_set_id_bits(&entry)?;
        }
    }
    Ok(total)
}

/// Clears a regular file's set-user-ID and set-group-ID bits through a
/// handle on the file itself: a job may have swapped it for a link or a
/// pipe since it was listed.
fn clear_set_id_bits(entry: &cap_std::fs::DirEntry) -> io::Result<()> {
    let mut options = OpenOptions::new();
    // Not blocking on a pipe, not following a link.
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = match entry.open_with(&options) {
        Ok(file) => file,
        // A link (ELOOP) or a file gone: not ours to change.
        Err(_) => return Ok(()),
    };
    let metadata = file.metadata()?;
    if metadata.is_file() && metadata.mode() & 0o6000 != 0 {
        file.set_permissions(Permissions::from_mode(metadata.mode() & 0o1777))?;
    }
    Ok(())
}

pub(crate) fn size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// Whether `name`, in the work directory, is a scratch directory being
/// removed.
pub(crate) fn is_trash(name: &str) -> bool {
    name.starts_with(TRASH_PREFIX)
}
