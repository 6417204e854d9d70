//! The bad-input catalogue, in its lettered groups, against a real
//! `mizzen server` on a loopback port: tokens (F), tenants (C6), ids,
//! headers and bodies (C, E), webhook signatures (E2, E3), git URLs (D3) and
//! secret exfiltration (G) through every output a tenant can read. Each test
//! checks the named answer, that the server still answers afterwards (its
//! process alive, `/healthz` ok) and that no secret reached a tenant, and
//! prints `adversarial-server <group>: N cases, 0 host crashes, 0 leaks`.
//!
//! Cases that fail today are `#[ignore]`d with what they show; run them with
//! `cargo test -p mizzen-cli --test adversarial_server -- --ignored`.

mod common;
use common::github_signature;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

const ROOT_PASSWORD: &str = "adversarial-root-password";
/// The secret of the `vault` project. Its two halves are checked too, so a
/// value split across lines counts as leaked.
const SECRET: &str = "s3cr3t-canary-5d1f8e02b7c4a9";
const SECRET_HALVES: [&str; 2] = ["s3cr3t-canary-", "5d1f8e02b7c4a9"];
/// Another tenant's secret.
const OTHER_SECRET: &str = "s3cr3t-canary-other-91c3e7";

// ----- the server ------------------------------------------------------------------

/// A `mizzen server` of this test, killed when dropped.
struct Server {
    child: Child,
    url: String,
    data_dir: tempfile::TempDir,
    root: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_under(None, extra, &[])
    }

    /// A server under a limit of `nofile` open descriptors, when one is
    /// given, with `env`.
    fn start_under(nofile: Option<u64>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let log = data_dir.path().join("server.log");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, url) = common::spawn_server_under(
            nofile,
            data_dir.path(),
            &log,
            ROOT_PASSWORD,
            &args,
            &env,
            None,
        );
        let mut server = Self {
            child,
            url,
            data_dir,
            root: String::new(),
        };
        server.root = server.session();
        server
    }

    /// A new root session's token.
    fn session(&self) -> String {
        let answer = send(
            http()
                .post(format!("{}/v2/sessions?root=true", self.url))
                .basic_auth("root", Some(ROOT_PASSWORD)),
        );
        assert_eq!(answer.status, 201, "{}", answer.text);
        answer.json()["value"].as_str().unwrap().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the process is alive and answers `/healthz`.
    fn survives(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the server exited: {status}\n{}", self.log()));
        }
        let (status, body) = self.call("GET", "/healthz", None, None);
        if status == 200 {
            Ok(())
        } else {
            Err(format!("/healthz answered {status}: {body}"))
        }
    }

    /// The server's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        kib * 1024
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = http().request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = send(request);
        (
            answer.status,
            serde_json::from_str(&answer.text).unwrap_or(Value::String(answer.text)),
        )
    }

    /// Calls as root and expects `status`.
    fn expect(&self, method: &str, path: &str, body: Option<&Value>, status: u16) -> Value {
        let (got, answer) = self.call(method, path, Some(&self.root), body);
        assert_eq!(got, status, "{method} {path}: {answer}\n{}", self.log());
        answer
    }

    /// Creates service account `id`, with no roles; its token.
    fn service_account(&self, id: &str) -> String {
        let account = self.expect(
            "POST",
            "/v2/service-accounts",
            Some(
                &json!({"apiVersion": "brigade.sh/v2", "kind": "ServiceAccount",
                         "metadata": {"id": id}, "description": "an adversarial tenant"}),
            ),
            201,
        );
        account["value"].as_str().unwrap().to_string()
    }

    /// Creates service account `id` as a PROJECT_USER of `project` (a
    /// tenant of it and of nothing else); its token.
    fn project_user(&self, id: &str, project: &str) -> String {
        let token = self.service_account(id);
        self.expect(
            "POST",
            &format!("/v2/projects/{project}/role-assignments"),
            Some(&json!({"role": "PROJECT_USER", "principal": {"type": "SERVICE_ACCOUNT", "id": id}})),
            200,
        );
        token
    }

    fn create_project(&self, document: &Value) {
        self.expect("POST", "/v2/projects", Some(document), 201);
    }

    fn set_secret(&self, project: &str, key: &str, value: &str) {
        self.expect(
            "PUT",
            &format!("/v2/projects/{project}/secrets/{key}"),
            Some(&json!({"key": key, "value": value})),
            200,
        );
    }

    /// Creates a `brigade.sh/cli` `exec` event for `project`; its id.
    fn create_event(&self, project: &str, payload: &str, git: Option<Value>) -> String {
        self.create_event_as(&self.root, project, payload, git)
    }

    fn create_event_as(
        &self,
        token: &str,
        project: &str,
        payload: &str,
        git: Option<Value>,
    ) -> String {
        let mut body = json!({"apiVersion": "brigade.sh/v2", "kind": "Event",
            "projectID": project, "source": "brigade.sh/cli", "type": "exec", "payload": payload});
        if let Some(git) = git {
            body["git"] = git;
        }
        let (status, created) = self.call("POST", "/v2/events", Some(token), Some(&body));
        assert_eq!(status, 201, "{created}");
        created["items"][0]["metadata"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no event created: {created}"))
            .to_string()
    }

    /// Waits for an event to end; the event.
    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let event = self.expect("GET", &format!("/v2/events/{id}"), None, 200);
            let phase = event["worker"]["status"]["phase"]
                .as_str()
                .unwrap_or_default();
            if !matches!(phase, "PENDING" | "STARTING" | "RUNNING") {
                return event;
            }
            assert!(Instant::now() < deadline, "event {id} did not end: {event}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A raw HTTP/1.1 exchange, for requests no client library would send.
    fn raw(&self, request: &[u8]) -> String {
        let address = self.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Sends `head`, then `mebibytes` chunks of 1 MiB (as far as the server
    /// reads them), and reads the answer.
    fn raw_chunked(&self, head: &str, mebibytes: usize) -> String {
        let address = self.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..mebibytes {
            let sent = stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| stream.write_all(&chunk))
                .and_then(|()| stream.write_all(b"\r\n"));
            if sent.is_err() {
                break; // the server stopped reading: it has answered
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A server's answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// Sends a request and reads the whole answer (the tests are synchronous;
/// reqwest is not).
fn send(request: reqwest::RequestBuilder) -> Answer {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    });
    RUNTIME.block_on(async {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            text,
        }
    })
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A project with an inline script.
fn project(id: &str, script: &str) -> Value {
    json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project",
        "metadata": {"id": id},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js": script}},
        },
    })
}

/// Counts a group's cases and failures and prints the figures.
struct Tally {
    group: &'static str,
    cases: usize,
    crashes: usize,
    leaks: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(group: &'static str) -> Self {
        Self {
            group,
            cases: 0,
            crashes: 0,
            leaks: 0,
            failures: Vec::new(),
        }
    }

    /// Records one case: its check, then whether the server survived it.
    fn case(&mut self, server: &mut Server, name: &str, result: Result<(), String>) {
        self.cases += 1;
        if let Err(why) = result {
            self.failures.push(format!("{name}: {why}"));
        }
        if let Err(why) = server.survives() {
            self.crashes += 1;
            self.failures.push(format!("{name}: {why}"));
        }
    }

    fn leak(&mut self, name: &str, why: String) {
        self.leaks += 1;
        self.failures.push(format!("{name}: LEAK {why}"));
    }

    fn finish(self) {
        eprintln!(
            "adversarial-server {}: {} cases, {} host crashes, {} leaks",
            self.group, self.cases, self.crashes, self.leaks
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n\n")
        );
    }
}

fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

// ----- F, C6: tokens and tenants ------------------------------------------------------

const INERT: &str = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => "done");
events.process();
"#;

#[test]
fn forged_expired_revoked_and_foreign_tokens_are_refused() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("tokens");
    let root = server.root.clone();
    for id in ["alpha", "beta"] {
        server.create_project(&project(id, INERT));
        server.set_secret(id, "password", &format!("{OTHER_SECRET}-{id}"));
    }
    let beta_event = server.create_event("beta", "", None);
    server.wait(&beta_event);

    // Forgeries of a valid token.
    let mut upper = root.to_uppercase();
    if upper == root {
        upper.push('0');
    }
    let forged = [
        ("a random token", "0123456789abcdef".repeat(4)),
        ("the token truncated", root[..root.len() - 1].to_string()),
        ("the token padded", format!("{root}0")),
        ("the token in upper case", upper),
        ("the stored hash of the token", sha256_hex(&root)),
        ("an empty token", String::new()),
        ("a token of 100,000 characters", "f".repeat(100_000)),
    ];
    for (name, token) in &forged {
        let (status, body) = server.call("GET", "/v2/whoami", Some(token), None);
        tally.case(
            &mut server,
            name,
            check(
                status == 401 && body["kind"] == "AuthenticationError",
                || format!("answered {status}: {body}"),
            ),
        );
    }
    for (name, header) in [
        ("a Basic scheme carrying the token", format!("Basic {root}")),
        ("the token without a scheme", root.clone()),
    ] {
        let status = send(
            http()
                .get(format!("{}/v2/whoami", server.url))
                .header("Authorization", header),
        )
        .status;
        tally.case(
            &mut server,
            name,
            check(status == 401, || format!("answered {status}")),
        );
    }
    // An authentication scheme is a case-insensitive token (RFC 7235
    // section 2.1): the token is the credential, not the spelling of its
    // scheme.
    let status = send(
        http()
            .get(format!("{}/v2/whoami", server.url))
            .header("Authorization", format!("bearer {root}")),
    )
    .status;
    tally.case(
        &mut server,
        "a lower-case scheme with a valid token",
        check(status == 200, || format!("answered {status}")),
    );

    // An expired root session (sessions last an hour; this one is aged in
    // the store) and a revoked one.
    let expired = server.session();
    let db = server.data_dir.path().join("mizzen.db");
    let aged = common::Ran::from(
        Command::new("sqlite3")
            .arg(&db)
            .arg(format!(
                "UPDATE sessions SET expires = 1 WHERE token_hash = '{}';",
                sha256_hex(&expired)
            ))
            .output()
            .expect("sqlite3 runs"),
    );
    assert_eq!(aged.code, 0, "{aged:?}");
    let (status, body) = server.call("GET", "/v2/whoami", Some(&expired), None);
    tally.case(
        &mut server,
        "an expired session",
        check(
            status == 401 && body["reason"].as_str().unwrap_or("").contains("expired"),
            || format!("answered {status}: {body}"),
        ),
    );
    let revoked = server.session();
    let (status, _) = server.call("DELETE", "/v2/session", Some(&revoked), None);
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", "/v2/whoami", Some(&revoked), None);
    tally.case(
        &mut server,
        "a session ended with DELETE /v2/session",
        check(status == 401, || format!("answered {status}: {body}")),
    );

    // A tenant: a service account that is PROJECT_USER of alpha only.
    let alice = server.project_user("alice", "alpha");
    // Another tenant's project answers exactly as one that does not exist.
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/v2/projects/{p}".into()),
        ("PUT", "/v2/projects/{p}".into()),
        ("DELETE", "/v2/projects/{p}".into()),
        ("GET", "/v2/projects/{p}/secrets".into()),
        ("PUT", "/v2/projects/{p}/secrets/password".into()),
        ("DELETE", "/v2/projects/{p}/secrets/password".into()),
        ("GET", "/v2/projects/{p}/role-assignments".into()),
        ("POST", "/v2/projects/{p}/role-assignments".into()),
    ];
    for (method, route) in &routes {
        let body = |id: &str| {
            if *method == "PUT" && route == "/v2/projects/{p}" {
                project(id, INERT)
            } else {
                json!({"key": "password", "value": "overwritten", "role": "PROJECT_ADMIN",
                       "principal": {"type": "SERVICE_ACCOUNT", "id": "alice"}})
            }
        };
        let (beta_status, beta_body) = server.call(
            method,
            &route.replace("{p}", "beta"),
            Some(&alice),
            Some(&body("beta")),
        );
        let (missing_status, missing_body) = server.call(
            method,
            &route.replace("{p}", "gamma"),
            Some(&alice),
            Some(&body("gamma")),
        );
        let same = beta_body.to_string().replace("beta", "X")
            == missing_body.to_string().replace("gamma", "X");
        tally.case(
            &mut server,
            &format!("alice: {method} {route} of another tenant"),
            check(beta_status == 404 && missing_status == 404 && same, || {
                format!("beta answered {beta_status} {beta_body}, a missing project {missing_status} {missing_body}")
            }),
        );
        if beta_body.to_string().contains(OTHER_SECRET) {
            tally.leak(route, beta_body.to_string());
        }
    }
    for (method, route) in [
        ("GET", "/v2/events/{e}"),
        ("DELETE", "/v2/events/{e}"),
        ("GET", "/v2/events/{e}/logs"),
        ("GET", "/v2/events/{e}/logs?follow=true&sse=true"),
        ("GET", "/v2/events/{e}/worker/status"),
        ("GET", "/v2/events/{e}/worker/status?watch=true"),
        ("GET", "/v2/events/{e}/worker/jobs/any/status"),
        ("PUT", "/v2/events/{e}/cancellation"),
        ("POST", "/v2/events/{e}/retries"),
        ("POST", "/v2/events/{e}/clones"),
    ] {
        let (status, body) = server.call(
            method,
            &route.replace("{e}", &beta_event),
            Some(&alice),
            Some(&json!({"state": {"k": "v"}})),
        );
        let (missing, missing_body) = server.call(
            method,
            &route.replace("{e}", "00000000-0000-0000-0000-000000000000"),
            Some(&alice),
            Some(&json!({"state": {"k": "v"}})),
        );
        let same = body.to_string().replace(&beta_event, "X")
            == missing_body
                .to_string()
                .replace("00000000-0000-0000-0000-000000000000", "X");
        tally.case(
            &mut server,
            &format!("alice: {method} {route} of another tenant's event"),
            check(status == 404 && missing == 404 && same, || {
                format!("answered {status} {body}; a missing event {missing} {missing_body}")
            }),
        );
    }
    let (_, listed) = server.call("GET", "/v2/events?projectID=beta", Some(&alice), None);
    tally.case(
        &mut server,
        "alice lists another tenant's events",
        check(!listed.to_string().contains(&beta_event), || {
            format!("{listed}")
        }),
    );
    // beta's secret is still what it was, and its event still there.
    let (status, _) = server.call(
        "GET",
        &format!("/v2/events/{beta_event}"),
        Some(&root),
        None,
    );
    assert_eq!(status, 200);

    // Locking, unlocking (a new token) and deleting the account.
    server.expect("PUT", "/v2/service-accounts/alice/lock", None, 200);
    let (status, body) = server.call("GET", "/v2/whoami", Some(&alice), None);
    tally.case(
        &mut server,
        "a locked account's token",
        check(status == 403 && body.to_string().contains("locked"), || {
            format!("answered {status}: {body}")
        }),
    );
    let unlocked = server.expect("DELETE", "/v2/service-accounts/alice/lock", None, 200);
    let fresh = unlocked["value"].as_str().unwrap().to_string();
    let (old, _) = server.call("GET", "/v2/whoami", Some(&alice), None);
    let (new, _) = server.call("GET", "/v2/whoami", Some(&fresh), None);
    tally.case(
        &mut server,
        "the token from before an unlock",
        check(old == 401 && new == 200, || {
            format!("the old token answered {old}, the new one {new}")
        }),
    );
    server.expect("DELETE", "/v2/service-accounts/alice", None, 200);
    let (status, _) = server.call("GET", "/v2/whoami", Some(&fresh), None);
    tally.case(
        &mut server,
        "a deleted account's token",
        check(status == 401, || format!("answered {status}")),
    );
    if server.log().contains(&root) || server.log().contains(&fresh) {
        tally.leak("server log", "a token reached the server's log".into());
    }
    tally.finish();
}

