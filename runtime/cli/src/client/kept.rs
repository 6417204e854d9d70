//! `mizzen event artifacts` and `mizzen project caches`: what jobs keep.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use clap::Subcommand;
use mizzen_runtime::limits::LimitValue;
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::event::EventIdArg;
use super::http::Api;
use super::print::{self, OutputArg, Table, age_of, field, out};
use super::project::ProjectArg;
use super::{Failure, bad_input, confirm};
use crate::EXIT_FAILED;

/// `mizzen event artifacts`.
#[derive(Subcommand)]
pub enum ArtifactCommand {
    /// List an event's artifacts
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        id: EventIdArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Download an artifact into a directory, each file checked against its
    /// SHA-256
    Get {
        #[command(flatten)]
        id: EventIdArg,
        /// The artifact's name
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write it [default: ./NAME]
        #[arg(short = 'd', long = "dir", value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `mizzen project caches`.
#[derive(Subcommand)]
pub enum CacheCommand {
    /// List a project's cache entries, most recently used first
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a project's cache entry; the next job that declares its key
    /// misses and saves it again
    #[command(visible_alias = "rm")]
    Delete {
        #[command(flatten)]
        project: ProjectArg,
        /// The entry's key
        #[arg(value_name = "KEY")]
        key: String,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

fn bytes(item: &Value, key: &str) -> String {
    item[key]
        .as_u64()
        .map_or_else(|| "-".to_string(), |b| LimitValue::Bytes(b).to_string())
}

pub async fn artifacts(command: ArtifactCommand) -> Result<(), Failure> {
    match command {
        ArtifactCommand::List { id, output } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            let list = api.get(&["v2", "events", &id, "artifacts"]).send().await?;
            print::emit(output.output, &list, |list| {
                let empty = format!("Event {:?} has no artifacts.", id);
                print::list_table(list, &empty, |items| {
                    let mut table = Table::new(&["NAME", "JOB", "FILES", "SIZE", "PATH", "AGE"]);
                    for item in items {
                        table.row(vec![
                            field(item, &["name"]),
                            field(item, &["job"]),
                            item["files"].as_u64().unwrap_or(0).to_string(),
                            bytes(item, "sizeBytes"),
                            field(item, &["path"]),
                            age_of(item, &["created"]),
                        ]);
                    }
                    table
                })
            })
        }
        ArtifactCommand::Get { id, name, dir } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            let artifact = api
                .get(&["v2", "events", &id, "artifacts", &name])
                .send()
                .await?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let (files, size) = download(&api, &id, &name, &artifact, &dir).await?;
            out(format!(
                "Wrote artifact {name:?} into {} ({}, {}), each file's SHA-256 checked.",
                dir.display(),
                mizzen_runtime::kept::files(files),
                LimitValue::Bytes(size)
            ));
            Ok(())
        }
    }
}

/// Where an entry of the artifact goes under `dir`; `None` for a path that
/// would lead elsewhere (which the server never lists).
fn local_path(dir: &Path, entry: &str) -> Option<PathBuf> {
    let relative = Path::new(entry);
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(relative))
}

/// Writes `artifact` under `dir` from its archive (one request, the server
/// reading the artifact's manifest once): each file into a temporary file
/// beside its place, checked against the SHA-256 the artifact lists, then
/// renamed into place; symbolic links last, so that no file is written
/// through one. A file that does not arrive (the server cut the archive on
/// a corrupt object) is an error naming it.
async fn download(
    api: &Api,
    event: &str,
    name: &str,
    artifact: &Value,
    dir: &Path,
) -> Result<(u64, u64), Failure> {
    let expected: HashMap<String, String> = artifact["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["kind"] == "file")
        .map(|entry| {
            (
                entry["path"].as_str().unwrap_or_default().to_string(),
                entry["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let response = api
        .get(&["v2", "events", event, "artifacts", name, "archive"])
        .download()
        .await?;
    let chunks = futures_util::stream::unfold(response, |mut response| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), response)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), response)),
        }
    });
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(chunks)));
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    tokio::task::spawn_blocking(move || unpack(reader, &dir, &name, expected))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn unpack(
    reader: impl Read,
    dir: &Path,
    name: &str,
    mut expected: HashMap<String, String>,
) -> Result<(u64, u64), Failure> {
    let failed = |error: anyhow::Error| Failure {
        code: EXIT_FAILED,
        error,
    };
    let broke = |e: std::io::Error| {
        failed(anyhow::anyhow!(
            "downloading artifact {name:?} broke off: {e}"
        ))
    };
    let (mut files, mut size) = (0u64, 0u64);
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(broke)? {
        let mut entry = entry.map_err(broke)?;
        let path = entry.path().map_err(broke)?.to_string_lossy().into_owned();
        let rest = match path.strip_prefix(name) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_matches('/'),
            _ => {
                return Err(failed(anyhow::anyhow!(
                    "artifact {name:?}'s archive holds {path:?}, outside the artifact"
                )));
            }
        };
        let target = if rest.is_empty() {
            Some(dir.to_path_buf())
        } else {
            local_path(dir, rest)
        };
        let Some(target) = target else {
            return Err(bad_input(anyhow::anyhow!(
                "artifact {name:?} holds {rest:?}, which leads out of {}",
                dir.display()
            )));
        };
        let creating = |e: std::io::Error, path: &Path| {
            failed(anyhow::anyhow!("writing {}: {e}", path.display()))
        };
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| creating(e, &target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(broke)?.unwrap_or_default();
                links.push((target, link.into_owned()));
            }
            tar::EntryType::Regular => {
                let Some(want) = expected.remove(rest) else {
                    return Err(failed(anyhow::anyhow!(
                        "artifact {name:?}'s archive holds {rest:?}, which the artifact does not list"
                    )));
                };
                let parent = target.parent().unwrap_or(dir).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|e| creating(e, &parent))?;
                let mut temporary =
                    tempfile::NamedTempFile::new_in(&parent).map_err(|e| creating(e, &parent))?;
                let mut hasher = Sha256::new();
                let mut buffer = vec![0u8; 1 << 16];
                let mut written = 0u64;
                loop {
                    let n = entry.read(&mut buffer).map_err(broke)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                    written += n as u64;
                    temporary
                        .write_all(&buffer[..n])
                        .map_err(|e| creating(e, &target))?;
                }
                let actual = hex_of(&hasher.finalize());
                if actual != want {
                    return Err(failed(anyhow::anyhow!(
                        "file {rest:?} of artifact {name:?} arrived with SHA-256 {actual} ({written} bytes), not the {want} the server lists; it was not written"
                    )));
                }
                if let Ok(mode) = entry.header().mode() {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = temporary
                        .as_file()
                        .set_permissions(std::fs::Permissions::from_mode(mode & 0o777));
                }
                temporary
                    .persist(&target)
                    .map_err(|e| creating(e.error, &target))?;
                files += 1;
                size += written;
            }
            _ => {}
        }
    }
    if let Some(missing) = expected.keys().min() {
        return Err(failed(anyhow::anyhow!(
            "artifact {name:?}'s archive ended before file {missing:?} arrived ({} files missing): the server found a stored file damaged, or the connection broke",
            expected.len()
        )));
    }
    for (path, target) in links {
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path)
            .map_err(|e| failed(anyhow::anyhow!("linking {}: {e}", path.display())))?;
    }
    Ok((files, size))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn caches(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::List { project, output } => {
            let api = Api::from_config()?;
            let list = api
                .get(&["v2", "projects", &project.project, "caches"])
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                let empty = format!("Project {:?} has no cache entries.", project.project);
                print::list_table(list, &empty, |items| {
                    let mut table = Table::new(&["KEY", "FILES", "SIZE", "LAST USED", "AGE"]);
                    for item in items {
                        table.row(vec![
                            field(item, &["key"]),
                            item["files"].as_u64().unwrap_or(0).to_string(),
                            bytes(item, "sizeBytes"),
                            age_of(item, &["lastUsed"]),
                            age_of(item, &["created"]),
                        ]);
                    }
                    table
                })
            })
        }
        CacheCommand::Delete { project, key, yes } => {
            let project = &project.project;
            let question = format!("Delete cache entry {key:?} of project {project:?}?");
            if !confirm(yes, &question)? {
                return Ok(());
            }
            let api = Api::from_config()?;
            api.request(Method::DELETE, &["v2", "projects", project, "caches", &key])
                .send()
                .await?;
            out(format!(
                "Deleted cache entry {key:?} of project {project:?}."
            ));
            Ok(())
        }
    }
}
