//! Where `mizzen login` keeps the server's address and the token:
//! `$MIZZEN_CONFIG_DIR/config`, else `~/.mizzen/config`, a JSON object
//! `{"apiAddress": ..., "apiToken": ...}` readable by its owner only (as
//! brig's `~/.brigade/config`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

/// The config file's name inside the config directory.
const CONFIG_FILE: &str = "config";

/// A config file holds an address and a token; anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The stored login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The server's base address, such as `https://mizzen.example.com`.
    pub api_address: String,
    /// The bearer token: a root or user session's, or a service account's.
    pub api_token: String,
    /// Accept any certificate from the server (`mizzen login --insecure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_cert_errors: bool,
}

/// `$MIZZEN_CONFIG_DIR/config`, else `~/.mizzen/config`.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MIZZEN_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join(CONFIG_FILE));
    }
    let home = dirs::home_dir()
        .ok_or_else(|| anyhow!("cannot find the home directory; set MIZZEN_CONFIG_DIR"))?;
    Ok(home.join(".mizzen").join(CONFIG_FILE))
}

/// The config at `path`, or `None` when there is no file.
pub fn load(path: &Path) -> anyhow::Result<Option<Config>> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())));
        }
    };
    if size > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "{} is {size} bytes; a config file is at most {MAX_CONFIG_BYTES}",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a mizzen config file (expected {{\"apiAddress\": ..., \"apiToken\": ...}}); run `mizzen login` again",
            path.display()
        )
    })?;
    Ok(Some(config))
}

/// Writes `config` to `path` with mode 0600, creating the directory (0700)
/// if need be. The file is replaced atomically, so a reader never sees half
/// of it and an older, more open mode does not survive.
pub fn save(path: &Path, config: &Config) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    let temp = dir.join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
    let written = write_private(&temp, text.as_bytes()).and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

/// Deletes the config file; a missing one is already forgotten.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot delete {}", path.display()))),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            api_address: "http://127.0.0.1:7000".into(),
            api_token: "s3cret".into(),
            ignore_cert_errors: false,
        }
    }

    #[test]
    fn round_trip_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join(CONFIG_FILE);
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"apiAddress": "http://127.0.0.1:7000", "apiToken": "s3cret"})
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_even_when_it_was_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = Config {
            ignore_cert_errors: true,
            ..sample()
        };
        save(&path, &config).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).unwrap(), Some(config));
        // Nothing but the file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CONFIG_FILE)]);
    }

    #[test]
    fn a_broken_file_says_to_log_in_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "not json").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("mizzen login"), "{err}");
    }
}