/// C6: "answer identically whether or not a tenant exists". An upsert
/// (`PUT /v2/projects/{id}?create=true`) by a tenant without
/// PROJECT_CREATOR tells another tenant's project (404) from a free id (403).
#[test]
fn an_upsert_does_not_reveal_whether_a_project_exists() {
    let server = Server::start(&["--executor", "none"]);
    server.create_project(&project("beta", INERT));
    let mallory = server.service_account("mallory");
    let (taken, taken_body) = server.call(
        "PUT",
        "/v2/projects/beta?create=true",
        Some(&mallory),
        Some(&project("beta", INERT)),
    );
    let (free, free_body) = server.call(
        "PUT",
        "/v2/projects/gamma?create=true",
        Some(&mallory),
        Some(&project("gamma", INERT)),
    );
    assert_eq!(
        (taken, taken_body["kind"].clone()),
        (free, free_body["kind"].clone()),
        "beta: {taken_body}; gamma: {free_body}"
    );
}

/// C6: another tenant's event answers as a missing one. Setting an
/// event's source state checks the EVENT_CREATOR role before visibility.
#[test]
fn setting_source_state_does_not_reveal_another_tenants_event() {
    let server = Server::start(&["--executor", "none"]);
    server.create_project(&project("beta", INERT));
    let event = server.create_event("beta", "", None);
    let mallory = server.service_account("mallory");
    let body = json!({"state": {"k": "v"}});
    let (status, answer) = server.call(
        "PUT",
        &format!("/v2/events/{event}/source-state"),
        Some(&mallory),
        Some(&body),
    );
    assert_eq!(status, 404, "{answer}");
}

// ----- C, E: ids, headers, bodies -------------------------------------------------------

