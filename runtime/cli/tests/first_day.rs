//! A newcomer's first hour with the CLI, and a CI job's: `mizzen version`,
//! shell completions, logging in from the environment, the password asked
//! for on a terminal, destructive verbs that ask (and refuse without a
//! terminal unless told `--yes`), and a busy listen address named once.
//! Terminals are pseudo-terminals made by util-linux's `script`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Ran, repo, spawn_server};
use serde_json::Value;

const ROOT_PASSWORD: &str = "first-day-root-password";

/// `mizzen ARGS` with its own config directory and none of the login
/// variables of the environment the tests run in.
fn mizzen(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args(args)
        .current_dir(repo())
        .env("MIZZEN_CONFIG_DIR", config)
        .env_remove("MIZZEN_SERVER")
        .env_remove("MIZZEN_TOKEN")
        .env_remove("MIZZEN_ROOT_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("mizzen runs")
        .into()
}

/// Runs `mizzen ARGS` on a pseudo-terminal (`script`), typing each answer
/// once the terminal shows its prompt; everything the terminal showed.
fn on_terminal(config: &Path, args: &[&str], answers: &[(&str, &str)]) -> String {
    let command = std::iter::once(env!("CARGO_BIN_EXE_mizzen"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(repo())
        .env("MIZZEN_CONFIG_DIR", config)
        .env_remove("MIZZEN_SERVER")
        .env_remove("MIZZEN_TOKEN")
        .env_remove("MIZZEN_ROOT_PASSWORD")
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux's script runs");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = String::new();
    let mut stdin = child.stdin.take().unwrap();
    for (prompt, answer) in answers {
        while !shown.contains(prompt) {
            let chunk = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no prompt {prompt:?}; the terminal shows:\n{shown}"));
            shown.push_str(&String::from_utf8_lossy(&chunk));
        }
        // Give the program the moment between its prompt and its read in
        // which it turns the terminal's echo off.
        std::thread::sleep(Duration::from_millis(200));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(30)) {
        shown.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stdin);
    let _ = child.wait();
    shown
}

/// A server on a data directory of its own; `jobs` runs jobs on the
/// machine's container engine, else jobs cannot start.
fn server_with(jobs: bool) -> (std::process::Child, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let args: Vec<String> = if jobs {
        Vec::new()
    } else {
        vec!["--executor".into(), "none".into()]
    };
    let (child, url) = spawn_server(data.path(), &log, ROOT_PASSWORD, &args, &[], None);
    (child, url, data)
}

fn server() -> (std::process::Child, String, tempfile::TempDir) {
    server_with(false)
}

/// Logs in to `url` as root with the config in `config`.
fn log_in(config: &Path, url: &str) {
    let login = mizzen(
        config,
        &[
            "login",
            "--server",
            url,
            "--root",
            "--password",
            ROOT_PASSWORD,
        ],
        &[],
    );
    assert_eq!(login.code, 0, "{login:?}");
}

fn root_token(url: &str) -> String {
    let config = tempfile::tempdir().unwrap();
    log_in(config.path(), url);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(config.path().join("config")).unwrap())
            .unwrap();
    stored["apiToken"].as_str().unwrap().to_string()
}

#[test]
fn version_names_the_client_and_the_server() {
    let (mut child, url, _data) = server();
    let config = tempfile::tempdir().unwrap();
    let alone = mizzen(config.path(), &["version"], &[]);
    assert_eq!(alone.code, 0, "{alone:?}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        alone
            .stdout
            .starts_with(&format!("Client: {version} (commit ")),
        "{alone:?}"
    );
    assert!(alone.stdout.contains("Server: not logged in"), "{alone:?}");
    log_in(config.path(), &url);
    let both = mizzen(config.path(), &["version", "-o", "json"], &[]);
    let both: Value = serde_json::from_str(&both.stdout).unwrap();
    assert_eq!(both["client"]["version"], version);
    assert_eq!(both["server"]["version"], version);
    assert_eq!(both["server"]["address"], url.as_str());
    let _ = child.kill();
    let _ = child.wait();
    // A server that does not answer is said to be so; the command succeeds.
    let gone = mizzen(config.path(), &["version"], &[]);
    assert_eq!(gone.code, 0, "{gone:?}");
    assert!(
        gone.stdout
            .contains(&format!("Server: {url} did not answer")),
        "{gone:?}"
    );
}

#[test]
fn completion_scripts_load_in_their_shells() {
    let config = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _mizzen"),
        ("zsh", "#compdef mizzen"),
        ("fish", "complete -c mizzen"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = mizzen(config.path(), &["completion", shell], &[]);
        assert_eq!(script.code, 0, "{shell}: {script:?}");
        assert!(script.stdout.contains(marker), "{shell}: {script:?}");
        assert!(script.stdout.contains("event"), "{shell}: the subcommands");
    }
    // bash takes it: after sourcing it, `mizzen` completes with it.
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{}' completion bash) && complete -p mizzen",
            env!("CARGO_BIN_EXE_mizzen")
        ))
        .output()
        .unwrap();
    let loaded = Ran::from(loaded);
    assert_eq!(loaded.code, 0, "{loaded:?}");
    assert!(loaded.stdout.contains("_mizzen"), "{loaded:?}");
    let unknown = mizzen(config.path(), &["completion", "tcsh"], &[]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("possible values"), "{unknown:?}");
}

