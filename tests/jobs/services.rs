//! An event's services on the real engine: started once, reached by name
//! from every job of the event and from no other event, started in the
//! order of `after` (as a job's sidecars are), publishing ports only under
//! the project's policy, and gone when the event ends however it ends.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use mizzen_runtime::project::JobPolicies;
use tokio::io::AsyncReadExt;

use crate::util::{Project, containers_of, executor, networks_of, run_js, run_js_as, uuid};

/// A script whose handler runs `body`, with `service(name, command)` making
/// a busybox service and `job(name, command)` a busybox job.
fn script(body: &str) -> String {
    format!(
        r#"const {{ events, Job, Service }} = require("@brigadecore/brigadier");
        function service(name, command) {{
          const service = new Service(name, "localhost/busybox");
          service.command = ["sh", "-c", command];
          return service;
        }}
        function job(name, command) {{
          const job = new Job(name, "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", command];
          return job;
        }}
        let event;
        events.on("brigade.sh/cli", "exec", async (e) => {{
          event = e;
          {body}
        }});
        events.process();"#
    )
}

/// A service that answers each connection on `port` with the number of
/// connections so far: state that only one service shared by the jobs has.
/// Its readiness probe is its first visitor.
fn counter(port: u16) -> String {
    format!(r#"i=0; while true; do i=$((i+1)); echo "visit $i" | nc -l -p {port}; done"#)
}

#[tokio::test]
async fn one_service_is_reached_by_name_from_every_job_of_the_event() {
    let run = run_js(
        &script(&format!(
            r#"const db = service("db", {counter:?});
          db.readiness = {{ tcpPort: 5432 }};
          const started = await db.start();
          console.log("ports", JSON.stringify(started.ports));
          await job("first", "nc db 5432").run();
          await job("second", "nc db 5432").run();
          // A job with sidecars reaches it too: its pod is on the event's network.
          const pod = job("with-sidecar", "nc db 5432 && nc localhost 7000");
          const side = new (require("@brigadecore/brigadier").Container)("localhost/busybox");
          side.command = ["sh", "-c", "while true; do echo sidecar | nc -l -p 7000; done"];
          side.readiness = {{ tcpPort: 7000 }};
          pod.sidecarContainers = {{ side }};
          await pod.run();
          await db.stop();
          const ended = await db.wait();
          console.log("db ended", ended.phase);"#,
            counter = counter(5432)
        )),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        [
            "[first] visit 2",
            "[second] visit 3",
            "[with-sidecar] visit 4",
            "[with-sidecar] sidecar"
        ]
    );
    run.assert_logged("ports {}");
    run.assert_logged("db ended ABORTED");
}

/// Where the event's service `name` answers on its network, from the engine.
async fn service_address(event_id: &str, name: &str) -> Option<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("sh.mizzen.event={event_id}"),
            format!("sh.mizzen.job={name}"),
            "sh.mizzen.container=pod".to_string(),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .filters(&filters)
        .build();
    let docker = executor().await;
    let containers = mizzen_docker::list_containers(docker.docker(), options)
        .await
        .ok()?;
    let id = containers.first()?.id.clone()?;
    let inspected = docker.docker().inspect_container(&id, None).await.ok()?;
    let networks = inspected.network_settings?.networks?;
    networks
        .values()
        .find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty()))
}

#[tokio::test]
async fn another_events_jobs_do_not_reach_a_service_by_name() {
    another_event_tries_to_reach_a_service(false).await;
}

/// While other events' containers end: Podman's netavark 1.4 (Debian 12's)
/// deletes the rule that enforces `isolate` whenever a container of an
/// isolated network is torn down, until the next one starts, so without
/// Mizzen's own rule (`mizzen-docker`'s `isolation`) the job reaches the
/// other event's service in one of its attempts.
#[tokio::test]
async fn another_events_jobs_do_not_reach_a_service_by_address() {
    another_event_tries_to_reach_a_service(true).await;
}

