//! `mizzen job-files`: the helper that Mizzen's own image runs beside a
//! Kubernetes job's containers. `restore` (an init container) fills the
//! job's volumes with the artifacts and caches it restores; `save` (a
//! sidecar that Kubernetes stops once the job's primary container has
//! exited) sends the trees the job saves and writes the server's signed
//! receipts to its termination message, from which the executor keeps
//! them. Both reach the server with the job's token (a file of a Secret),
//! which opens that job's declared entries and nothing else.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;

/// The root component of the trees' tar streams, both ways (the server's
/// `TREE_ROOT`).
const TREE_ROOT: &str = "tree";

/// Where Kubernetes reads a container's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

#[derive(Args)]
pub struct JobFilesArgs {
    #[command(subcommand)]
    command: JobFilesCommand,
}

#[derive(Subcommand)]
enum JobFilesCommand {
    /// Restore the job's artifacts and caches into directories
    Restore(Transfer),
    /// Save directories as the job's artifacts and caches
    Save(SaveArgs),
}

#[derive(Args)]
struct Transfer {
    /// The Mizzen server's URL, as the job's pod reaches it
    #[arg(long)]
    server: String,
    /// The file holding the job's token
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Each entry (its index among the job's restores or saves) and its
    /// directory
    #[arg(value_name = "INDEX=DIR", value_parser = parse_entry, required = true)]
    entries: Vec<(usize, PathBuf)>,
}

#[derive(Args)]
struct SaveArgs {
    #[command(flatten)]
    transfer: Transfer,
    /// Where the receipts are written for the executor
    #[arg(long, value_name = "FILE", default_value = TERMINATION_LOG)]
    receipts: PathBuf,
    /// Wait for SIGTERM before saving: as a sidecar, Kubernetes sends it
    /// once the job's primary container has exited
    #[arg(long)]
    after_sigterm: bool,
}

/// One line of what the helper did, for the container's log.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "[mizzen] {line}");
}

fn parse_entry(text: &str) -> Result<(usize, PathBuf), String> {
    let (index, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected INDEX=DIR"))?;
    let index = index
        .parse()
        .map_err(|e| format!("{text:?}: the index: {e}"))?;
    Ok((index, PathBuf::from(dir)))
}

pub async fn run(args: JobFilesArgs) -> anyhow::Result<()> {
    match args.command {
        JobFilesCommand::Restore(transfer) => restore(&transfer).await,
        JobFilesCommand::Save(save_args) => {
            if save_args.after_sigterm {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("waiting for SIGTERM")?;
                term.recv().await;
            }
            let outcome = save(&save_args.transfer).await;
            // The executor reads the termination message: the receipts, or
            // why there are none.
            let message = match &outcome {
                Ok(receipts) => receipts.join("\n"),
                Err(e) => format!("error: {e:#}"),
            };
            std::fs::write(&save_args.receipts, message).with_context(|| {
                format!("writing the receipts to {}", save_args.receipts.display())
            })?;
            outcome.map(|_| ())
        }
    }
}

struct Server {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Server {
    fn of(transfer: &Transfer) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(&transfer.token_file)
            .with_context(|| format!("reading the job's token {}", transfer.token_file.display()))?
            .trim()
            .to_string();
        Ok(Self {
            http: reqwest::Client::new(),
            url: transfer.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }
}

/// The server's refusal, as it said it.
async fn refused(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or(body);
    anyhow!("the server answered {status}: {reason}")
}

async fn restore(transfer: &Transfer) -> anyhow::Result<()> {
    let server = Server::of(transfer)?;
    for (index, dir) in &transfer.entries {
        let response = server
            .request(
                reqwest::Method::GET,
                &format!("/v2/job-files/restores/{index}"),
            )
            .send()
            .await
            .with_context(|| format!("restore {index} into {}", dir.display()))?;
        let said = response
            .headers()
            .get("mizzen-restored")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => {
                say(&format!("{} starts empty (cache {said})", dir.display()));
                continue;
            }
            status if status.is_success() => {}
            _ => return Err(refused(response).await).context(format!("restore {index}")),
        }
        let (files, bytes) = extract(response, dir)
            .await
            .with_context(|| format!("restore {index} into {}", dir.display()))?;
        say(&format!(
            "[mizzen] restored {said} into {} ({files} files, {bytes} bytes)",
            dir.display()
        ));
    }
    Ok(())
}

/// Extracts the tar stream `response` carries into `dir`, beneath its
/// root component; the files and bytes it held.
async fn extract(response: reqwest::Response, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        extract_tar(std::io::BufReader::with_capacity(1 << 16, reader), &dir)
    })
    .await?
}

