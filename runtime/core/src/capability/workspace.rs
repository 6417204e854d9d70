//! The event's workspace as its script reaches it: `workspace.read`,
//! `.write`, `.list` and `.remove`, on a cap-std directory. Held by the
//! worker's host, where the executor keeps the workspace.
//!
//! The guest gets no WASI preopen (read-only preopens were bypassed three
//! times in 2026): every path goes through these functions, which refuse
//! absolute paths and `..` by name, and cap-std resolves what is left inside
//! the directory, so a symbolic link a job planted cannot lead the script
//! out of it. Writes count against the workspace's size limit; reads are
//! capped so that one file cannot swamp the guest.

use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path};
use std::sync::Arc;

use base64::Engine as _;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use mizzen_host_api::types::{
    ContentEncoding, WorkspaceEntry, WorkspaceFile, WorkspaceListing, WorkspacePath,
};
use mizzen_host_api::{ErrorCode, HostError, Op};
use tokio::sync::OnceCell;

use crate::capability::Answer;
use crate::capability::jobs::{HiddenSecrets, JobCapability};
use crate::host::{parse, reply};
use crate::limits::Limit;
use crate::redact::Redactor;
use crate::worker::human_bytes;

/// A file's `contents` as a reply carries them: UTF-8 text when they are
/// (unless base64 is asked for), else base64; asked for UTF-8, contents
/// that are not are an error naming `what`.
pub(crate) fn encode(
    contents: Vec<u8>,
    asked: Option<ContentEncoding>,
    what: &str,
) -> Result<(String, ContentEncoding), HostError> {
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(match (asked, String::from_utf8(contents)) {
        (Some(ContentEncoding::Base64), Ok(text)) => {
            (base64(text.as_bytes()), ContentEncoding::Base64)
        }
        (_, Ok(text)) => (text, ContentEncoding::Utf8),
        (Some(ContentEncoding::Utf8), Err(_)) => {
            return Err(HostError::invalid(format!(
                "{what} is not UTF-8 text; read it in base64"
            )));
        }
        (_, Err(e)) => (base64(e.as_bytes()), ContentEncoding::Base64),
    })
}

/// The largest file a script reads in one call. Its JSON reply (base64 for
/// binary files) must fit in a worker's memory beside the script (64 MiB
/// by default); bigger files are for jobs.
pub(crate) const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;

/// Entries counted when the workspace's size is measured before a write. A
/// workspace with more is treated as full rather than walked for ever.
const MAX_COUNTED_ENTRIES: usize = 100_000;

/// The operations this capability answers.
pub const OPS: &[Op] = &[
    Op::WorkspaceRead,
    Op::WorkspaceWrite,
    Op::WorkspaceList,
    Op::WorkspaceRemove,
];

/// A worker's way to its event's workspace: the executor's directory, when
/// the project uses a workspace and the executor keeps it on this host,
/// opened at the script's first use of it.
pub(crate) struct WorkspaceAccess {
    jobs: JobCapability,
    limit: u64,
    /// A job can write a secret the script may not read into the workspace:
    /// what the script reads is masked as its jobs' logs are.
    hidden: Arc<HiddenSecrets>,
    opened: OnceCell<ScriptWorkspace>,
}

impl WorkspaceAccess {
    /// The workspace of the event `jobs` runs for, holding at most `limit`
    /// bytes of the script's files.
    pub fn new(jobs: JobCapability, limit: u64, hidden: Arc<HiddenSecrets>) -> Self {
        Self {
            jobs,
            limit,
            hidden,
            opened: OnceCell::new(),
        }
    }

    async fn open(&self) -> Result<&ScriptWorkspace, HostError> {
        self.opened
            .get_or_try_init(|| async {
                let (executor, event) = match &self.jobs {
                    JobCapability::Executor { executor, event } => (executor, event),
                    JobCapability::Unavailable(why) => {
                        return Err(HostError::not_configured(format!(
                            "{why}, so there is no workspace"
                        )));
                    }
                };
                if !event.use_workspace {
                    return Err(HostError::not_configured(format!(
                        "project \"{}\" has no workspace (set spec.workerTemplate.useWorkspace: true)",
                        event.project_id
                    )));
                }
                let root = executor
                    .workspace_dir(event)
                    .await
                    .map_err(|e| HostError::not_configured(e.to_string()))?;
                ScriptWorkspace::open(&root, self.limit)
            })
            .await
    }
}