#[test]
fn hostile_ids_headers_and_bodies_are_refused_by_name() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("ids-headers-bodies");
    let root = server.root.clone();
    server.create_project(&project("alpha", INERT));

    // Project ids.
    let long = "a".repeat(300);
    for id in [
        "",
        "../etc",
        "alpha/../beta",
        "ALPHA",
        long.as_str(),
        "\u{ff41}lpha",
        "al\u{202e}pha",
        "al\u{200d}pha",
        "alpha\u{0}",
        "alpha\r\nX-Injected: 1",
        "rocket-\u{1f680}",
        "-alpha",
        "alpha.beta",
    ] {
        let (status, body) = server.call(
            "POST",
            "/v2/projects",
            Some(&root),
            Some(&project(id, INERT)),
        );
        tally.case(
            &mut server,
            &format!("project id {id:?}"),
            check(
                status == 400
                    && body["kind"] == "BadRequestError"
                    && body.to_string().contains("metadata.id"),
                || format!("answered {status}: {body}"),
            ),
        );
    }
    let (_, projects) = server.call("GET", "/v2/projects", Some(&root), None);
    assert_eq!(projects["items"].as_array().unwrap().len(), 1, "{projects}");

    // Hostile ids in paths: "not found", never a server error.
    for path in [
        "/v2/projects/..%2f..%2fetc%2fpasswd",
        "/v2/projects/%00",
        "/v2/projects/%E2%80%AE",
        "/v2/events/..%2F..%2Fmizzen.db",
        "/v2/events/%0d%0aSet-Cookie:%20evil=1",
        "/v2/events/%ff%fe",
        "/v2/events/x/worker/jobs/..%2f..%2f/status",
        "/v2/events/x/logs?job=%0d%0aX-Injected:%201",
    ] {
        let path = path.to_string();
        let answer = send(
            http()
                .get(format!("{}{path}", server.url))
                .bearer_auth(&root),
        );
        let status = answer.status;
        let injected =
            answer.headers.contains_key("set-cookie") || answer.headers.contains_key("x-injected");
        tally.case(
            &mut server,
            &format!("GET {path}"),
            check((status == 404 || status == 400) && !injected, || {
                format!("answered {status}, injected header: {injected}")
            }),
        );
    }
    // The event list's filters: a bad value is refused naming its
    // parameter; an absurd but well-formed one lists nothing.
    for (query, named) in [
        ("createdAfter=yesterday", Some("createdAfter")),
        ("createdBefore=2026-13-40T00:00:00Z", Some("createdBefore")),
        (
            "createdAfter=2026-12-06T17:00:00%2B01:00",
            Some("createdAfter"),
        ),
        ("createdAfter=%00", Some("createdAfter")),
        ("createdBefore=1970-01-01T00:00:00Z", None),
        ("createdAfter=9999-12-31T23:59:59Z", None),
        ("workerPhases=RUNNING,BOGUS", Some("workerPhases")),
        ("limit=0", Some("limit")),
        ("limit=100000000000000000000", Some("limit")),
        ("continue=%27%3B%20DROP%20TABLE%20events", Some("continue")),
        // A time-filtered list's token is not a plain list's, nor the reverse.
        (
            "createdAfter=2026-01-01T00:00:00Z&continue=42",
            Some("continue"),
        ),
        ("continue=1700000000000000.42", Some("continue")),
        (
            "createdBefore=2026-01-01T00:00:00Z&continue=1.2.3",
            Some("continue"),
        ),
    ] {
        let (status, body) = server.call("GET", &format!("/v2/events?{query}"), Some(&root), None);
        let outcome = match named {
            Some(name) => check(
                status == 400 && body["reason"].as_str().unwrap_or_default().contains(name),
                || format!("answered {status}: {body}"),
            ),
            None => check(
                status == 200 && body["items"].as_array().is_some_and(Vec::is_empty),
                || format!("answered {status}: {body}"),
            ),
        };
        tally.case(&mut server, &format!("GET /v2/events?{query}"), outcome);
    }

    let long_id = format!("/v2/events/{}", "e".repeat(60_000));
    let (status, _) = server.call("GET", &long_id, Some(&root), None);
    tally.case(
        &mut server,
        "an event id of 60,000 characters",
        check(matches!(status, 404 | 414 | 431 | 400), || {
            format!("answered {status}")
        }),
    );

    // Event fields that end up in logs, lists and streams.
    for (name, body) in [
        (
            "a source with CR LF",
            json!({"projectID": "alpha", "source": "brigade.sh/cli\r\nX-Injected: 1", "type": "exec"}),
        ),
        (
            "a type with a bidi override",
            json!({"projectID": "alpha", "source": "brigade.sh/cli", "type": "ex\u{202e}ec"}),
        ),
        (
            "a label value with a newline",
            json!({"projectID": "alpha", "source": "brigade.sh/cli", "type": "exec", "labels": {"a": "b\nc"}}),
        ),
        (
            "a qualifier value with NUL",
            json!({"projectID": "alpha", "source": "brigade.sh/cli", "type": "exec", "qualifiers": {"a": "b\u{0}"}}),
        ),
        (
            "a source of 300 characters",
            json!({"projectID": "alpha", "source": "s".repeat(300), "type": "exec"}),
        ),
    ] {
        let (status, answer) = server.call("POST", "/v2/events", Some(&root), Some(&body));
        tally.case(
            &mut server,
            name,
            check(status == 400 && answer["kind"] == "BadRequestError", || {
                format!("answered {status}: {answer}")
            }),
        );
    }

    // Malformed JSON.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (name, bytes) in [
        ("JSON nested 100,000 deep", deep.into_bytes()),
        ("invalid UTF-8", b"{\"projectID\": \"\xff\xfe\"}".to_vec()),
        (
            "a byte-order mark",
            b"\xef\xbb\xbf{\"projectID\": \"alpha\", \"source\": \"brigade.sh/cli\", \"type\": \"exec\"}"
                .to_vec(),
        ),
        (
            "duplicate keys",
            b"{\"projectID\": \"alpha\", \"projectID\": \"beta\", \"source\": \"brigade.sh/cli\", \"type\": \"exec\"}"
                .to_vec(),
        ),
        ("a bare string", b"\"event\"".to_vec()),
        ("nothing", Vec::new()),
    ] {
        let response = send(
            http()
                .post(format!("{}/v2/events", server.url))
                .bearer_auth(&root)
                .header("Content-Type", "application/json")
                .body(bytes),
        );
        let status = response.status;
        let answer = response.json();
        tally.case(
            &mut server,
            name,
            check(status == 400 && answer["kind"] == "BadRequestError", || {
                format!("answered {status}: {answer}")
            }),
        );
    }

    // Raw requests with broken headers: refused by the HTTP layer, the
    // server carries on.
    let token = root.clone();
    for (name, request) in [
        (
            "a bare CR inside a header value",
            format!(
                "GET /v2/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\rX-Injected: 1\r\n\r\n"
            ),
        ),
        (
            "a NUL inside a header value",
            format!(
                "GET /v2/whoami HTTP/1.1\r\nHost: x\r\nX-Test: a\0b\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
        ),
        (
            "an obsolete folded header line",
            format!(
                "GET /v2/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n X-Folded: 1\r\n\r\n"
            ),
        ),
        (
            "a request line with CR LF in the path",
            "GET /v2/whoami\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        ),
        (
            "10,000 headers",
            format!(
                "GET /v2/whoami HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..10_000)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
        ),
        (
            "a header of 1 MB",
            format!(
                "GET /v2/whoami HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(1 << 20)
            ),
        ),
    ] {
        let answer = server.raw(request.as_bytes());
        let status_line = answer.lines().next().unwrap_or_default().to_string();
        tally.case(
            &mut server,
            name,
            check(
                (status_line.contains(" 400 ")
                    || status_line.contains(" 431 ")
                    || answer.is_empty())
                    && !answer.to_lowercase().contains("x-injected"),
                || format!("answered {status_line:?}"),
            ),
        );
    }

    // Oversized bodies: refused while reading, memory stays flat.
    let before = server.rss();
    let huge = vec![b' '; 26 * 1024 * 1024];
    for route in ["/v2/events", "/v2/projects", "/v2/service-accounts"] {
        let status = send(
            http()
                .post(format!("{}{route}", server.url))
                .bearer_auth(&root)
                .header("Content-Type", "application/json")
                .body(huge.clone()),
        )
        .status;
        tally.case(
            &mut server,
            &format!("a 26 MB body to {route}"),
            check(status == 413, || format!("answered {status}")),
        );
    }
    let answer = server.raw_chunked(
        &format!("POST /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {root}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"),
        26,
    );
    let status_line = answer.lines().next().unwrap_or_default().to_string();
    tally.case(
        &mut server,
        "a chunked 26 MB body without a length",
        check(status_line.contains(" 413 "), || {
            format!("answered {status_line:?}")
        }),
    );
    let after = server.rss();
    tally.case(
        &mut server,
        "memory after the oversized bodies",
        check(after < before + 200 * 1024 * 1024, || {
            format!("RSS grew from {before} to {after} bytes")
        }),
    );
    tally.finish();
}

/// The 413 should say what the limit is, so that a sender knows.
#[test]
fn an_oversized_body_is_refused_naming_the_limit() {
    let server = Server::start(&["--executor", "none"]);
    let answer = send(
        http()
            .post(format!("{}/v2/events", server.url))
            .bearer_auth(&server.root)
            .header("Content-Type", "application/json")
            .body(vec![b' '; 26 * 1024 * 1024]),
    );
    assert_eq!(answer.status, 413);
    let text = answer.text;
    assert!(
        text.contains("26214400") || text.contains("25 MiB"),
        "the 413 does not name the limit: {text:?}"
    );
}

// ----- E2, E3: webhook signatures -----------------------------------------------------------

const GITHUB_SECRET: &str = "adversarial-webhook-secret";

#[test]
fn github_signatures_cannot_be_forged_or_replayed() {
    let mut server = Server::start(&[
        "--executor",
        "none",
        "--github-webhook-secret",
        GITHUB_SECRET,
    ]);
    let mut tally = Tally::new("webhooks");
    let mut hooks = project("hooks", INERT);
    hooks["spec"]["eventSubscriptions"] = json!([{"source": "brigade.sh/github", "types": ["push"],
        "qualifiers": {"repo": "octo/hello"}}]);
    server.create_project(&hooks);
    let push = json!({
        "ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "octo/hello", "clone_url": "https://github.com/octo/hello.git"},
    })
    .to_string();
    let base = server.url.clone();
    let deliver = |signatures: &[(&str, String)], delivery: &str, body: &str| {
        let mut request = http()
            .post(format!("{base}/gateways/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        for (name, value) in signatures {
            request = request.header(*name, value);
        }
        send(request).status
    };
    let good = github_signature(GITHUB_SECRET, push.as_bytes());
    let reserialised: Value = serde_json::from_str(&push).unwrap();
    let pretty = serde_json::to_string_pretty(&reserialised).unwrap();
    let header = "X-Hub-Signature-256";
    // (name, signature headers, body)
    type Forgery<'a> = (&'a str, Vec<(&'a str, String)>, String);
    let forgeries: Vec<Forgery> = vec![
        ("no signature", vec![], push.clone()),
        (
            "an empty signature",
            vec![(header, String::new())],
            push.clone(),
        ),
        (
            "sha256= and nothing",
            vec![(header, "sha256=".into())],
            push.clone(),
        ),
        (
            "the HMAC under another key",
            vec![(header, github_signature("not-the-secret", push.as_bytes()))],
            push.clone(),
        ),
        (
            "the signature of another body",
            vec![(header, github_signature(GITHUB_SECRET, b"{}"))],
            push.clone(),
        ),
        (
            "a truncated signature",
            vec![(header, good[..good.len() - 2].to_string())],
            push.clone(),
        ),
        (
            "a signature with a byte more",
            vec![(header, format!("{good}00"))],
            push.clone(),
        ),
        (
            "all zeroes",
            vec![(header, format!("sha256={}", "0".repeat(64)))],
            push.clone(),
        ),
        (
            "non-hex digits",
            vec![(header, format!("sha256={}", "z".repeat(64)))],
            push.clone(),
        ),
        (
            "a SHA-1 signature only",
            vec![("X-Hub-Signature", format!("sha1={}", "a".repeat(40)))],
            push.clone(),
        ),
        (
            "the signature of the body before it was re-serialised",
            vec![(header, good.clone())],
            pretty,
        ),
        (
            "the right signature with a changed body",
            vec![(header, good.clone())],
            push.replace("main", "evil"),
        ),
    ];
    for (i, (name, signatures, body)) in forgeries.iter().enumerate() {
        let status = deliver(signatures, &format!("forged-{i}"), body);
        tally.case(
            &mut server,
            name,
            check(status == 401, || format!("answered {status}")),
        );
    }
    let first = deliver(&[(header, good.clone())], "genuine-1", &push);
    let replay = deliver(&[(header, good.clone())], "genuine-1", &push);
    tally.case(
        &mut server,
        "the genuine delivery, then its replay",
        check(first == 200 && replay == 200, || {
            format!("answered {first} then {replay}")
        }),
    );
    let (_, events) = server.call(
        "GET",
        "/v2/events?projectID=hooks",
        Some(&server.root),
        None,
    );
    let count = events["items"].as_array().map_or(0, Vec::len);
    tally.case(
        &mut server,
        "one event from all of that",
        check(count == 1, || format!("{count} events: {events}")),
    );
    if server.log().contains(GITHUB_SECRET) {
        tally.leak(
            "server log",
            "the webhook secret reached the server's log".into(),
        );
    }
    tally.finish();
}

// ----- D3: git URLs -------------------------------------------------------------------------

/// A git repository on this machine whose brigade.js announces where it was
/// read from.
fn host_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    std::fs::create_dir(repo.path().join(".brigade")).unwrap();
    std::fs::write(
        repo.path().join(".brigade/brigade.js"),
        "console.log(\"read from the server's own disk\");\n",
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "host"]);
    repo
}

/// A listener that counts the connections it gets.
fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn connections(listener: &TcpListener) -> usize {
    let mut count = 0;
    while listener.accept().is_ok() {
        count += 1;
    }
    count
}

fn git_project(id: &str, clone_url: &str) -> Value {
    let mut document = project(id, INERT);
    document["spec"]["workerTemplate"]["git"] = json!({"cloneURL": clone_url});
    document["spec"]["workerTemplate"]
        .as_object_mut()
        .unwrap()
        .remove("defaultConfigFiles");
    document
}

/// Clone URLs that name programs or options are refused or harmless: no
/// command runs on the server.
#[test]
fn git_urls_cannot_run_commands_on_the_server() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("git-commands");
    let marks = tempfile::tempdir().unwrap();
    let mark = |name: &str| marks.path().join(name);
    // In a project, the cloneURL rule refuses them.
    for url in [
        format!("ext::sh -c touch% {}", mark("project-ext").display()),
        format!("--upload-pack=touch {}", mark("project-upload").display()),
        "ssh://-oProxyCommand=touch/x".to_string(),
    ] {
        let (status, body) = server.call(
            "POST",
            "/v2/projects",
            Some(&server.root.clone()),
            Some(&git_project("hostile-git", &url)),
        );
        tally.case(
            &mut server,
            &format!("project cloneURL {url:?}"),
            check(
                status == 400 && body.to_string().contains("cloneURL"),
                || format!("answered {status}: {body}"),
            ),
        );
    }
    // An event's git settings override the project's: the server runs git
    // with them to read the script.
    server.create_project(&project("plain", INERT));
    for (name, url, file) in [
        (
            "the ext transport",
            format!("ext::sh -c touch% {}", mark("ext").display()),
            "ext",
        ),
        (
            "an --upload-pack option",
            format!("--upload-pack=touch {}", mark("upload").display()),
            "upload",
        ),
        (
            "an ssh host that is an option",
            format!("ssh://-oProxyCommand=touch%20{}/x", mark("proxy").display()),
            "proxy",
        ),
    ] {
        // Refused when the event is created, naming the field.
        let body = json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "plain",
            "source": "brigade.sh/cli", "type": "exec", "git": {"cloneURL": url}});
        let (status, created) = server.call(
            "POST",
            "/v2/events",
            Some(&server.root.clone()),
            Some(&body),
        );
        tally.case(
            &mut server,
            &format!("event cloneURL with {name}"),
            check(
                !mark(file).exists()
                    && status == 400
                    && created.to_string().contains("git.cloneURL"),
                || format!("ran: {}; answered {status}: {created}", mark(file).exists()),
            ),
        );
    }
    tally.finish();
}

/// A name other than `localhost` that the machine's hosts file maps to a
/// loopback address (the machine's own name here: `vm`, `runsc`).
fn name_of_loopback() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('#').next()?.split_whitespace();
            let ip: std::net::IpAddr = fields.next()?.parse().ok()?;
            ip.is_loopback().then_some(fields)
        })
        .flatten()
        .find(|name| *name != "localhost" && !name.ends_with(".localhost"))
        .expect("/etc/hosts names a loopback address other than localhost")
        .to_string()
}

