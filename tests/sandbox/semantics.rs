//! Brigade's script semantics, as Brigade's worker implemented them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mizzen_host_api::types::{LogLevel, Phase, ScriptErrorKind};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{WorkerFailure, WorkerLimits};

use crate::util::{event, run, run_js};

#[tokio::test]
async fn a_handler_for_the_events_source_and_type_runs_and_its_value_is_the_summary() {
    let run = run_js(
        r#"
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          console.log("Hello, World!");
          return "All done.";
        });
        events.process();
        "#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["Hello, World!"]);
    assert_eq!(run.outcome.summary.as_deref(), Some("All done."));
}

#[tokio::test]
async fn a_wildcard_type_catches_every_type_of_its_source_but_an_exact_match_wins() {
    let script = r#"
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "*", () => console.log("wildcard"));
        events.on("brigade.sh/cli", "exact", () => console.log("exact"));
        events.on("brigade.sh/github", "*", () => console.log("other source"));
        events.process();
    "#;
    let mut e = event();
    e.event_type = "anything".into();
    let run_any = run(
        ScriptSource::new("brigade.js", script),
        e.clone(),
        WorkerLimits::default(),
    )
    .await;
    run_any.assert_succeeded();
    assert_eq!(run_any.messages(), ["wildcard"]);
    e.event_type = "exact".into();
    let run_exact = run(
        ScriptSource::new("brigade.js", script),
        e,
        WorkerLimits::default(),
    )
    .await;
    assert_eq!(run_exact.messages(), ["exact"]);
}