/// Answers one of [`OPS`].
pub(crate) async fn call(
    access: &WorkspaceAccess,
    op: Op,
    request: &[u8],
) -> Result<Answer, HostError> {
    let workspace = access.open().await?;
    let reply = match op {
        Op::WorkspaceRead => parse::<WorkspacePath>(op, request)
            .and_then(|path| workspace.read(&path, &access.hidden.redactor()))
            .and_then(|file| reply(&file)),
        Op::WorkspaceWrite => parse::<WorkspaceFile>(op, request)
            .and_then(|file| workspace.write(&file))
            .map(|()| None),
        Op::WorkspaceList => parse::<WorkspacePath>(op, request)
            .and_then(|path| workspace.list(&path))
            .and_then(|listing| reply(&listing)),
        _ => parse::<WorkspacePath>(op, request)
            .and_then(|path| workspace.remove(&path))
            .map(|()| None),
    }?;
    Ok(Answer::Now(reply))
}

/// An event's workspace, opened for its script.
pub(crate) struct ScriptWorkspace {
    dir: Dir,
    /// The most bytes of files the workspace may hold after a script's write.
    limit: u64,
}

impl ScriptWorkspace {
    /// Opens `root` (which the executor created) as the only directory the
    /// script's operations reach.
    pub fn open(root: &Path, limit: u64) -> Result<Self, HostError> {
        let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| {
            HostError::new(
                ErrorCode::Unavailable,
                format!(
                    "the event's workspace {} cannot be opened: {e}",
                    root.display()
                ),
            )
        })?;
        Ok(Self { dir, limit })
    }

    /// `workspace.read`: the file's contents, as text when they are UTF-8.
    pub fn read(
        &self,
        request: &WorkspacePath,
        hidden: &Redactor,
    ) -> Result<WorkspaceFile, HostError> {
        let path = relative(&request.path, false)?;
        let file = self
            .dir
            .open(path)
            .map_err(|e| io_error("read", &request.path, e))?;
        let size = file
            .metadata()
            .map_err(|e| io_error("read", &request.path, e))?
            .len();
        if size > MAX_READ_BYTES {
            return Err(too_big(&request.path, size));
        }
        let mut contents = Vec::with_capacity(size as usize);
        // A file that grows while it is read is cut at the cap plus one byte,
        // which the check below turns into the same error.
        file.take(MAX_READ_BYTES + 1)
            .read_to_end(&mut contents)
            .map_err(|e| io_error("read", &request.path, e))?;
        if contents.len() as u64 > MAX_READ_BYTES {
            return Err(too_big(&request.path, contents.len() as u64));
        }
        let contents = hidden.redact_bytes(&contents).into_owned();
        let (contents, encoding) = encode(
            contents,
            request.encoding,
            &format!("workspace file \"{}\"", request.path),
        )?;
        Ok(WorkspaceFile {
            path: request.path.clone(),
            contents,
            encoding,
        })
    }

    /// `workspace.write`: creates or replaces the file, and the directories
    /// above it, within the workspace's size limit.
    pub fn write(&self, request: &WorkspaceFile) -> Result<(), HostError> {
        let path = relative(&request.path, false)?;
        let contents = match request.encoding {
            ContentEncoding::Utf8 => request.contents.as_bytes().to_vec(),
            ContentEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&request.contents)
                .map_err(|e| {
                    HostError::invalid(format!(
                        "workspace.write \"{}\": the contents are not base64: {e}",
                        request.path
                    ))
                })?,
        };
        let replaced = self.dir.metadata(path).map(|m| m.len()).unwrap_or(0);
        let used = self.size()?;
        let after = used.saturating_sub(replaced) + contents.len() as u64;
        if after > self.limit {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "writing \"{}\" ({}) would take the workspace to {}, past its limit of {} ({})",
                    request.path,
                    human_bytes(contents.len() as u64),
                    human_bytes(after),
                    human_bytes(self.limit),
                    Limit::WorkspaceSize.project_field()
                ),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir
                .create_dir_all(parent)
                .map_err(|e| match e.kind() {
                    // Something in the way is not a directory: say what.
                    ErrorKind::AlreadyExists => self.not_a_directory(&request.path, parent),
                    _ => io_error("write", &request.path, e),
                })?;
        }
        let mut file = self
            .dir
            .create(path)
            .map_err(|e| io_error("write", &request.path, e))?;
        file.write_all(&contents)
            .map_err(|e| io_error("write", &request.path, e))
    }

    /// `workspace.list`: a directory's entries, sorted by name; `""` or `.`
    /// is the workspace itself.
    pub fn list(&self, request: &WorkspacePath) -> Result<WorkspaceListing, HostError> {
        let path = relative(&request.path, true)?;
        let entries = self
            .dir
            .read_dir(path)
            .map_err(|e| io_error("list", &request.path, e))?;
        let mut listing = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &request.path, e))?;
            let metadata = entry
                .metadata()
                .map_err(|e| io_error("list", &request.path, e))?;
            listing.push(WorkspaceEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                directory: metadata.is_dir(),
                size: if metadata.is_dir() { 0 } else { metadata.len() },
            });
        }
        listing.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(WorkspaceListing { entries: listing })
    }

    /// `workspace.remove`: removes a file, or a directory with everything in
    /// it.
    pub fn remove(&self, request: &WorkspacePath) -> Result<(), HostError> {
        let path = relative(&request.path, false)?;
        let metadata = self
            .dir
            .symlink_metadata(path)
            .map_err(|e| io_error("remove", &request.path, e))?;
        if metadata.is_dir() {
            self.dir.remove_dir_all(path)
        } else {
            self.dir.remove_file(path)
        }
        .map_err(|e| io_error("remove", &request.path, e))
    }

    /// Why a directory above a file to write could not be made: the first
    /// part of `parent` that is a link (which may lead anywhere), or a file.
    fn not_a_directory(&self, path: &str, parent: &Path) -> HostError {
        let mut prefix = std::path::PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            match self.dir.symlink_metadata(&prefix) {
                Ok(m) if m.is_symlink() => {
                    return HostError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "workspace.write \"{path}\": \"{}\" is a link, which the script's paths do not follow",
                            prefix.display()
                        ),
                    );
                }
                Ok(m) if !m.is_dir() => break,
                _ => {}
            }
        }
        HostError::invalid(format!(
            "workspace.write \"{path}\": \"{}\" is a file, not a directory",
            prefix.display()
        ))
    }

    /// The bytes of files in the workspace, jobs' included.
    fn size(&self) -> Result<u64, HostError> {
        let mut total = 0u64;
        let mut counted = 0usize;
        let mut pending = vec![
            self.dir
                .try_clone()
                .map_err(|e| io_error("write", ".", e))?,
        ];
        while let Some(dir) = pending.pop() {
            for entry in dir.entries().map_err(|e| io_error("write", ".", e))? {
                counted += 1;
                if counted > MAX_COUNTED_ENTRIES {
                    return Err(HostError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "the workspace holds more than {MAX_COUNTED_ENTRIES} entries; the script may not add to it"
                        ),
                    ));
                }
                let Ok(entry) = entry else { continue };
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    if let Ok(sub) = entry.open_dir() {
                        pending.push(sub);
                    }
                } else if file_type.is_file() {
                    total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        Ok(total)
    }
}