/// D3: a project's cloneURL may not point the server at itself (loopback,
/// its disk) or its cloud's metadata service, in any form the URL standard
/// reads as such an address (`127.1` passed, and the server's git reached
/// its loopback); nor may an event's git override. A name that resolves to
/// loopback is refused when the event's clone runs, before git connects,
/// and the error says nothing of what answers there. Private networks stay
/// allowed: self-hosted git servers live there.
#[test]
fn project_clone_urls_to_internal_addresses_are_refused() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("git-addresses");
    let (listener, port) = listener();
    let literal = [
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://127.0.0.1:2375/repo.git".to_string(),
        "http://localhost/repo.git".to_string(),
        "http://[::1]/repo.git".to_string(),
        "file:///etc".to_string(),
        format!("http://127.1:{port}/repo.git"),
        format!("http://2130706433:{port}/repo.git"),
        format!("http://0x7f.0.0.1:{port}/repo.git"),
        format!("http://0177.0.0.1:{port}/repo.git"),
        format!("http://[::ffff:127.0.0.1]:{port}/repo.git"),
        format!("http://[::1]:{port}/repo.git"),
        format!("http://LOCALHOST.:{port}/repo.git"),
        "git@127.1:repo.git".to_string(),
    ];
    server.create_project(&project("plain", INERT));
    for (i, url) in literal.iter().enumerate() {
        let (status, body) = server.call(
            "POST",
            "/v2/projects",
            Some(&server.root.clone()),
            Some(&git_project(&format!("internal-{i}"), url)),
        );
        tally.case(
            &mut server,
            &format!("project cloneURL {url}"),
            check(status == 400, || format!("answered {status}: {body}")),
        );
        let body = json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "plain",
            "source": "brigade.sh/cli", "type": "exec", "git": {"cloneURL": url}});
        let (status, created) = server.call(
            "POST",
            "/v2/events",
            Some(&server.root.clone()),
            Some(&body),
        );
        tally.case(
            &mut server,
            &format!("event cloneURL {url}"),
            check(status == 400, || format!("answered {status}: {created}")),
        );
    }
    // A name: accepted when saved, refused when the clone runs.
    let name = name_of_loopback();
    for (i, url) in [
        format!("http://{name}:{port}/repo.git"),
        format!("https://{name}:{port}/repo.git"),
    ]
    .iter()
    .enumerate()
    {
        let id = format!("by-name-{i}");
        server.create_project(&git_project(&id, url));
        let event = server.create_event(&id, "", None);
        let ended = server.wait(&event);
        let (_, logs) = server.call(
            "GET",
            &format!("/v2/events/{event}/logs"),
            Some(&server.root.clone()),
            None,
        );
        let logs = logs.to_string();
        tally.case(
            &mut server,
            &format!("an event's clone of {url}"),
            check(
                ended["worker"]["status"]["phase"] == "FAILED"
                    && logs.contains("resolves to the server itself")
                    && !logs.contains("git fetch"),
                || format!("{ended}\n{logs}"),
            ),
        );
        // The same name as an event's override of a plain project.
        let body = json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "plain",
            "source": "brigade.sh/cli", "type": "exec", "git": {"cloneURL": url}});
        let (status, created) = server.call(
            "POST",
            "/v2/events",
            Some(&server.root.clone()),
            Some(&body),
        );
        let phase = match created["items"][0]["metadata"]["id"].as_str() {
            Some(id) if status == 201 => server.wait(id)["worker"]["status"]["phase"].clone(),
            _ => Value::Null,
        };
        tally.case(
            &mut server,
            &format!("an event overriding the cloneURL with {url}"),
            check(phase == "FAILED", || {
                format!("answered {status}: {created}; ended {phase}")
            }),
        );
    }
    let seen = connections(&listener);
    tally.case(
        &mut server,
        "no connection reached the server's loopback",
        check(seen == 0, || format!("{seen} connections")),
    );
    tally.finish();
}