async fn another_event_tries_to_reach_a_service(by_address: bool) {
    // Event A keeps its service up while event B's jobs try to reach it.
    let holder = script(&format!(
        r#"const db = service("db", {counter:?});
          db.readiness = {{ tcpPort: 5432 }};
          await db.start();
          await job("hold", "sleep 20").run();"#,
        counter = counter(5432)
    ));
    let a = tokio::spawn(async move { run_js(&holder, Project::default()).await });
    let mut address = None;
    for _ in 0..200 {
        // The holder's event id is not known here: find its service by the
        // job label among the running containers of the test's events.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                "sh.mizzen.job=db".to_string(),
                "sh.mizzen.container=pod".to_string(),
                "sh.mizzen.project=test-project".to_string(),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let containers = mizzen_docker::list_containers(executor().await.docker(), options)
            .await
            .unwrap_or_default();
        for container in containers {
            let event = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get("sh.mizzen.event"))
                .cloned()
                .unwrap_or_default();
            address = service_address(&event, "db").await;
        }
        if address.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let address = address.expect("event A's service came up");
    // Other events' containers come and go while event B tries.
    let churn = tokio::spawn(async {
        for _ in 0..6 {
            run_js(
                &script(r#"await job("short", "true").run();"#),
                Project::default(),
            )
            .await
            .assert_succeeded();
        }
    });
    let b = run_js(
        &script(&format!(
            r#"await job("by-name", "nc -w 2 db 5432 && echo reached || echo not reached").run();
          if ({by_address}) await job("by-address", "r='not reached'; for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 1 {address} 5432 >/dev/null && r=reached; sleep 0.5; done; echo $r").run();
          // Its own service of the same name is its own.
          const db = service("db", "while true; do echo mine | nc -l -p 5432; done");
          db.readiness = {{ tcpPort: 5432 }};
          await db.start();
          await job("own", "nc db 5432").run();"#
        )),
        Project::default(),
    )
    .await;
    b.assert_succeeded();
    let lines = b.job_lines();
    let mut expected = vec![
        "[by-name] nc: bad address 'db'",
        "[by-name] not reached",
        "[own] mine",
    ];
    if by_address {
        expected.push("[by-address] not reached");
    }
    for expected in expected {
        assert!(lines.iter().any(|l| l == expected), "{expected}: {lines:?}");
    }
    churn.await.expect("the other events ran");
    let a = a.await.expect("event A ran");
    a.assert_succeeded();
}

#[tokio::test]
async fn services_start_after_those_they_name_and_not_after_one_that_failed() {
    let run = run_js(
        &script(&format!(
            r#"const db = service("db", "sleep 1; " + {counter:?});
          db.readiness = {{ tcpPort: 5432 }};
          // One-shot: ready once it has exited 0; it reaches db by name.
          const migrate = service("migrate", "nc db 5432");
          migrate.readiness = {{ exited: true }};
          migrate.after = ["db"];
          // Long-running without readiness: ready after 3 s up.
          const cache = service("cache", "sleep 600");
          const app = service("app", "nc db 5432; sleep 600");
          app.after = ["migrate", "cache"];
          const begun = Date.now();
          await Promise.all([db.start(), migrate.start(), cache.start(), app.start()]);
          console.log("cache waited", Date.now() - begun >= 3000);
          console.log("migrate", (await migrate.wait()).phase);

          const broken = service("broken", "exit 3");
          broken.readiness = {{ exited: true }};
          const dependant = service("dependant", "sleep 600");
          dependant.after = ["broken"];
          const results = await Promise.allSettled([broken.start(), dependant.start()]);
          for (const result of results) console.log(result.reason.code, result.reason.message);
          const early = service("early", "true");
          const late = service("late", "sleep 600");
          late.after = ["early"];
          const [, lateStarted] = await Promise.allSettled([early.start(), late.start()]);
          console.log(lateStarted.reason.message);

          for (const [name, after] of [["unknown", ["nope"]], ["after-job", ["ran"]], ["itself", ["itself"]]]) {{
            if (name === "after-job") await job("ran", "true").run();
            const s = service(name, "sleep 1");
            s.after = after;
            await s.start().catch((e) => console.log(e.message));
          }}"#,
            counter = counter(5432)
        )),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines()[..2], ["[migrate] visit 2", "[app] visit 3"]);
    run.assert_logged("cache waited true");
    run.assert_logged("migrate SUCCEEDED");
    run.assert_logged(
        r#"not_ready Error starting service "broken": service "broken" was not ready: it ended FAILED: service "broken" exited with code 3 before it was ready"#,
    );
    run.assert_logged(
        r#"not_ready Error starting service "dependant": service "dependant" was not started: "broken", which it comes after, was not ready (service "broken" was not ready: it ended FAILED: service "broken" exited with code 3 before it was ready)"#,
    );
    run.assert_logged(
        r#"Error starting service "late": service "late" was not started: "early", which it comes after, was not ready (service "early" was not ready: it ended FAILED: service "early" exited with code 0 within 3s of starting, before what comes after it could start (declare readiness: { exited: true } for a one-shot container))"#,
    );
    run.assert_logged(
        r#"Error starting service "unknown": service "unknown" comes after "nope", which is not a service of this event (start the services it comes after first)"#,
    );
    run.assert_logged(
        r#"Error starting service "after-job": service "after-job" comes after "ran", which is a job; a service comes after services"#,
    );
    run.assert_logged(
        r#"Error starting service "itself": service "itself": it cannot come after itself (after)"#,
    );
}

#[tokio::test]
async fn sidecars_start_in_the_order_of_after_and_a_failed_one_stops_its_dependants() {
    let run = run_js(
        &script(
            r#"const { Container } = require("@brigadecore/brigadier");
          function sidecar(command, after, readiness) {
            const c = new Container("localhost/busybox");
            c.command = ["sh", "-c", command];
            c.workspaceMountPath = "/work";
            if (after) c.after = after;
            if (readiness) c.readiness = readiness;
            return c;
          }
          const ordered = job("ordered", "cat /work/order");
          ordered.primaryContainer.workspaceMountPath = "/work";
          ordered.primaryContainer.after = ["server"];
          // Named so that their alphabetical order is the wrong one.
          ordered.sidecarContainers = {
            "server": sidecar("echo server >> /work/order; sleep 600", ["setup"]),
            "setup": sidecar("sleep 1; echo setup >> /work/order", null, { exited: true }),
          };
          await ordered.run();

          const failing = job("failing", "echo never");
          failing.sidecarContainers = {
            "broken": sidecar("exit 3", null, { exited: true }),
            "dependant": sidecar("sleep 600", ["broken"]),
          };
          await failing.run().catch((e) => console.log(e.message, "|", e.reason));

          for (const [name, sidecars] of [
            ["cycle", { one: sidecar("true", ["two"]), two: sidecar("true", ["three"]), three: sidecar("true", ["one"]) }],
            ["unknown", { one: sidecar("true", ["nope"]) }],
          ]) {
            const j = job(name, "true");
            j.sidecarContainers = sidecars;
            await j.run().catch((e) => console.log(e.message));
          }"#,
        ),
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[ordered] setup", "[ordered] server"]);
    run.assert_logged(
        r#"Job "failing" failed | sidecar "dependant" was not started: "broken", which it comes after, was not ready: sidecar "broken" exited with code 3 before it was ready"#,
    );
    run.assert_logged(
        r#"Error creating job "cycle": job "cycle": its sidecars wait for each other in a cycle (after): one → two → three → one"#,
    );
    run.assert_logged(
        r#"Error creating job "unknown": job "unknown": sidecar "one": it comes after "nope", which is not a sidecar of this job (after names sidecars of the same job)"#,
    );
}

#[tokio::test]
async fn host_ports_need_the_policy_and_an_ephemeral_one_is_told_to_jobs() {
    let body = r#"const db = service("db", "while true; do echo hello | nc -l -p 5432; done");
          db.readiness = { tcpPort: 5432 };
          db.ports = ["0:5432", "9000"];
          const started = await db.start();
          console.log("port", started.ports["5432"], Object.keys(started.ports).join(","));
          await job("told", "echo $MIZZEN_SERVICE_DB_PORT_5432; sleep 8").run();"#;
    let refused = run_js(&script(body), Project::default()).await;
    refused.assert_failed_with(
        r#"service "db": port "0:5432" publishes a host port, which the project's policy forbids (spec.workerTemplate.jobPolicies.allowHostPorts is not true)"#,
    );

    let project = Project {
        policies: JobPolicies {
            allow_host_ports: true,
            ..JobPolicies::default()
        },
        ..Project::default()
    };
    let script = script(body);
    let running = tokio::spawn(async move { run_js(&script, project).await });
    // While the job sleeps, the host reaches the service on loopback, on the
    // port the engine chose.
    let mut greeting = String::new();
    for _ in 0..300 {
        if let Some(port) = published_port(5432).await
            && let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
        {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut greeting))
                    .await;
            if !greeting.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(greeting.trim(), "hello");
    let run = running.await.expect("the run ended");
    run.assert_succeeded();
    let told = run.job_lines();
    let told = told[0]
        .strip_prefix("[told] ")
        .expect("the job printed its port");
    run.assert_logged(&format!("port {told} 5432"));
    assert!(told.parse::<u16>().is_ok_and(|port| port > 0), "{told}");
}

/// The host port a running service's container port `port` was published
/// on, from the engine (any event of this test binary's).
async fn published_port(port: u16) -> Option<u16> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            "sh.mizzen.job=db".to_string(),
            "sh.mizzen.container=pod".to_string(),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .filters(&filters)
        .build();
    let containers = mizzen_docker::list_containers(executor().await.docker(), options)
        .await
        .ok()?;
    containers.iter().find_map(|c| {
        c.ports
            .as_ref()?
            .iter()
            .find_map(|p| (p.private_port == port).then_some(p.public_port).flatten())
    })
}

#[tokio::test]
async fn nothing_of_an_event_is_left_however_it_ends() {
    // A service and a job with a sidecar running when the event ends.
    let with_service = |then: &str| {
        script(&format!(
            r#"const db = service("db", "sleep 600");
          await db.start();
          const pod = job("pod", "sleep 600");
          pod.sidecarContainers = {{ side: new (require("@brigadecore/brigadier").Container)("localhost/busybox") }};
          pod.sidecarContainers.side.command = ["sleep", "600"];
          pod.run().catch(() => {{}});
          await new Promise((r) => setTimeout(r, 1000));
          {then}"#
        ))
    };
    let cases = [
        ("it exits", with_service("process.exit(0);")),
        (
            "a job fails",
            with_service(r#"await job("fails", "exit 1").run();"#),
        ),
        (
            "the script throws",
            with_service(r#"throw new Error("boom");"#),
        ),
        ("it times out", with_service("")),
    ];
    for (how, script) in cases {
        let limits = mizzen_runtime::WorkerLimits {
            wall_time: Duration::from_secs(8),
            ..mizzen_runtime::WorkerLimits::default()
        };
        let event_id = uuid();
        let running = {
            let (event_id, script) = (event_id.clone(), script.clone());
            tokio::spawn(
                async move { run_js_as(&event_id, &script, Project::default(), limits).await },
            )
        };
        // Counted while the event runs, and after.
        let mut most = (0, 0);
        while !running.is_finished() {
            let counted = (
                containers_of(&event_id).await.len(),
                networks_of(&event_id).await.len(),
            );
            most = (most.0.max(counted.0), most.1.max(counted.1));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // run_js_as checks that none of the event's containers and networks
        // is left once it ended, and fails when one is.
        let run = running.await.expect("the run ended");
        assert!(
            !run.outcome.succeeded() || how == "it exits",
            "{how}: {}",
            run.log.text()
        );
        // The service's pod (infra and container), the job's (infra,
        // sidecar and primary), and the one network.
        assert!(
            most.0 >= 5 && most.1 == 1,
            "{how}: {most:?} containers and networks while it ran"
        );
        assert_eq!(
            (
                containers_of(&event_id).await.len(),
                networks_of(&event_id).await.len()
            ),
            (0, 0),
            "{how}: left behind"
        );
    }
}

#[tokio::test]
async fn a_service_stopped_while_it_waits_for_another_never_starts() {
    let run = run_js(
        &script(
            r#"const slow = service("slow", "sleep 2; while true; do echo up | nc -l -p 6000; done");
          slow.readiness = { tcpPort: 6000 };
          const waiting = service("waiting", "echo should never run; sleep 600");
          waiting.after = ["slow"];
          const slowStarted = slow.start();
          const waitingStarted = waiting.start();
          // Stopped while it waits for slow, which is not ready yet.
          await waiting.stop();
          const [s, w] = await Promise.allSettled([slowStarted, waitingStarted]);
          console.log("slow", s.status, "waiting", w.status, w.reason.code, w.reason.message);
          console.log("waiting ended", (await waiting.wait()).phase);
          await job("after", "nc slow 6000").run();"#,
        ),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    run.assert_logged(
        r#"slow fulfilled waiting rejected not_ready Error starting service "waiting": service "waiting" was stopped before it started"#,
    );
    run.assert_logged("waiting ended CANCELED");
    assert!(
        !run.log.text().contains("should never run"),
        "{}",
        run.log.text()
    );
    assert_eq!(run.job_lines(), ["[after] up"]);
}
