//! Project sources: checking out a project's git settings (or copying a local
//! project directory) for a job's `sourceMountPath` and for scripts kept in a
//! repository.
//!
//! Git runs as the `git` command, as Brigade's git-initializer did, so every
//! protocol and credential setup users have works. The rules of Brigade apply:
//! a commit wins over a ref, a ref may be `refs/heads/x`, `refs/tags/x` or a
//! short name, no ref means the default branch, and `initSubmodules` checks out
//! submodules too.
//!
//! A server fetching for a tenant ([`Source::TenantGit`]) resolves the host
//! first and refuses an address that reaches the server itself or its
//! cloud's metadata service ([`is_internal_address`]); git then connects to
//! the addresses checked (curl's resolve list for HTTP, the address in the
//! URL with the name as SSH's host key alias), follows no redirect, and
//! speaks only HTTP(S) and SSH, submodules included. A refused fetch never
//! reaches the address, so its error says nothing of what answers there.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mizzen_host_api::types::GitConfig;

use crate::executor::Source;
use crate::project::{CloneHost, clone_url_host, is_internal_address, server_clone_url_problem};

/// Why a checkout failed. Git's own message is kept: it is what users know.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// git failed.
    #[error("git {action} failed: {message}")]
    Git {
        /// What was being done (`fetch of main from https://...`).
        action: String,
        /// git's message (its last lines of error output).
        message: String,
    },
    /// A server will not fetch a tenant's repository from there.
    #[error("{0}")]
    Refused(String),
    /// Copying the project directory failed.
    #[error("copying {} failed: {source}", path.display())]
    Copy {
        /// The file that could not be copied.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// git's error output is kept up to this many bytes (its last lines say
/// what went wrong; the rest is progress).
const MAX_GIT_MESSAGE_BYTES: usize = 4096;

/// A name's addresses are awaited this long when a tenant's repository is
/// fetched: a name whose servers never answer must not hold the worker.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks `source` out into `dest`, which must not exist or be empty.
pub async fn checkout(source: &Source, dest: &Path) -> Result<(), SourceError> {
    match source {
        Source::Git(git) => checkout_git(git, dest, None).await,
        Source::TenantGit(git) => checkout_git(git, dest, Some(Pins::default())).await,
        Source::Directory(dir) => {
            let (from, to) = (dir.clone(), dest.to_path_buf());
            tokio::task::spawn_blocking(move || copy_dir(&from, &to))
                .await
                .unwrap_or_else(|e| {
                    Err(SourceError::Copy {
                        path: dir.clone(),
                        source: std::io::Error::other(e),
                    })
                })
        }
    }
}

/// How git fetches a tenant's repository: settings and environment that
/// hold it to the addresses checked.
#[derive(Debug, Default)]
struct Pins {
    /// `-c` settings for every git command (inherited by the git processes
    /// it starts, such as a submodule's clone).
    config: Vec<String>,
    /// Environment for every git command.
    env: Vec<(String, String)>,
}

impl Pins {
    /// Checks the host of `url` (refusing an internal address, resolving a
    /// name) and pins git to what was checked; returns the URL git is to
    /// fetch (the same, but for SSH, where it names the address).
    async fn pin(&mut self, url: &str) -> Result<String, SourceError> {
        if let Some(problem) = server_clone_url_problem(url) {
            return Err(SourceError::Refused(problem));
        }
        let CloneHost { host, port, ssh } =
            clone_url_host(url).map_err(|e| SourceError::Refused(e.to_string()))?;
        let name = match host {
            // Checked above, and nothing to resolve.
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => return Ok(url.to_string()),
            url::Host::Domain(name) => name,
        };
        let addresses = resolve(url, &name, port).await?;
        if addresses.iter().any(|&a| is_internal_address(a)) {
            return Err(SourceError::Refused(format!(
                "cloneURL {url:?}: {name} resolves to the server itself or its cloud's metadata service, not a git host"
            )));
        }
        let bracketed = |a: &IpAddr| match a {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if ssh {
            // ssh resolves the name itself: give it the address, and the
            // name for its known hosts.
            let path = url
                .strip_prefix("git@")
                .and_then(|rest| rest.split_once(':'))
                .map_or("", |(_, path)| path);
            let command = std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh".into());
            self.env.push((
                "GIT_SSH_COMMAND".into(),
                format!("{command} -o HostKeyAlias={name}"),
            ));
            return Ok(format!("git@{}:{path}", bracketed(&addresses[0])));
        }
        let list: Vec<String> = addresses.iter().map(bracketed).collect();
        self.config.push(format!(
            "http.curloptResolve={name}:{port}:{}",
            list.join(",")
        ));
        Ok(url.to_string())
    }

    /// The settings every tenant fetch runs with: HTTP(S) and SSH only (no
    /// file://, git:// or ext:: from a submodule), and no redirect, which
    /// could lead to an address nobody checked.
    fn restrictions() -> [&'static str; 5] {
        [
            "protocol.allow=never",
            "protocol.http.allow=always",
            "protocol.https.allow=always",
            "protocol.ssh.allow=always",
            "http.followRedirects=false",
        ]
    }
}

/// The addresses of `name`, from the system's resolver, within
/// [`RESOLVE_TIMEOUT`].
async fn resolve(url: &str, name: &str, port: u16) -> Result<Vec<IpAddr>, SourceError> {
    let lookup = tokio::net::lookup_host((name, port));
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| {
            SourceError::Refused(format!(
                "cloneURL {url:?}: resolving {name} took longer than {}s",
                RESOLVE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            SourceError::Refused(format!("cloneURL {url:?}: cannot resolve {name}: {e}"))
        })?;
    let addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    if addresses.is_empty() {
        return Err(SourceError::Refused(format!(
            "cloneURL {url:?}: {name} has no address"
        )));
    }
    Ok(addresses)
}

/// Checks a repository out; `pins` (a tenant's fetch) holds git to checked
/// addresses.
async fn checkout_git(
    git: &GitConfig,
    dest: &Path,
    mut pins: Option<Pins>,
) -> Result<(), SourceError> {
    let url = match &mut pins {
        Some(pins) => pins.pin(&git.clone_url).await?,
        None => git.clone_url.clone(),
    };
    let dest_text = dest.to_string_lossy().into_owned();
    let pins = &mut pins;
    run_git(
        None,
        &["init", "--quiet", &dest_text],
        "init",
        pins.as_ref(),
    )
    .await?;
    run_git(
        Some(dest),
        &["remote", "add", "origin", "--", &url],
        "remote add",
        pins.as_ref(),
    )
    .await?;
    // The commit if there is one, else the ref, else the remote's default
    // branch (HEAD). A shallow fetch of exactly that is all a job needs.
    let wanted = if !git.commit.is_empty() {
        git.commit.as_str()
    } else if !git.git_ref.is_empty() {
        git.git_ref.as_str()
    } else {
        "HEAD"
    };
    let action = format!("fetch of {wanted} from {}", git.clone_url);
    run_git(
        Some(dest),
        &["fetch", "--quiet", "--depth", "1", "origin", "--", wanted],
        &action,
        pins.as_ref(),
    )
    .await?;
    run_git(
        Some(dest),
        &["checkout", "--quiet", "--detach", "FETCH_HEAD"],
        "checkout",
        pins.as_ref(),
    )
    .await?;
    if git.init_submodules {
        if let Some(pins) = pins {
            // The submodules' URLs are the tenant's too.
            for url in submodule_urls(dest).await? {
                pins.pin(&url).await?;
            }
        }
        run_git(
            Some(dest),
            &[
                "submodule",
                "update",
                "--quiet",
                "--init",
                "--recursive",
                "--depth",
                "1",
            ],
            "submodule update",
            pins.as_ref(),
        )
        .await?;
    }
    Ok(())
}

/// The absolute URLs in a checkout's `.gitmodules` (relative ones are on
/// the repository's own host).
async fn submodule_urls(dest: &Path) -> Result<Vec<String>, SourceError> {
    if !dest.join(".gitmodules").exists() {
        return Ok(Vec::new());
    }
    let output = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dest)
        .args([
            "config",
            "--file",
            ".gitmodules",
            "--get-regexp",
            r"^submodule\..*\.url$",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| SourceError::Git {
            action: "reading .gitmodules".into(),
            message: format!("cannot run git: {e}"),
        })?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_, url)| url.trim().to_string()))
        .filter(|url| !url.starts_with("./") && !url.starts_with("../"))
        .collect())
}