#[tokio::test]
async fn the_last_registration_for_a_source_and_type_wins() {
    let run = run_js(
        r#"
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", () => console.log("first"))
              .on("brigade.sh/cli", "exec", () => console.log("second"));
        events.process();
        "#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["second"]);
}

#[tokio::test]
async fn an_event_with_no_matching_handler_succeeds_and_runs_nothing() {
    let run = run_js(
        r#"
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/github", "push", () => { throw new Error("must not run"); });
        events.process();
        "#,
    )
    .await;
    run.assert_succeeded();
    assert!(run.messages().is_empty(), "{:?}", run.messages());
    assert_eq!(run.outcome.summary, None);
}

#[tokio::test]
async fn a_script_that_never_uses_events_runs_top_to_bottom() {
    let run = run_js(
        r#"
        console.log("one");
        function two() { return "two"; }
        console.log(two());
        var sloppy = 3; undeclared = sloppy; // sloppy mode, as in Node's CommonJS
        console.log(String(undeclared));
        "#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["one", "two", "3"]);
}

#[tokio::test]
async fn summaries_up_to_4096_characters_are_kept_and_longer_ones_fail_the_worker() {
    let script = |n: usize| {
        format!(
            r#"const {{ events }} = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async () => "x".repeat({n}));
            events.process();"#
        )
    };
    let fits = run_js(&script(4096)).await;
    fits.assert_succeeded();
    assert_eq!(fits.outcome.summary.as_ref().map(String::len), Some(4096));
    let too_long = run_js(&script(4097)).await;
    too_long
        .assert_failed_with("a summary of 4097 characters exceeds the limit of 4096 characters");
    assert_eq!(too_long.outcome.summary, None);
}

#[tokio::test]
async fn a_throwing_handler_fails_the_worker_with_the_message_and_its_location() {
    let run = run_js(
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => {
  throw new Error("the handler broke");
});
events.process();
"#,
    )
    .await;
    run.assert_failed_with("brigade.js:3:");
    run.assert_failed_with("Error: the handler broke");
    assert!(matches!(
        run.outcome.failure,
        Some(WorkerFailure::Uncaught {
            kind: ScriptErrorKind::UnhandledRejection,
            ..
        })
    ));
    assert_eq!(run.outcome.phase, Phase::Failed);
    assert!(
        run.log.text().contains("ERROR: brigade.js:3:"),
        "{}",
        run.log.text()
    );
}

#[tokio::test]
async fn a_throw_at_top_level_fails_the_worker_at_once() {
    let run = run_js("console.log(\"before\");\nnull.property;\nconsole.log(\"after\");\n").await;
    run.assert_failed_with("brigade.js:2:");
    run.assert_failed_with("TypeError");
    assert_eq!(run.messages()[0], "before");
    assert!(!run.messages().contains(&"after".to_string()));
}

#[tokio::test]
async fn an_unhandled_rejection_fails_the_worker_but_a_handled_one_does_not() {
    let unhandled = run_js("Promise.reject(new Error(\"nobody caught me\"));\n").await;
    unhandled.assert_failed_with("Error: nobody caught me");
    assert!(matches!(
        unhandled.outcome.failure,
        Some(WorkerFailure::Uncaught {
            kind: ScriptErrorKind::UnhandledRejection,
            ..
        })
    ));
    let handled = run_js(
        "const p = Promise.reject(new Error(\"caught\"));\np.catch(e => console.log(\"handled: \" + e.message));\n",
    )
    .await;
    handled.assert_succeeded();
    assert_eq!(handled.messages(), ["handled: caught"]);
}

/// A script error while a timer (24 h, as a Brigade script waiting for
/// something would set) is still pending ends the worker at once, as Node
/// and Brigade's worker end the process: the worker stayed RUNNING until the
/// timer fired. The lifetime is 60 s so that a worker that waits shows up as
/// TIMED_OUT instead of hanging the test.
#[tokio::test]
async fn a_script_error_with_a_timer_pending_fails_the_worker_at_once() {
    let pending_timer = "setTimeout(() => console.log(\"timer fired\"), 24 * 60 * 60 * 1000);\n";
    let cases = [
        (
            "a handler that throws",
            format!(
                "const {{ events }} = require(\"@brigadecore/brigadier\");\n\
                 events.on(\"brigade.sh/cli\", \"exec\", () => {{\n\
                 {pending_timer}\
                 throw new Error(\"the handler gave up\");\n\
                 }});\n\
                 events.process();\n"
            ),
            "Error: the handler gave up",
        ),
        (
            "an async handler that rejects",
            format!(
                "const {{ events }} = require(\"@brigadecore/brigadier\");\n\
                 events.on(\"brigade.sh/cli\", \"exec\", async () => {{\n\
                 {pending_timer}\
                 await Promise.resolve();\n\
                 throw new Error(\"the async handler gave up\");\n\
                 }});\n\
                 events.process();\n"
            ),
            "Error: the async handler gave up",
        ),
        (
            "a timer callback that throws",
            format!(
                "{pending_timer}\
                 setTimeout(() => {{ throw new Error(\"the timer gave up\"); }}, 10);\n"
            ),
            "Error: the timer gave up",
        ),
        (
            "a job's promise nobody awaits",
            format!(
                "const {{ Job }} = require(\"@brigadecore/brigadier\");\n\
                 {pending_timer}\
                 new Job(\"build\", \"debian\", {{}}).run();\n"
            ),
            // No executor here: the job's start is refused, and the promise
            // nobody awaits rejects with that.
            "no job executor is configured for this run",
        ),
    ];
    for (case, script, expected) in cases {
        let limits = WorkerLimits {
            wall_time: Duration::from_secs(60),
            ..WorkerLimits::default()
        };
        let started = Instant::now();
        let run = run(ScriptSource::new("brigade.js", script), event(), limits).await;
        let took = started.elapsed();
        assert_eq!(
            run.outcome.phase,
            Phase::Failed,
            "{case}: {:?}\nlog:\n{}",
            run.outcome,
            run.log.text()
        );
        run.assert_failed_with(expected);
        assert!(
            took < Duration::from_secs(30),
            "{case}: the worker ended after {took:?}"
        );
        assert!(!run.messages().iter().any(|m| m == "timer fired"), "{case}");
    }
}

#[tokio::test]
async fn a_rejection_thrown_by_a_non_error_value_is_reported_readably() {
    let run = run_js("Promise.reject({ reason: 42 });\n").await;
    run.assert_failed_with("non-error value thrown: { reason: 42 }");
}

#[tokio::test]
async fn the_library_loads_through_every_require_and_import_form() {
    for (name, script) in [
        (
            "brigade.js",
            "const { events, Job, logger } = require(\"@brigadecore/brigadier\");\nconsole.log(typeof events.on, typeof Job, typeof logger.info);",
        ),
        (
            "brigade.js",
            "const brigadier = require(\"brigadier\");\nconsole.log(typeof brigadier.events.on, typeof brigadier.Job, typeof brigadier.logger.info);",
        ),
        (
            "brigade.js",
            "import { events, Job, logger } from \"@brigadecore/brigadier\";\nconsole.log(typeof events.on, typeof Job, typeof logger.info);",
        ),
        (
            "brigade.js",
            "import brigadier from \"brigadier\";\nconsole.log(typeof brigadier.events.on, typeof brigadier.Job, typeof brigadier.logger.info);",
        ),
        (
            "brigade.ts",
            "import { events, Job, logger, Event } from \"@brigadecore/brigadier\";\nconst e: Event | undefined = undefined;\nconsole.log(typeof events.on, typeof Job, typeof logger.info);",
        ),
    ] {
        let run = run(
            ScriptSource::new(name, script),
            event(),
            WorkerLimits::default(),
        )
        .await;
        run.assert_succeeded();
        assert_eq!(run.messages(), ["function function function"], "{script}");
    }
}

#[tokio::test]
async fn every_name_of_brigades_api_is_exported() {
    let run = run_js(
        r#"const b = require("@brigadecore/brigadier");
        for (const name of ["events", "Job", "Container", "JobHost", "SerialGroup", "ConcurrentGroup", "ImagePullPolicy", "logger", "EventRegistry", "Logger"]) {
          if (b[name] === undefined) throw new Error(name + " is missing");
        }
        console.log(b.ImagePullPolicy.IfNotPresent, b.ImagePullPolicy.Always);"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["IfNotPresent Always"]);
}

#[tokio::test]
async fn requiring_an_unknown_module_throws_nodes_error() {
    let run = run_js("require(\"left-pad\");\n").await;
    run.assert_failed_with("Cannot find module 'left-pad'");
}

#[tokio::test]
async fn logger_lines_are_filtered_by_the_workers_log_level_and_console_is_not() {
    let script = r#"const { logger } = require("@brigadecore/brigadier");
        logger.debug("debug line");
        logger.info("info line");
        logger.warn("warn line");
        logger.error("error line");
        logger.child({ job: "build" }).info("about a job");
        console.debug("console debug");"#;
    let info = run(
        ScriptSource::new("brigade.js", script),
        event(),
        WorkerLimits::default(),
    )
    .await;
    info.assert_succeeded();
    assert_eq!(
        info.messages(),
        [
            "info line",
            "warn line",
            "error line",
            "about a job",
            "console debug"
        ]
    );
    let lines: Vec<String> = info.log.records().iter().map(|r| r.to_line()).collect();
    assert!(lines[1].ends_with(" INFO: info line"), "{lines:?}");
    assert!(lines[2].ends_with(" WARN: warn line"), "{lines:?}");
    assert!(
        lines[4].ends_with(" [job: build] INFO: about a job"),
        "{lines:?}"
    );
    assert_eq!(lines[5], "console debug");
    let time = lines[1].split(' ').next().unwrap();
    assert!(
        time.ends_with('Z') && time.contains('T'),
        "RFC 3339 time expected: {time}"
    );

    let mut debug_event = event();
    debug_event.worker.log_level = LogLevel::Debug;
    let debug = run(
        ScriptSource::new("brigade.js", script),
        debug_event,
        WorkerLimits::default(),
    )
    .await;
    assert_eq!(debug.messages()[0], "debug line");

    let mut error_event = event();
    error_event.worker.log_level = LogLevel::Error;
    let error = run(
        ScriptSource::new("brigade.js", script),
        error_event,
        WorkerLimits::default(),
    )
    .await;
    assert_eq!(error.messages(), ["error line", "console debug"]);
}

#[tokio::test]
async fn a_script_can_change_the_loggers_level() {
    let run = run_js(
        r#"const { logger } = require("@brigadecore/brigadier");
        logger.debug("hidden");
        logger.level = "debug";
        logger.debug("shown");
        console.log(logger.level);"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["shown", "debug"]);
}

#[tokio::test]
async fn console_formats_values_as_node_does() {
    let run = run_js(
        r#"console.log({ a: 1, b: "two", c: [1, 2] });
        console.log("%s has %d items", "list", 3);
        console.log(new Map([["k", 1]]), null, undefined, true);
        class Thing { constructor() { this.x = 1; } }
        console.log(new Thing());
        const circular = { name: "loop" }; circular.self = circular;
        console.log(circular);"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.messages(),
        [
            "{ a: 1, b: 'two', c: [ 1, 2 ] }",
            "list has 3 items",
            "Map(1) { 'k' => 1 } null undefined true",
            "Thing { x: 1 }",
            "{ name: 'loop', self: [Circular] }",
        ]
    );
}

#[tokio::test]
async fn the_event_has_brigades_shape() {
    let mut e = event();
    e.payload = "{\"tag\":\"v1\"}".into();
    e.short_title = "short".into();
    e.project.secrets = BTreeMap::from([("apiKey".to_string(), "k".to_string())]);
    e.worker.default_config_files = Some(BTreeMap::from([(
        "brigade.js".to_string(),
        "...".to_string(),
    )]));
    let run = run(
        ScriptSource::new(
            "brigade.js",
            r#"const { events } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", (event) => {
              console.log(JSON.stringify({
                id: event.id, source: event.source, type: event.type,
                project: event.project, payload: JSON.parse(event.payload),
                shortTitle: event.shortTitle, longTitle: event.longTitle,
                qualifiers: event.qualifiers, labels: event.labels,
                worker: event.worker,
              }));
            });
            events.process();"#,
        ),
        e.clone(),
        WorkerLimits::default(),
    )
    .await;
    run.assert_succeeded();
    let seen: serde_json::Value = serde_json::from_str(&run.messages()[0]).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "id": e.id,
            "source": "brigade.sh/cli",
            "type": "exec",
            "project": { "id": "test-project", "kubernetes": { "namespace": "" }, "secrets": { "apiKey": "k" } },
            "payload": { "tag": "v1" },
            "shortTitle": "short",
            "longTitle": "",
            "qualifiers": null,
            "labels": null,
            "worker": {
                "apiAddress": "", "apiToken": "", "logLevel": "INFO",
                "configFilesDirectory": ".brigade",
                "defaultConfigFiles": { "brigade.js": "..." },
                "git": null,
            },
        })
    );
}