#[test]
fn a_ci_job_logs_in_from_the_environment() {
    let (mut child, url, _data) = server();
    let token = root_token(&url);
    let empty = tempfile::tempdir().unwrap();
    // No config file: the server and token come from the environment.
    let whoami = mizzen(
        empty.path(),
        &["whoami"],
        &[("MIZZEN_SERVER", &url), ("MIZZEN_TOKEN", &token)],
    );
    assert_eq!(whoami.code, 0, "{whoami:?}");
    assert!(whoami.stdout.contains("as root"), "{whoami:?}");
    // Neither: the message says both ways.
    let none = mizzen(empty.path(), &["whoami"], &[]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(
        none.stderr.contains("mizzen login --server URL")
            && none.stderr.contains("MIZZEN_SERVER and MIZZEN_TOKEN"),
        "{none:?}"
    );
    // `login` takes its server from the environment too.
    let stored = tempfile::tempdir().unwrap();
    let login = mizzen(
        stored.path(),
        &["login", "--root", "--password", ROOT_PASSWORD],
        &[("MIZZEN_SERVER", &url)],
    );
    assert_eq!(login.code, 0, "{login:?}");
    let _ = child.kill();
    let _ = child.wait();

    // A stored login's token goes to its own server only: MIZZEN_SERVER
    // naming another server gets no token.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = other.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
    });
    let elsewhere = mizzen(stored.path(), &["whoami"], &[("MIZZEN_SERVER", &other_url)]);
    assert_eq!(elsewhere.code, 1, "{elsewhere:?}");
    let head = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(head.starts_with("GET /v2/whoami"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "the stored token went to another server: {head}"
    );
}

#[test]
fn login_asks_for_the_password_on_a_terminal_only() {
    let (mut child, url, _data) = server();
    let config = tempfile::tempdir().unwrap();
    let shown = on_terminal(
        config.path(),
        &["login", "--server", &url, "--root"],
        &[("Root password: ", ROOT_PASSWORD)],
    );
    assert!(shown.contains("Logged in to"), "{shown}");
    assert!(
        !shown.contains(ROOT_PASSWORD),
        "the password was echoed: {shown}"
    );
    assert!(config.path().join("config").exists());
    // Without a terminal there is no one to ask.
    let piped = mizzen(
        tempfile::tempdir().unwrap().path(),
        &["login", "--server", &url, "--root"],
        &[],
    );
    assert_eq!(piped.code, 2, "{piped:?}");
    assert!(
        piped
            .stderr
            .contains("--password or MIZZEN_ROOT_PASSWORD (or a terminal to type it in)"),
        "{piped:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn destructive_verbs_ask_and_refuse_without_a_terminal() {
    let (mut child, url, _data) = server();
    let config = tempfile::tempdir().unwrap();
    log_in(config.path(), &url);
    let project = repo().join("examples/01-hello-world");
    let created = mizzen(
        config.path(),
        &["project", "create", "-f", project.to_str().unwrap()],
        &[],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let id = "hello-world";
    let exists = || mizzen(config.path(), &["project", "get", "-i", id], &[]).code == 0;

    // A script without --yes: refused, and the project is still there.
    let refused = mizzen(config.path(), &["project", "delete", "-i", id], &[]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("Not done: stdin is not a terminal to ask on; give --yes to confirm"),
        "{refused:?}"
    );
    assert!(exists());
    // A person who answers no: nothing is done.
    let declined = on_terminal(
        config.path(),
        &["project", "delete", "-i", id],
        &[("[y/N] ", "n")],
    );
    assert!(declined.contains("Nothing was done."), "{declined}");
    assert!(exists());
    // Yes.
    let accepted = on_terminal(
        config.path(),
        &["project", "delete", "-i", id],
        &[("[y/N] ", "y")],
    );
    assert!(!accepted.contains("Nothing was done."), "{accepted}");
    assert!(!exists(), "{accepted}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_busy_listen_address_is_named_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let ran = mizzen(
        config.path(),
        &[
            "server",
            "--listen",
            &address,
            "--executor",
            "none",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[("MIZZEN_ROOT_PASSWORD", ROOT_PASSWORD)],
    );
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "cannot listen on {address}: Address already in use"
        )),
        "{ran:?}"
    );
    assert_eq!(
        ran.stderr.matches("Address already in use").count(),
        1,
        "{ran:?}"
    );
}

