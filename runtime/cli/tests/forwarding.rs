//! Log forwarding from `mizzen run`, against collectors nobody here wrote
//! (see common/collectors.rs): what arrives, masked and labelled; TLS and
//! the shared-key handshake; a collector that is down; a project that opts
//! out; flags that cannot work. The server's forwarding, and the loss test,
//! are in server.rs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Ran;
use common::collectors::{self, Kind, Receiver};
use serde_json::Value;

fn project(dir: &Path, id: &str, log_forwarding: &str, script: &str) {
    std::fs::write(
        dir.join("project.yaml"),
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
{log_forwarding}    defaultConfigFiles:
      brigade.js: |
        {script}
"#
        ),
    )
    .unwrap();
}

fn run(project: &Path, data_dir: &Path, args: &[&str]) -> Ran {
    Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .arg("run")
        .arg(project)
        .args(["--executor", "none", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env(
            "MIZZEN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("mizzen runs")
        .into()
}

fn messages<'a>(records: &'a [Value], field: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter_map(|r| r.pointer(field).and_then(Value::as_str))
        .collect()
}

/// Every worker line reaches both collectors, over TLS with the shared
/// key for fluentd, with the project, event, source, type, container and
/// the project's labels, and the secret masked in both.
#[test]
fn mizzen_run_forwards_each_line_masked_and_labelled_to_fluentd_and_otlp() {
    let Some(dir) = collectors::dir("mizzen_run_forwards_each_line") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert, ca) = collectors::certificates(tmp.path());
    let fluentd = Receiver::start(
        Kind::Fluentd,
        &dir,
        &tmp.path().join("fluentd.jsonl"),
        &[
            "--shared-key",
            "forward-key",
            "--hostname",
            "collector",
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
    );
    let otlp = Receiver::start(Kind::Otlp, &dir, &tmp.path().join("otlp.jsonl"), &[]);
    let project_dir = tempfile::tempdir().unwrap();
    project(
        project_dir.path(),
        "forwarded",
        "    logForwarding:\n      labels:\n        team: payments\n",
        r#"const { events } = require("@brigadecore/brigadier"); events.on("brigade.sh/cli", "exec", async (event) => { console.log("hello from the worker"); console.log("the token is " + event.project.secrets.token); }); events.process();"#,
    );
    let data = tempfile::tempdir().unwrap();
    let ran = run(
        project_dir.path(),
        data.path(),
        &[
            "--secret",
            "token=s3cr3t-value",
            "--fluentd",
            &format!("localhost:{}", fluentd.port),
            "--fluentd-shared-key",
            "forward-key",
            "--fluentd-ca-file",
            ca.to_str().unwrap(),
            "--otlp-logs-endpoint",
            &format!("http://127.0.0.1:{}/v1/logs", otlp.port),
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(!ran.stderr.contains("forwarding spool"), "{ran:?}");

    // mizzen run waits for its lines to be delivered before it exits.
    let forwarded = fluentd.received();
    let lines = messages(&forwarded, "/record/message");
    assert!(lines.contains(&"hello from the worker"), "{forwarded:?}");
    assert!(lines.contains(&"the token is ***"), "{forwarded:?}");
    let record = forwarded
        .iter()
        .find(|r| r["record"]["message"] == "hello from the worker")
        .unwrap();
    let event = record["record"]["event"].as_str().unwrap();
    assert_eq!(record["tag"], format!("mizzen.forwarded.{event}.worker"));
    assert_eq!(record["record"]["project"], "forwarded");
    assert_eq!(record["record"]["source"], "brigade.sh/cli");
    assert_eq!(record["record"]["type"], "exec");
    assert_eq!(record["record"]["job"], "");
    assert_eq!(record["record"]["container"], "worker");
    assert_eq!(record["record"]["team"], "payments");
    assert!(record["time"].as_f64().unwrap() > 1.7e9, "{record}");

    let exported = otlp.received();
    assert!(
        messages(&exported, "/body").contains(&"the token is ***"),
        "{exported:?}"
    );
    let log = exported
        .iter()
        .find(|r| r["body"] == "hello from the worker")
        .unwrap();
    assert_eq!(log["resource"]["service.name"], "mizzen");
    assert_eq!(log["attributes"]["project"], "forwarded");
    assert_eq!(log["attributes"]["event"], event);
    assert_eq!(log["attributes"]["container"], "worker");
    assert_eq!(log["attributes"]["team"], "payments");
    assert_eq!(log["severity_text"], "INFO");

    for out in ["fluentd.jsonl", "otlp.jsonl"] {
        let text = std::fs::read_to_string(tmp.path().join(out)).unwrap();
        assert!(!text.contains("s3cr3t-value"), "{out}: {text}");
    }
}

/// Lines printed while the collector is down wait in the spool on disk;
/// the next run, with the collector back, delivers them with its own.
#[test]
fn lines_wait_in_the_spool_while_the_collector_is_down() {
    let Some(dir) = collectors::dir("lines_wait_in_the_spool") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut fluentd = Receiver::start(Kind::Fluentd, &dir, &tmp.path().join("fluentd.jsonl"), &[]);
    let address = format!("127.0.0.1:{}", fluentd.port);
    fluentd.kill();
    let project_dir = tempfile::tempdir().unwrap();
    project(
        project_dir.path(),
        "spooled",
        "",
        r#"for (let i = 0; i < 500; i++) console.log(`line ${i}`);"#,
    );
    let data = tempfile::tempdir().unwrap();
    let first = run(project_dir.path(), data.path(), &["--fluentd", &address]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stderr
            .contains("log line(s) wait in the forwarding spool"),
        "{first:?}"
    );
    fluentd.restart();
    let second = run(project_dir.path(), data.path(), &["--fluentd", &address]);
    assert_eq!(second.code, 0, "{second:?}");
    let received = fluentd.received();
    let mut seen = std::collections::BTreeSet::new();
    for record in &received {
        let (event, message) = (&record["record"]["event"], &record["record"]["message"]);
        if message.as_str().is_some_and(|m| m.starts_with("line ")) {
            assert!(
                seen.insert((event.to_string(), message.to_string())),
                "twice: {record}"
            );
        }
    }
    let events: std::collections::BTreeSet<&String> = seen.iter().map(|(e, _)| e).collect();
    assert_eq!(events.len(), 2, "both runs' lines: {events:?}");
    assert_eq!(seen.len(), 1_000, "each line once");
}

/// A spool past its size drops its oldest lines, counts them and says so;
/// the newest are delivered once the collector is back.
#[test]
fn a_full_spool_drops_its_oldest_lines_and_says_so() {
    let Some(dir) = collectors::dir("a_full_spool_drops_its_oldest_lines") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut fluentd = Receiver::start(Kind::Fluentd, &dir, &tmp.path().join("fluentd.jsonl"), &[]);
    let address = format!("127.0.0.1:{}", fluentd.port);
    fluentd.kill();
    let project_dir = tempfile::tempdir().unwrap();
    project(
        project_dir.path(),
        "flood",
        "",
        r#"require("@brigadecore/brigadier").events.on("brigade.sh/cli", "exec", async (event) => { for (let i = 0; i < Number(event.payload); i++) console.log(`line ${i}`); }); require("@brigadecore/brigadier").events.process();"#,
    );
    let data = tempfile::tempdir().unwrap();
    // About 300 bytes a spooled line: 256 KiB hold under a thousand.
    let args = ["--fluentd", &address, "--forwarding-spool-size", "256Ki"];
    let flood = run(
        project_dir.path(),
        data.path(),
        &[&args[..], &["--payload", "20000"]].concat(),
    );
    assert_eq!(flood.code, 0, "{flood:?}");
    assert!(
        flood.stderr.contains("the log forwarding spool is full"),
        "{flood:?}"
    );
    assert!(flood.stderr.contains("could not be forwarded"), "{flood:?}");
    fluentd.restart();
    let next = run(
        project_dir.path(),
        data.path(),
        &[&args[..], &["--payload", "1"]].concat(),
    );
    assert_eq!(next.code, 0, "{next:?}");
    let received = fluentd.received();
    let lines: Vec<&str> = messages(&received, "/record/message")
        .into_iter()
        .filter(|m| m.starts_with("line "))
        .collect();
    assert!(lines.contains(&"line 19999"), "the newest line arrives");
    assert!(!lines.contains(&"line 100"), "the oldest were dropped");
    assert!(
        lines.len() < 2_000,
        "what a 256 KiB spool holds: {} arrived",
        lines.len()
    );
}

/// A project that opts out sends nothing, whatever the run's flags.
#[test]
fn a_project_that_opts_out_forwards_nothing() {
    let Some(dir) = collectors::dir("a_project_that_opts_out") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let otlp = Receiver::start(Kind::Otlp, &dir, &tmp.path().join("otlp.jsonl"), &[]);
    let project_dir = tempfile::tempdir().unwrap();
    project(
        project_dir.path(),
        "private",
        "    logForwarding:\n      enabled: false\n",
        r#"console.log("stays here");"#,
    );
    let data = tempfile::tempdir().unwrap();
    let ran = run(
        project_dir.path(),
        data.path(),
        &[
            "--otlp-logs-endpoint",
            &format!("http://127.0.0.1:{}/v1/logs", otlp.port),
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("stays here"), "{ran:?}");
    assert!(otlp.received().is_empty(), "{:?}", otlp.received());
}

/// Forwarding that cannot work is refused before the worker runs, naming
/// the flag or the field.
#[test]
fn forwarding_that_cannot_work_is_named() {
    let project_dir = tempfile::tempdir().unwrap();
    project(project_dir.path(), "named", "", r#"console.log("never");"#);
    let data = tempfile::tempdir().unwrap();
    let ran = run(
        project_dir.path(),
        data.path(),
        &[
            "--fluentd",
            "127.0.0.1:24224",
            "--fluentd-tag",
            "log.{service}",
        ],
    );
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("--fluentd-tag"), "{ran:?}");
    assert!(
        ran.stderr.contains("unknown placeholder {service}"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("never"), "{ran:?}");

    let ran = run(
        project_dir.path(),
        data.path(),
        &[
            "--fluentd",
            "localhost:24224",
            "--fluentd-ca-file",
            "/nonexistent/ca.pem",
        ],
    );
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains("fluentd CA file /nonexistent/ca.pem"),
        "{ran:?}"
    );

    let ran = run(project_dir.path(), data.path(), &["--fluentd", "collector"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("give HOST:PORT"), "{ran:?}");

    for (yaml, problem) in [
        (
            "    logForwarding:\n      labels:\n        project: other\n",
            "spec.workerTemplate.logForwarding.labels.project",
        ),
        (
            "    logForwarding:\n      labels:\n        \"9lives\": x\n",
            "a label's name is a letter",
        ),
    ] {
        project(
            project_dir.path(),
            "named",
            yaml,
            r#"console.log("never");"#,
        );
        let ran = run(project_dir.path(), data.path(), &[]);
        assert_eq!(ran.code, 2, "{ran:?}");
        assert!(ran.stderr.contains(problem), "{problem}: {ran:?}");
    }
}

/// Runs sharing a data directory share its spool: each appends, one at a
/// time delivers, and every run's lines arrive once, whichever run sent
/// them (what a run leaves, the next one sends).
#[test]
fn parallel_runs_on_one_spool_deliver_each_line_once() {
    const RUNS: usize = 4;
    const LINES: usize = 2_000;
    let Some(dir) = collectors::dir("parallel_runs_on_one_spool") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fluentd = Receiver::start(Kind::Fluentd, &dir, &tmp.path().join("fluentd.jsonl"), &[]);
    let address = format!("127.0.0.1:{}", fluentd.port);
    let project_dir = tempfile::tempdir().unwrap();
    project(
        project_dir.path(),
        "parallel",
        "",
        &format!(
            r#"require("@brigadecore/brigadier").events.on("brigade.sh/cli", "exec", async (event) => {{ for (let i = 0; i < {LINES}; i++) console.log(`run ${{event.payload}} line ${{i}}`); }}); require("@brigadecore/brigadier").events.process();"#
        ),
    );
    let data = tempfile::tempdir().unwrap();
    let runs: Vec<_> = (1..=RUNS)
        .map(|n| {
            let (project, data, address) = (
                project_dir.path().to_path_buf(),
                data.path().to_path_buf(),
                address.clone(),
            );
            std::thread::spawn(move || {
                run(
                    &project,
                    &data,
                    &["--fluentd", &address, "--payload", &n.to_string()],
                )
            })
        })
        .collect();
    for handle in runs {
        let ran = handle.join().unwrap();
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    // A last run, alone, sends what the others left with its own lines.
    let last = run(
        project_dir.path(),
        data.path(),
        &["--fluentd", &address, "--payload", "0"],
    );
    assert_eq!(last.code, 0, "{last:?}");
    let received = fluentd.wait_for("every run's lines", |records| {
        records
            .iter()
            .filter(|r| {
                r["record"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("run "))
            })
            .count()
            >= (RUNS + 1) * LINES
    });
    let mut counts = std::collections::HashMap::new();
    for record in &received {
        if let Some(message) = record["record"]["message"].as_str()
            && message.starts_with("run ")
        {
            *counts
                .entry((record["record"]["event"].to_string(), message.to_string()))
                .or_insert(0) += 1;
        }
    }
    assert_eq!(counts.len(), (RUNS + 1) * LINES, "every line of every run");
    assert!(counts.values().all(|&n| n == 1), "a line arrived twice");
}