#[tokio::test]
async fn each_worker_sees_only_its_own_projects_secrets() {
    let script = r#"const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", (event) => {
          console.log(JSON.stringify(event.project.secrets));
          console.log(JSON.stringify(event));
        });
        events.process();"#;
    let mut alpha = event();
    alpha.project.id = "alpha".into();
    alpha.project.secrets =
        BTreeMap::from([("token".to_string(), "alpha-secret-value".to_string())]);
    let mut beta = event();
    beta.project.id = "beta".into();
    beta.project.secrets = BTreeMap::from([("token".to_string(), "beta-secret-value".to_string())]);
    // Both workers run at the same time in the same sandbox.
    let (a, b) = tokio::join!(
        run(
            ScriptSource::new("brigade.js", script),
            alpha,
            WorkerLimits::default()
        ),
        run(
            ScriptSource::new("brigade.js", script),
            beta,
            WorkerLimits::default()
        ),
    );
    a.assert_succeeded();
    b.assert_succeeded();
    assert_eq!(a.messages()[0], r#"{"token":"alpha-secret-value"}"#);
    assert_eq!(b.messages()[0], r#"{"token":"beta-secret-value"}"#);
    assert!(!a.log.text().contains("beta-secret-value"));
    assert!(!b.log.text().contains("alpha-secret-value"));
}

#[tokio::test]
async fn await_suspends_on_host_timers_and_resumes_in_order() {
    let run = run_js(
        r#"const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
        (async () => {
          console.log("start");
          await sleep(30);
          console.log("after 30ms");
          const cancelled = setTimeout(() => console.log("never"), 10);
          clearTimeout(cancelled);
          setTimeout(() => console.log("timer b"), 20);
          setTimeout(() => console.log("timer a"), 5);
          await sleep(40);
          console.log("end");
        })();"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.messages(),
        ["start", "after 30ms", "timer a", "timer b", "end"]
    );
}

#[tokio::test]
async fn waits_overlap_so_concurrent_work_takes_the_longest_time_not_the_sum() {
    // Load the shared sandbox first: on a fresh machine that compiles the
    // plugin, which is not what this measures.
    crate::util::sandbox().await;
    let started = Instant::now();
    let run = run_js(
        r#"const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
        Promise.all([sleep(300), sleep(300), sleep(300)]).then(() => console.log("all done"));"#,
    )
    .await;
    let elapsed = started.elapsed();
    run.assert_succeeded();
    assert_eq!(run.messages(), ["all done"]);
    assert!(
        elapsed < Duration::from_millis(800),
        "three 300 ms waits took {elapsed:?}"
    );
}

#[tokio::test]
async fn intervals_repeat_until_cleared() {
    let run = run_js(
        r#"let n = 0;
        const id = setInterval(() => { n++; console.log("tick " + n); if (n === 3) clearInterval(id); }, 5);"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["tick 1", "tick 2", "tick 3"]);
}

#[tokio::test]
async fn a_job_without_an_executor_rejects_with_a_clear_error_the_script_can_catch() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("my-job", "debian", event);
          job.primaryContainer.command = ["echo"];
          try {
            await job.run();
          } catch (e) {
            console.log(e.message);
            return "caught";
          }
        });
        events.process();"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.messages(),
        [
            "Creating job my-job",
            "Error creating job \"my-job\": no job executor is configured for this run, so jobs cannot run",
        ]
    );
    assert_eq!(run.outcome.summary.as_deref(), Some("caught"));
}

