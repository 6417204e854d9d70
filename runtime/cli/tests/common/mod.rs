//! What the CLI's test binaries share: where the repository is, what a
//! `mizzen` command left, and starting `mizzen server`.

#![allow(dead_code, reason = "each test binary uses only some of these helpers")]

pub mod collectors;

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
    spawn_server_under(None, data_dir, log, root_password, args, env, port)
}

/// [`spawn_server`], under a limit of `nofile` open descriptors (soft and
/// hard, so that the server cannot raise it) when one is given. The shell
/// that sets the limit `exec`s the server, so the child is the server.
pub fn spawn_server_under(
    nofile: Option<u64>,
    data_dir: &Path,
    log: &Path,
    root_password: &str,
    args: &[String],
    env: &[(String, String)],
    port: Option<&str>,
) -> (Child, String) {
    let listen = format!("127.0.0.1:{}", port.unwrap_or("0"));
    let mut command = match nofile {
        None => Command::new(env!("CARGO_BIN_EXE_mizzen")),
        Some(nofile) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_mizzen"));
            shell
        }
    };
    let mut child = command
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

/// Connections to `address` that each send half a request head and then
/// nothing (a slow client, or an attacker holding descriptors).
pub fn stalled_clients(address: &str, count: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    let address: std::net::SocketAddr = address.parse().unwrap();
    (0..count)
        .filter_map(|_| {
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10)).ok()?;
            stream
                .write_all(b"GET /v2/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
                .ok()?;
            Some(stream)
        })
        .collect()
}

/// Sends `start`, then `trickle` one byte every 100 ms (if not empty), and
/// reads until the server closes the connection. What the server answered,
/// or `None` when it still held the connection open after a minute.
pub fn slow_request(address: &str, start: &[u8], trickle: &'static [u8]) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(start).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for byte in trickle
            .iter()
            .cycle()
            .take(if trickle.is_empty() { 0 } else { 600 })
        {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(&[*byte]).is_err() {
                return; // the server closed the connection
            }
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let ended = match stream.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = trickler.join();
    ended.then(|| String::from_utf8_lossy(&answer).into_owned())
}

/// A GET with a one-minute timeout on a connection of its own; the body
/// of a 200, or `None` when there was none.
pub fn raw_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (address, path) = rest.split_at(rest.find('/')?);
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A fresh PostgreSQL database for one test, or `None` (with a message)
/// when no server is configured.
pub fn postgres_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("MIZZEN_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED {test}: MIZZEN_TEST_DATABASE_URL is not set (scripts/test sets it)");
        return None;
    };
    let name = format!("mizzen_test_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .args([&admin, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql runs");
    assert!(status.success(), "cannot create database {name}");
    let base = admin.rsplit_once('/').expect("URL with a database").0;
    Some(format!("{base}/{name}"))
}

/// The private registry scripts/setup-registry starts: its address, user
/// and password, or `None` (the test says it is skipped).
pub fn private_registry(test: &str) -> Option<(String, String, String)> {
    let value = std::env::var("MIZZEN_TEST_REGISTRY").unwrap_or_default();
    match value.split_whitespace().collect::<Vec<_>>()[..] {
        [address, user, password] => Some((address.into(), user.into(), password.into())),
        _ => {
            eprintln!(
                "SKIPPED {test}: MIZZEN_TEST_REGISTRY is not set (scripts/setup-registry prints it; scripts/test sets it)"
            );
            None
        }
    }
}