/// Extracts the tar stream `reader` into `dir`, beneath its root component
/// ([`TREE_ROOT`]); the files and bytes it held.
fn extract_tar(reader: impl std::io::Read, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut archive = tar::Archive::new(reader);
    // As root (the init container), what is restored is the job's user's,
    // as the server wrote it; otherwise the helper's own.
    archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
    archive.set_preserve_permissions(true);
    let (mut files, mut bytes) = (0, 0);
    for entry in archive.entries().context("reading the tree")? {
        let mut entry = entry.context("reading the tree")?;
        let path = entry.path().context("an entry's path")?.into_owned();
        let Ok(relative) = path.strip_prefix(TREE_ROOT) else {
            bail!("entry {} is not beneath {TREE_ROOT}/", path.display());
        };
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!("entry {} leads out of the tree", path.display());
        }
        if relative.as_os_str().is_empty() {
            continue;
        }
        // Nothing is written through a link the tree made earlier (a link
        // `x` to `/etc`, then `x/passwd`): every directory on the way must
        // be a real one.
        let mut on_the_way = dir.to_path_buf();
        for component in relative.parent().into_iter().flat_map(Path::components) {
            on_the_way.push(component);
            if std::fs::symlink_metadata(&on_the_way).is_ok_and(|m| m.file_type().is_symlink()) {
                bail!("entry {} leads through a symbolic link", path.display());
            }
        }
        if entry.header().entry_type().is_file() {
            files += 1;
            bytes += entry.size();
        }
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("making the directory of {}", relative.display()))?;
        }
        entry
            .unpack(&target)
            .with_context(|| format!("writing {}", relative.display()))?;
    }
    Ok((files, bytes))
}

async fn save(transfer: &Transfer) -> anyhow::Result<Vec<String>> {
    let server = Server::of(transfer)?;
    let mut receipts = Vec::new();
    for (index, dir) in &transfer.entries {
        let wanted = server
            .request(
                reqwest::Method::GET,
                &format!("/v2/job-files/saves/{index}"),
            )
            .send()
            .await
            .with_context(|| format!("save {index} from {}", dir.display()))?;
        match wanted.status() {
            reqwest::StatusCode::NO_CONTENT => {
                say(&format!(
                    "[mizzen] {} is kept already: not saved again",
                    dir.display()
                ));
                continue;
            }
            status if status.is_success() => {}
            _ => return Err(refused(wanted).await).context(format!("save {index}")),
        }
        let (writer, reader) = tokio::io::duplex(1 << 16);
        let root = dir.clone();
        let packing = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let writer = tokio_util::io::SyncIoBridge::new(writer);
            let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 16, writer));
            // Links are saved as links, never followed out of the tree.
            builder.follow_symlinks(false);
            builder
                .append_dir_all(TREE_ROOT, &root)
                .with_context(|| format!("reading {}", root.display()))?;
            builder.into_inner()?.flush()?;
            Ok(())
        });
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader));
        let sent = server
            .request(
                reqwest::Method::PUT,
                &format!("/v2/job-files/saves/{index}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(body)
            .send()
            .await;
        // A tree that could not be read says so rather than the cut
        // stream's complaint.
        packing.await??;
        let response = sent.with_context(|| format!("save {index} from {}", dir.display()))?;
        if !response.status().is_success() {
            return Err(refused(response).await).context(format!("save {index}"));
        }
        let receipt = response.text().await.context("reading the receipt")?;
        say(&format!("sent {} (save {index})", dir.display()));
        receipts.push(receipt.trim().to_string());
    }
    Ok(receipts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(2);
                    builder.append_data(&mut header, path, &b"hi"[..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_restore_writes_beneath_its_directory_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tree = tar_of(&[("tree/a.txt", None), ("tree/b/c.txt", None)]);
        assert_eq!(extract_tar(&tree[..], dir.path()).unwrap(), (2, 4));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b/c.txt")).unwrap(),
            "hi"
        );

        let target = outside.path().to_str().unwrap();
        let through = tar_of(&[("tree/x", Some(target)), ("tree/x/evil", None)]);
        let error = extract_tar(&through[..], dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("tree/x/evil leads through a symbolic link"),
            "{error:#}"
        );
        assert!(!outside.path().join("evil").exists());

        let elsewhere = tar_of(&[("other/a.txt", None)]);
        let error = extract_tar(&elsewhere[..], dir.path()).unwrap_err();
        assert!(
            error.to_string().contains("is not beneath tree/"),
            "{error:#}"
        );
    }
}