#[tokio::test]
async fn jobs_containers_and_groups_have_brigades_defaults_and_shapes() {
    let run = run_js(
        r#"const { Job, Container, JobHost, SerialGroup, ConcurrentGroup } = require("@brigadecore/brigadier");
        const job = new Job("build", "debian", {});
        console.log(JSON.stringify(job));
        console.log(JSON.stringify(new Container("alpine")));
        console.log(JSON.stringify(new JobHost()));
        class MyJob extends Job {
          constructor() { super("my-job", "alpine", {}); this.primaryContainer.arguments = ["x"]; }
        }
        const mine = new MyJob();
        console.log(mine instanceof Job, mine.name, mine.primaryContainer.arguments[0]);
        const g = Job.sequence(job, mine);
        g.add(Job.concurrent());
        console.log(g instanceof SerialGroup, g.length(), Job.concurrent() instanceof ConcurrentGroup);
        console.log(Job.container("c", "img", {}).primaryContainer.image);"#,
    )
    .await;
    run.assert_succeeded();
    let messages = run.messages();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&messages[0]).unwrap(),
        serde_json::json!({
            "name": "build",
            "primaryContainer": {
                "image": "debian", "imagePullPolicy": "IfNotPresent", "workingDirectory": "",
                "command": [], "arguments": [], "environment": {},
                "workspaceMountPath": "", "sourceMountPath": "", "privileged": false, "useHostDockerSocket": false,
            },
            "sidecarContainers": {},
            "timeoutSeconds": 900,
            "host": { "nodeSelector": {} },
            "fallible": false,
        })
    );
    assert_eq!(messages[2], "{\"nodeSelector\":{}}");
    assert_eq!(messages[3], "true my-job x");
    assert_eq!(messages[4], "true 3 true");
    assert_eq!(messages[5], "img");
}

