//! Unit tests against a fake host (natively: `cargo test`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::host::{fake, op};
use crate::*;

/// What the fake host saw and how it answers.
#[derive(Default)]
struct Host {
    /// Every call: (op, request).
    calls: Vec<(u32, Value)>,
    /// Outstanding tickets: (ticket, result or error), completed oldest
    /// first.
    outstanding: Vec<(u64, Result<Value, Value>)>,
    next_ticket: u64,
    /// How each job ends, by name: (phase, exit code).
    jobs: BTreeMap<String, (String, i64)>,
    /// Jobs and services started, in order (one namespace, as the host's).
    started: Vec<String>,
    /// The `not_ready` message of each service that will not be ready.
    not_ready: BTreeMap<String, String>,
    /// Jobs and services `job.cancel` stopped.
    stopped: Vec<String>,
    /// The event's artifacts: by name, their files' contents by path (`""`
    /// for an artifact that is one file).
    artifacts: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Fails `artifact.list` and `artifact.read`'s tickets with
    /// `invalid_request` and this message, as Kubernetes does.
    artifacts_refused: Option<String>,
}

impl Host {
    fn ops(&self) -> Vec<u32> {
        self.calls.iter().map(|(op, _)| *op).collect()
    }

    fn lines(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|(op, _)| *op == op::LOG)
            .map(|(_, r)| {
                let job = r["job"]
                    .as_str()
                    .map(|j| format!("[{j}] "))
                    .unwrap_or_default();
                format!(
                    "{job}{}: {}",
                    r["level"].as_str().unwrap(),
                    r["message"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn requests(&self, op: u32) -> Vec<Value> {
        self.calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn error(code: &str, message: &str) -> Result<String, (u32, String)> {
    Err((1, json!({"code": code, "message": message}).to_string()))
}

/// Installs a fake host for an event of `source` and `event_type` at
/// `log_level`.
fn install(source: &str, event_type: &str, log_level: &str) -> Rc<RefCell<Host>> {
    let host = Rc::new(RefCell::new(Host::default()));
    let event = json!({
        "id": "e1",
        "project": {"id": "p", "kubernetes": {"namespace": ""}, "secrets": {"token": "s3cr3t"}},
        "source": source, "type": event_type, "qualifiers": null, "labels": {"team": "ci"},
        "shortTitle": "short", "longTitle": "", "payload": "{\"n\":3}",
        "worker": {"apiAddress": "", "apiToken": "", "logLevel": log_level,
            "configFilesDirectory": ".brigade", "defaultConfigFiles": null, "git": null}
    });
    let state = host.clone();
    fake::install(move |op, request| {
        let mut host = state.borrow_mut();
        let request: Value = if request.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(request).unwrap()
        };
        host.calls.push((op, request.clone()));
        let ticket = |host: &mut Host, result: Result<Value, Value>| {
            host.next_ticket += 1;
            let t = host.next_ticket;
            host.outstanding.push((t, result));
            Ok(json!({ "ticket": t }).to_string())
        };
        match op {
            op::EVENT_GET => Ok(event.to_string()),
            op::LOG | op::SCRIPT_ERROR | op::TICKET_CANCEL => Ok(String::new()),
            op::SUMMARY_SET => {
                if request["text"].as_str().unwrap().chars().count() > 4096 {
                    error(
                        "limit_exceeded",
                        "the summary is longer than 4096 characters",
                    )
                } else {
                    Ok(String::new())
                }
            }
            op::SECRET_GET => match request["key"].as_str().unwrap() {
                "token" => Ok(json!({"value": "s3cr3t"}).to_string()),
                _ => error("not_found", "no such secret"),
            },
            op::JOB_START => {
                let name = request["name"].as_str().unwrap().to_string();
                if host.started.contains(&name) {
                    return error("conflict", "a job of that name exists");
                }
                host.started.push(name);
                Ok(String::new())
            }
            op::JOB_WAIT => {
                let name = request["name"].as_str().unwrap();
                if host.stopped.iter().any(|s| s == name) {
                    let aborted = json!({"phase": "ABORTED", "exitCode": null, "reason": ""});
                    return ticket(&mut host, Ok(aborted));
                }
                let (phase, code) = host
                    .jobs
                    .get(name)
                    .cloned()
                    .unwrap_or(("SUCCEEDED".into(), 0));
                ticket(
                    &mut host,
                    Ok(json!({"phase": phase, "exitCode": code, "reason": null})),
                )
            }
            op::JOB_CANCEL => {
                let name = request["name"].as_str().unwrap().to_string();
                if !host.started.contains(&name) {
                    return error("not_found", "no such job");
                }
                host.stopped.push(name);
                Ok(String::new())
            }
            op::SERVICE_START => {
                let name = request["name"].as_str().unwrap().to_string();
                if host.started.contains(&name) {
                    return error("conflict", "a job of that name exists");
                }
                host.started.push(name.clone());
                if let Some(message) = host.not_ready.get(&name).cloned() {
                    let not_ready = json!({"code": "not_ready", "message": message});
                    return ticket(&mut host, Err(not_ready));
                }
                // "0:PORT" gets 49153, 49154...; "HOST:PORT" and
                // "IP:HOST:PORT" get HOST; "PORT" is not published.
                let mut ports = serde_json::Map::new();
                for port in request["container"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let parts: Vec<&str> = port.as_str().unwrap().split(':').collect();
                    if let [.., host_port, container_port] = parts[..] {
                        let host_port = match host_port.parse::<u16>().unwrap() {
                            0 => 49153 + ports.len() as u16,
                            published => published,
                        };
                        ports.insert(container_port.into(), host_port.into());
                    }
                }
                ticket(&mut host, Ok(json!({ "ports": ports })))
            }
            op::JOB_LOGS => ticket(&mut host, Ok(json!({"lines": ["one", "two"]}))),
            op::SLEEP => ticket(&mut host, Ok(Value::Null)),
            op::WAIT_ANY => {
                if host.outstanding.is_empty() {
                    return Ok(json!({"status": "idle"}).to_string());
                }
                match host.outstanding.remove(0) {
                    (t, Ok(result)) => Ok(
                        json!({"status": "completed", "ticket": t, "result": result}).to_string(),
                    ),
                    (t, Err(error)) => {
                        Ok(json!({"status": "failed", "ticket": t, "error": error}).to_string())
                    }
                }
            }
            op::WORKSPACE_READ => error("not_configured", "no workspace"),
            op::ARTIFACT_LIST | op::ARTIFACT_READ if host.artifacts_refused.is_some() => {
                let message = host.artifacts_refused.clone().unwrap();
                let refused = json!({"code": "invalid_request", "message": message});
                ticket(&mut host, Err(refused))
            }
            op::ARTIFACT_LIST => {
                // By name, each saved by "build" from /src/<name>.
                let artifacts: Vec<Value> = host
                    .artifacts
                    .iter()
                    .map(|(name, files)| {
                        json!({
                            "name": name, "job": "build", "path": format!("/src/{name}"),
                            "sizeBytes": files.values().map(Vec::len).sum::<usize>(),
                            "files": files.len()
                        })
                    })
                    .collect();
                ticket(&mut host, Ok(json!({ "artifacts": artifacts })))
            }
            op::ARTIFACT_READ => {
                let (name, path) = (
                    request["name"].as_str().unwrap(),
                    request["path"].as_str().unwrap(),
                );
                let Some(contents) = host.artifacts.get(name).and_then(|a| a.get(path)) else {
                    let message = format!("artifact \"{name}\" has no file \"{path}\"");
                    let missing = json!({"code": "not_found", "message": message});
                    return ticket(&mut host, Err(missing));
                };
                // Encoded as the host encodes workspace.read's files.
                let file = match (request["encoding"].as_str(), std::str::from_utf8(contents)) {
                    (Some("base64"), _) | (None, Err(_)) => {
                        json!({"path": path, "contents": workspace::base64_encode(contents),
                            "encoding": "base64"})
                    }
                    (_, Ok(text)) => json!({"path": path, "contents": text, "encoding": "utf8"}),
                    (_, Err(_)) => {
                        let message = format!(
                            "file \"{path}\" of artifact \"{name}\" is not UTF-8 text; read it in base64"
                        );
                        return ticket(
                            &mut host,
                            Err(json!({"code": "invalid_request", "message": message})),
                        );
                    }
                };
                ticket(&mut host, Ok(file))
            }
            _ => error("unknown_operation", "no such operation"),
        }
    });
    host
}

#[test]
fn an_exact_type_beats_the_wildcard_and_the_last_registration_wins() {
    let host = install("src", "exact", "INFO");
    Events::new()
        .on("src", "*", async |event: Event| -> Result<()> {
            logger().info(format!("wildcard {}", event.event_type));
            Ok(())
        })
        .on("src", "exact", async |_| {
            info!("first");
            Ok(())
        })
        .on("src", "exact", async |_| {
            info!("second");
            Ok(())
        })
        .process();
    assert_eq!(host.borrow().lines(), ["INFO: second"]);
}

#[test]
fn the_wildcard_takes_other_types_of_its_source_only() {
    let host = install("src", "other", "INFO");
    Events::new()
        .on("src", "*", async |event: Event| {
            info!("wildcard got {}", event.event_type);
            Ok(())
        })
        .on("elsewhere", "other", async |_| {
            info!("wrong");
            Ok(())
        })
        .process();
    assert_eq!(host.borrow().lines(), ["INFO: wildcard got other"]);
}

#[test]
fn an_event_without_a_handler_is_logged_at_debug() {
    let host = install("src", "none", "DEBUG");
    Events::new().process();
    assert_eq!(
        host.borrow().lines(),
        ["DEBUG: no handler for events of source \"src\" and type \"none\""]
    );
    assert!(!host.borrow().ops().contains(&op::SCRIPT_ERROR));
}

#[test]
fn levelled_lines_below_the_worker_level_are_dropped() {
    let host = install("src", "t", "WARN");
    debug!("d");
    info!("i");
    warn!("w");
    error!("e");
    Job::new("job", "x").logger().warn("about the job");
    assert_eq!(
        host.borrow().lines(),
        ["WARN: w", "ERROR: e", "[job] WARN: about the job"]
    );
    assert_eq!(host.borrow().requests(op::LOG)[0]["console"], json!(false));
}

#[test]
fn a_handler_error_is_reported_with_its_location() {
    let host = install("src", "t", "INFO");
    Events::new()
        .on("src", "t", async |_| -> Result<()> {
            Err(Error::new("boom"))
        })
        .process();
    let errors = host.borrow().requests(op::SCRIPT_ERROR);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "uncaught");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("src/tests.rs:") && message.ends_with(": boom"),
        "{message}"
    );
}

#[test]
fn question_marks_convert_errors_and_keep_their_location() {
    let host = install("src", "t", "INFO");
    Events::new()
        .on("src", "t", async |event: Event| {
            let n: u32 = "x".parse()?;
            let _: Value = event.payload_json()?;
            Ok(n.to_string())
        })
        .process();
    let message = host.borrow().requests(op::SCRIPT_ERROR)[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("src/tests.rs:") && message.ends_with("invalid digit found in string"),
        "{message}"
    );
}

#[test]
fn a_returned_summary_is_set() {
    let host = install("src", "t", "INFO");
    Events::new()
        .on("src", "t", async |_| Ok("all good"))
        .process();
    assert_eq!(
        host.borrow().requests(op::SUMMARY_SET),
        [json!({"text": "all good"})]
    );
    let host = install("src", "t", "INFO");
    Events::new()
        .on("src", "t", async |_| Ok(String::new()))
        .process();
    assert!(host.borrow().requests(op::SUMMARY_SET).is_empty());
}

#[test]
fn a_summary_too_long_is_an_error_with_the_hosts_code() {
    let _host = install("src", "t", "INFO");
    let error = set_summary("x".repeat(4097)).unwrap_err();
    assert_eq!(error.code(), Some("limit_exceeded"));
    set_summary("short").unwrap();
}

#[test]
fn jobs_in_a_concurrent_group_all_start_before_the_guest_waits() {
    let host = install("src", "t", "INFO");
    let a1 = Job::new("a1", "img");
    let a2 = Job::new("a2", "img");
    let b1 = Job::new("b1", "img");
    let b2 = Job::new("b2", "img");
    block_on(concurrent([sequence([&a1, &a2]), sequence([&b1, &b2])]).run())
        .unwrap()
        .unwrap();
    let host = host.borrow();
    let ops = host.ops();
    let first_wait = ops.iter().position(|&o| o == op::WAIT_ANY).unwrap();
    let starts: Vec<_> = host
        .requests(op::JOB_START)
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(starts, ["a1", "b1", "a2", "b2"]);
    assert_eq!(
        ops[..first_wait]
            .iter()
            .filter(|&&o| o == op::JOB_START)
            .count(),
        2
    );
    assert!(
        host.lines()
            .contains(&"[a1] INFO: Creating job a1".to_string())
    );
    let spec = &host.requests(op::JOB_START)[0]["spec"];
    assert_eq!(spec["timeoutSeconds"], 900);
    assert_eq!(spec["primaryContainer"]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(spec["host"], json!({"nodeSelector": {}}));
}

#[test]
fn a_sequence_stops_at_the_first_failure() {
    let host = install("src", "t", "INFO");
    host.borrow_mut()
        .jobs
        .insert("fails".into(), ("FAILED".into(), 3));
    let fails = Job::new("fails", "img");
    let never = Job::new("never", "img");
    let error = block_on(sequence![&fails, never].run())
        .unwrap()
        .unwrap_err();
    assert_eq!(error.to_string(), "Job \"fails\" failed");
    assert_eq!(error.phase(), Some(Phase::Failed));
    assert_eq!(error.exit_code(), Some(3));
    assert_eq!(host.borrow().started, ["fails"]);
}

#[test]
fn job_errors_read_as_brigadiers() {
    let host = install("src", "t", "INFO");
    host.borrow_mut()
        .jobs
        .insert("slow".into(), ("TIMED_OUT".into(), 0));
    host.borrow_mut()
        .jobs
        .insert("meh".into(), ("FAILED".into(), 1));
    let error = block_on(Job::new("slow", "img").run())
        .unwrap()
        .unwrap_err();
    assert_eq!(error.to_string(), "Job \"slow\" timed out");
    assert_eq!(error.phase(), Some(Phase::TimedOut));
    assert!(error.location().unwrap().file().ends_with("tests.rs"));
    block_on(Job::new("meh", "img").fallible(true).run())
        .unwrap()
        .unwrap();
    let error = block_on(Job::new("meh", "img").run()).unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "Error creating job \"meh\": a job of that name exists"
    );
    assert_eq!(error.code(), Some("conflict"));
}

#[test]
fn logs_are_joined_with_newlines() {
    let _host = install("src", "t", "INFO");
    let job = Job::new("talker", "img");
    assert_eq!(block_on(job.logs()).unwrap().unwrap(), "one\ntwo");
}

#[test]
fn sleep_secrets_and_workspace_errors() {
    let host = install("src", "t", "INFO");
    block_on(sleep(Duration::from_millis(50))).unwrap().unwrap();
    assert_eq!(host.borrow().requests(op::SLEEP), [json!({"ms": 50.0})]);
    assert_eq!(secret("token").unwrap(), "s3cr3t");
    assert_eq!(secret("nope").unwrap_err().code(), Some("not_found"));
    assert_eq!(
        workspace::read("a.txt").unwrap_err().code(),
        Some("not_configured")
    );
}

#[test]
fn waiting_on_nothing_outstanding_is_an_error() {
    let _host = install("src", "t", "INFO");
    let error = block_on(std::future::pending::<()>()).unwrap_err();
    assert!(error.to_string().contains("nothing outstanding"), "{error}");
}

#[test]
fn a_dropped_ticket_is_cancelled() {
    let host = install("src", "t", "INFO");
    let first = async {
        let fails = async { Err::<(), Error>(Error::new("stop")) };
        try_join_all([
            Box::pin(async { sleep(Duration::from_secs(60)).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>,
            Box::pin(fails),
        ])
        .await
    };
    assert!(block_on(first).unwrap().is_err());
    assert_eq!(
        host.borrow().requests(op::TICKET_CANCEL),
        [json!({"ticket": 1})]
    );
}

#[test]
fn the_event_has_every_field() {
    let _host = install("src", "t", "INFO");
    let event = event().unwrap();
    assert_eq!(event.labels["team"], "ci");
    assert!(event.qualifiers.is_empty());
    assert_eq!(event.short_title, "short");
    assert_eq!(event.project.secrets["token"], "s3cr3t");
    assert_eq!(event.worker.config_files_directory, ".brigade");
    assert_eq!(event.payload_json::<Value>().unwrap()["n"], 3);
}

#[test]
fn base64_round_trips() {
    use crate::workspace::{base64_decode, base64_encode};
    for bytes in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"\x00\xff\x10binary",
    ] {
        assert_eq!(base64_decode(&base64_encode(bytes)).unwrap(), bytes);
    }
    assert_eq!(base64_encode(b"AAEC\x00"), "QUFFQwA=");
    assert_eq!(base64_decode("AAEC").unwrap(), [0, 1, 2]);
}

/// The handler forms the README shows all register.
#[test]
fn handlers_may_be_async_fns_async_closures_or_closures_returning_futures() {
    async fn named(_: Event) -> Result<()> {
        Ok(())
    }
    let host = install("src", "closure", "INFO");
    let captured = String::from("captured");
    Events::new()
        .on("src", "named", named)
        .on("src", "async-closure", async |event: Event| {
            let n: u32 = event.payload.len().to_string().parse()?;
            Ok(format!("{n}"))
        })
        .on("src", "closure", move |_event: Event| async move {
            let _: u32 = "1".parse()?;
            info!("{captured}");
            Ok(())
        })
        .process();
    assert_eq!(host.borrow().lines(), ["INFO: captured"]);
}

#[test]
fn sidecars_and_hosts_are_sent_in_the_hosts_shape() {
    let host = install("src", "t", "INFO");
    let job = Job::new("db-test", "img")
        .command(["sh", "-c"])
        .arguments(["make test"])
        .env("REDIS", "localhost:6379")
        .sidecar(
            "redis",
            Container::new("redis:7").readiness(Readiness::tcp_port(6379).timeout_seconds(30.0)),
        )
        .sidecar(
            "setup",
            Container::new("img")
                .readiness(Readiness::exited())
                .environment_file("workspace:setup.env")
                .user("1000:1000"),
        )
        .host(JobHost {
            os: Some("linux".into()),
            node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
        });
    block_on(job.run()).unwrap().unwrap();
    let spec = host.borrow().requests(op::JOB_START)[0]["spec"].clone();
    assert_eq!(
        spec["sidecarContainers"]["redis"]["readiness"],
        json!({"tcpPort": 6379, "timeoutSeconds": 30.0})
    );
    assert_eq!(
        spec["sidecarContainers"]["setup"]["readiness"],
        json!({"exited": true})
    );
    assert_eq!(
        spec["sidecarContainers"]["setup"]["environmentFile"],
        "workspace:setup.env"
    );
    assert_eq!(spec["sidecarContainers"]["setup"]["user"], "1000:1000");
    assert_eq!(
        spec["host"],
        json!({"os": "linux", "nodeSelector": {"disk": "ssd"}})
    );
    assert_eq!(
        spec["primaryContainer"],
        json!({
            "image": "img", "imagePullPolicy": "IfNotPresent", "workingDirectory": "",
            "command": ["sh", "-c"], "arguments": ["make test"],
            "environment": {"REDIS": "localhost:6379"}, "workspaceMountPath": "",
            "sourceMountPath": "", "privileged": false, "useHostDockerSocket": false
        })
    );
}

#[test]
fn a_service_sends_its_container_and_returns_its_ports() {
    let host = install("src", "t", "INFO");
    let db = Service::new("db", "postgres:16")
        .env("POSTGRES_PASSWORD", "test")
        .readiness(Readiness::tcp_port(5432))
        .after(["net"])
        .ports(["0:5432", "127.0.0.1:8080:80", "9000"]);
    let ready = block_on(db.start()).unwrap().unwrap();
    assert_eq!(
        ready.ports,
        BTreeMap::from([("5432".into(), 49153), ("80".into(), 8080)])
    );
    assert_eq!(ready.port(5432), Some(49153));
    assert_eq!(ready.port(9000), None);
    let host = host.borrow();
    assert_eq!(
        host.requests(op::SERVICE_START),
        [json!({"name": "db", "container": {
            "image": "postgres:16", "imagePullPolicy": "IfNotPresent", "workingDirectory": "",
            "command": [], "arguments": [], "environment": {"POSTGRES_PASSWORD": "test"},
            "workspaceMountPath": "", "sourceMountPath": "", "privileged": false,
            "useHostDockerSocket": false, "readiness": {"tcpPort": 5432},
            "after": ["net"], "ports": ["0:5432", "127.0.0.1:8080:80", "9000"]
        }})]
    );
    // It returned once its ticket completed, not when the call did.
    let ops = host.ops();
    assert!(ops.ends_with(&[op::SERVICE_START, op::WAIT_ANY]), "{ops:?}");
    assert_eq!(host.lines(), ["[db] INFO: Starting service db"]);
}

#[test]
fn a_service_that_is_not_ready_is_an_error_with_its_code() {
    let host = install("src", "t", "INFO");
    let message =
        "service \"migrate\" was not started: \"db\", which it comes after, was not ready";
    host.borrow_mut()
        .not_ready
        .insert("migrate".into(), message.into());
    let migrate = Service::new("migrate", "flyway")
        .after(["db"])
        .readiness(Readiness::exited());
    let error = block_on(migrate.start()).unwrap().unwrap_err();
    assert_eq!(error.code(), Some("not_ready"));
    assert_eq!(
        error.to_string(),
        format!("Error starting service \"migrate\": {message}")
    );
    assert!(error.location().unwrap().file().ends_with("tests.rs"));

    // A refusal of the call itself, not of its ticket, reads the same way.
    block_on(Job::new("taken", "img").run()).unwrap().unwrap();
    let error = block_on(Service::new("taken", "redis:7").start())
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some("conflict"));
    assert_eq!(
        error.to_string(),
        "Error starting service \"taken\": a job of that name exists"
    );
}

#[test]
fn a_status_of_not_ready_keeps_its_code_when_its_error_cannot_be_read() {
    fake::install(|_, _| Err((11, "the service exited".into())));
    let error = crate::host::call_json(op::SERVICE_START, "{}").unwrap_err();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("not_ready", "the service exited")
    );
}

#[test]
fn a_service_is_stopped_waited_for_and_read_by_its_name() {
    let host = install("src", "t", "INFO");
    let db = Service::new("db", "postgres:16");
    block_on(db.start()).unwrap().unwrap();
    assert_eq!(block_on(db.logs()).unwrap().unwrap(), "one\ntwo");
    db.stop().unwrap();
    let ended = block_on(db.wait()).unwrap().unwrap();
    assert_eq!(
        (ended.phase, ended.exit_code, ended.reason),
        (Phase::Aborted, None, None)
    );
    for op in [op::JOB_LOGS, op::JOB_CANCEL, op::JOB_WAIT] {
        assert_eq!(host.borrow().requests(op), [json!({"name": "db"})]);
    }
    let error = Service::new("never", "redis:7").stop().unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
}

/// Waiting for a service to be ready lets the other futures go on: a job
/// awaited with it starts before the guest waits.
#[test]
fn a_service_and_a_job_awaited_together_both_start_before_the_guest_waits() {
    let host = install("src", "t", "INFO");
    let db = Service::new("db", "postgres:16");
    let lint = Job::new("lint", "img");
    let both = try_join_all([
        Box::pin(async { db.start().await.map(drop) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>,
        Box::pin(lint.run()),
    ]);
    block_on(both).unwrap().unwrap();
    let ops = host.borrow().ops();
    let first_wait = ops.iter().position(|&o| o == op::WAIT_ANY).unwrap();
    assert!(ops[..first_wait].contains(&op::SERVICE_START), "{ops:?}");
    assert!(ops[..first_wait].contains(&op::JOB_START), "{ops:?}");
}

#[test]
fn after_and_ports_are_sent_for_a_sidecar_and_left_out_when_empty() {
    let host = install("src", "t", "INFO");
    let job = Job::new("app-test", "img")
        .sidecar("db", Container::new("postgres:16"))
        .sidecar("app", Container::new("app").after(["db"]).ports(["8080"]));
    block_on(job.run()).unwrap().unwrap();
    let spec = host.borrow().requests(op::JOB_START)[0]["spec"].clone();
    assert_eq!(spec["sidecarContainers"]["app"]["after"], json!(["db"]));
    assert_eq!(spec["sidecarContainers"]["app"]["ports"], json!(["8080"]));
    for container in [&spec["sidecarContainers"]["db"], &spec["primaryContainer"]] {
        let fields = container.as_object().unwrap();
        assert!(
            !fields.contains_key("after") && !fields.contains_key("ports"),
            "{container}"
        );
    }
}

#[test]
fn artifacts_and_caches_are_sent_in_the_hosts_shape_and_left_out_when_empty() {
    let host = install("src", "t", "INFO");
    let build = Job::new("build", "node:22")
        .working_directory("/src")
        .cache("npm-abc", ["npm-"], "/root/.npm")
        .save_artifact("dist", "dist")
        .save_artifact_on_failure("reports", "reports/*.xml");
    let deploy = Job::new("deploy", "img")
        .restore_artifact("dist")
        .restore_artifact_to("reports", "/tmp/reports")
        .caches([JobCache::new("apt", "/var/cache/apt")]);
    let plain = Job::new("plain", "img");
    block_on(sequence([&build, &deploy, &plain]).run())
        .unwrap()
        .unwrap();
    let requests = host.borrow().requests(op::JOB_START);
    let [build, deploy, plain] = [0, 1, 2].map(|i| requests[i]["spec"].clone());
    assert_eq!(
        build["artifacts"],
        json!({"save": [
            {"name": "dist", "path": "dist"},
            {"name": "reports", "path": "reports/*.xml", "onFailure": true}
        ]})
    );
    assert_eq!(
        build["caches"],
        json!([{"key": "npm-abc", "restoreKeys": ["npm-"], "path": "/root/.npm"}])
    );
    assert_eq!(
        deploy["artifacts"],
        json!({"restore": [
            {"name": "dist"},
            {"name": "reports", "path": "/tmp/reports"}
        ]})
    );
    assert_eq!(
        deploy["caches"],
        json!([{"key": "apt", "path": "/var/cache/apt"}])
    );
    let fields = plain.as_object().unwrap();
    assert!(
        !fields.contains_key("artifacts") && !fields.contains_key("caches"),
        "{plain}"
    );
}

#[test]
fn artifacts_are_listed_and_read_through_tickets() {
    let host = install("src", "t", "INFO");
    host.borrow_mut().artifacts = BTreeMap::from([
        (
            "dist".into(),
            BTreeMap::from([
                ("app.js".into(), b"console.log(1)\n".to_vec()),
                ("app.bin".into(), b"\x00\xff\x01".to_vec()),
            ]),
        ),
        (
            "build-report".into(),
            BTreeMap::from([("".into(), b"built dist/app\n".to_vec())]),
        ),
    ]);
    let list = block_on(artifacts::list()).unwrap().unwrap();
    let summary: Vec<_> = list
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.job.as_str(),
                a.path.as_str(),
                a.size_bytes,
                a.files,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("build-report", "build", "/src/build-report", 15, 1),
            ("dist", "build", "/src/dist", 18, 2)
        ]
    );
    assert_eq!(host.borrow().requests(op::ARTIFACT_LIST), [json!({})]);
    // It returned once its ticket completed, not when the call did.
    assert!(
        host.borrow()
            .ops()
            .ends_with(&[op::ARTIFACT_LIST, op::WAIT_ANY])
    );

    let text = block_on(artifacts::read_file("dist", "app.js"));
    assert_eq!(text.unwrap().unwrap(), "console.log(1)\n");
    let single = block_on(artifacts::read_file("build-report", ""));
    assert_eq!(single.unwrap().unwrap(), "built dist/app\n");
    let binary = block_on(artifacts::read_file_bytes("dist", "app.bin"));
    assert_eq!(binary.unwrap().unwrap(), b"\x00\xff\x01");
    let text_as_bytes = block_on(artifacts::read_file_bytes("dist", "app.js"));
    assert_eq!(text_as_bytes.unwrap().unwrap(), b"console.log(1)\n");
    assert_eq!(
        host.borrow().requests(op::ARTIFACT_READ),
        [
            json!({"name": "dist", "path": "app.js", "encoding": "utf8"}),
            json!({"name": "build-report", "path": "", "encoding": "utf8"}),
            json!({"name": "dist", "path": "app.bin"}),
            json!({"name": "dist", "path": "app.js"}),
        ]
    );

    let error = block_on(artifacts::read_file("dist", "app.bin"))
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"));
    let error = block_on(artifacts::read_file("dist", "missing.txt"))
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
    assert_eq!(
        error.to_string(),
        "artifact \"dist\" has no file \"missing.txt\""
    );
    assert!(error.location().unwrap().file().ends_with("tests.rs"));
}

/// With no artifacts the list is empty, not an error; an executor that keeps
/// none fails the tickets, and that is the error.
#[test]
fn no_artifacts_is_an_empty_list_and_a_refusal_keeps_its_code() {
    let host = install("src", "t", "INFO");
    assert!(block_on(artifacts::list()).unwrap().unwrap().is_empty());
    let message = "artifacts are not kept on Kubernetes (yet)";
    host.borrow_mut().artifacts_refused = Some(message.into());
    let error = block_on(artifacts::list()).unwrap().unwrap_err();
    assert_eq!(
        (error.code(), error.to_string()),
        (Some("invalid_request"), message.into())
    );
    let error = block_on(artifacts::read_file_bytes("dist", ""))
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"));
}
