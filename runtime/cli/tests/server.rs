//! `mizzen server` and the `mizzen` client as users run them: a server on a
//! loopback port, projects from examples/ created with the CLI, events
//! followed to their end, logs read by job and container — on the embedded
//! SQLite store and on PostgreSQL — plus the API's authentication, tenant
//! isolation, secret redaction and webhook checks over raw HTTP.
//!
//! The PostgreSQL runs need `MIZZEN_TEST_DATABASE_URL` (a maintenance
//! database the tests may create databases from; `scripts/test` starts one
//! with `scripts/setup-postgres`). Without it they say so and do nothing.

mod common;
use common::{Ran, github_signature, repo};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const ROOT_PASSWORD: &str = "test-root-password";

/// A running `mizzen server` with its own data and client config.
struct TestServer {
    child: Child,
    url: String,
    data_dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestServer {
    fn start(database_url: Option<String>, extra: &[&str]) -> Self {
        Self::start_with_env(database_url, extra, &[])
    }

    fn start_with_env(database_url: Option<String>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_under(None, database_url, extra, env)
    }

    /// A server under a limit of `nofile` open descriptors, when one is
    /// given.
    fn start_under(
        nofile: Option<u64>,
        database_url: Option<String>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let config_dir = tempfile::tempdir().unwrap();
        let log = data_dir.path().join("server.log");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(url) = &database_url {
            args.extend(["--database-url".to_string(), url.clone()]);
        }
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
        let server = Self {
            child,
            url,
            data_dir,
            config_dir,
            log,
            args,
            env,
        };
        let login = server.cli(&[
            "login",
            "--server",
            &server.url,
            "--root",
            "--password",
            ROOT_PASSWORD,
        ]);
        assert_eq!(login.code, 0, "{login:?}");
        server
    }

    /// Kills the server with SIGKILL and starts it again on the same port
    /// and store.
    fn kill_and_restart(&mut self) {
        // It may have stopped already (SIGTERM).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.url.rsplit(':').next().unwrap().to_string();
        let (child, url) = common::spawn_server(
            self.data_dir.path(),
            &self.log,
            ROOT_PASSWORD,
            &self.args,
            &self.env,
            Some(&port),
        );
        self.child = child;
        self.url = url;
    }

    fn cli(&self, args: &[&str]) -> Ran {
        let output = Command::new(env!("CARGO_BIN_EXE_mizzen"))
            .args(args)
            .current_dir(repo())
            .env("MIZZEN_CONFIG_DIR", self.config_dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("mizzen runs");
        Ran::from(output)
    }

    fn ok(&self, args: &[&str]) -> String {
        let ran = self.cli(args);
        assert_eq!(
            ran.code,
            0,
            "mizzen {}: {ran:?}\n--- server log\n{}",
            args.join(" "),
            self.server_log()
        );
        ran.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn root_token(&self) -> String {
        let config = std::fs::read_to_string(self.config_dir.path().join("config")).unwrap();
        let config: Value = serde_json::from_str(&config).unwrap();
        config["apiToken"].as_str().unwrap().to_string()
    }

    /// The id in `Created event "<id>".`
    fn create_event(&self, project: &str, extra: &[&str]) -> String {
        let mut args = vec!["event", "create", "--project", project];
        args.extend(extra);
        let out = self.ok(&args);
        created_id(&out)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn created_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Created event \""))
        .and_then(|l| l.split('"').next())
        .unwrap_or_else(|| panic!("no event created: {out}"))
        .to_string()
}

/// The walk-through of the issue: projects from examples/, events
/// followed, job logs by job and by container.
fn examples_end_to_end(server: &TestServer) {
    for example in [
        "01-hello-world",
        "03-first-job",
        "15-sidecar-service",
        "11-typescript",
    ] {
        server.ok(&["project", "create", "-f", &format!("examples/{example}")]);
    }
    let projects = server.json(&["project", "list"]);
    assert_eq!(projects["items"].as_array().unwrap().len(), 4, "{projects}");

    let hello = server.cli(&["event", "create", "--project", "hello-world", "--follow"]);
    assert_eq!(hello.code, 0, "{hello:?}");
    assert!(hello.stdout.contains("Hello, World!"), "{hello:?}");

    let ts = server.cli(&[
        "event",
        "create",
        "--project",
        "hello-typescript",
        "--follow",
    ]);
    assert_eq!(ts.code, 0, "{ts:?}");

    let id = server.create_event("first-job", &[]);
    let followed = server.ok(&["event", "logs", "--id", &id, "--follow"]);
    assert!(followed.contains("Creating job my-first-job"), "{followed}");
    let job_log = server.ok(&["event", "logs", "--id", &id, "--job", "my-first-job"]);
    assert_eq!(job_log.trim(), "My first job!");
    let event = server.json(&["event", "get", "--id", &id]);
    assert_eq!(event["worker"]["status"]["phase"], "SUCCEEDED", "{event}");
    assert_eq!(event["worker"]["jobs"][0]["name"], "my-first-job");
    assert_eq!(event["worker"]["jobs"][0]["status"]["phase"], "SUCCEEDED");

    let id = server.create_event("sidecar-service", &["--follow"]);
    let primary = server.ok(&["event", "logs", "--id", &id, "--job", "integration-test"]);
    assert!(
        primary.contains("Hello from a sidecar service!"),
        "{primary}"
    );
    let sidecar = server.ok(&[
        "event",
        "logs",
        "--id",
        &id,
        "--job",
        "integration-test",
        "--container",
        "redis",
    ]);
    assert!(
        sidecar
            .to_lowercase()
            .contains("ready to accept connections"),
        "{sidecar}"
    );
    let event = server.json(&["event", "get", "--id", &id]);
    assert_eq!(event["summary"], "integration test passed", "{event}");

    let missing = server.cli(&["event", "logs", "--id", &id, "--job", "no-such-job"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("NotFoundError"), "{missing:?}");

    compiled_scripts_end_to_end(server);
}

/// Projects whose scripts are compiled modules (Rust and Go): sent inline
/// by `project create`, run by the server as `mizzen run` runs them; a
/// module importing what the host does not grant is refused when saved.
fn compiled_scripts_end_to_end(server: &TestServer) {
    for (example, project) in [
        ("16-rust-pipeline", "rust-pipeline"),
        ("17-go-pipeline", "go-pipeline"),
    ] {
        server.ok(&["project", "create", "-f", &format!("examples/{example}")]);
        let id = server.create_event(project, &["--follow"]);
        let event = server.json(&["event", "get", "--id", &id]);
        assert_eq!(event["worker"]["status"]["phase"], "SUCCEEDED", "{event}");
        assert!(
            event["summary"]
                .as_str()
                .unwrap_or_default()
                .contains("4 jobs"),
            "{event}"
        );
        assert_eq!(event["worker"]["jobs"].as_array().map(Vec::len), Some(4));
    }

    // An event keeps its project's definition, but names the module by its
    // hash: ten more events of the Go project (a 4.5 MB module, 6 MB of
    // base64) add kilobytes to the database, not 60 MB.
    let database = server.data_dir.path().join("mizzen.db");
    if database.exists() {
        let size = || {
            // The write-ahead log holds the latest writes until a checkpoint.
            let wal = database.with_extension("db-wal");
            std::fs::metadata(&database).unwrap().len()
                + std::fs::metadata(&wal).map_or(0, |m| m.len())
        };
        let before = size();
        for _ in 0..10 {
            server.create_event("go-pipeline", &[]);
        }
        let grown = size().saturating_sub(before);
        assert!(
            grown < 4 * 1024 * 1024,
            "ten events of a module project grew the database by {grown} bytes"
        );
    }

    // (module (import "env" "foo" (func))), in base64, inline.
    let bad: &[u8] = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x0b\x01\x03env\x03foo\0\0";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: bad-module\nspec:\n  workerTemplate:\n    defaultConfigFiles:\n      brigade.wasm: {}\n",
            base64::engine::general_purpose::STANDARD.encode(bad)
        ),
    )
    .unwrap();
    let refused = server.cli(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("spec.workerTemplate.defaultConfigFiles.brigade.wasm")
            && refused
                .stderr
                .contains(r#"imports "env" "foo", which the host does not provide"#),
        "{refused:?}"
    );
}

#[test]
fn examples_run_end_to_end_on_sqlite() {
    let server = TestServer::start(None, &[]);
    examples_end_to_end(&server);
}

#[test]
fn examples_run_end_to_end_on_postgres() {
    let Some(url) = common::postgres_database("examples_run_end_to_end_on_postgres") else {
        return;
    };
    let server = TestServer::start(Some(url), &[]);
    examples_end_to_end(&server);
}

/// Brigade's examples with npm packages and local modules, sent by
/// `project create` and run by the server: packages fetched once from a
/// registry the test serves, then every event reuses the bundle.
fn script_dependencies_end_to_end(database_url: Option<String>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = rt.block_on(mizzen_tests::npm_registry::NpmRegistry::start(
        mizzen_tests::npm_registry::brigade_example_packages(),
        None,
    ));
    let server = TestServer::start_with_env(
        database_url,
        &[],
        &[("MIZZEN_NPM_REGISTRY", registry.url.as_str())],
    );
    server.ok(&["project", "create", "-f", "examples/13-dependencies"]);
    server.ok(&["project", "create", "-f", "examples/09-npm"]);
    // The server prepares a project's script when it is saved: the packages
    // (two packuments and two tarballs for one, a tarball for the other)
    // are fetched before any event asks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while registry.requests() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(registry.requests(), 5, "fetched ahead of the first events");

    let id = server.create_event("dependencies", &["--follow"]);
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("is 13 thirteen? true"), "{logs}");
    assert!(
        logs.contains("area of a circle with radius 3: 28.259999999999998"),
        "{logs}"
    );
    assert!(logs.contains("is-thirteen@2.0.0"), "{logs}");

    let id = server.create_event("npm", &["--follow"]);
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("Hello, "), "{logs}");
    let event = server.json(&["event", "get", "--id", &id]);
    assert_eq!(event["worker"]["status"]["phase"], "SUCCEEDED", "{event}");

    // Later events of the same versions fetch nothing either.
    for project in ["dependencies", "npm"] {
        let id = server.create_event(project, &["--follow"]);
        let event = server.json(&["event", "get", "--id", &id]);
        assert_eq!(event["worker"]["status"]["phase"], "SUCCEEDED", "{event}");
    }
    assert_eq!(registry.requests(), 5);
}

#[test]
fn script_dependencies_run_on_sqlite() {
    script_dependencies_end_to_end(None);
}

#[test]
fn script_dependencies_run_on_postgres() {
    let Some(url) = common::postgres_database("script_dependencies_run_on_postgres") else {
        return;
    };
    script_dependencies_end_to_end(Some(url));
}

const SECRET: &str = "s3cr3t-value-9f8e";

fn secret_project(id: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: {id}
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
    defaultConfigFiles:
      brigade.js: |
        const {{ events, Job }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async event => {{
          const secret = event.project.secrets.password;
          console.log("the password is " + secret);
          const job = new Job("leak", "busybox", event);
          job.primaryContainer.environment = {{ PASSWORD: secret }};
          job.primaryContainer.command = ["sh", "-c", "echo job sees $PASSWORD"];
          await job.run();
          return "summary with " + secret;
        }});
        events.process();
"#
    );
    std::fs::write(dir.path().join("project.yaml"), yaml).unwrap();
    dir
}

#[test]
fn secret_values_never_leave_the_server() {
    let server = TestServer::start(None, &[]);
    let dir = secret_project("vault");
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    server.ok(&[
        "project",
        "secret",
        "set",
        "--project",
        "vault",
        "-s",
        &format!("password={SECRET}"),
    ]);
    let listed = server.ok(&[
        "project",
        "secret",
        "list",
        "--project",
        "vault",
        "-o",
        "json",
    ]);
    assert!(!listed.contains(SECRET), "{listed}");

    let followed = server.cli(&["event", "create", "--project", "vault", "--follow"]);
    assert_eq!(followed.code, 0, "{followed:?}");
    let id = created_id(&followed.stdout);
    assert!(
        followed.stdout.contains("the password is ***"),
        "{followed:?}"
    );
    let job = server.ok(&["event", "logs", "--id", &id, "--job", "leak"]);
    assert_eq!(job.trim(), "job sees ***");
    let event = server.ok(&["event", "get", "--id", &id, "-o", "json"]);
    assert!(event.contains("summary with ***"), "{event}");
    let all = server.ok(&["event", "list", "-o", "json"]);
    for text in [&followed.stdout, &job, &event, &all] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }
}

#[test]
fn a_project_restricts_the_secrets_its_script_reads() {
    let server = TestServer::start(None, &["--executor", "none"]);
    let dir = script_project(
        "restricted",
        "    scriptSecrets: [shown]\n",
        "console.log(`keys: ${Object.keys(event.project.secrets)}`);",
    );
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    server.ok(&[
        "project",
        "secret",
        "set",
        "--project",
        "restricted",
        "-s",
        "shown=one",
        "-s",
        "kept=two",
    ]);
    let id = server.create_event("restricted", &[]);
    assert_eq!(phase_of(&wait_until_ended(&server, &id)), "SUCCEEDED");
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("keys: shown\n"), "{logs}");
}

#[test]
fn a_script_in_a_sandbox_process_reaches_its_events_workspace() {
    // The container engine's executor keeps the workspace on this host; the
    // sandbox process gets its directory from the server.
    let server = TestServer::start(None, &["--sandbox-processes", "1"]);
    let dir = script_project(
        "files",
        "    useWorkspace: true\n",
        "const { workspace } = require(\"@brigadecore/brigadier\"); workspace.writeFile(\"a/b.txt\", \"kept\"); console.log(`read back: ${workspace.readFile(\"a/b.txt\")}`);",
    );
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    let id = server.create_event("files", &[]);
    assert_eq!(phase_of(&wait_until_ended(&server, &id)), "SUCCEEDED");
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("read back: kept"), "{logs}");
}