#[tokio::test]
async fn groups_run_serially_or_concurrently_and_stop_at_the_first_failure() {
    let run = run_js(
        r#"const { Job } = require("@brigadecore/brigadier");
        const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
        const step = (name, ms, fail) => ({ run: async () => {
          console.log("start " + name); await sleep(ms);
          if (fail) throw new Error(name + " failed");
          console.log("end " + name);
        }});
        (async () => {
          await Job.concurrent(step("a", 40), step("b", 10)).run();
          try {
            await Job.sequence(step("c", 1), step("d", 1, true), step("e", 1)).run();
          } catch (e) { console.log("caught: " + e.message); }
        })();"#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.messages(),
        [
            "start a",
            "start b",
            "end b",
            "end a",
            "start c",
            "end c",
            "start d",
            "caught: d failed"
        ]
    );
}

#[tokio::test]
async fn process_exit_ends_the_worker_with_its_code() {
    let failed =
        run_js("console.log(\"bye\");\nprocess.exit(3);\nconsole.log(\"unreachable\");\n").await;
    failed.assert_failed_with("the script exited with code 3");
    assert_eq!(failed.messages()[0], "bye");
    assert_eq!(failed.messages().len(), 2, "{:?}", failed.messages());
    let succeeded = run_js("process.exit(0);\n").await;
    succeeded.assert_succeeded();
    let exit_code = run_js("process.exitCode = 2;\n").await;
    exit_code.assert_failed_with("process.exitCode to 2");
}

#[tokio::test]
async fn typescript_errors_point_at_the_typescript_source() {
    let run = run(
        ScriptSource::new(
            "brigade.ts",
            "interface Shape {\n  sides: number;\n}\n\nconst s: Shape = { sides: 3 };\nif (s.sides === 3) {\n  throw new Error(\"triangles are not allowed\");\n}\n",
        ),
        event(),
        WorkerLimits::default(),
    )
    .await;
    run.assert_failed_with("brigade.ts:7:");
    run.assert_failed_with("Error: triangles are not allowed");
}

#[tokio::test]
async fn typescript_type_errors_do_not_fail_the_run() {
    let run = run(
        ScriptSource::new(
            "brigade.ts",
            "const n: number = \"not a number\";\nconsole.log(typeof n);\nlet x: string = 5;\nconsole.log(x);\n",
        ),
        event(),
        WorkerLimits::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["string", "5"]);
}