/// D3: the server does not connect to its own loopback for a project's
/// repository.
#[test]
fn the_server_does_not_fetch_from_loopback() {
    let server = Server::start(&["--executor", "none"]);
    let (listener, port) = listener();
    let url = format!("http://127.0.0.1:{port}/repo.git");
    let (status, body) = server.call(
        "POST",
        "/v2/projects",
        Some(&server.root),
        Some(&git_project("loopback", &url)),
    );
    if status == 201 {
        let id = server.create_event("loopback", "", None);
        let event = server.wait(&id);
        let seen = connections(&listener);
        assert_eq!(seen, 0, "the server connected to {url}; event {event}");
        assert_eq!(event["worker"]["status"]["phase"], "FAILED");
    } else {
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(connections(&listener), 0);
}

/// D3: a tenant creating an event may not make the server read a git
/// repository from the server's own disk (file://), nor reach its loopback.
#[test]
fn an_event_cannot_point_the_server_at_its_own_disk_or_loopback() {
    let server = Server::start(&["--executor", "none"]);
    server.create_project(&project("alpha", INERT));
    let tenant = server.project_user("tenant", "alpha");
    let repo = host_repository();
    let url = format!("file://{}", repo.path().display());
    let body = json!({"projectID": "alpha", "source": "brigade.sh/cli", "type": "exec",
                      "git": {"cloneURL": url}});
    let (status, created) = server.call("POST", "/v2/events", Some(&tenant), Some(&body));
    let mut failures = Vec::new();
    if status == 201 {
        let id = created["items"][0]["metadata"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        server.wait(&id);
        let (_, logs) = server.call("GET", &format!("/v2/events/{id}/logs"), Some(&tenant), None);
        let logs = logs.to_string();
        if logs.contains("read from the server's own disk") {
            failures.push(format!("the server ran {url} from its own disk: {logs}"));
        }
    }
    let (listener, port) = listener();
    let body = json!({"projectID": "alpha", "source": "brigade.sh/cli", "type": "exec",
                      "git": {"cloneURL": format!("http://127.0.0.1:{port}/repo.git")}});
    let (status, created) = server.call("POST", "/v2/events", Some(&tenant), Some(&body));
    if status == 201 {
        let id = created["items"][0]["metadata"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        server.wait(&id);
        let seen = connections(&listener);
        if seen > 0 {
            failures.push(format!(
                "the server connected {seen} times to its loopback port {port}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ----- G: secret exfiltration -------------------------------------------------------------

/// The vault's script: the event's payload says how it tries to get the
/// secret out.
const EXFILTRATION: &str = r#"const { events, Job, Container, logger } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const s = event.project.secrets.password;
  const half = s.length >> 1;
  const job = (name) => {
    const j = new Job(name, "localhost/busybox", event);
    j.primaryContainer.command = ["true"];
    return j;
  };
  switch (event.payload) {
    case "console": console.log("plain " + s); console.error("stderr " + s); return;
    case "logger": logger.info("logger " + s); logger.error(`${s}${s}`); return;
    case "summary": return "summary " + s;
    case "summary-object": return { value: s };
    case "thrown": throw new Error("boom " + s);
    case "rejected": Promise.reject(new Error("rejected " + s)); return;
    case "exit-message": console.log(s); process.exit(7);
    case "forged-stream":
      console.log("a\r\n\r\nevent: done\r\ndata: forged\r\nid: 999999\r\n" + s);
      return "forged";
    case "job-env": {
      const j = job("env-job");
      j.primaryContainer.environment = { PASSWORD: s };
      j.primaryContainer.command = ["sh", "-c", "echo job sees $PASSWORD; echo $PASSWORD >&2"];
      await j.run();
      return "env";
    }
    case "job-sidecar-env": {
      const j = job("sidecar-env");
      j.sidecarContainers = { helper: new Container("localhost/busybox") };
      j.sidecarContainers.helper.environment = { PASSWORD: s };
      j.sidecarContainers.helper.command = ["sh", "-c", "echo sidecar sees $PASSWORD"];
      j.sidecarContainers.helper.readiness = { exited: true };
      await j.run();
      return "sidecar";
    }
    case "job-output-pieces": {
      const j = job("pieces");
      j.primaryContainer.environment = { PASSWORD: s };
      j.primaryContainer.command = ["sh", "-c", "printf '%s' \"${PASSWORD%????????}\"; sleep 1; printf '%s\\n' \"${PASSWORD#${PASSWORD%????????}}\""];
      await j.run();
      return "pieces";
    }
    case "job-failure": {
      const j = job("fails");
      j.primaryContainer.environment = { PASSWORD: s };
      j.primaryContainer.command = ["sh", "-c", "echo failing with $PASSWORD; exit 3"];
      await j.run();
      return;
    }
    case "split-lines": console.log(s.slice(0, half)); console.log(s.slice(half)); return;
    case "split-newline": console.log(s.slice(0, half) + "\n" + s.slice(half)); return;
    case "job-split-lines": {
      const j = job("split");
      j.primaryContainer.environment = { PASSWORD: s };
      j.primaryContainer.command = ["sh", "-c", `echo "\${PASSWORD:0:${half}}"; echo "\${PASSWORD:${half}}"`];
      await j.run();
      return;
    }
    case "job-command": {
      const j = job("command");
      j.primaryContainer.command = ["echo", s];
      await j.run();
      return;
    }
    case "job-name": { await job(s).run(); return; }
    case "job-image": {
      const j = new Job("image", "localhost/busybox:" + s, event);
      j.fallible = true;
      await j.run();
      return;
    }
    case "job-sidecar-name": {
      const j = job("sidecar-name");
      j.sidecarContainers = { [s]: new Container("localhost/busybox") };
      j.sidecarContainers[s].command = ["true"];
      j.sidecarContainers[s].readiness = { exited: true };
      await j.run();
      return;
    }
    case "job-working-directory": {
      const j = job("workdir");
      j.primaryContainer.workingDirectory = "/tmp/" + s;
      j.fallible = true;
      await j.run();
      return;
    }
  }
});
events.process();
"#;

/// What a tenant can read of an event: the event, lists, statuses, every
/// log stream (plain, follow, SSE) of the worker and of each job's
/// containers.
fn tenant_views(server: &Server, token: &str, project: &str, id: &str) -> Vec<(String, String)> {
    let mut views = Vec::new();
    let mut read = |path: String| {
        let (_, body) = server.call("GET", &path, Some(token), None);
        let text = match body {
            Value::String(text) => text,
            other => other.to_string(),
        };
        views.push((path, text));
    };
    let event = server
        .call("GET", &format!("/v2/events/{id}"), Some(token), None)
        .1;
    read(format!("/v2/events/{id}"));
    read(format!("/v2/events?projectID={project}"));
    read(format!("/v2/events/{id}/worker/status"));
    for suffix in ["", "?follow=true", "?follow=true&sse=true"] {
        read(format!("/v2/events/{id}/logs{suffix}"));
    }
    for job in event["worker"]["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = job["name"].as_str().unwrap_or_default().to_string();
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        read(format!("/v2/events/{id}/worker/jobs/{encoded}/status"));
        let mut containers = vec![name.clone()];
        if let Some(sidecars) = job["spec"]["sidecarContainers"].as_object() {
            containers.extend(sidecars.keys().cloned());
        }
        for container in containers {
            for suffix in ["", "&follow=true&sse=true"] {
                read(format!(
                    "/v2/events/{id}/logs?job={encoded}&container={}{suffix}",
                    container
                        .bytes()
                        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        })
                        .collect::<String>()
                ));
            }
        }
    }
    views
}

/// Where the vault's secret (or half of it) shows in what a tenant reads.
fn exposures(views: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in views {
        for needle in std::iter::once(SECRET).chain(SECRET_HALVES) {
            if let Some(at) = text.find(needle) {
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                let end = (at + needle.len() + 80).min(text.len());
                let end = (end..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                found.push(format!("{path}: {:?}", &text[start..end]));
                break;
            }
        }
    }
    found
}

/// A server (jobs on the machine's engine) with the vault project, its
/// secret, and another tenant's project.
fn vault_server() -> Server {
    let server = Server::start(&[]);
    server.create_project(&project("vault", EXFILTRATION));
    server.set_secret("vault", "password", SECRET);
    server.create_project(&project(
        "other",
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  console.log(JSON.stringify(event));
  return JSON.stringify(event.project.secrets);
});
events.process();
"#,
    ));
    server.set_secret("other", "token", OTHER_SECRET);
    server
}

/// Runs the vault's script with each payload and checks every tenant view.
/// With `every_payload_masks`, each payload must also show a mask where it
/// printed the secret (proof that the script ran and got it out).
fn exfiltrate(group: &'static str, payloads: &[&str], every_payload_masks: bool) {
    let mut server = vault_server();
    let mut tally = Tally::new(group);
    let root = server.root.clone();
    for payload in payloads {
        let id = server.create_event("vault", payload, None);
        let event = server.wait(&id);
        let phase = event["worker"]["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let views = tenant_views(&server, &root, "vault", &id);
        let expected_phase = match *payload {
            "thrown" | "rejected" | "exit-message" | "job-failure" | "job-name" => "FAILED",
            _ => "SUCCEEDED",
        };
        let ran = check(phase == expected_phase, || {
            format!(
                "ended {phase}, expected {expected_phase}: {event}\n{}",
                server.log()
            )
        })
        .and_then(|()| {
            // The script did get the secret out of the sandbox: its mask is
            // where the value would be.
            let masked = views.iter().any(|(_, text)| text.contains("***"));
            check(masked || !every_payload_masks, || {
                "nothing was masked: did the script run?".into()
            })
        });
        tally.case(&mut server, payload, ran);
        // ADVERSARIAL_DEBUG=1 prints everything a tenant read.
        if std::env::var_os("ADVERSARIAL_DEBUG").is_some() {
            eprintln!("{payload}: {views:#?}");
        }
        let exposed = exposures(&views);
        if !exposed.is_empty() {
            tally.leak(payload, exposed.join("\n"));
        }
        if *payload == "forged-stream" {
            let sse = &views
                .iter()
                .find(|(path, _)| path.ends_with("/logs?follow=true&sse=true"))
                .unwrap()
                .1;
            let done = sse.lines().filter(|l| l.starts_with("event: done")).count();
            let forged_id = sse.lines().any(|l| l.trim() == "id: 999999");
            tally.case(
                &mut server,
                "a log line that forges SSE frames",
                check(
                    done == 1 && !forged_id && sse.trim_end().ends_with("data: done"),
                    || format!("the stream was forged: {sse}"),
                ),
            );
        }
    }
    // The other tenant's worker sees its own secret (masked) and never the
    // vault's.
    let id = server.create_event("other", "", None);
    let event = server.wait(&id);
    let views = tenant_views(&server, &root, "other", &id);
    tally.case(
        &mut server,
        "another tenant's worker dumps its event",
        check(event["worker"]["status"]["phase"] == "SUCCEEDED", || {
            format!("{event}")
        }),
    );
    for (path, text) in &views {
        if text.contains(SECRET) || text.contains(OTHER_SECRET) {
            tally.leak("other tenant", format!("{path}: {text}"));
        }
    }
    tally.finish();
}

/// G1–G3: every way of getting the secret out that the server redacts.
#[test]
fn secrets_never_reach_what_a_tenant_reads() {
    exfiltrate(
        "exfiltration",
        &[
            "console",
            "logger",
            "summary",
            "summary-object",
            "thrown",
            "rejected",
            "exit-message",
            "forged-stream",
            "job-env",
            "job-sidecar-env",
            "job-output-pieces",
            "job-failure",
            "split-lines",
            "job-split-lines",
        ],
        true,
    );
}

#[test]
fn a_secret_split_across_worker_lines_is_masked() {
    exfiltrate("exfiltration-split", &["split-newline"], false);
}

#[test]
fn a_secret_used_as_a_job_name_is_masked() {
    exfiltrate("exfiltration-job-name", &["job-name"], false);
}

#[test]
fn a_secret_in_job_spec_fields_other_than_environment_is_masked() {
    exfiltrate(
        "exfiltration-job-spec",
        &[
            "job-command",
            "job-image",
            "job-sidecar-name",
            "job-working-directory",
        ],
        false,
    );
}

// ----- hostile jobs: what a job does to the host and its logs ----------------------

/// A project whose one job (busybox, the workspace at /workspace) runs
/// `command`; `limits` and `workspace_size` go to its worker template.
fn job_project(id: &str, command: &str, limits: Value, workspace_size: Option<&str>) -> Value {
    let script = format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {{
  const job = new Job("hostile", "localhost/busybox", event);
  job.primaryContainer.workspaceMountPath = "/workspace";
  job.primaryContainer.command = ["sh", "-c", {command:?}];
  job.fallible = true;
  await job.run();
  const look = new Job("look", "localhost/busybox", event);
  look.primaryContainer.workspaceMountPath = "/workspace";
  look.primaryContainer.command = ["sh", "-c", "sleep 2; ls -l /workspace"];
  look.fallible = true;
  await look.run();
}});
events.process();
"#
    );
    let mut document = project(id, &script);
    let template = &mut document["spec"]["workerTemplate"];
    template["useWorkspace"] = json!(true);
    template["limits"] = limits;
    if let Some(size) = workspace_size {
        template["workspaceSize"] = json!(size);
    }
    document
}

/// The messages of one container's stored log.
fn log_messages(server: &Server, event: &str, query: &str) -> Vec<String> {
    let (status, body) = server.call(
        "GET",
        &format!("/v2/events/{event}/logs{query}"),
        Some(&server.root),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let text = match body {
        Value::String(text) => text,
        other => other.to_string(),
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// H: jobs that flood their log, fork, eat memory, fill the disk or plant
/// set-user-ID files: each is stopped or contained, named in the event's
/// log, and the server serves on.
#[test]
fn hostile_jobs_are_contained_and_their_logs_kept_whole() {
    let mut server = Server::start(&[]);
    let mut tally = Tally::new("hostile-jobs");
    let cases: &[(&str, &str, Value, Option<&str>)] = &[
        ("flood", "seq 1 200000", json!({}), None),
        (
            "huge-log",
            "yes 0123456789abcdef | head -c 100000000",
            json!({"jobLogSize": "1Mi"}),
            None,
        ),
        (
            "fork-bomb",
            "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo started all",
            json!({"jobProcesses": "50"}),
            None,
        ),
        (
            "memory-hog",
            "dd if=/dev/zero of=/dev/null bs=300M count=1 && echo survived",
            json!({"jobMemory": "64Mi"}),
            None,
        ),
        (
            "disk-filler",
            "dd if=/dev/zero of=/workspace/big bs=1M count=48 2>/dev/null; sleep 20; echo survived",
            json!({}),
            Some("8Mi"),
        ),
        (
            "setuid-plant",
            "cp /bin/busybox /workspace/rootshell && chmod 4755 /workspace/rootshell; mknod /workspace/mem c 1 1",
            json!({}),
            None,
        ),
    ];
    for (name, command, limits, workspace_size) in cases {
        server.create_project(&job_project(name, command, limits.clone(), *workspace_size));
        let id = server.create_event(name, "", None);
        let event = server.wait(&id);
        let worker = log_messages(&server, &id, "");
        let hostile = log_messages(&server, &id, "?job=hostile&container=hostile");
        let look = log_messages(&server, &id, "?job=look&container=look");
        let shown = || {
            format!(
                "{event}\nworker: {worker:#?}\nhostile: {} lines, last {:?}\nlook: {look:?}",
                hostile.len(),
                hostile.last()
            )
        };
        let said = |text: &str| worker.iter().any(|m| m.contains(text));
        let result = match *name {
            "flood" => {
                let expected: Vec<String> = (1..=200_000).map(|n| n.to_string()).collect();
                check(hostile == expected, shown)
            }
            "huge-log" => check(
                said("output of job hostile was truncated at its log limit of 1 MiB")
                    && said("more lines (")
                    && hostile.len() < 70_000,
                shown,
            ),
            "fork-bomb" => check(
                hostile.iter().any(|l| l.contains("can't fork"))
                    && !hostile.iter().any(|l| l == "started all"),
                shown,
            ),
            "memory-hog" => check(
                said("job hostile ended FAILED (exit code 137)")
                    && !hostile.iter().any(|l| l == "survived"),
                shown,
            ),
            "disk-filler" => check(
                said("job hostile ended FAILED: the event's workspace and source checkouts hold")
                    && said("more than its limit of 8.0 MiB (spec.workerTemplate.workspaceSize)")
                    && !hostile.iter().any(|l| l == "survived"),
                shown,
            ),
            "setuid-plant" => {
                let work = server.data_dir.path().join("work");
                let private = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&work).unwrap().permissions(),
                ) & 0o777
                    == 0o700;
                check(
                    private
                        && hostile
                            .iter()
                            .any(|l| l.contains("Operation not permitted"))
                        && look
                            .iter()
                            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("rootshell"))
                        && !look.iter().any(|l| l.ends_with(" mem")),
                    shown,
                )
            }
            _ => unreachable!(),
        };
        tally.case(&mut server, name, result);
    }
    tally.finish();
}

// ----- G: secret sizes ---------------------------------------------------------------------

/// The longest secret value (`MAX_SECRET_VALUE_BYTES`).
const MAX_SECRET_VALUE: usize = 48 * 1024;

/// A secret's value is capped, and a project's secrets together: a 1 MiB
/// and a 20 MB value (accepted before) and a project going past 1 MiB of
/// secrets are refused with a 400 that names the key and the limit. A value
/// of the largest size made of one repeated character (its matcher took
/// time quadratic in it to build, for every event, on a thread that served
/// everyone: a 64 KiB one cost 13 s of CPU per event) lets the server answer
/// `/healthz` at once while its events run, and is masked in them.
#[test]
fn secret_values_are_capped_and_a_repetitive_one_stalls_nobody() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("secret-sizes");
    let script = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const s = event.project.secrets.big;
  console.log("whole " + s);
  console.log(s.slice(0, 1000));
  console.log(s.slice(1000));
  return "summary " + s.length;
});
events.process();
"#;
    server.create_project(&project("sizes", script));
    let put = |server: &Server, key: &str, value: String| {
        server.call(
            "PUT",
            &format!("/v2/projects/sizes/secrets/{key}"),
            Some(&server.root),
            Some(&json!({"key": key, "value": value})),
        )
    };
    for (name, len) in [("1 MiB", 1 << 20), ("20 MB", 20_000_000)] {
        let (status, body) = put(&server, "huge", "v".repeat(len));
        let text = body.to_string();
        tally.case(
            &mut server,
            &format!("a secret value of {name}"),
            check(
                status == 400
                    && text.contains("huge")
                    && text.contains(&MAX_SECRET_VALUE.to_string()),
                || format!("answered {status}: {}", &text[..text.len().min(500)]),
            ),
        );
    }
    // 21 values of the largest size fit in 1 MiB, the 22nd does not.
    let mut refused = None;
    for i in 0..22 {
        let (status, body) = put(&server, &format!("part{i}"), "p".repeat(MAX_SECRET_VALUE));
        if status != 200 {
            refused = Some((i, status, body.to_string()));
            break;
        }
    }
    tally.case(
        &mut server,
        "a project's secrets past 1 MiB together",
        check(
            matches!(&refused, Some((21, 400, text)) if text.contains("part21") && text.contains("1048576")),
            || format!("{refused:?}"),
        ),
    );
    for i in 0..21 {
        server.expect(
            "DELETE",
            &format!("/v2/projects/sizes/secrets/part{i}"),
            None,
            200,
        );
    }

    let value = "v".repeat(MAX_SECRET_VALUE);
    let (status, body) = put(&server, "big", value.clone());
    tally.case(
        &mut server,
        "a secret value of the largest size",
        check(status == 200, || format!("answered {status}: {body}")),
    );
    // /healthz, polled from another thread while the events run.
    let url = server.url.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let answer = send(http().get(format!("{url}/healthz")));
                assert_eq!(answer.status, 200, "{}", answer.text);
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            slowest
        })
    };
    let ids: Vec<String> = (0..8)
        .map(|_| server.create_event("sizes", "", None))
        .collect();
    let events: Vec<Value> = ids.iter().map(|id| server.wait(id)).collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let slowest = poller.join().unwrap();
    eprintln!("slowest /healthz while 8 events ran with a 48 KiB repetitive secret: {slowest:?}");
    let root = server.root.clone();
    for (id, event) in ids.iter().zip(&events) {
        let views = tenant_views(&server, &root, "sizes", id);
        let masked = views
            .iter()
            .any(|(path, text)| path.ends_with("/logs") && text.contains("whole ***"));
        tally.case(
            &mut server,
            "an event of the project with the largest repetitive secret",
            check(
                event["worker"]["status"]["phase"] == "SUCCEEDED" && masked,
                || format!("{event}\n{views:?}"),
            ),
        );
        // A tenant reads no run of the value longer than a line's piece.
        for (path, text) in &views {
            if text.contains(&value[..1000]) {
                tally.leak("repetitive secret", format!("{path} holds the value"));
            }
        }
    }
    // Generous: a matcher built on the thread that answers it took seconds.
    tally.case(
        &mut server,
        "/healthz while the events ran",
        check(slowest < Duration::from_secs(2), || {
            format!("the slowest /healthz took {slowest:?}")
        }),
    );
    tally.finish();
}

// ----- slow clients, large payloads, deletion races (issue 12) -----------------------

/// Holds `stalled` connections that sent half a request head while the
/// rest of the case runs.
fn hold<T>(stalled: Vec<TcpStream>, then: impl FnOnce() -> T) -> T {
    let result = then();
    drop(stalled);
    result
}

