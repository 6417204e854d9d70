//! `mizzen server` driven by Brigade's own JavaScript SDK,
//! `@brigadecore/brigade-sdk` (pinned in tests/brigade-sdk/package.json):
//! tests/brigade-sdk/sdk-test.js creates a project and a secret, creates an
//! event, watches its worker to SUCCEEDED over SSE, streams its logs, lists
//! and deletes — every path, body, status code and SSE frame as the SDK
//! builds and checks them.
//!
//! Needs `node` and `npm` (the SDK comes from the npm registry with
//! `npm ci`); without them the test says so and does nothing.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ROOT_PASSWORD: &str = "brigade-sdk-test-password";

/// How long the SDK script may take (its own watch gives up after 60 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn sdk_dir() -> PathBuf {
    common::repo().join("tests/brigade-sdk")
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `npm ci`, unless node_modules was installed from the current lock file
/// (npm's hidden lock file is newer than package.json and
/// package-lock.json).
fn npm_ci(dir: &Path) {
    let hidden = modified(&dir.join("node_modules/.package-lock.json"));
    let sdk = dir.join("node_modules/@brigadecore/brigade-sdk/package.json");
    let newest_input = [dir.join("package.json"), dir.join("package-lock.json")]
        .iter()
        .filter_map(|p| modified(p))
        .max();
    if sdk.exists()
        && let (Some(hidden), Some(input)) = (hidden, newest_input)
        && hidden >= input
    {
        eprintln!("tests/brigade-sdk/node_modules is up to date; skipping npm ci");
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("npm runs");
    assert!(
        output.status.success(),
        "npm ci in {} failed: {}\n--- stdout\n{}--- stderr\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A `mizzen server` on a loopback port with its own data directory,
/// killed when dropped; its stderr is kept for failure messages.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    _data_dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let log = data_dir.path().join("server.log");
        let (child, url) = common::spawn_server(
            data_dir.path(),
            &log,
            ROOT_PASSWORD,
            &["--executor".to_string(), "none".to_string()],
            &[],
            None,
        );
        Self {
            child,
            url,
            log,
            _data_dir: data_dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A root session token: `POST /v2/sessions?root=true` with Basic auth.
    fn root_token(&self) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, text) = runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(format!("{}/v2/sessions?root=true", self.url))
                .basic_auth("root", Some(ROOT_PASSWORD))
                .send()
                .await
                .expect("the server answers");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        });
        assert_eq!(
            status,
            201,
            "root login: {text}\n--- server stderr\n{}",
            self.log()
        );
        let body: Value = serde_json::from_str(&text).expect("a JSON token");
        body["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no token value in {body}"))
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pipe to its end on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn brigade_js_sdk_drives_the_server() {
    for program in ["node", "npm"] {
        if !installed(program) {
            eprintln!(
                "SKIPPED brigade_js_sdk_drives_the_server: `{program}` is not installed \
                 (the test runs Brigade's JavaScript SDK with Node.js)"
            );
            return;
        }
    }
    let dir = sdk_dir();
    npm_ci(&dir);

    let server = Server::start();
    let token = server.root_token();

    let mut script = Command::new("node")
        .arg("sdk-test.js")
        .current_dir(&dir)
        .env("MIZZEN_API_ADDRESS", &server.url)
        .env("MIZZEN_API_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = collect(script.stdout.take().unwrap());
    let stderr = collect(script.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = script.kill();
            let _ = script.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let ended = match status {
        Some(status) => status.to_string(),
        None => format!("killed after {} s", SCRIPT_TIMEOUT.as_secs()),
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "node sdk-test.js: {ended}\n--- stdout\n{stdout}--- stderr\n{stderr}--- server stderr\n{}",
        server.log()
    );
    assert!(stdout.contains("ok: every step passed"), "{stdout}");
    eprint!("--- sdk-test.js\n{stdout}{stderr}");
}