#[test]
fn a_github_app_that_cannot_be_used_stops_the_server_by_name() {
    let data = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let not_a_key = data.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "ssh-rsa AAAAB3NzaC1yc2E me@laptop\n").unwrap();
    let missing = data.path().join("missing.pem");
    for (args, expected) in [
        (
            vec![
                "--github-app-id",
                "42",
                "--github-app-key-file",
                missing.to_str().unwrap(),
            ],
            format!(
                "--github-app-key-file {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            vec![
                "--github-app-id",
                "42",
                "--github-app-key-file",
                not_a_key.to_str().unwrap(),
            ],
            "the GitHub App's private key: no PEM private key in it".to_string(),
        ),
        (
            vec!["--github-app-id", "42"],
            "the following required arguments were not provided:\n  --github-app-key-file <FILE>"
                .to_string(),
        ),
    ] {
        let mut all = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--executor",
            "none",
            "--data-dir",
            data.path().to_str().unwrap(),
        ];
        all.extend(args);
        let ran = mizzen(
            config.path(),
            &all,
            &[("MIZZEN_ROOT_PASSWORD", ROOT_PASSWORD)],
        );
        assert_ne!(ran.code, 0, "{ran:?}");
        assert!(ran.stderr.contains(&expected), "{expected}\n{ran:?}");
    }
}

#[test]
fn a_mistake_in_a_project_file_is_named_by_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("project.yaml");
    std::fs::write(
        &file,
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: typo\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    loglevel: DEBUG\n",
    )
    .unwrap();
    let config = tempfile::tempdir().unwrap();
    // Checked before any server is asked: none is logged in here.
    let ran = mizzen(
        config.path(),
        &["project", "create", "-f", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!("{}:", file.display()))
            && ran.stderr.contains("unknown field `loglevel`")
            && ran.stderr.contains("line 10"),
        "{ran:?}"
    );
    assert!(!ran.stderr.contains("not logged in"), "{ran:?}");
}