/// Slowloris and its kin against a server allowed 256 descriptors: stalled
/// and trickled heads and bodies are cut when their timeouts run out, a
/// client that reads nothing of its answer is cut by the write timeout, and
/// the server answers everyone else all along.
#[test]
fn slow_and_stalled_clients_cannot_hold_the_server() {
    let mut server = Server::start_under(
        Some(256),
        &[
            "--executor",
            "none",
            "--header-timeout",
            "3s",
            "--body-timeout",
            "3s",
            "--write-timeout",
            "3s",
        ],
        &[],
    );
    let mut tally = Tally::new("slow-clients");
    let root = server.root.clone();
    server.create_project(&project("alpha", INERT));
    let address = server.url.strip_prefix("http://").unwrap().to_string();

    for count in [400, 1_000] {
        let stalled = common::stalled_clients(&address, count);
        let connected = stalled.len();
        let (status, answer) = hold(stalled, || {
            server.call(
                "POST",
                "/v2/events",
                Some(&root),
                Some(&json!({"apiVersion": "brigade.sh/v2", "kind": "Event",
                    "projectID": "alpha", "source": "brigade.sh/cli", "type": "exec"})),
            )
        });
        tally.case(
            &mut server,
            &format!("{count} stalled heads under 256 descriptors"),
            check(connected >= 300 && status == 201, || {
                format!("{connected} connected; an event answered {status}: {answer}")
            }),
        );
    }

    let head = b"GET /v2/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let body_head = format!(
        "POST /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {root}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"projectID\": \""
    );
    for (name, start, trickle, answer_starts) in [
        ("a head that stops", &head[..], &b""[..], ""),
        ("a head sent a byte at a time", &head[..], &b"a"[..], ""),
        (
            "a body that stops",
            body_head.as_bytes(),
            &b""[..],
            "HTTP/1.1 408",
        ),
        (
            "a body sent a byte at a time",
            body_head.as_bytes(),
            &b"a"[..],
            "HTTP/1.1 408",
        ),
    ] {
        let answer = common::slow_request(&address, start, trickle);
        tally.case(
            &mut server,
            name,
            check(
                answer.as_deref().is_some_and(|a| {
                    a.starts_with(answer_starts) && (answer_starts.is_empty() || a.contains("3s"))
                }),
                || format!("not cut as it should be: {answer:?}"),
            ),
        );
    }

    // A client asks for 16 MB and reads none of it: the server's writes
    // block, and after the write timeout it gives up the connection.
    let payload = "p".repeat(16_000_000);
    let id = server.create_event("alpha", &payload, None);
    drop(payload);
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .write_all(
            format!(
                "GET /v2/events/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {root}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let ended = stream.read_to_end(&mut answer);
    tally.case(
        &mut server,
        "a client that reads nothing of a 16 MB answer",
        check(
            ended.is_ok() && answer.len() < 16_000_000
                || matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            || {
                format!(
                    "the connection was held: read {} bytes, {ended:?}",
                    answer.len()
                )
            },
        ),
    );

    let log = server.log();
    tally.case(
        &mut server,
        "no descriptor ran out",
        check(
            !log.contains("Too many open files") && !log.contains("unable to open database file"),
            || log.clone(),
        ),
    );
    tally.finish();
}

/// The server's peak resident memory while `work` runs, sampled.
fn peak_rss(server: &Server, work: impl FnOnce()) -> u64 {
    let pid = server.child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                peak = peak.max(kib * 1024);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    work();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap()
}

/// Runs `clients` copies of `request` at once; their answers.
fn at_once(clients: usize, request: impl Fn() -> Answer + Sync) -> Vec<Answer> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients).map(|_| scope.spawn(&request)).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// Every page of an event list, following `continue`.
fn all_pages(server: &Server, query: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut next = String::new();
    loop {
        let answer = send(
            http()
                .get(format!("{}/v2/events?{query}&continue={next}", server.url))
                .bearer_auth(&server.root),
        );
        let page = answer.json();
        next = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        pages.push(page);
        if next.is_empty() {
            return pages;
        }
    }
}

/// Memory a group of large-payload requests may add to the server: the
/// documents' budget (256 MiB) and room for the allocator. Before the
/// budget and the paged lists, four clients listing 300 MB of payloads
/// grew it by 2.6 GiB.
const LARGE_PAYLOAD_GROWTH: u64 = 512 * 1024 * 1024;

/// Large payloads read by many clients at once, through every path that
/// renders events: lists (plain and filtered, paged by their size), single
/// events, retries and clones, and the many-events operations. Each costs
/// the server a bounded amount of memory, and every answer is whole.
#[test]
fn large_payloads_do_not_multiply_the_servers_memory() {
    // One worker at a time: running the retries and clones hands each its
    // event too, which is the scheduler's memory, not the answers'. glibc
    // keeps freed buffers of the sizes it last freed for reuse; with a fixed
    // threshold it gives each large one back, so that the memory a case
    // adds is what it holds, not what the cases before it left in the
    // allocator.
    let mut server = Server::start_under(
        None,
        &["--executor", "none", "--max-workers", "1"],
        &[("MALLOC_MMAP_THRESHOLD_", "1048576")],
    );
    let mut tally = Tally::new("large-payloads");
    let root = server.root.clone();
    server.create_project(&project("big", INERT));
    let mut ids = Vec::new();
    for i in 0..8 {
        let payload = format!("{i}{}", "p".repeat(16_000_000));
        let (status, created) = server.call(
            "POST",
            "/v2/events",
            Some(&root),
            Some(
                &json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "big",
                "source": "brigade.sh/cli", "type": "exec", "labels": {"size": "large"},
                "payload": payload}),
            ),
        );
        assert_eq!(status, 201, "{created}");
        ids.push(
            created["items"][0]["metadata"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        server.wait(id);
    }
    // What a case adds to the memory the server held before it.
    let grew = |base: u64, peak: u64| {
        let grown = peak.saturating_sub(base);
        eprintln!(
            "adversarial-server large-payloads: a case grew the server by {} MiB",
            grown >> 20
        );
        grown
    };

    for (name, query) in [
        (
            "4 clients list 8 events of 16 MB",
            "projectID=big&limit=100",
        ),
        (
            "4 clients list them by label",
            "projectID=big&limit=100&labels=size=large",
        ),
    ] {
        let mut listed = Vec::new();
        let base = server.rss();
        let peak = peak_rss(&server, || {
            listed = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| all_pages(&server, query)))
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<_>>()
            });
        });
        let whole = listed.iter().all(|pages| {
            pages.len() == 8
                && pages.iter().all(|page| {
                    page["items"].as_array().is_some_and(|items| {
                        items.len() == 1
                            && items[0]["payload"].as_str().map(str::len) == Some(16_000_001)
                    })
                })
        });
        tally.case(
            &mut server,
            name,
            check(whole && grew(base, peak) < LARGE_PAYLOAD_GROWTH, || {
                format!(
                    "whole: {whole}; the server grew by {} MiB",
                    grew(base, peak) >> 20
                )
            }),
        );
    }

    let mut answers = Vec::new();
    let base = server.rss();
    let peak = peak_rss(&server, || {
        answers = at_once(24, || {
            send(
                http()
                    .get(format!("{}/v2/events/{}", server.url, ids[0]))
                    .bearer_auth(&root),
            )
        });
    });
    let whole = answers
        .iter()
        .all(|a| a.status == 200 && a.json()["payload"].as_str().map(str::len) == Some(16_000_001));
    drop(answers);
    tally.case(
        &mut server,
        "24 clients get one 16 MB event",
        check(whole && grew(base, peak) < LARGE_PAYLOAD_GROWTH, || {
            format!(
                "whole: {whole}; the server grew by {} MiB",
                grew(base, peak) >> 20
            )
        }),
    );

    for (path, label) in [
        ("retries", "brigade.sh/retryOf"),
        ("clones", "brigade.sh/cloneOf"),
    ] {
        let mut answers = Vec::new();
        let base = server.rss();
        let peak = peak_rss(&server, || {
            answers = at_once(8, || {
                send(
                    http()
                        .post(format!("{}/v2/events/{}/{path}", server.url, ids[1]))
                        .bearer_auth(&root),
                )
            });
        });
        let whole = answers.iter().all(|a| {
            let event = a.json();
            a.status == 201
                && event["kind"] == "Event"
                && event["labels"][label] == ids[1].as_str()
                && event["payload"].as_str().map(str::len) == Some(16_000_001)
        });
        tally.case(
            &mut server,
            &format!("8 clients ask for {path} of a 16 MB event"),
            check(whole && grew(base, peak) < LARGE_PAYLOAD_GROWTH, || {
                format!(
                    "whole: {whole}; the server grew by {} MiB",
                    grew(base, peak) >> 20
                )
            }),
        );
    }
    // The retries and clones have run by now, or are about to.
    std::thread::sleep(Duration::from_secs(2));
    let mut answer = Value::Null;
    let base = server.rss();
    let peak = peak_rss(&server, || {
        answer = server.expect(
            "DELETE",
            "/v2/events?projectID=big&workerPhases=SUCCEEDED,FAILED,PENDING,RUNNING,STARTING",
            None,
            200,
        );
    });
    tally.case(
        &mut server,
        "deleting 24 events of 16 MB in one request",
        check(
            answer["count"].as_u64().is_some_and(|n| n >= 8)
                && grew(base, peak) < LARGE_PAYLOAD_GROWTH,
            || {
                format!(
                    "{answer}; the server grew by {} MiB",
                    grew(base, peak) >> 20
                )
            },
        ),
    );
    tally.finish();
}

/// A project deleted while its owner grants a third account PROJECT_ADMIN,
/// sets a secret and creates an event, ten times over; after each round
/// another tenant creates a project with the same id, and nothing of the
/// old one is in it.
#[test]
fn writes_racing_a_projects_deletion_die_with_it() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("deletion-races");
    let owner = server.service_account("owner");
    server.service_account("grantee");
    let newcomer = server.service_account("newcomer");
    for account in ["owner", "newcomer"] {
        server.expect(
            "POST",
            "/v2/role-assignments",
            Some(&json!({"role": "PROJECT_CREATOR",
                         "principal": {"type": "SERVICE_ACCOUNT", "id": account}})),
            200,
        );
    }
    let raced = project("raced", INERT);
    for round in 0..10 {
        let (status, body) = server.call("POST", "/v2/projects", Some(&owner), Some(&raced));
        assert_eq!(status, 201, "{body}");
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for i in 0..4 {
                let (server, owner) = (&server, &owner);
                threads.push(scope.spawn(move || {
                    std::thread::sleep(Duration::from_micros((i * 300 + round * 100) as u64));
                    server.call(
                        "POST",
                        "/v2/projects/raced/role-assignments",
                        Some(owner),
                        Some(&json!({"role": "PROJECT_ADMIN",
                            "principal": {"type": "SERVICE_ACCOUNT", "id": "grantee"}})),
                    )
                }));
                threads.push(scope.spawn(move || {
                    std::thread::sleep(Duration::from_micros((i * 300 + round * 100) as u64));
                    server.call(
                        "PUT",
                        &format!("/v2/projects/raced/secrets/key{i}"),
                        Some(owner),
                        Some(&json!({"key": format!("key{i}"), "value": OTHER_SECRET})),
                    )
                }));
                threads.push(scope.spawn(move || {
                    std::thread::sleep(Duration::from_micros((i * 300 + round * 100) as u64));
                    server.call(
                        "POST",
                        "/v2/events",
                        Some(owner),
                        Some(&json!({"apiVersion": "brigade.sh/v2", "kind": "Event",
                            "projectID": "raced", "source": "brigade.sh/cli", "type": "exec"})),
                    )
                }));
            }
            threads.push(
                scope.spawn(|| server.call("DELETE", "/v2/projects/raced", Some(&owner), None)),
            );
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let (status, body) = server.call("POST", "/v2/projects", Some(&newcomer), Some(&raced));
        assert_eq!(status, 201, "{body}");
        let (_, roles) = server.call(
            "GET",
            "/v2/projects/raced/role-assignments",
            Some(&server.root),
            None,
        );
        let (_, secrets) = server.call(
            "GET",
            "/v2/projects/raced/secrets",
            Some(&server.root),
            None,
        );
        let (_, events) = server.call(
            "GET",
            "/v2/events?projectID=raced",
            Some(&server.root),
            None,
        );
        let inherited_roles = roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["principal"]["id"] != "newcomer");
        let errors: Vec<&(u16, Value)> = answers
            .iter()
            .filter(|(status, _)| !matches!(status, 200 | 201 | 403 | 404))
            .collect();
        tally.case(
            &mut server,
            &format!("round {round}"),
            check(
                !inherited_roles
                    && secrets["items"].as_array().is_some_and(Vec::is_empty)
                    && events["items"].as_array().is_some_and(Vec::is_empty)
                    && errors.is_empty(),
                || format!("roles {roles}\nsecrets {secrets}\nevents {events}\nerrors {errors:?}"),
            ),
        );
        server.expect("DELETE", "/v2/projects/raced", None, 200);
    }
    tally.finish();
}

