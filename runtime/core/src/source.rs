//! Project sources: checking out a project's git settings (or copying a local
//! project directory) for a job's `sourceMountPath` and for scripts kept in a
//! repository.
//!
//! Git runs as the `git` command, as Brigade's git-initializer did, so every
//! protocol and credential setup users have works. The rules of Brigade apply:
//! a commit wins over a ref, a ref may be `refs/heads/x`, `refs/tags/x` or a
//! short name, no ref means the default branch, and `initSubmodules` checks out
//! submodules too.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use mizzen_host_api::types::GitConfig;

use crate::executor::Source;

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

/// Checks `source` out into `dest`, which must not exist or be empty.
pub async fn checkout(source: &Source, dest: &Path) -> Result<(), SourceError> {
    match source {
        Source::Git(git) => checkout_git(git, dest).await,
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

async fn checkout_git(git: &GitConfig, dest: &Path) -> Result<(), SourceError> {
    let dest_text = dest.to_string_lossy().into_owned();
    run_git(None, &["init", "--quiet", &dest_text], "init").await?;
    run_git(
        Some(dest),
        &["remote", "add", "origin", "--", &git.clone_url],
        "remote add",
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
    )
    .await?;
    run_git(
        Some(dest),
        &["checkout", "--quiet", "--detach", "FETCH_HEAD"],
        "checkout",
    )
    .await?;
    if git.init_submodules {
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
        )
        .await?;
    }
    Ok(())
}

async fn run_git(dir: Option<&Path>, args: &[&str], action: &str) -> Result<(), SourceError> {
    let mut command = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    // Never prompt (there is no terminal to answer), and never run a
    // command through the `ext::` transport (a URL could name any program).
    command
        .args([
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "advice.detachedHead=false",
        ])
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
    let tail = &stderr[stderr.len().saturating_sub(MAX_GIT_MESSAGE_BYTES)..];
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