/// Wasm jobs in a server: the script puts the test tool into the workspace
/// (a server's project has no local source to read it from), Wasm jobs run
/// it in the sandbox processes — their lines in the job's log, their phases
/// recorded as any job's — and a container job reads what one wrote. The
/// same event checks what the host does before any job runs: environment
/// files and containers' users (with the project's allowRoot kept by the
/// server); and a service its job reaches by name, on a host port under the
/// project's allowHostPorts, recorded with the event's jobs.
fn wasm_jobs_end_to_end(database_url: Option<String>) {
    use base64::Engine as _;
    let tool = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/wasm-jobs/tool.wasm"
    ))
    .unwrap();
    let tool = base64::engine::general_purpose::STANDARD.encode(tool);
    let server = TestServer::start(database_url, &["--sandbox-processes", "1"]);
    let dir = script_project(
        "wasm-jobs",
        "    useWorkspace: true\n    jobPolicies:\n      allowRoot: true\n      allowHostPorts: true\n",
        &format!(
            r#"const {{ Job, Container, Service, workspace }} = require("@brigadecore/brigadier");
          workspace.writeFile("tool.wasm", "{tool}", "base64");
          const args = new Job("wasm-args", "wasm:workspace:tool.wasm", event);
          args.primaryContainer.arguments = ["args", "in a sandbox process"];
          await args.run();
          const fails = new Job("wasm-fails", "wasm:workspace:tool.wasm", event);
          fails.primaryContainer.arguments = ["exit", "3"];
          fails.fallible = true;
          await fails.run();
          const files = new Job("wasm-files", "wasm:workspace:tool.wasm", event);
          files.primaryContainer.arguments = ["write", "/ws/from-wasm.txt", "written by a Wasm job"];
          files.primaryContainer.workspaceMountPath = "/ws";
          await files.run();
          const read = new Job("read", "localhost/busybox", event);
          read.primaryContainer.workspaceMountPath = "/work";
          read.primaryContainer.command = ["cat", "/work/from-wasm.txt"];
          await read.run();
          workspace.writeFile("ci.env", "export STAGE='from an environment file'\n");
          const env = new Job("env-file", "localhost/busybox", event);
          env.primaryContainer.environmentFile = "workspace:ci.env";
          env.primaryContainer.command = ["sh", "-c", "echo $STAGE"];
          await env.run();
          const wasmEnv = new Job("wasm-env-file", "wasm:workspace:tool.wasm", event);
          wasmEnv.primaryContainer.environmentFile = "workspace:ci.env";
          wasmEnv.primaryContainer.arguments = ["env", "STAGE"];
          await wasmEnv.run();
          const users = new Job("users", "localhost/busybox", event);
          users.primaryContainer.command = ["sh", "-c", "id -u"];
          users.sidecarContainers = {{ root: new Container("localhost/busybox") }};
          users.sidecarContainers.root.user = "root";
          users.sidecarContainers.root.command = ["sh", "-c", "id -u"];
          await users.run();
          const cache = new Service("cache", "localhost/busybox");
          cache.command = ["sh", "-c", "echo serving; while true; do echo from the service | nc -l -p 7000; done"];
          cache.readiness = {{ tcpPort: 7000 }};
          cache.ports = ["0:7000"];
          const started = await cache.start();
          const client = new Job("uses-service", "localhost/busybox", event);
          client.primaryContainer.command = ["sh", "-c", "nc cache 7000; echo port $MIZZEN_SERVICE_CACHE_PORT_7000"];
          await client.run();
          console.log("published on", started.ports["7000"]);
          return "wasm jobs ran";"#
        ),
    );
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    let id = server.create_event("wasm-jobs", &[]);
    let event = wait_until_ended(&server, &id);
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}\n{logs}");
    let args = server.ok(&["event", "logs", "--id", &id, "--job", "wasm-args"]);
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["arg: tool.wasm", "arg: args", "arg: in a sandbox process"]
    );
    let read = server.ok(&["event", "logs", "--id", &id, "--job", "read"]);
    assert_eq!(read.trim(), "written by a Wasm job");
    let env = server.ok(&["event", "logs", "--id", &id, "--job", "env-file"]);
    assert_eq!(env.trim(), "from an environment file");
    let env = server.ok(&["event", "logs", "--id", &id, "--job", "wasm-env-file"]);
    assert_eq!(env.trim(), "STAGE=from an environment file");
    // nobody by default; root under the project's allowRoot, which the
    // server kept with the project.
    let users = server.ok(&["event", "logs", "--id", &id, "--job", "users"]);
    assert_eq!(users.trim(), "65534");
    let root = server.ok(&[
        "event",
        "logs",
        "--id",
        &id,
        "--job",
        "users",
        "--container",
        "root",
    ]);
    assert_eq!(root.trim(), "0");
    // The service: reached by name, its host port told to the job, its
    // output kept as a job's, and stopped (ABORTED) with the event.
    let client = server.ok(&["event", "logs", "--id", &id, "--job", "uses-service"]);
    let client: Vec<&str> = client.lines().collect();
    assert_eq!(client[0], "from the service", "{client:?}");
    let port = client[1]
        .strip_prefix("port ")
        .expect("the job printed its port");
    assert!(port.parse::<u16>().is_ok(), "{port}");
    assert!(logs.contains(&format!("published on {port}")), "{logs}");
    let cache = server.ok(&["event", "logs", "--id", &id, "--job", "cache"]);
    assert_eq!(cache.lines().next(), Some("serving"), "{cache}");
    let event = server.json(&["event", "get", "--id", &id]);
    let phases: Vec<(String, String)> = event["worker"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            (
                job["name"].as_str().unwrap().to_string(),
                job["status"]["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (job, phase) in [
        ("wasm-args", "SUCCEEDED"),
        ("wasm-fails", "FAILED"),
        ("wasm-files", "SUCCEEDED"),
        ("read", "SUCCEEDED"),
        ("uses-service", "SUCCEEDED"),
        ("cache", "ABORTED"),
    ] {
        assert!(
            phases.contains(&(job.to_string(), phase.to_string())),
            "{job} {phase}: {phases:?}"
        );
    }
}

#[test]
fn wasm_jobs_run_in_sandbox_processes_on_sqlite() {
    wasm_jobs_end_to_end(None);
}

#[test]
fn wasm_jobs_run_in_sandbox_processes_on_postgres() {
    let Some(url) = common::postgres_database("wasm_jobs_run_in_sandbox_processes_on_postgres")
    else {
        return;
    };
    wasm_jobs_end_to_end(Some(url));
}

/// A project's volumes through the server: kept between events, listed
/// with what they hold, deleted from the CLI; over the server's quota
/// refused when the project is created; host paths refused outright on a
/// server that forbids them, whatever the project allows.
fn project_volumes_end_to_end(database_url: Option<String>, store: &str) {
    let server = TestServer::start(
        database_url,
        &["--forbid-host-paths", "--limit-ceilings", "volumeSize=64Mi"],
    );
    let project = format!("volumes-{store}");
    let dir = script_project(
        &project,
        "    volumes:\n    - name: data\n      size: 8Mi\n    jobPolicies:\n      allowedHostPaths: [/tmp]\n",
        r#"const { Job } = require("@brigadecore/brigadier");
          const write = new Job("write", "localhost/busybox", event);
          write.primaryContainer.volumes = ["data:/data"];
          write.primaryContainer.command = ["sh", "-c", "cat /data/runs 2>/dev/null; echo run >> /data/runs; head -c 65536 /dev/zero > /data/blob"];
          await write.run();
          const host = new Job("host", "localhost/busybox", event);
          host.primaryContainer.volumes = ["/tmp:/host"];
          try { await host.run(); } catch (e) { console.log("host path:", e.message); }"#,
    );
    let path = dir.path().to_str().unwrap();
    server.ok(&["project", "create", "-f", path]);
    // A volume an interrupted earlier run kept: the project's by its id.
    server.cli(&[
        "project", "volumes", "delete", "-p", &project, "data", "--yes",
    ]);
    let mut logs = String::new();
    for _ in 0..2 {
        let id = server.create_event(&project, &[]);
        let event = wait_until_ended(&server, &id);
        logs = server.ok(&["event", "logs", "--id", &id]);
        assert_eq!(phase_of(&event), "SUCCEEDED", "{event}\n{logs}");
    }
    assert!(
        logs.contains("which this server forbids (mizzen server --forbid-host-paths)"),
        "{logs}"
    );
    let id = server.create_event(&project, &[]);
    wait_until_ended(&server, &id);
    let write = server.ok(&["event", "logs", "--id", &id, "--job", "write"]);
    assert_eq!(
        write.lines().collect::<Vec<_>>(),
        ["run", "run"],
        "kept between events"
    );

    let list = server.json(&["project", "volumes", "list", "-p", &project]);
    assert_eq!(list["quotaBytes"], 64 * 1024 * 1024, "{list}");
    let data = &list["items"][0];
    assert_eq!(data["name"], "data", "{list}");
    assert_eq!(data["sizeBytes"], 8 * 1024 * 1024, "{list}");
    assert_eq!(data["created"], true, "{list}");
    assert!(data["usedBytes"].as_u64().unwrap() >= 65536, "{list}");
    let table = server.ok(&["project", "volumes", "list", "-p", &project]);
    assert!(
        table.contains("data") && table.contains("8 MiB") && table.contains("kept"),
        "{table}"
    );

    server.ok(&[
        "project", "volumes", "delete", "-p", &project, "data", "--yes",
    ]);
    let list = server.json(&["project", "volumes", "list", "-p", &project]);
    assert_eq!(list["items"][0]["created"], false, "{list}");
    let again = server.cli(&[
        "project", "volumes", "delete", "-p", &project, "data", "--yes",
    ]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("Volume \"data\" not found"),
        "{again:?}"
    );

    // Over the server's ceiling: refused when the project is created, naming
    // the field and the quota.
    let greedy = script_project(
        &format!("greedy-{store}"),
        "    volumes:\n    - name: aa\n      size: 48Mi\n    - name: bb\n      size: 48Mi\n",
        "return;",
    );
    let refused = server.cli(&["project", "create", "-f", greedy.path().to_str().unwrap()]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("spec.workerTemplate.volumes")
            && refused
                .stderr
                .contains("over the project's volume quota of 64 MiB"),
        "{refused:?}"
    );
    // A deleted project's volumes go with it.
    let id = server.create_event(&project, &[]);
    wait_until_ended(&server, &id);
    server.ok(&["project", "delete", "-i", &project, "--yes"]);
    let left = Command::new("podman")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=mizzen_project_{project}_"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(left, "", "volumes left after the project was deleted");
}

#[test]
fn project_volumes_on_sqlite() {
    project_volumes_end_to_end(None, "sqlite");
}

#[test]
fn project_volumes_on_postgres() {
    let Some(url) = common::postgres_database("project_volumes_on_postgres") else {
        return;
    };
    project_volumes_end_to_end(Some(url), "postgres");
}

/// examples/20-artifacts-caches as project `id`.
fn artifacts_project(id: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(repo().join("examples/20-artifacts-caches/project.yaml")).unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        example.replace("id: artifacts-caches", &format!("id: {id}")),
    )
    .unwrap();
    dir
}

