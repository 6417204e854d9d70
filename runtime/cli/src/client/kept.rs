//! `mizzen event artifacts` and `mizzen project caches`: what jobs keep.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use clap::Subcommand;
use mizzen_runtime::limits::LimitValue;
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

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
            let list = api
                .get(&["v2", "events", &id.id, "artifacts"])
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                let empty = format!("Event {:?} has no artifacts.", id.id);
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
            let artifact = api
                .get(&["v2", "events", &id.id, "artifacts", &name])
                .send()
                .await?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let (files, size) = download(&api, &id.id, &name, &artifact, &dir).await?;
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

/// Writes every entry of `artifact` under `dir`: directories, then files
/// (each streamed to a temporary file, checked, then renamed into place),
/// then symbolic links, last, so that no file is written through one.
async fn download(
    api: &Api,
    event: &str,
    name: &str,
    artifact: &Value,
    dir: &Path,
) -> Result<(u64, u64), Failure> {
    let failed = |error: anyhow::Error| Failure {
        code: EXIT_FAILED,
        error,
    };
    let entries = artifact["entries"].as_array().cloned().unwrap_or_default();
    let (mut files, mut size) = (0u64, 0u64);
    let mut links = Vec::new();
    for entry in &entries {
        let path = entry["path"].as_str().unwrap_or_default();
        let target_path = if path.is_empty() {
            Some(dir.to_path_buf())
        } else {
            local_path(dir, path)
        };
        let Some(target_path) = target_path else {
            return Err(bad_input(anyhow::anyhow!(
                "artifact {name:?} lists {path:?}, which leads out of {}",
                dir.display()
            )));
        };
        match entry["kind"].as_str() {
            Some("directory") => std::fs::create_dir_all(&target_path)
                .map_err(|e| failed(anyhow::anyhow!("creating {}: {e}", target_path.display())))?,
            Some("symlink") => links.push((
                target_path,
                entry["target"].as_str().unwrap_or_default().to_string(),
            )),
            Some("file") => {
                let expected = entry["sha256"].as_str().unwrap_or_default().to_string();
                let mut segments = vec!["v2", "events", event, "artifacts", name, "files"];
                segments.extend(path.split('/').filter(|s| !s.is_empty()));
                let mut response = api.get(&segments).download().await?;
                if let Some(parent) = target_path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        failed(anyhow::anyhow!("creating {}: {e}", parent.display()))
                    })?;
                }
                let parent = target_path.parent().unwrap_or(dir);
                let mut temporary = tempfile::NamedTempFile::new_in(parent).map_err(|e| {
                    failed(anyhow::anyhow!("writing into {}: {e}", parent.display()))
                })?;
                let mut hasher = Sha256::new();
                let mut written = 0u64;
                loop {
                    let chunk = response.chunk().await.map_err(|e| {
                        failed(anyhow::anyhow!(
                            "downloading {path:?} of artifact {name:?} broke off: {e}"
                        ))
                    })?;
                    let Some(chunk) = chunk else { break };
                    hasher.update(&chunk);
                    written += chunk.len() as u64;
                    temporary.write_all(&chunk).map_err(|e| {
                        failed(anyhow::anyhow!("writing {}: {e}", target_path.display()))
                    })?;
                }
                let actual = hex_of(&hasher.finalize());
                if actual != expected {
                    return Err(failed(anyhow::anyhow!(
                        "file {path:?} of artifact {name:?} arrived with SHA-256 {actual} ({written} bytes), not the {expected} the server lists; it was not written"
                    )));
                }
                #[cfg(unix)]
                if let Some(mode) = entry["mode"].as_u64() {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = temporary
                        .as_file()
                        .set_permissions(std::fs::Permissions::from_mode(mode as u32 & 0o777));
                }
                temporary.persist(&target_path).map_err(|e| {
                    failed(anyhow::anyhow!("writing {}: {e}", target_path.display()))
                })?;
                files += 1;
                size += written;
            }
            _ => {}
        }
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