// ----- M: compiled scripts given inline -------------------------------------------------

/// A project whose inline script is the module `bytes`, in base64 (or
/// `text` as it is, when given).
fn module_project(id: &str, text: String) -> Value {
    json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project",
        "metadata": {"id": id},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.wasm": text}},
        },
    })
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What a tenant can send as an inline `brigade.wasm` is refused when the
/// project is saved, naming the field and what is wrong; nothing is stored,
/// and the server goes on serving.
#[test]
fn hostile_inline_modules_are_refused_when_saved() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("inline-modules");
    let root = server.root.clone();
    const FIELD: &str = "spec.workerTemplate.defaultConfigFiles.brigade.wasm";
    // (module (import "env" "foo" (func)))
    let foreign: &[u8] = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x0b\x01\x03env\x03foo\0\0";
    // A module of a million empty functions: 1 type, 1,000,000 function
    // entries of type 0, 1,000,000 bodies of 2 bytes.
    let mut million = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0".to_vec();
    let leb = |mut n: u32, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    };
    let mut functions = Vec::new();
    leb(1_000_000, &mut functions);
    functions.resize(functions.len() + 1_000_000, 0);
    million.push(3);
    leb(functions.len() as u32, &mut million);
    million.extend(functions);
    let mut code = Vec::new();
    leb(1_000_000, &mut code);
    for _ in 0..1_000_000 {
        code.extend([2, 0, 0x0b]);
    }
    million.push(10);
    leb(code.len() as u32, &mut million);
    million.extend(code);
    let cases: Vec<(&str, String, &str)> = vec![
        ("not base64", "%%% not base64 %%%".into(), "base64"),
        (
            "base64 of text, not a module",
            base64(b"console.log(1)"),
            "not a WebAssembly core module",
        ),
        (
            "a foreign import",
            base64(foreign),
            r#"imports "env" "foo""#,
        ),
        (
            "a million functions",
            base64(&million),
            "the number of functions is 1000000",
        ),
        (
            "17 MiB of module",
            base64(&vec![0u8; 17 * 1024 * 1024]),
            "the limit is 16777216 bytes",
        ),
    ];
    for (name, text, names) in cases {
        let (status, body) = server.call(
            "POST",
            "/v2/projects",
            Some(&root),
            Some(&module_project("mod", text)),
        );
        let details: Vec<&str> = body["details"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let details = details.join("\n");
        tally.case(
            &mut server,
            name,
            check(
                status == 400 && details.contains(FIELD) && details.contains(names),
                || format!("answered {status}: {}", &details[..details.len().min(400)]),
            ),
        );
    }
    let (_, projects) = server.call("GET", "/v2/projects", Some(&root), None);
    tally.case(
        &mut server,
        "nothing was stored",
        check(
            projects["items"].as_array().is_some_and(Vec::is_empty),
            || format!("{projects}"),
        ),
    );
    tally.finish();
}

// ----- log forwarding: a project's labels -------------------------------------------

/// A project's part in log forwarding is its opt-out and its labels; a
/// label that would pass its lines off as another project's or event's, or
/// that would bloat every line, is refused naming the field.
#[test]
fn log_forwarding_labels_cannot_impersonate_or_bloat() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("log-forwarding");
    let root = server.root.clone();
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("label{i}"), json!("x"))).collect();
    let cases = [
        (
            "a label named project",
            json!({"labels": {"project": "other"}}),
            "logForwarding.labels.project",
        ),
        (
            "a label named event",
            json!({"labels": {"event": "e"}}),
            "logForwarding.labels.event",
        ),
        (
            "a label named message",
            json!({"labels": {"message": "m"}}),
            "logForwarding.labels.message",
        ),
        (
            "a label named container",
            json!({"labels": {"container": "worker"}}),
            "logForwarding.labels.container",
        ),
        (
            "17 labels",
            json!({"labels": Value::Object(many)}),
            "at most 16",
        ),
        (
            "a value of 257 bytes",
            json!({"labels": {"team": "x".repeat(257)}}),
            "at most 256",
        ),
        (
            "a name with a newline",
            json!({"labels": {"team\nX-Injected": "1"}}),
            "a label's name is a letter",
        ),
        (
            "a name in another script",
            json!({"labels": {"t\u{0435}am": "1"}}),
            "a label's name is a letter",
        ),
        (
            "a name of 64 characters",
            json!({"labels": {"a".repeat(64): "1"}}),
            "a label's name is a letter",
        ),
        (
            "enabled given as text",
            json!({"enabled": "yes"}),
            "logForwarding",
        ),
        (
            "an unknown field",
            json!({"endpoint": "http://attacker.example"}),
            "unknown field",
        ),
    ];
    for (name, spec, problem) in cases {
        let mut body = project("labelled", INERT);
        body["spec"]["workerTemplate"]["logForwarding"] = spec;
        let (status, answer) = server.call("POST", "/v2/projects", Some(&root), Some(&body));
        tally.case(
            &mut server,
            name,
            check(
                status == 400 && answer.to_string().contains(problem),
                || format!("answered {status}: {answer}"),
            ),
        );
    }
    let (_, projects) = server.call("GET", "/v2/projects", Some(&root), None);
    assert_eq!(projects["items"].as_array().unwrap().len(), 0, "{projects}");
    tally.finish();
}

// ----- H: registry credentials --------------------------------------------------------

/// A project's pull secret (a project secret named in imagePullSecrets) is a
/// tenant's input the local engine reads as a Docker config: one naming a
/// credential helper must not make the server run it (the helper here
/// exists on the server's PATH and would leave a mark), a malformed or
/// hostile one fails the job by name, and none puts the secret's parts in
/// the log.
#[test]
fn hostile_pull_secrets_fail_the_job_by_name_and_run_nothing() {
    let helpers = tempfile::tempdir().unwrap();
    let mark = helpers.path().join("helper-ran");
    let helper = helpers.path().join("docker-credential-evil");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\ntouch {}\necho '{{\"Username\":\"u\",\"Secret\":\"p\"}}'\n",
            mark.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap()
    );
    let mut server = Server::start_under(None, &[], &[("PATH", &path)]);
    // Nothing listens on port 1: a pull that gets that far fails at once.
    let registry = "127.0.0.1:1";
    let script = format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {{
  const job = new Job("pull", "{registry}/team/app:v1", event);
  job.primaryContainer.imagePullPolicy = "Always";
  await job.run();
}});
events.process();
"#
    );
    let mut document = project("puller", &script);
    document["spec"]["workerTemplate"]["kubernetes"] = json!({"imagePullSecrets": ["regcred"]});
    server.create_project(&document);

    let b64 = |text: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let many: serde_json::Map<String, Value> = (0..1_000)
        .map(|i| {
            (
                format!("registry-{i}.example.com"),
                json!({"auth": b64("u:p")}),
            )
        })
        .collect();
    let many = json!({ "auths": many }).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "credsStore naming a helper on the server's PATH",
            json!({"credsStore": "evil"}).to_string(),
            "names a credential helper (credsStore): a project's secret may not make the host run a program",
        ),
        (
            "credHelpers for the image's registry",
            json!({"credHelpers": {registry: "evil"}}).to_string(),
            "names a credential helper (credHelpers)",
        ),
        (
            "a helper name that climbs out of the PATH",
            json!({"auths": {}, "credsStore": "../../../../bin/evil"}).to_string(),
            "names a credential helper (credsStore)",
        ),
        ("not JSON", "registry:user:password".into(), "is not a Docker config JSON: expected value at line 1 column 1"),
        ("a JSON array", "[]".into(), "is not a Docker config JSON: expected an object such as {\"auths\": {...}}"),
        ("10,000 levels deep", deep, "is not a Docker config JSON: recursion limit exceeded"),
        (
            "an auth that is not base64",
            json!({"auths": {registry: {"auth": "%%%"}}}).to_string(),
            "the \"auth\" of 127.0.0.1:1 is not base64 of USER:PASSWORD",
        ),
        (
            "an auth contradicting its password (the canary)",
            json!({"auths": {registry: {"auth": b64("u:other"), "username": "u", "password": SECRET}}}).to_string(),
            "the \"auth\" of 127.0.0.1:1 does not match its \"username\" and \"password\"",
        ),
        (
            "1,000 other registries (43 KiB, near the 48 KiB a secret holds)",
            many,
            "(no credentials for 127.0.0.1:1 in project secret \"regcred\")",
        ),
        (
            "credentials sent to a registry that does not answer",
            json!({"auths": {registry: {"auth": b64(&format!("u:{SECRET}"))}}}).to_string(),
            "(with the credentials for 127.0.0.1:1 from project secret \"regcred\")",
        ),
    ];
    let mut tally = Tally::new("pull secrets");
    for (name, value, expected) in cases {
        server.set_secret("puller", "regcred", &value);
        let id = server.create_event("puller", "", None);
        let event = server.wait(&id);
        let (_, logs) = server.call(
            "GET",
            &format!("/v2/events/{id}/logs"),
            Some(&server.root),
            None,
        );
        // The log's messages (it comes as one JSON entry a line).
        let logs: String = match logs {
            Value::String(text) => text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter_map(|entry| entry["message"].as_str().map(|m| format!("{m}\n")))
                .collect(),
            other => other.to_string(),
        };
        let result = check(
            event["worker"]["status"]["phase"] == "FAILED" && logs.contains(expected),
            || format!("expected the job to fail with {expected:?}; event {event}, logs {logs}"),
        )
        .and_then(|()| {
            check(!mark.exists(), || {
                "the server ran the credential helper".into()
            })
        });
        if SECRET_HALVES.iter().any(|half| logs.contains(half)) {
            tally.leak(name, logs.clone());
        }
        tally.case(&mut server, name, result);
    }
    tally.finish();
}

// ----- E4: Slack, Bitbucket and GitHub's CI/CD events ----------------------------------