async fn run_git(
    dir: Option<&Path>,
    args: &[&str],
    action: &str,
    pins: Option<&Pins>,
) -> Result<(), SourceError> {
    let mut command = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    // Never prompt (there is no terminal to answer), and never run a
    // command through the `ext::` transport (a URL could name any program).
    command.args([
        "-c",
        "protocol.ext.allow=never",
        "-c",
        "advice.detachedHead=false",
    ]);
    if let Some(pins) = pins {
        for setting in Pins::restrictions()
            .into_iter()
            .chain(pins.config.iter().map(String::as_str))
        {
            command.args(["-c", setting]);
        }
        command.envs(pins.env.iter().map(|(k, v)| (k, v)));
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| SourceError::Git {
        action: action.to_string(),
        message: format!("cannot run git: {e}"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // On a character's boundary: a remote's message may hold any text.
    let tail =
        &stderr[stderr.floor_char_boundary(stderr.len().saturating_sub(MAX_GIT_MESSAGE_BYTES))..];
    let message = tail.trim();
    Err(SourceError::Git {
        action: action.to_string(),
        message: if message.is_empty() {
            format!("git exited with {}", output.status)
        } else {
            message.replace('\n', "; ")
        },
    })
}

/// Copies a directory tree; symbolic links are copied as links.
fn copy_dir(from: &Path, to: &Path) -> Result<(), SourceError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Copy { path, source }
    };
    std::fs::create_dir_all(to).map_err(error(to))?;
    for entry in std::fs::read_dir(from).map_err(error(from))? {
        let entry = entry.map_err(error(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(error(&source))?;
        if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(error(&source))?;
            std::os::unix::fs::symlink(link, &target).map_err(error(&target))?;
        } else {
            std::fs::copy(&source, &target).map_err(error(&source))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// A repository with two commits on `main` and a tag on the first.
    fn repository() -> (tempfile::TempDir, String, String) {
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(repo.path().join("version"), "one\n").unwrap();
        git(repo.path(), &["add", "version"]);
        git(repo.path(), &["commit", "--quiet", "-m", "one"]);
        git(repo.path(), &["tag", "v1"]);
        let first = git(repo.path(), &["rev-parse", "HEAD"]);
        std::fs::write(repo.path().join("version"), "two\n").unwrap();
        git(repo.path(), &["commit", "--quiet", "-am", "two"]);
        let second = git(repo.path(), &["rev-parse", "HEAD"]);
        (repo, first, second)
    }

    fn config(url: String, commit: &str, git_ref: &str) -> Source {
        Source::Git(GitConfig {
            clone_url: url,
            commit: commit.into(),
            git_ref: git_ref.into(),
            init_submodules: false,
        })
    }

    #[tokio::test]
    async fn a_commit_wins_over_a_ref_and_no_ref_means_the_default_branch() {
        let (repo, first, _second) = repository();
        let url = format!("file://{}", repo.path().display());
        for (source, expected) in [
            (config(url.clone(), &first, "main"), "one\n"),
            (config(url.clone(), "", "refs/tags/v1"), "one\n"),
            (config(url.clone(), "", "main"), "two\n"),
            (config(url.clone(), "", ""), "two\n"),
        ] {
            let dest = tempfile::tempdir().unwrap();
            let checkout_dir = dest.path().join("src");
            checkout(&source, &checkout_dir).await.unwrap();
            assert_eq!(
                std::fs::read_to_string(checkout_dir.join("version")).unwrap(),
                expected
            );
        }
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_gits_message() {
        let (repo, _, _) = repository();
        let url = format!("file://{}", repo.path().display());
        let dest = tempfile::tempdir().unwrap();
        let err = checkout(&config(url, "", "non-existent"), &dest.path().join("src"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("fetch of non-existent"), "{err}");
        assert!(
            err.contains("couldn't find remote ref non-existent"),
            "{err}"
        );
    }

    /// A name other than `localhost` that the machine's hosts file maps to
    /// a loopback address (the machine's own name here: `vm`, `runsc`).
    fn name_of_loopback() -> String {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        hosts
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('#').next()?.split_whitespace();
                let ip: IpAddr = fields.next()?.parse().ok()?;
                ip.is_loopback().then_some(fields)
            })
            .flatten()
            .find(|name| *name != "localhost" && !name.ends_with(".localhost"))
            .expect("/etc/hosts names a loopback address other than localhost")
            .to_string()
    }

    /// A server fetching for a tenant refuses every form of an internal
    /// address, and a name that resolves to one, before git connects: the
    /// listener on 127.0.0.1 is never reached. (`mizzen run`'s own fetch of
    /// the same URL does reach it, which shows the listener would count.)
    #[tokio::test]
    async fn a_tenants_fetch_never_reaches_an_internal_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = || std::iter::from_fn(|| listener.accept().ok()).count();
        let name = name_of_loopback();
        let urls = [
            format!("http://127.1:{port}/x.git"),
            format!("http://2130706433:{port}/x.git"),
            format!("http://0x7f.0.0.1:{port}/x.git"),
            format!("http://0177.0.0.1:{port}/x.git"),
            format!("http://[::ffff:127.0.0.1]:{port}/x.git"),
            format!("http://[::1]:{port}/x.git"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            format!("http://localhost:{port}/x.git"),
            format!("http://{name}:{port}/x.git"),
            format!("https://{name}:{port}/x.git"),
            "git@127.1:x.git".to_string(),
            format!("git@{name}:x.git"),
        ];
        for url in &urls {
            let dest = tempfile::tempdir().unwrap();
            let tenant = Source::TenantGit(GitConfig {
                clone_url: url.clone(),
                ..GitConfig::default()
            });
            // A fetch that went ahead waits on the listener, which never
            // answers: bounded, so that it fails instead of hanging.
            let fetched = tokio::time::timeout(
                Duration::from_secs(30),
                checkout(&tenant, &dest.path().join("tenant")),
            )
            .await;
            let Ok(Err(SourceError::Refused(message))) = fetched else {
                panic!("{url}: fetched for a tenant ({fetched:?})");
            };
            assert!(message.starts_with("cloneURL"), "{url}: {message}");
        }
        assert_eq!(connections(), 0, "a tenant's fetch reached the listener");
        // The same URL fetched for `mizzen run`'s own project connects.
        let dest = tempfile::tempdir().unwrap();
        let url = format!("http://127.1:{port}/x.git");
        let fetching =
            tokio::spawn(
                async move { checkout(&config(url, "", ""), &dest.path().join("src")).await },
            );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen += connections();
        }
        fetching.abort();
        assert!(seen > 0, "git never connected: the listener counts nothing");
    }

    #[tokio::test]
    async fn a_directory_is_copied_with_its_links() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir(from.path().join("sub")).unwrap();
        std::fs::write(from.path().join("sub/file"), "content").unwrap();
        std::os::unix::fs::symlink("sub/file", from.path().join("link")).unwrap();
        let to = tempfile::tempdir().unwrap();
        let dest = to.path().join("copy");
        checkout(&Source::Directory(from.path().to_path_buf()), &dest)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/file")).unwrap(),
            "content"
        );
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("sub/file")
        );
    }
}