/// The path as the workspace's own: relative, `/`-separated, no `..`, no
/// empty name. `""` and `.` (the workspace itself) only where `root_ok`.
fn relative(path: &str, root_ok: bool) -> Result<&Path, HostError> {
    let refuse = |why: &str| HostError::invalid(format!("workspace path {path:?} {why}"));
    if path.contains('\0') {
        return Err(refuse("holds a NUL character"));
    }
    if path.contains('\\') {
        return Err(refuse("holds a backslash; paths are '/'-separated"));
    }
    let as_path = Path::new(path);
    let mut names = 0;
    for component in as_path.components() {
        match component {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(
                    "goes up with '..'; it must stay inside the workspace",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("is absolute; it must be relative to the workspace"));
            }
        }
    }
    if names == 0 && !root_ok {
        return Err(refuse("names no file"));
    }
    Ok(if names == 0 { Path::new(".") } else { as_path })
}

fn too_big(path: &str, size: u64) -> HostError {
    HostError::new(
        ErrorCode::LimitExceeded,
        format!(
            "workspace file \"{path}\" is {}; a script reads at most {} at once (larger files are for jobs)",
            human_bytes(size),
            human_bytes(MAX_READ_BYTES)
        ),
    )
}

/// An I/O error as the script sees it: what, where, and why. cap-std
/// answers an attempt to leave the directory (through a symbolic link)
/// with `PermissionDenied`.
fn io_error(operation: &str, path: &str, e: std::io::Error) -> HostError {
    let (code, why) = match e.kind() {
        ErrorKind::NotFound => (ErrorCode::NotFound, "no such file or directory".to_string()),
        ErrorKind::PermissionDenied => (
            ErrorCode::PermissionDenied,
            format!(
                "not allowed (a path through a link out of the workspace, or file permissions): {e}"
            ),
        ),
        ErrorKind::IsADirectory => (ErrorCode::InvalidRequest, "it is a directory".to_string()),
        ErrorKind::InvalidFilename => (
            ErrorCode::InvalidRequest,
            "the path, or a name in it, is too long".to_string(),
        ),
        ErrorKind::NotADirectory => (
            ErrorCode::InvalidRequest,
            "a part of the path is not a directory".to_string(),
        ),
        _ => (ErrorCode::Internal, e.to_string()),
    };
    HostError::new(code, format!("workspace.{operation} \"{path}\": {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_workspace() {
        assert_eq!(relative("a/b.txt", false).unwrap(), Path::new("a/b.txt"));
        assert_eq!(relative("./a", false).unwrap(), Path::new("./a"));
        assert_eq!(relative("", true).unwrap(), Path::new("."));
        for (bad, why) in [
            ("../etc/passwd", "'..'"),
            ("a/../../b", "'..'"),
            ("/etc/passwd", "absolute"),
            ("", "names no file"),
            (".", "names no file"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
        ] {
            let error = relative(bad, false).unwrap_err().to_string();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_link_out_of_the_workspace_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("file"))
            .unwrap();
        let workspace = ScriptWorkspace::open(root.path(), 1024).unwrap();
        for path in ["escape/secret", "file"] {
            let error = workspace
                .read(
                    &WorkspacePath {
                        path: path.into(),
                        encoding: None,
                    },
                    &Redactor::default(),
                )
                .unwrap_err();
            assert_eq!(error.code, ErrorCode::PermissionDenied, "{path}: {error}");
        }
        let write = WorkspaceFile {
            path: "escape/planted".into(),
            contents: "x".into(),
            encoding: ContentEncoding::Utf8,
        };
        let error = workspace.write(&write).unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
        assert!(!outside.path().join("planted").exists());
    }

    #[test]
    fn writes_count_against_the_limit_and_binary_reads_come_back_in_base64() {
        let root = tempfile::tempdir().unwrap();
        let workspace = ScriptWorkspace::open(root.path(), 10).unwrap();
        let file = |path: &str, contents: &str, encoding| WorkspaceFile {
            path: path.into(),
            contents: contents.into(),
            encoding,
        };
        workspace
            .write(&file("dir/a", "12345678", ContentEncoding::Utf8))
            .unwrap();
        // Replacing a file counts its new size, not both.
        workspace
            .write(&file("dir/a", "1234567890", ContentEncoding::Utf8))
            .unwrap();
        let error = workspace
            .write(&file("b", "1", ContentEncoding::Utf8))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("past its limit of 10 B (spec.workerTemplate.workspaceSize)"),
            "{error}"
        );
        workspace
            .remove(&WorkspacePath {
                path: "dir".into(),
                encoding: None,
            })
            .unwrap();
        workspace
            .write(&file("bin", "/wA=", ContentEncoding::Base64))
            .unwrap();
        let read = workspace
            .read(
                &WorkspacePath {
                    path: "bin".into(),
                    encoding: None,
                },
                &Redactor::default(),
            )
            .unwrap();
        assert_eq!(read.encoding, ContentEncoding::Base64);
        assert_eq!(read.contents, "/wA=");
        let listing = workspace
            .list(&WorkspacePath {
                path: "".into(),
                encoding: None,
            })
            .unwrap();
        assert_eq!(
            listing.entries,
            [WorkspaceEntry {
                name: "bin".into(),
                directory: false,
                size: 2
            }]
        );
    }
}