#[test]
fn server_help_groups_its_flags_under_their_own_headings() {
    let config = tempfile::tempdir().unwrap();
    let help = mizzen(config.path(), &["server", "--help"], &[]);
    assert_eq!(help.code, 0, "{help:?}");
    // Each heading's section: from its line to the next heading.
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in help.stdout.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            sections.push((line.trim_end_matches(':').to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let under = |flag: &str| {
        sections
            .iter()
            .filter(|(_, body)| body.contains(&format!("--{flag}")))
            .map(|(heading, _)| heading.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        under("github-webhook-secret"),
        ["Gateways"],
        "{}",
        help.stdout
    );
    assert_eq!(under("limit-ceilings"), ["Tenants' limits"]);
    assert_eq!(under("sandbox-processes"), ["Workers and jobs"]);
    assert_eq!(under("header-timeout"), ["Connections"]);
    assert_eq!(under("object-store"), ["Artifacts, caches and logs"]);
    assert_eq!(
        under("kubernetes-namespace"),
        ["Kubernetes executor (--executor kubernetes)"]
    );
    for documented in [
        "MIZZEN_ROOT_PASSWORD",
        "MIZZEN_LOG ",
        "/metrics",
        "/healthz",
    ] {
        assert!(
            help.stdout.contains(documented),
            "{documented}: {}",
            help.stdout
        );
    }
}

/// A project whose script runs `jobs` (JavaScript) and returns `summary`.
fn job_project(id: &str, jobs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "const {{ events, Job }} = require(\"@brigadecore/brigadier\");\n\
         events.on(\"brigade.sh/cli\", \"exec\", async (event) => {{\n{jobs}\n}});\n\
         events.process();\n"
    );
    let yaml = format!(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: {id}\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    defaultConfigFiles:\n      brigade.js: {}\n",
        serde_json::to_string(&script).unwrap()
    );
    std::fs::write(dir.path().join("project.yaml"), yaml).unwrap();
    dir
}

#[test]
fn following_an_event_streams_its_jobs_and_ends_with_its_outcome() {
    let (mut child, url, _data) = server_with(true);
    let config = tempfile::tempdir().unwrap();
    log_in(config.path(), &url);
    let failing = job_project(
        "failing",
        r#"  const build = new Job("build", "localhost/busybox", event);
  build.primaryContainer.command = ["sh", "-c", "for i in 1 2 3; do echo compiling $i; sleep 1; done"];
  await build.run();
  const test = new Job("test", "localhost/busybox", event);
  test.primaryContainer.command = ["sh", "-c", "seq 1 30 | sed 's/^/check /'; echo assertion failed; exit 1"];
  await test.run();"#,
    );
    let created = mizzen(
        config.path(),
        &["project", "create", "-f", failing.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(created.code, 0, "{created:?}");

    // The job's lines arrive while it runs.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args(["event", "create", "-p", "failing", "--follow"])
        .env("MIZZEN_CONFIG_DIR", config.path())
        .env_remove("MIZZEN_SERVER")
        .env_remove("MIZZEN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut shown = String::new();
    let mut phase_at_first_job_line = None;
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            break;
        }
        if phase_at_first_job_line.is_none() && line.starts_with("[job: build] compiling 1") {
            let status = mizzen(
                config.path(),
                &["event", "get", "-i", "failing@latest", "-o", "json"],
                &[],
            );
            let event: Value = serde_json::from_str(&status.stdout).unwrap();
            phase_at_first_job_line = Some(event["worker"]["status"]["phase"].clone());
        }
        shown.push_str(&line);
    }
    let status = follow.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{shown}");
    assert_eq!(
        phase_at_first_job_line,
        Some(Value::from("RUNNING")),
        "{shown}"
    );
    let id = shown
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Created event \""))
        .and_then(|l| l.strip_suffix("\"."))
        .unwrap_or_else(|| panic!("{shown}"))
        .to_string();
    for expected in [
        "[job: build] compiling 3",
        "[job: test] assertion failed",
        "Job \"test\" FAILED; its last lines:\n",
        "  check 30\n  assertion failed\n",
        &format!("All of its log: mizzen event logs --id {id} --job test"),
        &format!("Event \"{id}\": worker FAILED in "),
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    // The failed job's last lines only: ten of them.
    assert!(!shown.contains("  check 20\n"), "{shown}");
    // Piped: no colour codes.
    assert!(!shown.contains('\u{1b}'), "{shown}");

    // Scripts need no sed: the ID alone, and @latest for the newest.
    let quiet = mizzen(
        config.path(),
        &["event", "create", "-p", "failing", "-q"],
        &[],
    );
    assert_eq!(quiet.code, 0, "{quiet:?}");
    let newest = quiet.stdout.trim().to_string();
    assert_eq!(newest.len(), 36, "{quiet:?}");
    let latest = mizzen(
        config.path(),
        &["event", "get", "-i", "@latest", "-o", "json"],
        &[],
    );
    let latest: Value = serde_json::from_str(&latest.stdout).unwrap();
    assert_eq!(latest["metadata"]["id"], newest.as_str());
    let named = mizzen(
        config.path(),
        &["event", "create", "-p", "failing", "-o", "name"],
        &[],
    );
    assert_eq!(named.stdout.trim().len(), 36, "{named:?}");
    let nothing = mizzen(
        config.path(),
        &["event", "get", "-i", "nowhere@latest"],
        &[],
    );
    assert_eq!(nothing.code, 2, "{nothing:?}");
    assert!(
        nothing
            .stderr
            .contains("nowhere@latest: project \"nowhere\" has no events you may see"),
        "{nothing:?}"
    );

    // A worker that succeeds: exit 0, its summary.
    let passing = job_project(
        "passing",
        r#"  const job = new Job("hello", "localhost/busybox", event);
  job.primaryContainer.command = ["echo", "hello from the job"];
  await job.run();
  return "all good";"#,
    );
    mizzen(
        config.path(),
        &["project", "create", "-f", passing.path().to_str().unwrap()],
        &[],
    );
    let ok = mizzen(
        config.path(),
        &["event", "create", "-p", "passing", "--follow"],
        &[],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains("[job: hello] hello from the job"),
        "{ok:?}"
    );
    assert!(ok.stdout.contains("worker SUCCEEDED in "), "{ok:?}");
    assert!(ok.stdout.contains("Summary: all good"), "{ok:?}");
    let _ = child.kill();
    let _ = child.wait();
}