/// What a stranger controls in the newer gateways' deliveries: a Slack
/// command's fields and signature headers, a Bitbucket delivery's key and
/// body (its sender cannot be checked but by address), and on GitHub a
/// comment's words and a check run's name, which pick the project a
/// `ci:job_requested` is for. Each is refused by name, or makes no event it
/// should not (another tenant's project is reached only through its own
/// subscription), and a delivery of 100,000 push changes costs no more than
/// one.
#[test]
fn slack_bitbucket_and_github_ci_inputs_are_refused_by_name() {
    const SLACK_SECRET: &str = "adversarial-slack-secret";
    let mut server = Server::start(&[
        "--executor",
        "none",
        "--github-webhook-secret",
        GITHUB_SECRET,
        "--slack-signing-secret",
        SLACK_SECRET,
        "--bitbucket-addresses",
        "127.0.0.1",
    ]);
    let mut tally = Tally::new("slack, bitbucket, github ci");
    // A tenant's project that takes CI events from its own repository only.
    let mut ci = project("tenant-ci", INERT);
    ci["spec"]["eventSubscriptions"] = json!([
        {"source": "brigade.sh/github", "types": ["ci:job_requested", "ci:pipeline_requested"],
         "qualifiers": {"repo": "tenant/app"}},
        {"source": "brigade.sh/slack", "types": ["deploy"]},
        {"source": "brigade.sh/bitbucket", "types": ["repo:push"], "qualifiers": {"repo": "team/app"}},
    ]);
    server.create_project(&ci);
    let base = server.url.clone();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let slack_sign = |timestamp: u64, body: &str| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SLACK_SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{timestamp}:{body}").as_bytes());
        let tag: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("v0={tag}")
    };
    let slack = |headers: Vec<(&str, String)>, body: &str| {
        let mut request = http()
            .post(format!("{base}/gateways/slack"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        send(request)
    };
    let command = "team_id=T1&channel_id=C1&user_id=U1&command=%2Fdeploy&text=api";
    let ts = now();
    // (name, headers, body, status, what the answer says)
    type SlackCase<'a> = (&'a str, Vec<(&'a str, String)>, String, u16, &'a str);
    let slack_cases: Vec<SlackCase> = vec![
        (
            "no signature",
            vec![("X-Slack-Request-Timestamp", ts.to_string())],
            command.into(),
            401,
            "missing X-Slack-Signature",
        ),
        (
            "a signature an hour old",
            vec![
                ("X-Slack-Request-Timestamp", (ts - 3600).to_string()),
                ("X-Slack-Signature", slack_sign(ts - 3600, command)),
            ],
            command.into(),
            401,
            "more than 300 seconds",
        ),
        (
            "a signature from the future",
            vec![
                ("X-Slack-Request-Timestamp", (ts + 3600).to_string()),
                ("X-Slack-Signature", slack_sign(ts + 3600, command)),
            ],
            command.into(),
            401,
            "more than 300 seconds",
        ),
        (
            "the signature of another timestamp",
            vec![
                ("X-Slack-Request-Timestamp", ts.to_string()),
                ("X-Slack-Signature", slack_sign(ts - 1, command)),
            ],
            command.into(),
            401,
            "does not match",
        ),
        (
            "a command with a space",
            vec![
                ("X-Slack-Request-Timestamp", ts.to_string()),
                (
                    "X-Slack-Signature",
                    slack_sign(ts, "team_id=T1&channel_id=C1&user_id=U1&command=%2Fde+ploy"),
                ),
            ],
            "team_id=T1&channel_id=C1&user_id=U1&command=%2Fde+ploy".into(),
            400,
            "field `command` contains ' '",
        ),
        (
            "a channel id with a newline",
            vec![
                ("X-Slack-Request-Timestamp", ts.to_string()),
                (
                    "X-Slack-Signature",
                    slack_sign(
                        ts,
                        "team_id=T1&channel_id=C%0A1&user_id=U1&command=%2Fdeploy",
                    ),
                ),
            ],
            "team_id=T1&channel_id=C%0A1&user_id=U1&command=%2Fdeploy".into(),
            400,
            "field `channel_id` contains '\\\\n'",
        ),
    ];
    for (name, headers, body, status, said) in slack_cases {
        let answer = slack(headers, &body);
        let result = answered(&answer, status, said);
        tally.case(&mut server, name, result);
    }

    let bitbucket = |key: &str, body: String| {
        send(
            http()
                .post(format!("{base}/gateways/bitbucket"))
                .header("X-Event-Key", key)
                .header("Content-Type", "application/json")
                .body(body),
        )
    };
    let push = |changes: usize| {
        let change =
            json!({"new": {"type": "branch", "name": "main", "target": {"hash": "0123abcd"}}});
        json!({"repository": {"full_name": "team/app"}, "push": {"changes": vec![change; changes]}})
            .to_string()
    };
    let long_key = "repo:".to_string() + &"x".repeat(300);
    let bitbucket_cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "an event key with a space",
            "repo push",
            push(1),
            400,
            "the X-Event-Key header contains ' '",
        ),
        (
            "an event key of 305 characters",
            &long_key,
            push(1),
            400,
            "Brigade allows at most 255",
        ),
        (
            "a repository name with a slash-dot",
            "repo:push",
            json!({"repository": {"full_name": "team/../app"}}).to_string(),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "a repository name with a quote",
            "repo:push",
            json!({"repository": {"full_name": "team/a\"pp"}}).to_string(),
            400,
            "field `repository.full_name` contains",
        ),
        (
            "a body that is a list",
            "repo:push",
            "[]".into(),
            400,
            "must be a JSON object",
        ),
        (
            "100,000 changes",
            "repo:push",
            push(100_000),
            200,
            "accepted: 1 event(s) created",
        ),
    ];
    for (name, key, body, status, said) in bitbucket_cases {
        let answer = bitbucket(key, body);
        let result = answered(&answer, status, said);
        tally.case(&mut server, name, result);
    }

    // GitHub: a check run may name any project; only one that subscribes
    // to the run's repository gets the job.
    let other = project("other-tenant", INERT);
    server.create_project(&other);
    let mut delivery = 0;
    let mut github = |event: &str, body: Value| {
        delivery += 1;
        let body = body.to_string();
        send(
            http()
                .post(format!("{base}/gateways/github"))
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", format!("adversarial-{delivery}"))
                .header(
                    "X-Hub-Signature-256",
                    github_signature(GITHUB_SECRET, body.as_bytes()),
                )
                .header("Content-Type", "application/json")
                .body(body),
        )
    };
    let run = |name: &str, repo: &str| {
        json!({"action": "rerequested", "check_run": {"id": 1, "name": name, "head_sha": "abc"},
               "repository": {"full_name": repo, "clone_url": format!("https://github.com/{repo}.git")}})
    };
    let comment = |body: &str, association: &str| {
        json!({"action": "created",
               "issue": {"number": 3, "title": "t", "pull_request": {"url": "https://api.github.com/repos/tenant/app/pulls/3"}},
               "comment": {"id": 1, "body": body, "author_association": association},
               "repository": {"full_name": "tenant/app", "clone_url": "https://github.com/tenant/app.git"}})
    };
    let github_cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "a check run naming another tenant's project",
            "check_run",
            run("other-tenant:unit", "tenant/app"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "a check run of another repository naming the project",
            "check_run",
            run("tenant-ci:unit", "attacker/app"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "a check run whose job has a newline",
            "check_run",
            run("tenant-ci:unit\nrm", "tenant/app"),
            400,
            "the job of check run",
        ),
        (
            "a check run naming a project with a slash",
            "check_run",
            run("../tenant-ci:unit", "tenant/app"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "a check run of its own repository",
            "check_run",
            run("tenant-ci:unit", "tenant/app"),
            200,
            "accepted: 1 event(s) created",
        ),
        (
            "/brig run by a stranger",
            "issue_comment",
            comment("/brig run", "NONE"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "/brig run by a contributor of another PR",
            "issue_comment",
            comment("/brig run", "CONTRIBUTOR"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "/brig run after other words",
            "issue_comment",
            comment("looks good\n/brig run", "OWNER"),
            200,
            "accepted: 0 event(s) created",
        ),
        (
            "/brig run by the owner",
            "issue_comment",
            comment("/brig run", "OWNER"),
            200,
            "accepted: 1 event(s) created",
        ),
    ];
    for (name, event, body, status, said) in github_cases {
        let answer = github(event, body);
        let result = answered(&answer, status, said);
        tally.case(&mut server, name, result);
    }
    tally.finish();
}

/// Whether an answer has `status` and says `said`.
fn answered(answer: &Answer, status: u16, said: &str) -> Result<(), String> {
    check(
        answer.status == status && answer.text.contains(said),
        || {
            format!(
                "expected {status} saying {said:?}, got {} {}",
                answer.status, answer.text
            )
        },
    )
}

// ----- I: cron schedules ---------------------------------------------------------------

/// A project's cron schedule is a tenant's input the server acts on by
/// itself: a bad expression or zone, a schedule on another source or on
/// `*`, one type on two schedules, one too frequent for the server and too
/// many schedules are each refused naming the field or the limit, and the
/// server goes on serving (a good schedule is then accepted and listed).
#[test]
fn hostile_schedules_are_refused_by_name() {
    let mut server = Server::start(&["--executor", "none"]);
    let mut tally = Tally::new("schedules");
    let root = server.root.clone();
    let cron = |types: Value, schedule: &str, zone: Option<&str>| {
        let mut subscription =
            json!({"source": "brigade.sh/cron", "types": types, "schedule": schedule});
        if let Some(zone) = zone {
            subscription["timeZone"] = json!(zone);
        }
        subscription
    };
    let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let cases = [
        (
            "a bad expression",
            vec![cron(json!(["nightly"]), "0 3 * *", None)],
            "spec.eventSubscriptions[0].schedule",
        ),
        (
            "a minute of 61",
            vec![cron(json!(["nightly"]), "61 3 * * *", None)],
            "\\\"61 3 * * *\\\" is not a cron expression",
        ),
        (
            "a year field",
            vec![cron(json!(["nightly"]), "0 3 * * * 2030", None)],
            "spec.eventSubscriptions[0].schedule",
        ),
        (
            "a date that never comes",
            vec![cron(json!(["nightly"]), "0 0 30 2 *", None)],
            "never fires",
        ),
        (
            "an expression of 10,000 characters",
            vec![cron(json!(["nightly"]), &"1,".repeat(5_000), None)],
            "longer than 200 characters",
        ),
        (
            "an unknown time zone",
            vec![cron(json!(["nightly"]), "0 3 * * *", Some("Mars/Olympus"))],
            "spec.eventSubscriptions[0].timeZone",
        ),
        (
            "a time zone that is a path",
            vec![cron(
                json!(["nightly"]),
                "0 3 * * *",
                Some("../../../etc/passwd"),
            )],
            "is not a time zone",
        ),
        (
            "a time zone without a schedule",
            vec![json!({"source": "brigade.sh/cron", "types": ["nightly"], "timeZone": "UTC"})],
            "timeZone: is given without a schedule",
        ),
        (
            "a schedule on another source",
            vec![json!({"source": "brigade.sh/cli", "types": ["exec"], "schedule": "0 3 * * *"})],
            "only a subscription of source \\\"brigade.sh/cron\\\" may have a schedule",
        ),
        (
            "a schedule for every type",
            vec![cron(json!(["*"]), "0 3 * * *", None)],
            "spec.eventSubscriptions[0].types[0]",
        ),
        (
            "a type on two schedules",
            vec![
                cron(json!(["nightly"]), "0 3 * * *", None),
                cron(json!(["nightly"]), "0 4 * * *", None),
            ],
            "already has a schedule in spec.eventSubscriptions[0]",
        ),
        (
            "a schedule's event given a tick label",
            vec![
                json!({"source": "brigade.sh/cron", "types": ["nightly"], "schedule": "0 3 * * *", "labels": {"tick": "x"}}),
            ],
            "spec.eventSubscriptions[0].labels.tick",
        ),
        (
            "every second",
            vec![cron(json!(["often"]), "* * * * * *", None)],
            "project \\\"scheduled\\\", type \\\"often\\\": schedule \\\"* * * * * *\\\" ticks every 1s",
        ),
        (
            "twice within a minute once a day",
            vec![cron(json!(["burst"]), "0,30 3 3 * * *", None)],
            "this server allows at least 1m between ticks (--min-schedule-interval)",
        ),
        (
            "17 schedules",
            vec![cron(json!(many), "0 3 * * *", None)],
            "a project may have at most 16 schedules",
        ),
    ];
    for (name, subscriptions, problem) in cases {
        let mut body = project("scheduled", INERT);
        body["spec"]["eventSubscriptions"] = Value::Array(subscriptions);
        let (status, answer) = server.call("POST", "/v2/projects", Some(&root), Some(&body));
        tally.case(
            &mut server,
            name,
            check(
                status == 400 && answer.to_string().contains(problem),
                || format!("answered {status}: {answer}"),
            ),
        );
    }
    let (_, projects) = server.call("GET", "/v2/projects", Some(&root), None);
    assert_eq!(projects["items"].as_array().unwrap().len(), 0, "{projects}");
    // The server still takes a good one, and an update cannot smuggle in
    // what a creation may not.
    let mut body = project("scheduled", INERT);
    body["spec"]["eventSubscriptions"] = json!([
        {"source": "brigade.sh/cron", "types": ["nightly"], "schedule": "0 3 * * *", "timeZone": "Europe/Berlin"}
    ]);
    server.expect("POST", "/v2/projects", Some(&body), 201);
    body["spec"]["eventSubscriptions"][0]["schedule"] = json!("* * * * * *");
    let (status, answer) = server.call("PUT", "/v2/projects/scheduled", Some(&root), Some(&body));
    tally.case(
        &mut server,
        "an update to every second",
        check(
            status == 400 && answer.to_string().contains("--min-schedule-interval"),
            || format!("answered {status}: {answer}"),
        ),
    );
    let list = server.expect("GET", "/v2/projects/scheduled/schedules", None, 200);
    assert_eq!(list["items"][0]["schedule"], "0 3 * * *", "{list}");
    assert_eq!(list["items"][0]["timeZone"], "Europe/Berlin", "{list}");
    tally.finish();
}
