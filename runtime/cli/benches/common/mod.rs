//! What the server benchmarks share: a real `mizzen server` on a data
//! directory of its own, and the arithmetic of their figures.

#![allow(dead_code, reason = "each benchmark uses only some of these")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

pub const PASSWORD: &str = "bench";

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Server {
    child: Child,
    pub url: String,
    _data: Option<tempfile::TempDir>,
}

impl Server {
    /// The server's process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the server's process has used so far.
    pub fn cpu(&self) -> Duration {
        process_cpu(self.child.id())
    }
}

/// A process's CPU time (user and system) from /proc, in the kernel's
/// clock ticks of 1/100 s (Linux's USER_HZ on every architecture it runs).
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with `extra` arguments (PostgreSQL when
/// `MIZZEN_BENCH_DATABASE_URL` is set) on a data directory of its own.
pub fn start_server(extra: &[String]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut server = start_server_on(data.path(), extra);
    server._data = Some(data);
    server
}

/// A server on `data_dir`, which outlives it.
pub fn start_server_on(data_dir: &Path, extra: &[String]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mizzen"));
    command
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--executor",
            "none",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--max-workers", "1000", "--max-workers-per-project", "1000"])
        .args(extra)
        .env("MIZZEN_ROOT_PASSWORD", PASSWORD)
        .env("MIZZEN_LOG", "warn")
        .env(
            "MIZZEN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Ok(url) = std::env::var("MIZZEN_BENCH_DATABASE_URL") {
        command.args(["--database-url", &url]);
    }
    let mut child = command.spawn().expect("mizzen server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("mizzen server listening on ") {
                let _ = tx.send(url.to_string());
            } else {
                eprintln!("server: {line}");
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server address");
    Server {
        child,
        url,
        _data: None,
    }
}

/// Root's session token on the server at `base`.
pub async fn root_token(client: &reqwest::Client, base: &str) -> String {
    let session: serde_json::Value = client
        .post(format!("{base}/v2/sessions?root=true"))
        .basic_auth("root", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["value"].as_str().unwrap().to_string()
}

pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

pub fn parse_time(text: &str) -> i64 {
    micros(humantime::parse_rfc3339(text).expect("RFC 3339 time"))
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}