/// Artifacts and caches through a server: a build's cache missed then hit,
/// its artifact restored into the test job, listed and downloaded (checked)
/// through the API and the CLI; another project's identical key is a miss;
/// a tenant of another project reads nothing of this one's.
async fn artifacts_and_caches_end_to_end(
    database_url: Option<String>,
    store: &str,
    extra: Vec<String>,
) {
    let (a, b) = (format!("kept-a-{store}"), format!("kept-b-{store}"));
    let (server, first, second, other) = {
        let (a, b) = (a.clone(), b.clone());
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let server = TestServer::start(database_url, &extra);
            for id in [&a, &b] {
                let dir = artifacts_project(id);
                server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
            }
            let mut ran = Vec::new();
            for project in [&a, &a, &b] {
                let id = server.create_event(project, &[]);
                let event = wait_until_ended(&server, &id);
                let build = server.ok(&["event", "logs", "--id", &id, "--job", "build"]);
                let worker = server.ok(&["event", "logs", "--id", &id]);
                assert_eq!(phase_of(&event), "SUCCEEDED", "{event}\n{worker}\n{build}");
                assert!(worker.contains("build report: built dist/app"), "{worker}");
                let test = server.ok(&["event", "logs", "--id", &id, "--job", "test"]);
                assert!(
                    test.contains("hello from the build, with 2 dependencies"),
                    "{test}"
                );
                ran.push((id, build));
            }
            let mut ran = ran.into_iter();
            let (first, second, other) = (
                ran.next().unwrap(),
                ran.next().unwrap(),
                ran.next().unwrap(),
            );
            (server, first, second, other)
        })
        .await
        .unwrap()
    };
    assert!(first.1.contains("has no entry"), "{}", first.1);
    assert!(first.1.contains("saved cache"), "{}", first.1);
    assert!(second.1.contains("restored cache"), "{}", second.1);
    assert!(
        !second.1.contains("saved cache"),
        "a hit saves nothing: {}",
        second.1
    );
    // The same key in another project is that project's own miss.
    assert!(other.1.contains("has no entry"), "{}", other.1);

    let base = server.url.clone();
    let root = server.root_token();
    let event = &second.0;
    let (status, list) = call(
        "GET",
        &format!("{base}/v2/events/{event}/artifacts"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["build-report", "dist"], "{list}");
    let (status, dist) = call(
        "GET",
        &format!("{base}/v2/events/{event}/artifacts/dist"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200, "{dist}");
    let app = dist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "app")
        .unwrap()
        .clone();
    let response = http()
        .get(format!("{base}/v2/events/{event}/artifacts/dist/files/app"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let length: u64 = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let digest = response.headers()["repr-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.bytes().await.unwrap();
    assert_eq!(length, body.len() as u64);
    assert_eq!(app["sizeBytes"], body.len());
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
    };
    assert_eq!(app["sha256"], hex_of(&sha), "{dist}");
    assert_eq!(digest, format!("sha-256=:{}:", base64_of(&sha)));
    assert!(String::from_utf8_lossy(&body).contains("hello from the build"));

    // A tenant of project b only: a's artifacts and caches do not exist.
    let (status, token) = call(
        "POST",
        &format!("{base}/v2/service-accounts"),
        Some(&root),
        Some(
            json!({"apiVersion": "brigade.sh/v2", "kind": "ServiceAccount",
                    "metadata": {"id": "tenant-b"}, "description": "tenant b"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let tenant = token["value"].as_str().unwrap().to_string();
    let (status, body) = call(
        "POST",
        &format!("{base}/v2/projects/{b}/role-assignments"),
        Some(&root),
        Some(json!({"role": "PROJECT_USER", "principal": {"type": "SERVICE_ACCOUNT", "id": "tenant-b"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for path in [
        format!("/v2/events/{event}/artifacts"),
        format!("/v2/events/{event}/artifacts/dist"),
        format!("/v2/events/{event}/artifacts/dist/files/app"),
        format!("/v2/projects/{a}/caches"),
    ] {
        let (status, body) = call("GET", &format!("{base}{path}"), Some(&tenant), None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = call(
        "GET",
        &format!("{base}/v2/events/{}/artifacts", other.0),
        Some(&tenant),
        None,
    )
    .await;
    assert_eq!(status, 200, "its own: {body}");
    let (status, body) = call(
        "GET",
        &format!("{base}/v2/projects/{b}/caches"),
        Some(&tenant),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let key = body["items"][0]["key"].as_str().unwrap().to_string();
    let (status, body) = call(
        "DELETE",
        &format!("{base}/v2/projects/{b}/caches/{key}"),
        Some(&tenant),
        None,
    )
    .await;
    assert_eq!(status, 403, "deleting a cache takes PROJECT_ADMIN: {body}");

    let (a2, event2, key2) = (a.clone(), event.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        let into = out.path().join("dist");
        server.ok(&[
            "event",
            "artifacts",
            "get",
            "-e",
            &event2,
            "dist",
            "--dir",
            into.to_str().unwrap(),
        ]);
        let app = std::fs::read_to_string(into.join("app")).unwrap();
        assert!(app.contains("hello from the build"), "{app}");
        let table = server.ok(&["project", "caches", "list", "-p", &a2]);
        assert!(table.contains(&key2), "{table}");
        server.ok(&["project", "caches", "delete", "-p", &a2, &key2, "--yes"]);
        let table = server.ok(&["project", "caches", "list", "-p", &a2]);
        assert!(table.contains("has no cache entries"), "{table}");
        // Deleting the event deletes its artifacts.
        server.ok(&["event", "delete", "--id", &event2, "--yes"]);
        let gone = server.cli(&["event", "artifacts", "list", "-e", &event2]);
        assert_ne!(gone.code, 0, "{gone:?}");
    })
    .await
    .unwrap();
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_and_caches_on_sqlite() {
    artifacts_and_caches_end_to_end(None, "sqlite", Vec::new()).await;
}

/// The same with the objects on a real S3-compatible server (moto, from
/// scripts/setup-s3), as replicas sharing the work keep them.
#[tokio::test(flavor = "multi_thread")]
async fn artifacts_and_caches_on_s3() {
    let Ok(url) = std::env::var("MIZZEN_TEST_S3_URL") else {
        eprintln!("MIZZEN_TEST_S3_URL is not set (scripts/setup-s3 starts a server); skipped");
        return;
    };
    let (endpoint, bucket) = url.rsplit_once('/').unwrap();
    let store = format!(
        "s3://{bucket}/server-{}?aws_endpoint={endpoint}&aws_allow_http=true&aws_region=us-east-1&aws_access_key_id=test&aws_secret_access_key=test",
        std::process::id()
    );
    artifacts_and_caches_end_to_end(None, "s3", vec!["--object-store".into(), store]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_and_caches_on_postgres() {
    let Some(url) = common::postgres_database("artifacts_and_caches_on_postgres") else {
        return;
    };
    artifacts_and_caches_end_to_end(Some(url), "postgres", Vec::new()).await;
}

/// Every object stored under `objects` (the data directory's), as (name,
/// content's SHA-256); staging files (`NAME#N`, object_store's) apart.
fn stored_objects(objects: &std::path::Path) -> (Vec<(String, String)>, Vec<String>) {
    let (mut whole, mut staging) = (Vec::new(), Vec::new());
    let Ok(dirs) = std::fs::read_dir(objects.join("sha256")) else {
        return (whole, staging);
    };
    for dir in dirs.flatten() {
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.contains('#') {
                staging.push(name);
                continue;
            }
            let content = std::fs::read(file.path()).unwrap();
            let sha = {
                use sha2::Digest;
                sha2::Sha256::digest(&content)
            };
            whole.push((name, hex_of(&sha)));
        }
    }
    (whole, staging)
}

/// A server killed while it stores an artifact's large file leaves only
/// whole objects behind and no artifact naming the half-stored one; the
/// event runs again after the restart and keeps its artifact then.
#[test]
fn an_upload_cut_by_killing_the_server_leaves_nothing_half_visible() {
    let mut server = TestServer::start(None, &[]);
    let dir = script_project(
        "cut-upload",
        "",
        r#"const { Job } = require("@brigadecore/brigadier");
          const job = new Job("big", "debian", event);
          job.primaryContainer.command = ["sh", "-c", "mkdir -p /tmp/out && head -c 400000000 /dev/urandom > /tmp/out/big.bin"];
          job.artifacts.save = [{ name: "big", path: "/tmp/out" }];
          await job.run();"#,
    );
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    let id = server.create_event("cut-upload", &[]);
    let objects = server.data_dir.path().join("objects");
    // The file is staged (hashed into a temporary file), then written to
    // the store under a staging name, then renamed: kill while it is
    // staged there.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, staging) = stored_objects(&objects);
        if !staging.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never started\n{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill_and_restart();
    let (whole, _) = stored_objects(&objects);
    for (name, sha) in &whole {
        assert_eq!(
            name, sha,
            "an object is visible under a name its content does not have"
        );
    }
    let event = wait_until_ended(&server, &id);
    assert_eq!(
        phase_of(&event),
        "SUCCEEDED",
        "{event}\n{}",
        server.server_log()
    );
    let list = server.json(&["event", "artifacts", "list", "-e", &id]);
    assert_eq!(list["items"][0]["name"], "big", "{list}");
    assert_eq!(list["items"][0]["sizeBytes"], 400_000_000u64, "{list}");
    let (whole, _) = stored_objects(&objects);
    for (name, sha) in &whole {
        assert_eq!(name, sha);
    }
}

/// An HTTP client. reqwest is built with TLS whose crypto provider is
/// chosen at run time.
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The ids of a list's items.
fn item_ids(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["id"].as_str().unwrap())
        .collect()
}

/// Raw HTTP for what the CLI does not show: status codes and error bodies.
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let client = http();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every endpoint, as (method, path).
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/v2/whoami"),
    ("DELETE", "/v2/session"),
    ("GET", "/v2/projects"),
    ("POST", "/v2/projects"),
    ("GET", "/v2/projects/alpha"),
    ("PUT", "/v2/projects/alpha"),
    ("DELETE", "/v2/projects/alpha"),
    ("GET", "/v2/projects/alpha/secrets"),
    ("PUT", "/v2/projects/alpha/secrets/key"),
    ("DELETE", "/v2/projects/alpha/secrets/key"),
    ("GET", "/v2/projects/alpha/role-assignments"),
    ("POST", "/v2/projects/alpha/role-assignments"),
    ("DELETE", "/v2/projects/alpha/role-assignments"),
    ("GET", "/v2/project-role-assignments"),
    ("GET", "/v2/events"),
    ("POST", "/v2/events"),
    ("DELETE", "/v2/events"),
    ("POST", "/v2/events/cancellations"),
    ("GET", "/v2/events/x"),
    ("DELETE", "/v2/events/x"),
    ("PUT", "/v2/events/x/cancellation"),
    ("POST", "/v2/events/x/retries"),
    ("POST", "/v2/events/x/clones"),
    ("PUT", "/v2/events/x/source-state"),
    ("GET", "/v2/events/x/worker/status"),
    ("GET", "/v2/events/x/worker/jobs/j/status"),
    ("GET", "/v2/events/x/logs"),
    ("GET", "/v2/event-watches"),
    ("GET", "/v2/service-accounts"),
    ("POST", "/v2/service-accounts"),
    ("GET", "/v2/service-accounts/x"),
    ("DELETE", "/v2/service-accounts/x"),
    ("PUT", "/v2/service-accounts/x/lock"),
    ("DELETE", "/v2/service-accounts/x/lock"),
    ("GET", "/v2/role-assignments"),
    ("POST", "/v2/role-assignments"),
    ("DELETE", "/v2/role-assignments"),
    ("GET", "/v2/users"),
    ("GET", "/v2/users/x"),
    ("GET", "/v2/projects/alpha/volumes"),
    ("DELETE", "/v2/projects/alpha/volumes/v"),
    ("GET", "/v2/projects/alpha/caches"),
    ("DELETE", "/v2/projects/alpha/caches/k"),
    ("GET", "/v2/events/x/artifacts"),
    ("GET", "/v2/events/x/artifacts/a"),
    ("GET", "/v2/events/x/artifacts/a/files"),
    ("GET", "/v2/events/x/artifacts/a/files/p/q"),
    ("GET", "/v2/events/x/artifacts/a/archive"),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_refuses_missing_and_forged_tokens() {
    let server = tokio::task::spawn_blocking(|| TestServer::start(None, &[]))
        .await
        .unwrap();
    let forged = "f".repeat(64);
    for (method, path) in ENDPOINTS {
        let url = format!("{}{path}", server.url);
        for token in [None, Some(forged.as_str()), Some("")] {
            let (status, body) = call(method, &url, token, Some(json!({}))).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(
                body["kind"], "AuthenticationError",
                "{method} {path}: {body}"
            );
        }
    }
    let (status, body) = call("GET", &format!("{}/healthz", server.url), None, None).await;
    assert_eq!((status, body), (200, Value::String("ok".into())));
    // A wrong root password gets no session.
    let wrong = http()
        .post(format!("{}/v2/sessions?root=true", server.url))
        .basic_auth("root", Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sees_only_its_own_project() {
    let server = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(None, &[]);
        for id in ["alpha", "beta"] {
            let dir = secret_project(id);
            server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
            server.ok(&[
                "project",
                "secret",
                "set",
                "--project",
                id,
                "-s",
                &format!("password={SECRET}-{id}"),
            ]);
        }
        server
    })
    .await
    .unwrap();
    let root = server.root_token();
    let base = server.url.clone();
    // A service account that is PROJECT_USER of alpha only.
    let (status, token) = call(
        "POST",
        &format!("{base}/v2/service-accounts"),
        Some(&root),
        Some(
            json!({"apiVersion": "brigade.sh/v2", "kind": "ServiceAccount",
                    "metadata": {"id": "alice"}, "description": "tenant alpha"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let alice = token["value"].as_str().unwrap().to_string();
    let (status, body) = call(
        "POST",
        &format!("{base}/v2/projects/alpha/role-assignments"),
        Some(&root),
        Some(json!({"role": "PROJECT_USER", "principal": {"type": "SERVICE_ACCOUNT", "id": "alice"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let event = |project: &str| {
        json!({"apiVersion": "brigade.sh/v2", "kind": "Event",
        "projectID": project, "source": "brigade.sh/cli", "type": "exec"})
    };
    let (status, created) = call(
        "POST",
        &format!("{base}/v2/events"),
        Some(&root),
        Some(event("beta")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let beta_event = created["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, created) = call(
        "POST",
        &format!("{base}/v2/events"),
        Some(&alice),
        Some(event("alpha")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let alpha_event = created["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Alice cannot reach beta in any way; each answer is "not found".
    for (method, path) in [
        ("GET", "/v2/projects/beta".to_string()),
        ("GET", "/v2/projects/beta/secrets".to_string()),
        ("GET", format!("/v2/events/{beta_event}")),
        ("GET", format!("/v2/events/{beta_event}/logs")),
        ("GET", format!("/v2/events/{beta_event}/worker/status")),
        ("PUT", format!("/v2/events/{beta_event}/cancellation")),
        ("DELETE", format!("/v2/events/{beta_event}")),
        ("POST", format!("/v2/events/{beta_event}/retries")),
        ("DELETE", "/v2/projects/beta".to_string()),
    ] {
        let (status, body) = call(method, &format!("{base}{path}"), Some(&alice), None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(!body.to_string().contains(SECRET), "{body}");
    }
    let (status, body) = call(
        "POST",
        &format!("{base}/v2/events"),
        Some(&alice),
        Some(event("beta")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Her lists hold alpha only.
    let (_, projects) = call("GET", &format!("{base}/v2/projects"), Some(&alice), None).await;
    assert_eq!(item_ids(&projects), ["alpha"]);
    let (_, events) = call("GET", &format!("{base}/v2/events"), Some(&alice), None).await;
    assert_eq!(item_ids(&events), [alpha_event.as_str()]);
    // Her own project's secrets are listed without values.
    let (status, secrets) = call(
        "GET",
        &format!("{base}/v2/projects/alpha/secrets"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!secrets.to_string().contains(SECRET), "{secrets}");
    // She may not administer what she only uses, nor the server.
    let (status, _) = call(
        "DELETE",
        &format!("{base}/v2/projects/alpha"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        "GET",
        &format!("{base}/v2/service-accounts"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A locked account is refused.
    let (status, _) = call(
        "PUT",
        &format!("{base}/v2/service-accounts/alice/lock"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call("GET", &format!("{base}/v2/whoami"), Some(&alice), None).await;
    assert_eq!(status, 403, "{body}");
}

/// How many events the crash test posts, and how many times it kills the
/// server while they are posted and run.
const CRASH_EVENTS: usize = 1_000;
const CRASH_KILLS: usize = 5;

async fn post_until_accepted(
    url: String,
    token: String,
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let client = http();
    let body = json!({"apiVersion": "brigade.sh/v2", "kind": "Event",
                      "projectID": "crash", "source": "brigade.sh/cli", "type": "exec"});
    let deadline = Instant::now() + Duration::from_secs(120);
    // A refused or cut connection is not an acceptance: post again, as a
    // client would, until the server says 201.
    while Instant::now() < deadline {
        let sent = client
            .post(format!("{url}/v2/events"))
            .bearer_auth(&token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(response) = sent
            && response.status().as_u16() == 201
            && let Ok(list) = response.json::<Value>().await
        {
            let id = list["items"][0]["metadata"]["id"].as_str().unwrap();
            accepted.lock().unwrap().push(id.to_string());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("an event could not be posted within two minutes");
}

/// 1,000 events posted while the server is killed with SIGKILL and restarted
/// five times: none accepted is lost, none stays unfinished, and those that
/// ran more than once (their worker was cut short) are counted.
#[tokio::test(flavor = "multi_thread")]
async fn no_accepted_event_is_lost_when_the_server_is_killed() {
    use std::sync::{Arc, Mutex};
    let server = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(None, &["--executor", "none"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("project.yaml"),
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: crash
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
    defaultConfigFiles:
      brigade.js: |
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async () => {
          await new Promise(resolve => setTimeout(resolve, 20));
          return "done";
        });
        events.process();
"#,
        )
        .unwrap();
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        server
    })
    .await
    .unwrap();
    let url = server.url.clone();
    let token = server.root_token();
    let server = Arc::new(Mutex::new(server));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let per_round = CRASH_EVENTS / CRASH_KILLS;
    for round in 0..CRASH_KILLS {
        let mut posts = tokio::task::JoinSet::new();
        for _ in 0..per_round {
            posts.spawn(post_until_accepted(
                url.clone(),
                token.clone(),
                accepted.clone(),
            ));
        }
        // Kill the server in the middle of the round, with posts in flight
        // and workers running.
        while accepted.lock().unwrap().len() < round * per_round + per_round / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = server.clone();
        tokio::task::spawn_blocking(move || victim.lock().unwrap().kill_and_restart())
            .await
            .unwrap();
        while let Some(posted) = posts.join_next().await {
            posted.unwrap();
        }
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), CRASH_EVENTS);

    // Wait for every event to end.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, open) = call(
            "GET",
            &format!(
                "{url}/v2/events?projectID=crash&workerPhases=PENDING,STARTING,RUNNING&limit=1"
            ),
            Some(&token),
            None,
        )
        .await;
        if open["items"]
            .as_array()
            .is_some_and(|items| items.is_empty())
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut lost, mut stuck, mut failed, mut reran) = (0, 0, 0, 0);
    for id in &accepted {
        let (status, event) =
            call("GET", &format!("{url}/v2/events/{id}"), Some(&token), None).await;
        if status == 404 {
            lost += 1;
            continue;
        }
        match event["worker"]["status"]["phase"].as_str().unwrap() {
            "PENDING" | "STARTING" | "RUNNING" => stuck += 1,
            "SUCCEEDED" => {}
            _ => failed += 1,
        }
        let logs = http()
            .get(format!("{url}/v2/events/{id}/logs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if logs.matches("brigade-worker version").count() > 1 {
            reran += 1;
        }
    }
    eprintln!(
        "crash test: {} events accepted across {CRASH_KILLS} SIGKILLs; lost {lost}, stuck non-terminal {stuck}, \
         not SUCCEEDED {failed}, run more than once {reran}",
        accepted.len()
    );
    assert_eq!(lost, 0, "accepted events were lost");
    assert_eq!(stuck, 0, "events stayed non-terminal");
    assert_eq!(failed, 0, "events did not succeed");
}

/// A project whose handler sleeps `millis` and returns.
fn sleeper(id: &str, millis: u64, extra_spec: &str) -> tempfile::TempDir {
    script_project(
        id,
        extra_spec,
        &format!("await new Promise(resolve => setTimeout(resolve, {millis}));"),
    )
}

/// A project whose `exec` handler runs `handler` (one line of JavaScript,
/// with `event` in scope), with `extra_spec` (lines indented for
/// `workerTemplate`) in its template.
fn script_project(id: &str, extra_spec: &str, handler: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: {id}
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
{extra_spec}    defaultConfigFiles:
      brigade.js: |
        const {{ events }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          {handler}
        }});
        events.process();
"#
        ),
    )
    .unwrap();
    dir
}

/// Creates a project whose script does nothing, subscribed as
/// `subscriptions` says (YAML list items, indented as in a project file).
fn create_subscribed_project(server: &TestServer, id: &str, subscriptions: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: {id}\nspec:\n  eventSubscriptions:\n{subscriptions}  workerTemplate:\n    defaultConfigFiles:\n      brigade.js: |\n        require(\"@brigadecore/brigadier\").events.process();\n"
        ),
    )
    .unwrap();
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
}

/// A project's events as the API lists them, newest first.
async fn events_of(server: &TestServer, project: &str) -> Vec<Value> {
    let (status, list) = call(
        "GET",
        &format!("{}/v2/events?projectID={project}", server.url),
        Some(&server.root_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().unwrap().clone()
}

fn phase_of(event: &Value) -> &str {
    event["worker"]["status"]["phase"].as_str().unwrap()
}

fn wait_until_running(server: &TestServer, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while phase_of(&server.json(&["event", "get", "--id", id])) != "RUNNING" {
        assert!(Instant::now() < deadline, "event {id} never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until_ended(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let event = server.json(&["event", "get", "--id", id]);
        if !matches!(phase_of(&event), "PENDING" | "STARTING" | "RUNNING") {
            return event;
        }
        assert!(Instant::now() < deadline, "event {id} did not end: {event}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn per_project_limits_keep_one_tenant_from_starving_another() {
    let server = TestServer::start(
        None,
        &[
            "--executor",
            "none",
            "--max-workers",
            "2",
            "--max-workers-per-project",
            "1",
        ],
    );
    for (id, dir) in [
        ("busy", sleeper("busy", 400, "")),
        ("quiet", sleeper("quiet", 10, "")),
    ] {
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        let _ = id;
    }
    let busy: Vec<String> = (0..4).map(|_| server.create_event("busy", &[])).collect();
    let quiet = server.create_event("quiet", &[]);
    let busy: Vec<Value> = busy
        .iter()
        .map(|id| wait_until_ended(&server, id))
        .collect();
    let quiet = wait_until_ended(&server, &quiet);
    let time = |e: &Value, what: &str| e["worker"]["status"][what].as_str().unwrap().to_string();
    // One busy worker at a time: each starts after the one before ended.
    for pair in busy.windows(2) {
        assert!(
            time(&pair[1], "started") >= time(&pair[0], "ended"),
            "busy workers overlapped: {} / {}",
            pair[0],
            pair[1]
        );
    }
    // The quiet project did not wait behind the busy project's queue.
    assert!(
        time(&quiet, "started") < time(&busy[1], "started"),
        "quiet waited for busy: {quiet}"
    );
    for event in busy.iter().chain([&quiet]) {
        assert_eq!(phase_of(event), "SUCCEEDED", "{event}");
    }
}

#[test]
fn project_limits_apply_within_the_servers_ceilings() {
    let server = TestServer::start(
        None,
        &[
            "--executor",
            "none",
            "--limit-ceilings",
            "memory=128Mi,logLines=50",
        ],
    );
    // A project cannot raise a limit past the server's ceiling.
    let greedy = script_project("greedy", "    limits:\n      memory: 256Mi\n", "");
    let refused = server.cli(&["project", "create", "-f", greedy.path().to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "spec.workerTemplate.limits.memory 256 MiB is above this server's ceiling of 128 MiB"
        ),
        "{refused:?}"
    );
    // Within the ceilings, the project's own limit is what stops its worker.
    let chatty = script_project(
        "chatty",
        "    limits:\n      logLines: 5\n",
        "for (let i = 0; i < 10; i++) console.log(`line ${i}`);",
    );
    server.ok(&["project", "create", "-f", chatty.path().to_str().unwrap()]);
    let id = server.create_event("chatty", &[]);
    let event = wait_until_ended(&server, &id);
    assert_eq!(phase_of(&event), "FAILED", "{event}");
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("line 3"), "{logs}");
    assert!(!logs.contains("line 5"), "{logs}");
    assert!(
        logs.contains("log limit of 5 lines exceeded (output truncated)"),
        "{logs}"
    );
}

#[test]
fn cancel_and_timeout_end_workers_with_brigade_phases() {
    let server = TestServer::start(None, &["--executor", "none", "--max-workers", "1"]);
    let slow = sleeper("slow", 20_000, "");
    let short = sleeper("short", 5_000, "    timeoutDuration: 1s\n");
    for dir in [&slow, &short] {
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    }
    let running = server.create_event("slow", &[]);
    let pending = server.create_event("slow", &[]);
    wait_until_running(&server, &running);
    server.ok(&["event", "cancel", "--id", &pending, "-y"]);
    assert_eq!(
        phase_of(&server.json(&["event", "get", "--id", &pending])),
        "CANCELED"
    );
    server.ok(&["event", "cancel", "--id", &running, "-y"]);
    assert_eq!(phase_of(&wait_until_ended(&server, &running)), "ABORTED");
    let again = server.cli(&["event", "cancel", "--id", &running, "-y"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("ConflictError"), "{again:?}");

    let timed = server.create_event("short", &[]);
    let event = wait_until_ended(&server, &timed);
    assert_eq!(phase_of(&event), "TIMED_OUT", "{event}");
    let logs = server.ok(&["event", "logs", "--id", &timed]);
    assert!(logs.contains("timed out after 1s"), "{logs}");
}

/// The server's sandbox processes (`mizzen sandbox-shard`), by pid.
/// A server with `processes` sandbox processes and two projects, "slow"
/// (a worker of a minute) and "quick"; the projects' directories, kept
/// until the test ends; the processes' pids.
fn sleepers_in_sandbox_processes(
    processes: usize,
) -> (TestServer, [tempfile::TempDir; 2], Vec<u32>) {
    let count = processes.to_string();
    let server = TestServer::start(None, &["--executor", "none", "--sandbox-processes", &count]);
    let projects = [sleeper("slow", 60_000, ""), sleeper("quick", 10, "")];
    for dir in &projects {
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    }
    let shards = sandbox_processes(&server);
    assert_eq!(
        shards.len(),
        processes,
        "--sandbox-processes {processes} started {shards:?}"
    );
    (server, projects, shards)
}

/// SIGKILLs a sandbox process, as a guest that crashed it would end it.
fn kill_sandbox_process(pid: u32) {
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

fn sandbox_processes(server: &TestServer) -> Vec<u32> {
    let parent = server.child.id().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the comm may hold spaces.
        let ppid = stat
            .rsplit(") ")
            .next()
            .and_then(|rest| rest.split(' ').nth(1));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent.as_str())
            && cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == b"sandbox-shard")
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// With one sandbox process, events given out while it is being started
/// again (a second or more after it died) wait for it and run: they failed
/// at once with "no sandbox process is running" (389 of 1,003 events after
/// one SIGKILL). Only the worker that ran in the dead process fails.
#[test]
fn events_dispatched_while_the_sandbox_process_restarts_wait_for_it() {
    let (server, _projects, shards) = sleepers_in_sandbox_processes(1);
    let running = server.create_event("slow", &[]);
    wait_until_running(&server, &running);
    kill_sandbox_process(shards[0]);
    // The worker that ran in the dead process fails once the server has
    // seen the process go. An event given out before that, between the
    // signal and the server reading the closed pipe, went to the dying
    // process too (and failed with it, as once on a loaded CI machine):
    // the events of this test are given out after.
    let failed = wait_until_ended(&server, &running);
    assert_eq!(phase_of(&failed), "FAILED", "{failed}");
    // Events until the process is back; the first ones are given out while
    // none is running.
    let mut quick_events = Vec::new();
    let mut while_down = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let down = !sandbox_processes(&server)
            .iter()
            .any(|pid| *pid != shards[0]);
        if !down && quick_events.len() >= 5 {
            break;
        }
        while_down += usize::from(down);
        quick_events.push(server.create_event("quick", &[]));
        assert!(
            Instant::now() < deadline,
            "the sandbox process was not replaced"
        );
    }
    assert!(
        while_down > 0,
        "no event was created while the process was down"
    );
    for id in &quick_events {
        let event = wait_until_ended(&server, id);
        assert_eq!(
            phase_of(&event),
            "SUCCEEDED",
            "{event}\n{}",
            server.ok(&["event", "logs", "--id", id])
        );
    }
    let logs = server.ok(&["event", "logs", "--id", &running]);
    assert!(
        logs.contains("stopped while the worker ran (signal: 9 (SIGKILL))"),
        "{logs}"
    );
    eprintln!(
        "{} events created after the kill ({while_down} while no process ran) all succeeded",
        quick_events.len()
    );
}

#[test]
fn a_sandbox_process_that_dies_fails_only_its_workers_and_is_replaced() {
    let (server, _projects, shards) = sleepers_in_sandbox_processes(2);
    // Each slow worker goes to the sandbox process running fewer.
    let slow_events = [
        server.create_event("slow", &[]),
        server.create_event("slow", &[]),
    ];
    for id in &slow_events {
        wait_until_running(&server, id);
    }
    // A guest that brought its sandbox process down (here: SIGKILL) takes
    // only that process's workers with it.
    kill_sandbox_process(shards[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (failed, survivor) = loop {
        let phases: Vec<Value> = slow_events
            .iter()
            .map(|id| server.json(&["event", "get", "--id", id]))
            .collect();
        match (phase_of(&phases[0]), phase_of(&phases[1])) {
            ("FAILED", "RUNNING") => break (&slow_events[0], &slow_events[1]),
            ("RUNNING", "FAILED") => break (&slow_events[1], &slow_events[0]),
            ("RUNNING", "RUNNING") => {}
            other => panic!("expected one FAILED and one RUNNING, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no worker failed after its process was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = server.ok(&["event", "logs", "--id", failed]);
    assert!(
        logs.contains("worker FAILED: sandbox process")
            && logs.contains("stopped while the worker ran (signal: 9 (SIGKILL))"),
        "{logs}"
    );
    // The server goes on: new events run, on the process that lived and on
    // the one started in place of the dead one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox_processes(&server).len() < 2 || sandbox_processes(&server) == shards[1..] {
        assert!(
            Instant::now() < deadline,
            "the dead sandbox process was not replaced"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let replaced = sandbox_processes(&server);
    assert!(!replaced.contains(&shards[0]), "{replaced:?}");
    for _ in 0..4 {
        let id = server.create_event("quick", &[]);
        assert_eq!(phase_of(&wait_until_ended(&server, &id)), "SUCCEEDED");
    }
    assert_eq!(
        phase_of(&server.json(&["event", "get", "--id", survivor])),
        "RUNNING"
    );
    server.ok(&["event", "cancel", "--id", survivor, "-y"]);
    assert_eq!(phase_of(&wait_until_ended(&server, survivor)), "ABORTED");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_need_valid_signatures_and_tokens() {
    const GITHUB_SECRET: &str = "webhook-secret";
    const DOCKERHUB_TOKEN: &str = "dockerhub-token-1";
    let server = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(
            None,
            &[
                "--executor",
                "none",
                "--github-webhook-secret",
                GITHUB_SECRET,
                "--dockerhub-token",
                DOCKERHUB_TOKEN,
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("project.yaml"),
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: hooks
spec:
  eventSubscriptions:
  - source: brigade.sh/github
    types: [push]
    qualifiers:
      repo: octo/hello
  - source: brigade.sh/dockerhub
    types: [image_push]
    qualifiers:
      repo: octo/app
  workerTemplate:
    defaultConfigFiles:
      brigade.js: |
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/github", "push", async e => console.log("push " + e.type));
        events.on("brigade.sh/dockerhub", "image_push", async e => console.log("image " + e.type));
        events.process();
"#,
        )
        .unwrap();
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        server
    })
    .await
    .unwrap();
    let base = server.url.clone();
    let token = server.root_token();
    let client = http();
    let push = json!({
        "ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "octo/hello", "clone_url": "https://github.com/octo/hello.git"},
    })
    .to_string();
    let github = |signature: Option<String>, delivery: &str, body: String| {
        let mut request = client
            .post(format!("{base}/gateways/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(github(None, "d-1", push.clone()).await.unwrap()),
        401
    );
    let wrong = github_signature("not-the-secret", push.as_bytes());
    assert_eq!(
        status(github(Some(wrong), "d-1", push.clone()).await.unwrap()),
        401
    );
    let other_body = github_signature(GITHUB_SECRET, b"{}");
    assert_eq!(
        status(github(Some(other_body), "d-1", push.clone()).await.unwrap()),
        401
    );
    let good = github_signature(GITHUB_SECRET, push.as_bytes());
    assert_eq!(
        status(
            github(Some(good.clone()), "d-1", push.clone())
                .await
                .unwrap()
        ),
        200
    );
    // The same delivery again (a replay) creates nothing.
    let replay = github(Some(good), "d-1", push.clone()).await.unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    assert!(replay.text().await.unwrap().contains("already received"));
    // A body over the cap is refused before it is read in full.
    let huge = "x".repeat(26 * 1024 * 1024);
    let signature = github_signature(GITHUB_SECRET, huge.as_bytes());
    let refused = github(Some(signature), "d-2", huge).await.unwrap();
    assert_eq!(refused.status().as_u16(), 413);
    // The unread rest of that body leaves the connection unusable, and the
    // client is told so; otherwise the next request could go out on it.
    assert_eq!(refused.headers()["connection"], "close");

    // Docker Hub signs nothing: its token is the credential.
    let hub = json!({"push_data": {"tag": "v1", "pusher": "octo"},
                     "repository": {"repo_name": "octo/app", "namespace": "octo", "name": "app"}})
    .to_string();
    let hub_post = |query: &str| {
        client
            .post(format!("{base}/gateways/dockerhub{query}"))
            .header("Content-Type", "application/json")
            .body(hub.clone())
            .send()
    };
    assert_eq!(status(hub_post("").await.unwrap()), 401);
    assert_eq!(status(hub_post("?access_token=wrong").await.unwrap()), 401);
    assert_eq!(
        status(
            hub_post(&format!("?access_token={DOCKERHUB_TOKEN}"))
                .await
                .unwrap()
        ),
        200
    );
    // ACR is not configured, so it is not there.
    let acr = client
        .post(format!("{base}/gateways/acr"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(acr.status().as_u16(), 404);

    let (_, events) = call(
        "GET",
        &format!("{base}/v2/events?projectID=hooks"),
        Some(&token),
        None,
    )
    .await;
    let mut types: Vec<(String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("brigade.sh/dockerhub".to_string(), "image_push".to_string()),
            ("brigade.sh/github".to_string(), "push".to_string()),
        ]
    );
    let github_event = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "brigade.sh/github")
        .unwrap();
    assert_eq!(
        github_event["git"]["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(github_event["qualifiers"]["repo"], "octo/hello");
}

#[test]
fn sigterm_hands_running_workers_back_and_a_restart_finishes_them() {
    let mut server = TestServer::start(None, &["--executor", "none", "--shutdown-grace", "200ms"]);
    let dir = sleeper("patient", 3_000, "");
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    let id = server.create_event("patient", &[]);
    wait_until_running(&server, &id);
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exited = server.child.wait().unwrap();
    assert!(
        exited.success(),
        "the server did not stop cleanly: {exited}\n{}",
        server.server_log()
    );
    assert!(
        server
            .server_log()
            .contains("handing the event back to the queue"),
        "{}",
        server.server_log()
    );
    // The next server runs the event again, to the end.
    server.kill_and_restart();
    let event = wait_until_ended(&server, &id);
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");
    let logs = server.ok(&["event", "logs", "--id", &id]);
    assert!(logs.contains("the server is shutting down"), "{logs}");
    assert_eq!(logs.matches("brigade-worker version").count(), 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_accepted_events_and_workers() {
    let (server, id) = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(None, &["--executor", "none"]);
        server.ok(&["project", "create", "-f", "examples/01-hello-world"]);
        let id = server.create_event("hello-world", &[]);
        wait_until_ended(&server, &id);
        (server, id)
    })
    .await
    .unwrap();
    let (status, text) = call("GET", &format!("{}/metrics", server.url), None, None).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_string();
    for expected in [
        "mizzen_events_accepted_total{project=\"hello-world\"} 1",
        "mizzen_workers_ended_total{phase=\"SUCCEEDED\",project=\"hello-world\"} 1",
        "mizzen_events_by_phase{phase=\"PENDING\"} 0",
        // Requests by the route's template, never the path with its ids.
        "mizzen_http_requests_total{method=\"POST\",route=\"/v2/events\",status=\"201\"} 1",
        "mizzen_http_request_duration_seconds_count{method=\"GET\",route=\"/v2/events/{id}\"}",
        "mizzen_build_info{version=\"",
        "mizzen_sandbox_process_restarts_total",
        // Not configured here: nothing waits, nothing is dropped.
        "mizzen_forwarding_spool{unit=\"lines\"} 0",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    assert!(!text.contains(&id), "an event's id in a label: {text}");

    // A gateway delivery refused, by reason: the GitHub gateway is not
    // enabled on this server.
    let (status, _) = call(
        "POST",
        &format!("{}/gateways/github", server.url),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404);
    let (_, text) = call("GET", &format!("{}/metrics", server.url), None, None).await;
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains("mizzen_gateway_deliveries_total{gateway=\"github\",outcome=\"refused\",reason=\"disabled\"} 1"),
        "{text}"
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = TestServer::start(None, &["--executor", "none"]);
    let second = Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--executor",
            "none",
            "--data-dir",
        ])
        .arg(server.data_dir.path())
        .env("MIZZEN_ROOT_PASSWORD", ROOT_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another mizzen server is using this data directory"),
        "{stderr}"
    );
    // The first one carries on.
    server.ok(&["whoami"]);
}

/// `mizzen server --executor kubernetes`: example 03's job becomes a Pod on
/// a fake cluster (see tests/kubernetes.rs), and its output reaches the
/// event's logs.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_runs_jobs_as_pods_when_configured_for_kubernetes() {
    use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript};
    let fake = FakeKube::start(FakeConfig::deployed(&["mizzen-jobs"])).await;
    fake.on_pod(|_| {
        PodScript::default().with("my-first-job", ContainerScript::new(["My first job!"], 0))
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, "default").unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_string();
    let done = tokio::task::spawn_blocking(move || {
        let server = TestServer::start_with_env(
            None,
            &[
                "--executor",
                "kubernetes",
                "--kubernetes-namespace",
                "mizzen-jobs",
            ],
            &[("KUBECONFIG", &kubeconfig)],
        );
        server.ok(&["project", "create", "-f", "examples/03-first-job"]);
        let id = server.create_event("first-job", &[]);
        let event = wait_until_ended(&server, &id);
        assert_eq!(
            phase_of(&event),
            "SUCCEEDED",
            "{event}\n{}",
            server.server_log()
        );
        server.ok(&["event", "logs", "--id", &id, "--job", "my-first-job"])
    })
    .await
    .unwrap();
    assert!(done.contains("My first job!"), "{done}");
    let pods = fake.created("pods");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["metadata"]["namespace"], "mizzen-jobs");
    assert!(fake.denied().is_empty(), "{:#?}", fake.denied());
}

/// What the fake kubelet does for a Pod of example 20 on Kubernetes: what
/// a real kubelet and the job's containers would. Mizzen's helpers run for
/// real (`mizzen job-files`, against the server, with the token from the
/// job's Secret), their volumes directories of `root`; the job's primary
/// container is played by writing what its script writes.
fn play_kept_pod(
    pod: &Value,
    reader: &mizzen_tests::fake_kube::FakeKubeReader,
    server_url: &str,
    root: &std::path::Path,
) -> mizzen_tests::fake_kube::PodScript {
    use mizzen_tests::fake_kube::{ContainerScript, PodScript};
    let name = pod["metadata"]["name"].as_str().unwrap();
    let namespace = pod["metadata"]["namespace"].as_str().unwrap();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // The token, as the helpers' Secret volume holds it.
    let secret = reader
        .get("secrets", namespace, name)
        .expect("the job's Secret");
    let token = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["mizzen-job-token"].as_str().unwrap())
        .unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    // Each kept volume, a directory.
    let volume = |n: &str| dir.join(format!("kept-{n}"));
    let helper = |container: &Value, extra: &[String]| -> (i32, String) {
        let mut args: Vec<String> = Vec::new();
        let given: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let mut given = given.into_iter();
        while let Some(arg) = given.next() {
            match arg.as_str() {
                "--server" => {
                    given.next();
                    args.extend(["--server".to_string(), server_url.to_string()]);
                }
                "--token-file" => {
                    given.next();
                    args.extend(["--token-file".to_string(), token_file.display().to_string()]);
                }
                "--after-sigterm" => {}
                entry if entry.contains("=/mizzen/kept/") => {
                    let (index, path) = entry.split_once('=').unwrap();
                    let n = path.trim_start_matches("/mizzen/kept/");
                    std::fs::create_dir_all(volume(n)).unwrap();
                    args.push(format!("{index}={}", volume(n).display()));
                }
                _ => args.push(arg),
            }
        }
        args.extend(extra.iter().cloned());
        let output = Command::new(env!("CARGO_BIN_EXE_mizzen"))
            .args(&args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code().unwrap_or(-1), format!("{out}{err}"))
    };
    let init = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let find = |name: &str| init.iter().find(|c| c["name"] == name).cloned();
    let mut script = PodScript::default();
    if let Some(restore) = find("mizzen-restore") {
        let (code, said) = helper(&restore, &[]);
        let lines: Vec<String> = said.lines().map(str::to_string).collect();
        script = script.with("mizzen-restore", ContainerScript::new(lines, code));
    }
    // The primary's volumes by the paths it mounts them at.
    let primary = &pod["spec"]["containers"][0];
    let at = |path: &str| -> PathBuf {
        let mount = primary["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no volume at {path}: {primary}"));
        let dir = volume(
            mount["name"]
                .as_str()
                .unwrap()
                .trim_start_matches("mizzen-kept-"),
        );
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let job = primary["name"].as_str().unwrap().to_string();
    let printed = match job.as_str() {
        "build" => {
            let deps = at("/deps");
            let mut lines = Vec::new();
            if deps.join("fetched").exists() {
                lines.push("dependencies restored from the cache".to_string());
            } else {
                lines.push("fetching dependencies (slow: a cache miss)".to_string());
                std::fs::write(deps.join("list"), "left-pad@1.3.0\nright-pad@1.0.1\n").unwrap();
                std::fs::write(deps.join("fetched"), "1").unwrap();
            }
            std::fs::write(at("/tmp/dist").join("app"), "#!/bin/sh\necho hello\n").unwrap();
            std::fs::write(at("/tmp/reports").join("build.txt"), "built dist/app\n").unwrap();
            lines
        }
        "test" => {
            let app = std::fs::read_to_string(at("/opt/app").join("app")).unwrap_or_default();
            vec![format!(
                "the test found: {}",
                app.lines().last().unwrap_or("nothing")
            )]
        }
        other => panic!("an unexpected job {other}"),
    };
    script = script.with(&job, ContainerScript::new(printed, 0));
    if let Some(save) = find("mizzen-save") {
        let receipts = dir.join("receipts");
        let (code, said) = helper(
            &save,
            &["--receipts".to_string(), receipts.display().to_string()],
        );
        let mut saver = ContainerScript::new(said.lines().map(str::to_string), code);
        saver.termination_message = std::fs::read_to_string(&receipts).ok();
        script = script.with("mizzen-save", saver);
    }
    script
}

/// Example 20 on Kubernetes (a fake cluster): its build caches its
/// dependencies and hands its output to the test job through Mizzen's
/// helpers in their Pods, with a token for each job that appears in no Pod
/// and no log; the second run hits the cache.
#[tokio::test(flavor = "multi_thread")]
async fn artifacts_and_caches_on_kubernetes() {
    use mizzen_tests::fake_kube::{FakeConfig, FakeKube};
    let fake = FakeKube::start(FakeConfig::deployed(&["mizzen-jobs"])).await;
    let server_url = Arc::new(std::sync::OnceLock::<String>::new());
    let volumes = tempfile::tempdir().unwrap();
    {
        let reader = fake.reader();
        let server_url = server_url.clone();
        let root = volumes.path().to_path_buf();
        fake.on_pod(move |pod| play_kept_pod(pod, &reader, server_url.get().unwrap(), &root));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, "default").unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_string();
    // The jobs' lines are forwarded from Kubernetes too, when there is a
    // collector to check it with.
    let otlp = common::collectors::dir("artifacts_and_caches_on_kubernetes (forwarding)").map(
        |collectors| {
            common::collectors::Receiver::start(
                common::collectors::Kind::Otlp,
                &collectors,
                &dir.path().join("otlp.jsonl"),
                &[],
            )
        },
    );
    let otlp_endpoint = otlp
        .as_ref()
        .map(|otlp| format!("http://127.0.0.1:{}/v1/logs", otlp.port));
    let (server, first, second) = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "--executor",
            "kubernetes",
            "--kubernetes-namespace",
            "mizzen-jobs",
            // What the Pods would reach; the fake kubelet reaches the
            // server where it listens.
            "--kubernetes-job-files-url",
            "http://mizzen.mizzen.svc:8080",
        ];
        if let Some(endpoint) = &otlp_endpoint {
            args.extend(["--otlp-logs-endpoint", endpoint]);
        }
        let server = TestServer::start_with_env(None, &args, &[("KUBECONFIG", &kubeconfig)]);
        server_url.set(server.url.clone()).unwrap();
        server.ok(&["project", "create", "-f", "examples/20-artifacts-caches"]);
        let mut runs = Vec::new();
        for _ in 0..2 {
            let id = server.create_event("artifacts-caches", &[]);
            let event = wait_until_ended(&server, &id);
            assert_eq!(
                phase_of(&event),
                "SUCCEEDED",
                "{event}\n{}",
                server.server_log()
            );
            let logs = server.ok(&["event", "logs", "--id", &id]);
            let build = server.ok(&["event", "logs", "--id", &id, "--job", "build"]);
            let test = server.ok(&["event", "logs", "--id", &id, "--job", "test"]);
            runs.push((id, format!("{logs}\n{build}\n{test}")));
        }
        let second = runs.pop().unwrap();
        let first = runs.pop().unwrap();
        (server, first, second)
    })
    .await
    .unwrap();
    let (first_id, first) = first;
    assert!(first.contains("fetching dependencies"), "{first}");
    if let Some(otlp) = &otlp {
        let forwarded = otlp.wait_for("the build job's lines", |records| {
            records.iter().any(|r| {
                r["attributes"]["event"] == first_id.as_str()
                    && r["attributes"]["job"] == "build"
                    && r["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("fetching dependencies"))
            })
        });
        assert!(
            forwarded
                .iter()
                .any(|r| r["attributes"]["project"] == "artifacts-caches"),
            "{forwarded:?}"
        );
    }
    assert!(
        first.contains("[mizzen] saved artifact \"dist\" from /tmp/dist"),
        "{first}"
    );
    assert!(first.contains("[mizzen] saved cache \"deps-"), "{first}");
    assert!(first.contains("the test found: echo hello"), "{first}");
    assert!(
        first.contains(
            "build report: built dist/app; artifacts: build-report (1 file), dist (1 file)"
        ),
        "{first}"
    );
    let (_, second) = second;
    assert!(
        second.contains("dependencies restored from the cache"),
        "{second}"
    );
    assert!(!second.contains("[mizzen] saved cache"), "{second}");
    // The artifacts are the event's, through the API as on any executor.
    let listed = server.json(&["event", "artifacts", "list", "--id", &first_id]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    // Each job's Pod has Mizzen's helpers and names its token's Secret, and
    // no Pod, log or event holds a token itself.
    let pods = fake.created("pods");
    assert_eq!(pods.len(), 4, "{pods:#?}");
    let tokens: Vec<String> = fake
        .created("secrets")
        .iter()
        .filter_map(|s| {
            s["stringData"]["mizzen-job-token"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(tokens.len(), 4);
    let everything = format!(
        "{}\n{}\n{}\n{first}\n{second}",
        serde_json::to_string(&pods).unwrap(),
        server.server_log(),
        server.ok(&["event", "get", "--id", &first_id, "-o", "json"])
    );
    for token in &tokens {
        assert!(token.starts_with("mzjob1."));
        assert!(!everything.contains(token.as_str()), "a token leaked");
    }
    let build = &pods[0]["spec"];
    let init: Vec<&str> = build["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["mizzen-restore", "mizzen-save"]);
    assert_eq!(build["initContainers"][1]["restartPolicy"], "Always");
    assert!(fake.denied().is_empty(), "{:#?}", fake.denied());
}

/// The server's own log says when an event is accepted and its worker
/// starts and ends: as JSON for a log pipeline with `--log-format json`,
/// and as text without colour codes when stderr is no terminal.
#[test]
fn the_servers_own_log_says_what_happened_in_text_or_json() {
    let json_server = TestServer::start(None, &["--executor", "none", "--log-format", "json"]);
    json_server.ok(&["project", "create", "-f", "examples/01-hello-world"]);
    let id = json_server.create_event("hello-world", &[]);
    let event = wait_until_ended(&json_server, &id);
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");
    let log = json_server.server_log();
    let records: Vec<Value> = log
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let said = |message: &str| {
        records
            .iter()
            .find(|r| r["fields"]["message"] == message && r["fields"]["event"] == id.as_str())
            .unwrap_or_else(|| panic!("no {message:?} for {id} in:\n{log}"))
            .clone()
    };
    let accepted = said("event accepted");
    assert_eq!(accepted["level"], "INFO");
    assert_eq!(accepted["fields"]["project"], "hello-world");
    assert_eq!(accepted["fields"]["source"], "brigade.sh/cli");
    assert_eq!(said("worker started")["fields"]["attempt"], 1);
    let ended = said("worker ended");
    assert_eq!(ended["fields"]["phase"], "SUCCEEDED");
    assert!(
        ended["fields"]["seconds"]
            .as_str()
            .is_some_and(|s| s.parse::<f64>().is_ok())
    );

    let text_server = TestServer::start(None, &["--executor", "none"]);
    text_server.ok(&["project", "create", "-f", "examples/01-hello-world"]);
    let id = text_server.create_event("hello-world", &[]);
    wait_until_ended(&text_server, &id);
    let log = text_server.server_log();
    assert!(log.contains(&format!("event accepted event={id}")), "{log}");
    assert!(log.contains("worker ended"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is no terminal: {log}"
    );
}

#[test]
fn a_jobs_whole_log_is_stored_when_its_event_ends() {
    // Sandbox processes put a hop between a job's lines and the store; the
    // event's end used to be recorded while its last lines were still on
    // their way, so a read right after it missed them (1 read in 4 of
    // 100,000 lines lacked the last 1,600).
    const LINES: usize = 200_000;
    let server = TestServer::start(None, &[]);
    let project = script_project(
        "printer",
        "",
        &format!(
            r#"const {{ Job }} = require("@brigadecore/brigadier"); const job = new Job("printer", "localhost/busybox", event); job.primaryContainer.command = ["sh", "-c", "seq 1 {LINES}"]; await job.run();"#
        ),
    );
    server.ok(&["project", "create", "-f", project.path().to_str().unwrap()]);
    for _ in 0..3 {
        let id = server.create_event("printer", &[]);
        // Follow the job's log from the moment it runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server
            .cli(&["event", "logs", "--id", &id, "--job", "printer"])
            .stdout
            .contains('1')
        {
            assert!(Instant::now() < deadline, "the job did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let follower = Command::new(env!("CARGO_BIN_EXE_mizzen"))
            .args(["event", "logs", "--id", &id, "--job", "printer", "--follow"])
            .env("MIZZEN_CONFIG_DIR", server.config_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let followed = follower.wait_with_output().unwrap();
        let followed = String::from_utf8_lossy(&followed.stdout);
        assert_eq!(
            followed.lines().last(),
            Some(LINES.to_string().as_str()),
            "a follower stopped before the job's last line"
        );
        let event = wait_until_ended(&server, &id);
        assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");
        let printed = server.ok(&["event", "logs", "--id", &id, "--job", "printer"]);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), LINES, "the last line read: {:?}", lines.last());
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == (i + 1).to_string()),
            "lines out of order"
        );
    }
}

// ----- slow clients, large lists, deletion races, retries, the log -------------

/// The issue's attack, scaled down: 400 stalled connections against a
/// server allowed 256 descriptors, whose header timeout (two minutes) is
/// longer than the test waits for an answer. The server keeps answering
/// while they stall, and neither its accept loop nor its store runs out of
/// descriptors.
#[test]
fn stalled_clients_do_not_take_down_a_server_under_a_low_descriptor_limit() {
    let server = TestServer::start_under(
        Some(256),
        None,
        &["--executor", "none", "--header-timeout", "120s"],
        &[],
    );
    let dir = script_project("steady", "", "console.log(\"still here\");");
    server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
    let address = server.url.strip_prefix("http://").unwrap().to_string();
    let stalled = common::stalled_clients(&address, 400);
    assert!(stalled.len() >= 300, "only {} connected", stalled.len());
    let health = common::raw_get(&format!("{}/healthz", server.url));
    assert_eq!(
        health.as_deref(),
        Some("ok"),
        "/healthz did not answer within a minute while 400 clients stalled\n{}",
        server.server_log()
    );
    let id = server.create_event("steady", &[]);
    assert_eq!(phase_of(&wait_until_ended(&server, &id)), "SUCCEEDED");
    let log = server.server_log();
    for exhausted in ["Too many open files", "unable to open database file"] {
        assert!(!log.contains(exhausted), "{exhausted}:\n{log}");
    }
    drop(stalled);
}

/// Heads and bodies that stop, or come a byte at a time, are cut when
/// their timeouts run out: the connection closes, and a body's sender is
/// told which limit it ran into.
#[test]
fn slow_heads_and_bodies_are_cut_after_their_timeouts() {
    let server = TestServer::start(
        None,
        &[
            "--executor",
            "none",
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
        ],
    );
    let address = server.url.strip_prefix("http://").unwrap().to_string();
    let token = server.root_token();
    let head = b"GET /v2/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let stopped = common::slow_request(&address, head, b"");
    assert!(stopped.is_some(), "a head that stopped was not cut");
    let trickled = common::slow_request(&address, head, b"a");
    assert!(
        trickled.is_some(),
        "a head sent a byte at a time was not cut"
    );
    let body_head = format!(
        "POST /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"projectID\": \""
    );
    for (what, trickle) in [("stopped", &b""[..]), ("sent a byte at a time", &b"a"[..])] {
        let answer = common::slow_request(&address, body_head.as_bytes(), trickle)
            .unwrap_or_else(|| panic!("a body that {what} was not cut"));
        assert!(
            answer.starts_with("HTTP/1.1 408")
                && answer.contains("request body")
                && answer.contains("2s"),
            "a body that {what}: {answer}"
        );
    }
    // Requests that come in time are served as before.
    server.ok(&["project", "list"]);
}

/// One list page's budget for event documents (`api::EVENT_PAGE_BYTES`).
const EVENT_PAGE_BYTES: usize = 8 << 20;

/// The server's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Every page of `GET /v2/events?<query>`, following `continue`: each
/// page's body length and its JSON.
async fn all_pages(base: &str, token: &str, query: &str) -> Vec<(usize, Value)> {
    let client = http();
    let mut pages = Vec::new();
    let mut next = String::new();
    loop {
        let url = format!("{base}/v2/events?{query}&continue={next}");
        let response = client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let text = response.text().await.unwrap();
        let page: Value = serde_json::from_str(&text).expect("a page is JSON");
        next = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        pages.push((text.len(), page));
        if next.is_empty() {
            return pages;
        }
    }
}

/// 12 events of 16 MB, 6 of 3 MB and 20 small ones, listed 100 at a time:
/// every page stays within the page budget unless it holds a single event,
/// every event is reached through `continue` with its payload whole, and
/// four clients listing them all at once cost the server far less memory
/// than the payloads they read (before, each client cost four times them).
async fn large_payloads_are_listed_in_bounded_memory(server: TestServer) {
    let root = server.root_token();
    let base = server.url.clone();
    let server = tokio::task::spawn_blocking(move || {
        let dir = script_project("big", "", "");
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        server
    })
    .await
    .unwrap();
    let mut created = std::collections::BTreeMap::new();
    for (count, size) in [(6, 3_000_000), (12, 16_000_000), (20, 100)] {
        for i in 0..count {
            let payload = format!("{i:02}{}", "p".repeat(size));
            let (status, list) = call(
                "POST",
                &format!("{base}/v2/events"),
                Some(&root),
                Some(
                    json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "big",
                            "source": "brigade.sh/cli", "type": "exec", "payload": payload}),
                ),
            )
            .await;
            assert_eq!(status, 201);
            let id = list["items"][0]["metadata"]["id"].as_str().unwrap();
            created.insert(id.to_string(), payload.len());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, open) = call(
            "GET",
            &format!(
                "{base}/v2/events?projectID=big&workerPhases=PENDING,STARTING,RUNNING&limit=1"
            ),
            Some(&root),
            None,
        )
        .await;
        if open["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pages = all_pages(&base, &root, "projectID=big&limit=100").await;
    let mut seen = std::collections::BTreeMap::new();
    for (length, page) in &pages {
        let items = page["items"].as_array().unwrap();
        assert!(
            items.len() == 1 || *length <= EVENT_PAGE_BYTES + 64 * 1024,
            "a page of {} events is {length} bytes",
            items.len()
        );
        for item in items {
            let id = item["metadata"]["id"].as_str().unwrap().to_string();
            let payload = item["payload"].as_str().unwrap_or_default().len();
            assert!(seen.insert(id, payload).is_none(), "an event listed twice");
        }
    }
    assert_eq!(seen, created, "not every event was listed with its payload");
    let first = &pages[0].1;
    assert_eq!(
        first["metadata"]["remainingItemCount"]
            .as_u64()
            .unwrap_or(0) as usize
            + first["items"].as_array().unwrap().len(),
        created.len(),
        "{}",
        first["metadata"]
    );

    let pid = server.child.id();
    let before = rss(pid);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let listers: Vec<_> = (0..4)
        .map(|_| {
            let (base, root) = (base.clone(), root.clone());
            tokio::spawn(async move {
                all_pages(&base, &root, "projectID=big&limit=100")
                    .await
                    .len()
            })
        })
        .collect();
    for lister in listers {
        assert_eq!(lister.await.unwrap(), pages.len());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let grown = peak.saturating_sub(before) / (1024 * 1024);
    eprintln!(
        "four clients listing {} events grew the server by {grown} MiB",
        created.len()
    );
    // The four clients read 4 x 210 MB; before the fix the server grew by
    // more than 2 GiB for them. Large documents being rendered are held
    // within api::DOCUMENT_BUDGET (256 MiB); the rest is room for the
    // allocator.
    assert!(
        grown < 512,
        "listing grew the server from {} MiB to {} MiB",
        before / (1024 * 1024),
        peak / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_payloads_are_listed_in_bounded_memory_on_sqlite() {
    let server = tokio::task::spawn_blocking(|| TestServer::start(None, &["--executor", "none"]))
        .await
        .unwrap();
    large_payloads_are_listed_in_bounded_memory(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_payloads_are_listed_in_bounded_memory_on_postgres() {
    let Some(url) =
        common::postgres_database("large_payloads_are_listed_in_bounded_memory_on_postgres")
    else {
        return;
    };
    let server =
        tokio::task::spawn_blocking(move || TestServer::start(Some(url), &["--executor", "none"]))
            .await
            .unwrap();
    large_payloads_are_listed_in_bounded_memory(server).await;
}

/// Rounds of the deletion race, and writes of each kind per round.
const RACE_ROUNDS: usize = 30;
const RACE_WRITES: usize = 6;

/// A project `owner` administers is deleted while the owner grants a third
/// account PROJECT_ADMIN, sets secrets and creates events for it; then
/// another tenant creates a project with the same id. Whatever the order
/// the writes reached the store in, nothing of the old project is left for
/// the new one: no grant, no secret, no event. Every write is answered as
/// done (before the deletion) or refused (after it: "not found", or
/// "forbidden" for an event once the owner's roles went with the project),
/// never with an error.
async fn deletion_races(server: &TestServer) {
    let base = server.url.clone();
    let root = server.root_token();
    let mut tokens = std::collections::HashMap::new();
    for account in ["owner", "grantee", "newcomer"] {
        let (status, token) = call(
            "POST",
            &format!("{base}/v2/service-accounts"),
            Some(&root),
            Some(
                json!({"apiVersion": "brigade.sh/v2", "kind": "ServiceAccount",
                        "metadata": {"id": account}, "description": "a tenant"}),
            ),
        )
        .await;
        assert_eq!(status, 201, "{token}");
        tokens.insert(account, token["value"].as_str().unwrap().to_string());
    }
    for account in ["owner", "newcomer"] {
        let (status, body) = call(
            "POST",
            &format!("{base}/v2/role-assignments"),
            Some(&root),
            Some(json!({"role": "PROJECT_CREATOR",
                        "principal": {"type": "SERVICE_ACCOUNT", "id": account}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let project = json!({"apiVersion": "brigade.sh/v2", "kind": "Project",
        "metadata": {"id": "raced"},
        "spec": {"eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
                 "workerTemplate": {"defaultConfigFiles": {"brigade.js": "console.log('x');"}}}});
    let mut survived = Vec::new();
    for round in 0..RACE_ROUNDS {
        let (status, body) = call(
            "POST",
            &format!("{base}/v2/projects"),
            Some(&tokens["owner"]),
            Some(project.clone()),
        )
        .await;
        assert_eq!(status, 201, "round {round}: {body}");
        let mut writes = tokio::task::JoinSet::new();
        let owner = tokens["owner"].clone();
        for i in 0..RACE_WRITES {
            let requests = [
                (
                    "POST",
                    "/v2/projects/raced/role-assignments".to_string(),
                    json!({"role": "PROJECT_ADMIN",
                           "principal": {"type": "SERVICE_ACCOUNT", "id": "grantee"}}),
                ),
                (
                    "PUT",
                    format!("/v2/projects/raced/secrets/key{i}"),
                    json!({"key": format!("key{i}"), "value": format!("old-secret-{round}")}),
                ),
                (
                    "POST",
                    "/v2/events".to_string(),
                    json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "raced",
                           "source": "brigade.sh/cli", "type": "exec"}),
                ),
            ];
            for (method, path, body) in requests {
                let (base, owner) = (base.clone(), owner.clone());
                // Spread the writes over a few milliseconds around the
                // deletion, differently each round.
                let delay = Duration::from_micros(((i * 7 + round * 3) % 10) as u64 * 400);
                writes.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let (status, answer) =
                        call(method, &format!("{base}{path}"), Some(&owner), Some(body)).await;
                    (format!("{method} {path}"), status, answer)
                });
            }
        }
        let delay = Duration::from_micros((round % 6) as u64 * 500);
        tokio::time::sleep(delay).await;
        let (status, body) = call(
            "DELETE",
            &format!("{base}/v2/projects/raced"),
            Some(&owner),
            None,
        )
        .await;
        assert_eq!(status, 200, "round {round}: {body}");
        while let Some(write) = writes.join_next().await {
            let (what, status, answer) = write.unwrap();
            assert!(
                matches!(status, 200 | 201 | 403 | 404),
                "round {round}: {what} answered {status}: {answer}\n{}",
                server.server_log()
            );
        }
        let (status, body) = call(
            "POST",
            &format!("{base}/v2/projects"),
            Some(&tokens["newcomer"]),
            Some(project.clone()),
        )
        .await;
        assert_eq!(status, 201, "round {round}: {body}");
        let mut left = Vec::new();
        let (_, roles) = call(
            "GET",
            &format!("{base}/v2/projects/raced/role-assignments"),
            Some(&root),
            None,
        )
        .await;
        let holders: Vec<&str> = roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["principal"]["id"].as_str())
            .filter(|id| *id != "newcomer")
            .collect();
        if !holders.is_empty() {
            left.push(format!("roles of {holders:?}"));
        }
        let (_, secrets) = call(
            "GET",
            &format!("{base}/v2/projects/raced/secrets"),
            Some(&root),
            None,
        )
        .await;
        if !secrets["items"].as_array().unwrap().is_empty() {
            left.push(format!("secrets {}", secrets["items"]));
        }
        let (_, events) = call(
            "GET",
            &format!("{base}/v2/events?projectID=raced"),
            Some(&root),
            None,
        )
        .await;
        if !events["items"].as_array().unwrap().is_empty() {
            left.push(format!(
                "{} events",
                events["items"].as_array().unwrap().len()
            ));
        }
        let (status, _) = call(
            "GET",
            &format!("{base}/v2/projects/raced"),
            Some(&tokens["grantee"]),
            None,
        )
        .await;
        if status != 404 {
            left.push("the grantee reads the new project".to_string());
        }
        if !left.is_empty() {
            survived.push(format!("round {round}: {}", left.join(", ")));
        }
        let (status, body) = call(
            "DELETE",
            &format!("{base}/v2/projects/raced"),
            Some(&tokens["newcomer"]),
            None,
        )
        .await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
    assert!(
        survived.is_empty(),
        "{} of {RACE_ROUNDS} rounds left the old project's grants, secrets or events to the new one:\n{}",
        survived.len(),
        survived.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_racing_a_projects_deletion_die_with_it_on_sqlite() {
    let server = tokio::task::spawn_blocking(|| TestServer::start(None, &["--executor", "none"]))
        .await
        .unwrap();
    deletion_races(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_racing_a_projects_deletion_die_with_it_on_postgres() {
    let Some(url) =
        common::postgres_database("writes_racing_a_projects_deletion_die_with_it_on_postgres")
    else {
        return;
    };
    let server =
        tokio::task::spawn_blocking(move || TestServer::start(Some(url), &["--executor", "none"]))
            .await
            .unwrap();
    deletion_races(&server).await;
}

/// `event retry` and `event clone` print the new event's id and follow it,
/// and the API answers both with the one new Event, as Brigade's did.
#[tokio::test(flavor = "multi_thread")]
async fn retry_and_clone_answer_with_the_new_event() {
    let (server, id, retried, cloned) = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(None, &["--executor", "none"]);
        let dir = script_project("again", "", "console.log(`handled ${event.id}`);");
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        let id = server.create_event("again", &[]);
        wait_until_ended(&server, &id);
        let retried = server.cli(&["event", "retry", "--id", &id, "--follow"]);
        let cloned = server.cli(&["event", "clone", "--id", &id, "--follow"]);
        (server, id, retried, cloned)
    })
    .await
    .unwrap();
    for (what, ran, label) in [
        ("retry", &retried, "brigade.sh/retryOf"),
        ("clone", &cloned, "brigade.sh/cloneOf"),
    ] {
        assert_eq!(ran.code, 0, "{what}: {ran:?}");
        let new_id = created_id(&ran.stdout);
        assert!(
            uuid::Uuid::parse_str(&new_id).is_ok() && new_id != id,
            "{what}: {ran:?}"
        );
        assert!(
            ran.stdout.contains(&format!("handled {new_id}")),
            "{what} --follow: {ran:?}"
        );
        let (status, event) = call(
            "GET",
            &format!("{}/v2/events/{new_id}", server.url),
            Some(&server.root_token()),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(event["labels"][label], id, "{event}");
    }
    for (path, label) in [
        ("retries", "brigade.sh/retryOf"),
        ("clones", "brigade.sh/cloneOf"),
    ] {
        let (status, event) = call(
            "POST",
            &format!("{}/v2/events/{id}/{path}", server.url),
            Some(&server.root_token()),
            None,
        )
        .await;
        assert_eq!(status, 201, "{path}: {event}");
        assert_eq!(event["kind"], "Event", "{path}: {event}");
        assert_eq!(event["labels"][label], id, "{path}: {event}");
        assert!(
            event["metadata"]["id"]
                .as_str()
                .is_some_and(|new| new != id)
        );
    }
}

/// The server's log is read from files and journals: without a terminal it
/// holds no colour codes.
#[test]
fn the_server_log_has_no_colour_codes_without_a_terminal() {
    let mut server = TestServer::start(None, &["--executor", "none"]);
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    server.child.wait().unwrap();
    let log = server.server_log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

/// The server forwards the worker's and each job's lines, masked, to
/// fluentd and OTLP (one that refuses the first requests: retried), each
/// with its project, event, job, container and the project's labels, and
/// counts what it delivered and retried in /metrics.
fn the_server_forwards_lines_to_fluentd_and_otlp(database_url: Option<String>, test: &str) {
    use common::collectors::{self, Kind, Receiver};
    let Some(dir) = collectors::dir(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fluentd = Receiver::start(Kind::Fluentd, &dir, &tmp.path().join("fluentd.jsonl"), &[]);
    let otlp = Receiver::start(
        Kind::Otlp,
        &dir,
        &tmp.path().join("otlp.jsonl"),
        &["--fail-first", "2"],
    );
    let server = TestServer::start(
        database_url,
        &[
            "--fluentd",
            &format!("127.0.0.1:{}", fluentd.port),
            "--otlp-logs-endpoint",
            &format!("http://127.0.0.1:{}/v1/logs", otlp.port),
        ],
    );
    let project = script_project(
        "forwarded",
        "    logForwarding:\n      labels:\n        team: payments\n",
        r#"console.log("the worker speaks");
          const { Job } = require("@brigadecore/brigadier");
          const job = new Job("hello", "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", "echo from the job; echo token $TOKEN"];
          job.primaryContainer.environment = { TOKEN: event.project.secrets.token };
          await job.run();"#,
    );
    server.ok(&["project", "create", "-f", project.path().to_str().unwrap()]);
    server.ok(&[
        "project",
        "secret",
        "set",
        "--project",
        "forwarded",
        "-s",
        "token=s3cr3t-value",
    ]);
    let id = server.create_event("forwarded", &[]);
    let event = wait_until_ended(&server, &id);
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");

    let has = |records: &[Value], pointer: &str, text: &str| {
        records
            .iter()
            .any(|r| r.pointer(pointer).and_then(Value::as_str) == Some(text))
    };
    let forwarded = fluentd.wait_for("the job's lines", |r| {
        has(r, "/record/message", "token ***") && has(r, "/record/message", "the worker speaks")
    });
    let job_line = forwarded
        .iter()
        .find(|r| r["record"]["message"] == "from the job")
        .unwrap();
    assert_eq!(
        job_line["tag"],
        format!("mizzen.forwarded.{id}.hello.hello")
    );
    assert_eq!(job_line["record"]["event"], id.as_str());
    assert_eq!(job_line["record"]["job"], "hello");
    assert_eq!(job_line["record"]["container"], "hello");
    assert_eq!(job_line["record"]["team"], "payments");
    let exported = otlp.wait_for("the job's lines", |r| has(r, "/body", "token ***"));
    let job_log = exported
        .iter()
        .find(|r| r["body"] == "from the job")
        .unwrap();
    assert_eq!(job_log["attributes"]["project"], "forwarded");
    assert_eq!(job_log["attributes"]["job"], "hello");
    for out in ["fluentd.jsonl", "otlp.jsonl"] {
        let text = std::fs::read_to_string(tmp.path().join(out)).unwrap();
        assert!(!text.contains("s3cr3t-value"), "{out}: {text}");
    }

    let metrics = common::raw_get(&format!("{}/metrics", server.url)).unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(
        value("mizzen_forwarding_lines_delivered_total{sink=\"fluentd\"}") >= 3,
        "{metrics}"
    );
    assert!(
        value("mizzen_forwarding_lines_retried_total{sink=\"otlp\"}") >= 1,
        "the refused requests were retried: {metrics}"
    );
    assert_eq!(
        value("mizzen_forwarding_lines_dropped_total{reason=\"spool_full\"}"),
        0
    );
}

#[test]
fn the_server_forwards_lines_on_sqlite() {
    the_server_forwards_lines_to_fluentd_and_otlp(None, "the_server_forwards_lines_on_sqlite");
}

#[test]
fn the_server_forwards_lines_on_postgres() {
    let Some(url) = common::postgres_database("the_server_forwards_lines_on_postgres") else {
        return;
    };
    the_server_forwards_lines_to_fluentd_and_otlp(
        Some(url),
        "the_server_forwards_lines_on_postgres",
    );
}

/// The loss test: 100,000 lines from 50 events while the collector is
/// killed and started again twice and Mizzen is killed once (SIGKILL, with
/// lines waiting in its spool). Every line arrives; a line arrives twice
/// only when a batch was in flight at a kill (at most one batch of 2,000
/// per failure: the at-least-once retries).
#[test]
fn no_line_is_lost_when_the_collector_and_mizzen_are_killed() {
    use common::collectors::{self, Kind, Receiver};
    const EVENTS: usize = 50;
    const LINES: usize = 2_000;
    const KILLS: usize = 3;
    const BATCH: usize = 2_000;
    let Some(dir) = collectors::dir("no_line_is_lost") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut fluentd = Receiver::start(Kind::Fluentd, &dir, &tmp.path().join("fluentd.jsonl"), &[]);
    let mut server = TestServer::start(
        None,
        &[
            "--executor",
            "none",
            "--fluentd",
            &format!("127.0.0.1:{}", fluentd.port),
        ],
    );
    let project = script_project(
        "loud",
        "",
        &format!(
            r#"for (let i = 0; i < {LINES}; i++) console.log(`e${{event.payload}} line ${{i}}`);"#
        ),
    );
    server.ok(&["project", "create", "-f", project.path().to_str().unwrap()]);
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(server.create_event("loud", &["--payload", &n.to_string()]));
        match n {
            // Killed while lines flow, started again while they still do.
            15 => fluentd.kill(),
            25 => fluentd.restart(),
            35 => fluentd.kill(),
            _ => {}
        }
    }
    for id in &ids {
        assert_eq!(phase_of(&wait_until_ended(&server, id)), "SUCCEEDED");
    }
    // The collector is down: what is left waits in the spool when Mizzen
    // is killed, and the new process delivers it.
    server.kill_and_restart();
    fluentd.restart();
    let received = fluentd.wait_for("every line", |records| {
        let lines: std::collections::HashSet<&str> = records
            .iter()
            .filter_map(|r| r["record"]["message"].as_str())
            .collect();
        (0..EVENTS).all(|n| lines.contains(format!("e{n} line {}", LINES - 1).as_str()))
            && lines.len() >= EVENTS * LINES
    });
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for record in &received {
        if let Some(message) = record["record"]["message"].as_str()
            && message.starts_with('e')
        {
            *counts.entry(message).or_default() += 1;
        }
    }
    for n in 0..EVENTS {
        for i in 0..LINES {
            let line = format!("e{n} line {i}");
            assert!(counts.contains_key(line.as_str()), "{line} was lost");
        }
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} lines delivered, {duplicates} of them again after a kill",
        counts.len()
    );
    assert!(
        duplicates <= KILLS * BATCH,
        "{duplicates} lines arrived twice; at most one batch per kill may"
    );
}

/// One trace per event, exported over OTLP to a decoder of others' making:
/// the event's span (accepted to ended) in the caller's trace when the
/// request carried a `traceparent`, with `queued`, `worker` and a span per
/// job beneath the worker, each with the project, event, source and type;
/// a failed job's span says so.
#[tokio::test(flavor = "multi_thread")]
async fn each_event_is_a_trace_that_continues_the_callers() {
    use common::collectors::{self, Kind, Receiver};
    let Some(dir) = collectors::dir("each_event_is_a_trace") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let otlp = Receiver::start(Kind::Otlp, &dir, &tmp.path().join("otlp.jsonl"), &[]);
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", otlp.port);
    let server = tokio::task::spawn_blocking(move || {
        let server = TestServer::start(None, &["--otlp-traces-endpoint", &endpoint]);
        let project = script_project(
            "traced",
            "",
            r#"const { Job } = require("@brigadecore/brigadier");
          const build = new Job("build", "localhost/busybox", event);
          build.primaryContainer.command = ["true"];
          await build.run();
          const lint = new Job("lint", "localhost/busybox", event);
          lint.primaryContainer.command = ["false"];
          lint.fallible = true;
          await lint.run();"#,
        );
        server.ok(&["project", "create", "-f", project.path().to_str().unwrap()]);
        server
    })
    .await
    .unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = http()
        .post(format!("{}/v2/events", server.url))
        .bearer_auth(server.root_token())
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"projectID": "traced", "source": "brigade.sh/cli", "type": "exec"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let spans = tokio::task::spawn_blocking(move || {
        otlp.wait_for("the event's spans", |records| {
            records
                .iter()
                .any(|r| r["kind"] == "span" && r["name"] == "event")
        })
    })
    .await
    .unwrap();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let event = named("event");
    assert_eq!(event["trace_id"], caller_trace);
    assert_eq!(event["parent_span_id"], caller_span);
    assert_eq!(event["attributes"]["event"], id.as_str());
    assert_eq!(event["attributes"]["project"], "traced");
    assert_eq!(event["attributes"]["source"], "brigade.sh/cli");
    assert_eq!(event["attributes"]["phase"], "SUCCEEDED");
    assert_eq!(event["resource"]["service.name"], "mizzen");
    let (queued, worker) = (named("queued"), named("worker"));
    for child in [queued, worker] {
        assert_eq!(child["trace_id"], caller_trace);
        assert_eq!(child["parent_span_id"], event["span_id"]);
    }
    for job in [named("job build"), named("job lint")] {
        assert_eq!(job["trace_id"], caller_trace);
        assert_eq!(job["parent_span_id"], worker["span_id"]);
    }
    assert_eq!(named("job lint")["attributes"]["phase"], "FAILED");
    assert_eq!(named("job lint")["status_code"], 2, "STATUS_CODE_ERROR");
    let start = |s: &Value| s["start_time_unix_nano"].as_u64().unwrap();
    let end = |s: &Value| s["end_time_unix_nano"].as_u64().unwrap();
    assert!(start(event) <= start(queued) && end(queued) <= start(worker) + 1_000);
    assert!(end(worker) <= end(event) && start(named("job build")) >= start(worker));
    // The server's own log names the trace, to go from a line to its trace.
    assert!(
        server
            .server_log()
            .contains(&format!("trace_id={caller_trace}")),
        "{}",
        server.server_log()
    );
}

/// On the server's local engine, a job's private image is pulled with the
/// project's pull secret (a project secret named in imagePullSecrets),
/// set through the API like any other; without it the job fails saying so.
fn private_images_with_the_projects_pull_secret(database_url: Option<String>, test: &str) {
    let Some((address, user, password)) = common::private_registry(test) else {
        return;
    };
    let server = TestServer::start(database_url, &[]);
    let project = script_project(
        "private-image",
        "    kubernetes:\n      imagePullSecrets: [regcred]\n",
        &format!(
            r#"const {{ Job }} = require("@brigadecore/brigadier");
          const job = new Job("private", "{address}/private/busybox:latest", event);
          job.primaryContainer.imagePullPolicy = "Always";
          job.primaryContainer.command = ["sh", "-c", "echo pulled privately"];
          await job.run();"#
        ),
    );
    server.ok(&["project", "create", "-f", project.path().to_str().unwrap()]);

    let id = server.create_event("private-image", &[]);
    assert_eq!(phase_of(&wait_until_ended(&server, &id)), "FAILED");
    let log = server.ok(&["event", "logs", "--id", &id]);
    assert!(
        log.contains(&format!(
            "(no credentials for {address} in imagePullSecrets \"regcred\" (no such project secret))"
        )),
        "{log}"
    );

    let auth = base64_of(format!("{user}:{password}").as_bytes());
    server.ok(&[
        "project",
        "secret",
        "set",
        "--project",
        "private-image",
        "-s",
        &format!(r#"regcred={{"auths": {{"{address}": {{"auth": "{auth}"}}}}}}"#),
    ]);
    let id = server.create_event("private-image", &[]);
    let event = wait_until_ended(&server, &id);
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");
    let log = server.ok(&["event", "logs", "--id", &id, "--job", "private"]);
    assert!(log.contains("pulled privately"), "{log}");
}

#[test]
fn private_images_on_sqlite() {
    private_images_with_the_projects_pull_secret(None, "private_images_on_sqlite");
}

#[test]
fn private_images_on_postgres() {
    let Some(url) = common::postgres_database("private_images_on_postgres") else {
        return;
    };
    private_images_with_the_projects_pull_secret(Some(url), "private_images_on_postgres");
}

/// GitHub's documented webhook payloads (npm's `@octokit/webhooks-examples`,
/// installed by scripts/setup-webhook-examples), by event and action.
struct GitHubExamples(Vec<Value>);

impl GitHubExamples {
    /// The examples, or `None` (the test says it is skipped) without them.
    fn load(test: &str) -> Option<Self> {
        let Ok(index) = std::env::var("MIZZEN_TEST_WEBHOOK_EXAMPLES") else {
            eprintln!(
                "SKIPPED {test}: MIZZEN_TEST_WEBHOOK_EXAMPLES is not set (scripts/setup-webhook-examples prints it; scripts/test sets it)"
            );
            return None;
        };
        Some(Self(
            serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap(),
        ))
    }

    fn get(&self, name: &str, action: Option<&str>) -> Value {
        self.0
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["examples"].as_array())
            .and_then(|list| {
                list.iter()
                    .find(|x| x.get("action").and_then(Value::as_str) == action)
            })
            .unwrap_or_else(|| panic!("no documented {name} {action:?}"))
            .clone()
    }
}

/// The App whose deliveries GitHub's documented webhooks are (their
/// `X-GitHub-Hook-Installation-Target-ID`), and its webhook secret here.
const GITHUB_APP_ID: u64 = 375706;
const GITHUB_WEBHOOK_SECRET: &str = "github-app-webhook-secret";

/// A GitHub App's private key as GitHub hands it out (PKCS#1 PEM, made by
/// openssl), and its public half for the fake GitHub.
struct AppKey {
    _dir: tempfile::TempDir,
    pem: PathBuf,
    public_der: Vec<u8>,
}

impl AppKey {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("app.pem");
        let der = dir.path().join("app.der");
        for args in [
            vec![
                "genrsa",
                "-traditional",
                "-out",
                pem.to_str().unwrap(),
                "2048",
            ],
            vec![
                "rsa",
                "-in",
                pem.to_str().unwrap(),
                "-RSAPublicKey_out",
                "-outform",
                "DER",
                "-out",
                der.to_str().unwrap(),
            ],
        ] {
            let ran = Command::new("openssl").args(&args).output().unwrap();
            assert!(ran.status.success(), "openssl {args:?}: {ran:?}");
        }
        let public_der = std::fs::read(&der).unwrap();
        Self {
            _dir: dir,
            pem,
            public_der,
        }
    }

    /// `mizzen server`'s flags for the App's webhooks and its check runs,
    /// with GitHub's API at `api_url`.
    fn server_args(&self, api_url: &str) -> Vec<String> {
        [
            "--github-webhook-secret",
            GITHUB_WEBHOOK_SECRET,
            "--github-app-id",
            &GITHUB_APP_ID.to_string(),
            "--github-app-key-file",
            self.pem.to_str().unwrap(),
            "--github-api-url",
            api_url,
        ]
        .map(str::to_string)
        .to_vec()
    }
}

/// Delivers `body` to the server's GitHub gateway as GitHub delivers the
/// App's webhooks (signed with [`GITHUB_WEBHOOK_SECRET`]); the answer's
/// message.
async fn deliver_github(server: &TestServer, delivery: &str, event: &str, body: &Value) -> String {
    let body = body.to_string();
    let answer = http()
        .post(format!("{}/gateways/github", server.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-GitHub-Hook-Installation-Target-Type", "integration")
        .header(
            "X-GitHub-Hook-Installation-Target-ID",
            GITHUB_APP_ID.to_string(),
        )
        .header(
            "X-Hub-Signature-256",
            github_signature(GITHUB_WEBHOOK_SECRET, body.as_bytes()),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    answer.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// GitHub's own documented webhook bodies (the examples its documentation
/// shows, from npm's @octokit/webhooks-examples, which
/// scripts/setup-webhook-examples installs), signed as GitHub signs them,
/// make Brigade's CI/CD events beside the plain ones: a check suite asks
/// for the pipeline (tracked, from an App installation), a re-run check run
/// `<project>:<job>` for that project's job only, a published release for
/// the deployment, and a trusted `/brig run` comment on a pull request for
/// its pipeline; a stranger's comment and a check run of no project make
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn githubs_documented_webhooks_make_brigades_ci_and_cd_events() {
    let Some(examples) =
        GitHubExamples::load("githubs_documented_webhooks_make_brigades_ci_and_cd_events")
    else {
        return;
    };
    let example = |name: &str, action: Option<&str>| examples.get(name, action);
    let server = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(
            None,
            &[
                "--executor",
                "none",
                "--github-webhook-secret",
                GITHUB_WEBHOOK_SECRET,
            ],
        );
        for (id, subscriptions) in [
            (
                "hello-ci",
                "  - source: brigade.sh/github\n    types: [ci:pipeline_requested, ci:job_requested]\n    qualifiers:\n      repo: Codertocat/Hello-World\n  - source: brigade.sh/github\n    types: [ci:job_requested]\n    qualifiers:\n      repo: github/hello-world\n",
            ),
            (
                "hello-cd",
                "  - source: brigade.sh/github\n    types: [cd:pipeline_requested]\n    qualifiers:\n      repo: Codertocat/Hello-World\n",
            ),
            (
                "hello-all",
                "  - source: brigade.sh/github\n    types: ['*']\n    qualifiers:\n      repo: Codertocat/Hello-World\n",
            ),
        ] {
            create_subscribed_project(&server, id, subscriptions);
        }
        server
    })
    .await
    .unwrap();
    let mut delivery = 0;
    let mut send = async |event: &str, body: Value| -> String {
        delivery += 1;
        let id = format!("delivery-{delivery}");
        deliver_github(&server, &id, event, &body).await
    };
    let events_of = async |project: &str| events_of(&server, project).await;

    // A check suite requested: check_suite:requested for the project of
    // every type, and ci:pipeline_requested, tracked, for both.
    let said = send("check_suite", example("check_suite", Some("requested"))).await;
    assert_eq!(said, "accepted: 3 event(s) created");
    let ci = &events_of("hello-ci").await[0];
    assert_eq!(ci["type"], "ci:pipeline_requested");
    assert_eq!(ci["qualifiers"]["repo"], "Codertocat/Hello-World");
    assert_eq!(ci["labels"]["appID"], "375706");
    assert_eq!(
        ci["git"]["commit"],
        "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
    );
    assert_eq!(ci["git"]["ref"], "refs/heads/master");
    assert_eq!(ci["shortTitle"], "branch: master");
    assert_eq!(
        ci["sourceState"]["state"],
        json!({"tracking": "true", "installationID": "957387", "owner": "Codertocat",
               "repo": "Hello-World", "headSHA": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"})
    );
    let all: Vec<Value> = events_of("hello-all")
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        all,
        [
            json!("ci:pipeline_requested"),
            json!("check_suite:requested")
        ]
    );

    // Re-run from a pull request: the pull request's number is the title.
    let said = send("check_suite", example("check_suite", Some("rerequested"))).await;
    assert_eq!(said, "accepted: 3 event(s) created");
    assert_eq!(events_of("hello-ci").await[0]["shortTitle"], "PR #2");

    // A check run re-run: the documented one is no project's ("randscape").
    let mut run = example("check_run", Some("rerequested"));
    assert_eq!(
        send("check_run", run.clone()).await,
        "accepted: 0 event(s) created"
    );
    // Named as Mizzen names its check runs, it is that project's job.
    run["check_run"]["name"] = json!("hello-ci:unit-tests");
    assert_eq!(
        send("check_run", run.clone()).await,
        "accepted: 1 event(s) created"
    );
    let job = &events_of("hello-ci").await[0];
    assert_eq!(job["type"], "ci:job_requested");
    assert_eq!(job["labels"]["job"], "unit-tests");
    assert_eq!(job["qualifiers"]["repo"], "github/hello-world");
    assert_eq!(
        job["git"]["commit"],
        "d6fde92930d4715a2b49857d24b940956b26d2d3"
    );
    // A project that does not exist: nothing, and no error.
    run["check_run"]["name"] = json!("no-such-project:unit");
    assert_eq!(send("check_run", run).await, "accepted: 0 event(s) created");

    // A release published: the deployment, with its tag.
    let said = send("release", example("release", Some("published"))).await;
    assert_eq!(said, "accepted: 3 event(s) created");
    let cd = &events_of("hello-cd").await[0];
    assert_eq!(cd["type"], "cd:pipeline_requested");
    assert_eq!(cd["labels"]["release"], "0.0.1");
    assert_eq!(cd["git"]["ref"], "refs/tags/0.0.1");

    // A comment: on an issue, as documented, it asks for nothing; on a pull
    // request, `/brig run` by its owner asks for the pipeline, by a
    // stranger not.
    let comment = example("issue_comment", Some("created"));
    assert_eq!(
        send("issue_comment", comment.clone()).await,
        "accepted: 1 event(s) created"
    );
    let mut on_pr = comment.clone();
    on_pr["issue"]["pull_request"] =
        json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"});
    on_pr["comment"]["body"] = json!("/brig run");
    let mut stranger = on_pr.clone();
    stranger["comment"]["author_association"] = json!("NONE");
    assert_eq!(
        send("issue_comment", stranger).await,
        "accepted: 1 event(s) created"
    );
    assert_eq!(
        send("issue_comment", on_pr).await,
        "accepted: 3 event(s) created"
    );
    let ci = &events_of("hello-ci").await[0];
    assert_eq!(ci["type"], "ci:pipeline_requested");
    assert_eq!(ci["git"]["ref"], "refs/pull/1/head");

    // Plain events stay as they were: a pull request and a push.
    assert_eq!(
        send("pull_request", example("pull_request", Some("opened"))).await,
        "accepted: 1 event(s) created"
    );
    assert_eq!(
        send("push", example("push", None)).await,
        "accepted: 1 event(s) created"
    );
    let all: Vec<Value> = events_of("hello-all")
        .await
        .iter()
        .take(2)
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(all, [json!("push"), json!("pull_request:opened")]);
}

/// A CI project of the shape of Brigade's own (`.brigade/brigade.ts` in
/// brigadecore's repositories: a `ci:pipeline_requested` handler running
/// jobs concurrently then in sequence, a `ci:job_requested` handler running
/// the job `event.labels.job` names), from GitHub's documented webhooks to
/// the check runs' conclusions, reported as a GitHub App to a fake GitHub
/// API that checks the App's JWT and installation tokens as GitHub does,
/// refuses the first creation with a rate limit, and revokes the first
/// token on the way.
async fn check_runs_follow_a_brigade_ci_script(
    database_url: Option<String>,
    kubernetes: bool,
    test: &str,
) {
    use mizzen_tests::fake_github::{CheckRun, FakeGitHub, FakeGitHubConfig};
    use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript};
    const INSTALLATION: u64 = 957387;
    const SUITE_SHA: &str = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";
    const PR_SHA: &str = "c0ffee0000000000000000000000000000c0ffee";
    let Some(examples) = GitHubExamples::load(test) else {
        return;
    };
    let example = |name: &str, action: Option<&str>| -> Value {
        let mut example = examples.get(name, action);
        // Nothing here reaches github.com: the project's script is inline,
        // where a real CI project would clone the repository.
        example["repository"]["clone_url"] = json!("");
        example
    };
    let key = AppKey::generate();
    let github = FakeGitHub::start(FakeGitHubConfig {
        app_id: GITHUB_APP_ID,
        public_key_der: key.public_der.clone(),
        installations: [("Codertocat/Hello-World".to_string(), INSTALLATION)].into(),
        pulls: [(
            ("Codertocat/Hello-World".to_string(), 1),
            PR_SHA.to_string(),
        )]
        .into(),
        rate_limit_first_create: true,
        revoke_first_token_after: Some(3),
        ..FakeGitHubConfig::default()
    })
    .await;
    // On Kubernetes, the fake cluster's kubelet prints what the jobs'
    // commands below would.
    let cluster = match kubernetes {
        false => None,
        true => {
            let fake = FakeKube::start(FakeConfig::deployed(&["mizzen-jobs"])).await;
            fake.on_pod(|pod| {
                let job = pod["metadata"]["labels"]["mizzen.sh/job"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let (lines, code) = match job.as_str() {
                    "lint" => (vec!["linted".to_string()], 0),
                    "unit-tests" => (vec!["12 tests passed".to_string()], 0),
                    _ => {
                        let mut lines: Vec<String> = (1..=5000).map(|n| n.to_string()).collect();
                        lines.push("x".repeat(100_000));
                        lines.push("using token s3cr3t-t0ken-value".into());
                        lines.push("FAIL: expected 2, got 3".into());
                        (lines, 1)
                    }
                };
                PodScript::default().with(&job, ContainerScript::new(lines, code))
            });
            let dir = tempfile::tempdir().unwrap();
            fake.write_kubeconfig(&dir.path().join("kubeconfig"), "default")
                .unwrap();
            Some((fake, dir))
        }
    };
    let kubeconfig = cluster
        .as_ref()
        .map(|(_, dir)| dir.path().join("kubeconfig"));
    let mut args = key.server_args(&github.url);
    let server = tokio::task::spawn_blocking(move || {
        let mut env = Vec::new();
        if let Some(kubeconfig) = &kubeconfig {
            args.extend(
                ["--executor", "kubernetes", "--kubernetes-namespace", "mizzen-jobs"]
                    .map(str::to_string),
            );
            env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start_with_env(database_url, &args, &env);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("project.yaml"),
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: brigade-ci
spec:
  eventSubscriptions:
  - source: brigade.sh/github
    qualifiers:
      repo: Codertocat/Hello-World
    types: [ci:pipeline_requested, ci:job_requested]
  workerTemplate:
    defaultConfigFiles:
      brigade.js: |
        const { events, Job, ConcurrentGroup, SerialGroup } = require("@brigadecore/brigadier");
        const step = (name, script) => (event) => {
          const job = new Job(name, "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", script];
          job.primaryContainer.environment = { TOKEN: event.project.secrets.token };
          return job;
        };
        const jobs = {
          "lint": step("lint", "echo linted; sleep 1"),
          "unit-tests": step("unit-tests", "echo 12 tests passed; sleep 1"),
          "integration": step("integration", "seq 1 5000; head -c 100000 /dev/zero | tr '\\0' x; echo; echo using token $TOKEN; echo 'FAIL: expected 2, got 3'; exit 1"),
        };
        events.on("brigade.sh/github", "ci:pipeline_requested", async (event) => {
          await new SerialGroup(
            new ConcurrentGroup(jobs["lint"](event), jobs["unit-tests"](event)),
            jobs["integration"](event),
          ).run();
          return "all passed";
        });
        events.on("brigade.sh/github", "ci:job_requested", async (event) => {
          const job = jobs[event.labels.job];
          if (!job) {
            throw new Error(`no job ${event.labels.job}`);
          }
          await job(event).run();
          return `${event.labels.job} passed`;
        });
        events.process();
"#,
        )
        .unwrap();
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        server.ok(&[
            "project",
            "secret",
            "set",
            "--project",
            "brigade-ci",
            "-s",
            "token=s3cr3t-t0ken-value",
        ]);
        server
    })
    .await
    .unwrap();
    let mut delivery = 0;
    let mut send = async |event: &str, body: Value| {
        delivery += 1;
        let id = format!("delivery-{delivery}");
        let said = deliver_github(&server, &id, event, &body).await;
        assert_eq!(said, "accepted: 1 event(s) created", "{event}");
    };
    // Waits until `count` check runs exist and all are completed.
    let completed = async |count: usize| -> Vec<CheckRun> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let runs = github.check_runs();
            if runs.len() >= count && runs.iter().all(|r| r.status == "completed") {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "check runs never completed: {runs:#?}\n{}",
                server.server_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let named = |runs: &[CheckRun], name: &str| -> CheckRun {
        runs.iter()
            .rev()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no check run {name}: {runs:#?}"))
            .clone()
    };
    // Each run goes forward only: queued, in progress, completed (a step
    // may be passed over between two reports, never repeated).
    let forward = |run: &CheckRun| {
        let order = ["queued", "in_progress", "completed"];
        let places: Vec<usize> = run
            .statuses
            .iter()
            .map(|s| order.iter().position(|o| o == s).unwrap())
            .collect();
        assert!(
            places.windows(2).all(|w| w[0] < w[1]),
            "{}: {:?}",
            run.name,
            run.statuses
        );
    };

    // The check suite GitHub requests for a push: the pipeline.
    send("check_suite", example("check_suite", Some("requested"))).await;
    let runs = completed(4).await;
    assert_eq!(runs.len(), 4, "{runs:#?}");
    for run in &runs {
        assert_eq!(run.head_sha, SUITE_SHA, "{run:?}");
        forward(run);
    }
    for (name, conclusion) in [
        ("brigade-ci:lint", "success"),
        ("brigade-ci:unit-tests", "success"),
        ("brigade-ci:integration", "failure"),
        ("brigade-ci", "failure"),
    ] {
        assert_eq!(
            named(&runs, name).conclusion.as_deref(),
            Some(conclusion),
            "{runs:#?}"
        );
    }
    // The worker's run was seen running: its jobs took seconds.
    assert!(
        named(&runs, "brigade-ci")
            .statuses
            .contains(&"in_progress".to_string()),
        "{runs:#?}"
    );
    let text = |run: &CheckRun| {
        run.output.as_ref().unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let integration = text(&named(&runs, "brigade-ci:integration"));
    assert!(
        integration.contains("FAIL: expected 2, got 3"),
        "{integration}"
    );
    // 5,000 lines and one of 100,000 characters: the tail GitHub takes.
    assert!(integration.len() <= 65_535, "{}", integration.len());
    assert!(!integration.contains("\n4900\n"), "{integration}");
    assert!(integration.contains("using token ***"), "{integration}");
    assert!(!integration.contains("s3cr3t-t0ken-value"), "{integration}");
    assert!(text(&named(&runs, "brigade-ci:lint")).contains("linted"));
    let pipeline = named(&runs, "brigade-ci").output.unwrap();
    assert_eq!(pipeline["title"], "brigade-ci: FAILED", "{pipeline}");

    // A re-run of one check run from GitHub's page: that job alone, with
    // its summary on the worker's run.
    let mut rerun = example("check_run", Some("rerequested"));
    let suite = example("check_suite", Some("requested"));
    rerun["repository"] = suite["repository"].clone();
    rerun["installation"] = json!({ "id": INSTALLATION });
    rerun["check_run"]["name"] = json!("brigade-ci:lint");
    let rerun_sha = rerun["check_run"]["head_sha"].as_str().unwrap().to_string();
    send("check_run", rerun).await;
    let runs = completed(6).await;
    assert_eq!(runs.len(), 6, "{runs:#?}");
    let lint = named(&runs, "brigade-ci:lint");
    assert_eq!(lint.conclusion.as_deref(), Some("success"));
    assert_eq!(lint.head_sha, rerun_sha);
    let pipeline = named(&runs, "brigade-ci");
    assert_eq!(pipeline.conclusion.as_deref(), Some("success"));
    assert_eq!(pipeline.output.unwrap()["summary"], "lint passed");

    // `/brig run` by the pull request's owner: the commit is the pull
    // request's head, which only GitHub knows.
    let mut comment = example("issue_comment", Some("created"));
    comment["issue"]["pull_request"] =
        json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"});
    comment["issue"]["number"] = json!(1);
    comment["comment"]["body"] = json!("/brig run");
    comment["comment"]["author_association"] = json!("OWNER");
    comment["installation"] = json!({ "id": INSTALLATION });
    send("issue_comment", comment).await;
    let runs = completed(10).await;
    assert_eq!(runs.len(), 10, "{runs:#?}");
    for run in &runs[6..] {
        assert_eq!(run.head_sha, PR_SHA, "{run:?}");
        forward(run);
    }

    // The rate limit was waited out and the revoked token replaced: one new
    // token, and nothing else refused.
    assert!(github.rate_limited());
    assert_eq!(github.tokens_issued(), 2);
    assert_eq!(
        github.refused(),
        ["Bad credentials: the token was revoked"],
        "{}",
        server.server_log()
    );
    assert!(
        !server
            .server_log()
            .contains("could not be reported to GitHub"),
        "{}",
        server.server_log()
    );
    // On Kubernetes every job was a Pod: three, one, then three.
    if let Some((fake, _)) = &cluster {
        assert_eq!(fake.created("pods").len(), 7);
        assert!(fake.denied().is_empty(), "{:#?}", fake.denied());
    }
}

/// Slack's documented slash command (the body of its "Verifying requests
/// from Slack"), signed as Slack signs it with the current time, makes an
/// event for the project subscribed to the command; Slack is answered with
/// a message it shows; a replay, a stale timestamp and another secret's
/// signature are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_slash_commands_make_events_once() {
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let server = tokio::task::spawn_blocking(|| {
        let server = TestServer::start(
            None,
            &["--executor", "none", "--slack-signing-secret", SECRET],
        );
        create_subscribed_project(
            &server,
            "chatops",
            "  - source: brigade.sh/slack\n    types: [webhook-collect]\n",
        );
        server
    })
    .await
    .unwrap();
    let client = http();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |secret: &str, timestamp: u64| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{timestamp}:{BODY}").as_bytes());
        format!("v0={}", hex_of(&mac.finalize().into_bytes()))
    };
    let send = async |signature: String, timestamp: u64| {
        let answer = client
            .post(format!("{}/gateways/slack", server.url))
            .header("X-Slack-Signature", signature)
            .header("X-Slack-Request-Timestamp", timestamp.to_string())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(BODY)
            .send()
            .await
            .unwrap();
        (
            answer.status().as_u16(),
            answer.json::<Value>().await.unwrap(),
        )
    };
    let (status, said) = send(sign(SECRET, now), now).await;
    assert_eq!(status, 200, "{said}");
    assert_eq!(
        said,
        json!({"response_type": "ephemeral", "text": "accepted: 1 event(s) created"})
    );
    let events = events_of(&server, "chatops").await;
    let event = &events[0];
    assert_eq!(event["source"], "brigade.sh/slack");
    assert_eq!(event["type"], "webhook-collect");
    assert_eq!(
        event["labels"],
        json!({"teamID": "T1DC2JH3J", "channelID": "G8PSS9T3V", "userID": "U2CERLKJA"})
    );

    let (status, said) = send(sign(SECRET, now), now).await;
    assert_eq!(status, 200);
    assert!(
        said["text"].as_str().unwrap().contains("already received"),
        "{said}"
    );
    let stale = now - 301;
    let (status, said) = send(sign(SECRET, stale), stale).await;
    assert_eq!(status, 401);
    assert!(
        said["text"]
            .as_str()
            .unwrap()
            .contains("more than 300 seconds"),
        "{said}"
    );
    let (status, _) = send(sign("another-secret", now), now).await;
    assert_eq!(status, 401);
    assert_eq!(events_of(&server, "chatops").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_check_runs_follow_a_brigade_ci_script_on_sqlite() {
    check_runs_follow_a_brigade_ci_script(
        None,
        false,
        "github_check_runs_follow_a_brigade_ci_script_on_sqlite",
    )
    .await;
}

/// The same with the jobs as Pods on a fake cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_check_runs_follow_a_brigade_ci_script_on_kubernetes() {
    check_runs_follow_a_brigade_ci_script(
        None,
        true,
        "github_check_runs_follow_a_brigade_ci_script_on_kubernetes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_check_runs_follow_a_brigade_ci_script_on_postgres() {
    const TEST: &str = "github_check_runs_follow_a_brigade_ci_script_on_postgres";
    let Some(url) = common::postgres_database(TEST) else {
        return;
    };
    check_runs_follow_a_brigade_ci_script(Some(url), false, TEST).await;
}

/// GitHub out of reach never fails a tracked event: its worker ends as it
/// would have, and the server's log says what could not be reported and
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_github_cannot_take_never_fail_the_event() {
    const TEST: &str = "check_runs_github_cannot_take_never_fail_the_event";
    let Some(examples) = GitHubExamples::load(TEST) else {
        return;
    };
    let key = AppKey::generate();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = key.server_args(&format!("http://{}", closed.local_addr().unwrap()));
    drop(closed);
    args.extend(["--executor", "none"].map(str::to_string));
    let server = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start(None, &args);
        create_subscribed_project(
            &server,
            "tracked",
            "  - source: brigade.sh/github\n    types: [ci:pipeline_requested]\n    qualifiers:\n      repo: Codertocat/Hello-World\n",
        );
        server
    })
    .await
    .unwrap();
    let mut suite = examples.get("check_suite", Some("requested"));
    suite["repository"]["clone_url"] = json!("");
    let said = deliver_github(&server, "d-1", "check_suite", &suite).await;
    assert_eq!(said, "accepted: 1 event(s) created");
    let id = events_of(&server, "tracked").await[0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = tokio::task::block_in_place(|| wait_until_ended(&server, &id));
    assert_eq!(phase_of(&event), "SUCCEEDED", "{event}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = server.server_log();
        if log.contains("the event's check runs could not be reported to GitHub") {
            assert!(log.contains("GitHub could not be reached"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "nothing logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each GitHub App installation is reported by a task of its own: one
/// tenant's installation whose calls GitHub answers slowly (or rate-limits)
/// does not hold back another's check runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_of_one_installation_do_not_wait_for_anothers() {
    use mizzen_tests::fake_github::{FakeGitHub, FakeGitHubConfig};
    const TEST: &str = "check_runs_of_one_installation_do_not_wait_for_anothers";
    let Some(examples) = GitHubExamples::load(TEST) else {
        return;
    };
    let key = AppKey::generate();
    let github = FakeGitHub::start(FakeGitHubConfig {
        app_id: GITHUB_APP_ID,
        public_key_der: key.public_der.clone(),
        installations: [("slow/repo".to_string(), 1), ("quick/repo".to_string(), 2)].into(),
        slow_installations: [(1, Duration::from_secs(25))].into(),
        ..FakeGitHubConfig::default()
    })
    .await;
    let mut args = key.server_args(&github.url);
    args.extend(["--executor", "none"].map(str::to_string));
    let server = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start(None, &args);
        create_subscribed_project(
            &server,
            "tenants",
            "  - source: brigade.sh/github\n    types: [ci:pipeline_requested]\n    qualifiers:\n      repo: slow/repo\n  - source: brigade.sh/github\n    types: [ci:pipeline_requested]\n    qualifiers:\n      repo: quick/repo\n",
        );
        server
    })
    .await
    .unwrap();
    for (delivery, repo, installation) in [("d-1", "slow/repo", 1), ("d-2", "quick/repo", 2)] {
        let mut suite = examples.get("check_suite", Some("requested"));
        let (owner, name) = repo.split_once('/').unwrap();
        suite["repository"]["full_name"] = json!(repo);
        suite["repository"]["name"] = json!(name);
        suite["repository"]["owner"]["login"] = json!(owner);
        suite["repository"]["clone_url"] = json!("");
        suite["installation"] = json!({ "id": installation });
        let said = deliver_github(&server, delivery, "check_suite", &suite).await;
        assert_eq!(said, "accepted: 1 event(s) created");
    }
    // The quick installation's run completes while the slow one's first
    // call is still waiting on GitHub.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = github.check_runs();
        if let Some(quick) = runs.iter().find(|r| r.repository == "quick/repo")
            && quick.status == "completed"
        {
            assert!(
                runs.iter().all(|r| r.repository != "slow/repo"),
                "{runs:#?}"
            );
            assert_eq!(quick.conclusion.as_deref(), Some("success"), "{quick:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{runs:#?}\n{}",
            server.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Slack command is answered in its channel when its event ends: the
/// project, the worker's outcome and its summary, posted to the command's
/// response URL; a response URL outside the allowed prefix gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_commands_are_answered_in_their_channel() {
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    // Slack's side: one request, answered as Slack answers.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let posted = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Read, Write};
        let (stream, _) = receiver.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let (mut request_line, mut length) = (String::new(), 0);
        reader.read_line(&mut request_line).unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (&stream)
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
        (
            request_line,
            serde_json::from_slice::<Value>(&body).unwrap(),
        )
    });
    let allowed = format!("http://127.0.0.1:{port}/");
    let server = tokio::task::spawn_blocking(move || {
        let server = TestServer::start(
            None,
            &[
                "--executor",
                "none",
                "--slack-signing-secret",
                SECRET,
                "--slack-response-urls",
                &allowed,
            ],
        );
        let dir = script_project("chatops", "", "");
        let project = dir.path().join("project.yaml");
        let yaml = std::fs::read_to_string(&project).unwrap().replace(
            "  - source: brigade.sh/cli\n    types: [exec]\n",
            "  - source: brigade.sh/slack\n    types: [deploy]\n",
        );
        let yaml = yaml.replace(
            "events.on(\"brigade.sh/cli\", \"exec\", async (event) => {",
            "events.on(\"brigade.sh/slack\", \"deploy\", async (event) => {\n          return `deployed ${event.payload} for ${event.labels.userID}`;",
        );
        std::fs::write(&project, yaml).unwrap();
        server.ok(&["project", "create", "-f", dir.path().to_str().unwrap()]);
        server
    })
    .await
    .unwrap();
    let client = http();
    let command = async |response_url: &str, trigger: &str| {
        let body = format!(
            "team_id=T1DC2JH3J&channel_id=G8PSS9T3V&user_id=U2CERLKJA&command=%2Fdeploy&text=v1.2&response_url={}&trigger_id={trigger}",
            url::form_urlencoded::byte_serialize(response_url.as_bytes()).collect::<String>()
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{now}:{body}").as_bytes());
        let answer = client
            .post(format!("{}/gateways/slack", server.url))
            .header(
                "X-Slack-Signature",
                format!("v0={}", hex_of(&mac.finalize().into_bytes())),
            )
            .header("X-Slack-Request-Timestamp", now.to_string())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
    };
    // Outside the allowed prefix: no post, and the log says why.
    command("http://127.0.0.1:9/elsewhere", "1").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server
        .server_log()
        .contains("is not under the allowed prefix")
    {
        assert!(Instant::now() < deadline, "{}", server.server_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    command(
        &format!("http://127.0.0.1:{port}/commands/T1DC2JH3J/1/x"),
        "2",
    )
    .await;
    let (request_line, posted) = tokio::task::spawn_blocking(move || posted.join().unwrap())
        .await
        .unwrap();
    assert_eq!(request_line.trim(), "POST /commands/T1DC2JH3J/1/x HTTP/1.1");
    assert_eq!(posted["response_type"], "in_channel", "{posted}");
    let text = posted["text"].as_str().unwrap();
    assert!(text.starts_with("*chatops*: SUCCEEDED (event "), "{text}");
    assert!(text.ends_with("\ndeployed v1.2 for U2CERLKJA"), "{text}");
}

/// Bitbucket's deliveries are trusted by their address: from one on the
/// allow-list a push (as Bitbucket's "Event payloads" page describes it)
/// makes an event with its repository, branch and commit, once per
/// X-Request-UUID; from any other the server refuses, naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_deliveries_are_trusted_by_address() {
    const PUSH: &str = r#"{"actor": {"type": "user", "display_name": "Emma"},
        "repository": {"type": "repository", "name": "repo_name", "full_name": "team_name/repo_name", "scm": "git"},
        "push": {"changes": [{"new": {"type": "branch", "name": "main",
            "target": {"type": "commit", "hash": "709d658dc5b6d6afcd46049c2f332ee3f515a67d"}},
            "old": null, "created": true, "forced": false, "closed": false, "truncated": false}]}}"#;
    let start = |addresses: &'static str| {
        tokio::task::spawn_blocking(move || {
            let server = TestServer::start(
                None,
                &["--executor", "none", "--bitbucket-addresses", addresses],
            );
            create_subscribed_project(
                &server,
                "bitbucket-ci",
                "  - source: brigade.sh/bitbucket\n    types: [repo:push]\n    qualifiers:\n      repo: team_name/repo_name\n",
            );
            server
        })
    };
    let send = async |server: &TestServer, request: &str| {
        let answer = http()
            .post(format!("{}/gateways/bitbucket", server.url))
            .header("X-Event-Key", "repo:push")
            .header("X-Request-UUID", request)
            .header("Content-Type", "application/json")
            .body(PUSH)
            .send()
            .await
            .unwrap();
        (
            answer.status().as_u16(),
            answer.json::<Value>().await.unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let allowed = start("192.0.2.0/24,127.0.0.1").await.unwrap();
    assert_eq!(
        send(&allowed, "r-1").await,
        (200, "accepted: 1 event(s) created".to_string())
    );
    let (status, said) = send(&allowed, "r-1").await;
    assert_eq!(status, 200);
    assert!(said.contains("already received"), "{said}");
    let items = events_of(&allowed, "bitbucket-ci").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["source"], "brigade.sh/bitbucket");
    assert_eq!(
        items[0]["git"]["commit"],
        "709d658dc5b6d6afcd46049c2f332ee3f515a67d"
    );
    assert_eq!(items[0]["git"]["ref"], "refs/heads/main");

    let elsewhere = start("192.0.2.0/24").await.unwrap();
    let (status, said) = send(&elsewhere, "r-2").await;
    assert_eq!(status, 401);
    assert_eq!(
        said,
        "127.0.0.1 is not among the addresses the Bitbucket gateway accepts deliveries from"
    );
}
