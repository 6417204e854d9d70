//! Log collectors for the forwarding tests, written by others: the fluent
//! org's Forward-protocol server (npm's `@fluent-org/logger`) and an OTLP
//! receiver decoding with the official generated classes (PyPI's
//! `opentelemetry-proto`). scripts/setup-collectors installs both and the
//! scripts that run them; `MIZZEN_TEST_COLLECTORS` names its directory
//! (scripts/test sets it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The collectors' directory, or `None` (the test says it is skipped).
pub fn dir(test: &str) -> Option<PathBuf> {
    match std::env::var("MIZZEN_TEST_COLLECTORS") {
        Ok(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => {
            eprintln!(
                "SKIPPED {test}: MIZZEN_TEST_COLLECTORS is not set (scripts/setup-collectors prints it; scripts/test sets it)"
            );
            None
        }
    }
}

/// Which receiver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Forward protocol v1.
    Fluentd,
    /// OTLP over HTTP with protobuf.
    Otlp,
}

/// A receiver run as a child process, writing what it received as JSON
/// lines; killed and started again on the same port.
pub struct Receiver {
    kind: Kind,
    dir: PathBuf,
    out: PathBuf,
    extra: Vec<String>,
    pub port: u16,
    child: Option<Child>,
}

impl Receiver {
    /// Starts a receiver writing into `out`, with extra arguments.
    pub fn start(kind: Kind, dir: &Path, out: &Path, extra: &[&str]) -> Self {
        let mut receiver = Self {
            kind,
            dir: dir.to_path_buf(),
            out: out.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            port: 0,
            child: None,
        };
        receiver.restart();
        receiver
    }

    /// Starts it again (on its port, once it has one).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = self
                .command()
                .arg("--out")
                .arg(&self.out)
                .args(["--port", &self.port.to_string()])
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the receiver starts");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if let Some(port) = line.trim().strip_prefix("listening ") {
                self.port = port.parse().unwrap();
                self.child = Some(child);
                return;
            }
            // The port may still be held by the killed one for a moment.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "the {:?} receiver did not start on port {}",
                self.kind,
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self) -> Command {
        match self.kind {
            Kind::Fluentd => {
                let mut c = Command::new("node");
                c.arg(self.dir.join("fluent-receiver.js"));
                c
            }
            Kind::Otlp => {
                let mut c = Command::new(self.dir.join("venv/bin/python"));
                c.arg(self.dir.join("otlp-receiver.py"));
                c
            }
        }
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything it received so far, a JSON value each.
    pub fn received(&self) -> Vec<Value> {
        received(&self.out)
    }

    /// Waits until `done` holds of what it received, or panics with it.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the {:?} receiver did not get {what}; it has {} records",
                self.kind,
                got.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The JSON lines of a receiver's output file.
pub fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// A certificate authority and a certificate for `localhost` it signed,
/// made by openssl in `dir`: (the server's key, its certificate, the CA's
/// certificate).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(made.success(), "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("server.pem"),
    ]);
    (
        dir.join("server.key"),
        dir.join("server.pem"),
        dir.join("ca.pem"),
    )
}
