//! What the CLI's test binaries share: where the repository is, what a
//! `mizzen` command left, and starting `mizzen server`.

#![allow(dead_code, reason = "each test binary uses only some of these helpers")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The repository's root (examples/ and deploy/ are read from there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A finished `mizzen` command.
pub struct Ran {
    /// Its exit code (-1 when a signal ended it).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Starts `mizzen server` on loopback (a free port, or `port` to come back
/// on the same address) over `data_dir`, with root's password, `args` and
/// `env`. Its stderr is appended to `log`, so that a restart keeps the first
/// run's lines. Returns the process and the URL it says it listens on.
pub fn spawn_server(
    data_dir: &Path,
    log: &Path,
    root_password: &str,
    args: &[String],
    env: &[(String, String)],
    port: Option<&str>,
) -> (Child, String) {
    let listen = format!("127.0.0.1:{}", port.unwrap_or("0"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args(["server", "--listen", &listen, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("MIZZEN_ROOT_PASSWORD", root_password)
        .env(
            "MIZZEN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        )
        .env("MIZZEN_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mizzen server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log_file = log.to_path_buf();
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("mizzen server listening on ") {
                let _ = tx.send(url.to_string());
            }
            let _ = writeln!(file, "{line}");
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => (child, url),
        Err(_) => panic!(
            "the server did not say where it listens\n--- server stderr\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// GitHub's `X-Hub-Signature-256` for `body` signed with `secret`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}
