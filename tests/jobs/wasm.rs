//! Wasm jobs (`wasm:` images) through the real path: a script in the sandbox
//! starts them, they run as WASI commands in the same sandbox, beside
//! container jobs on the engine that share their workspace. The module is
//! tests/wasm-jobs/tool.wasm (built from tests/wasm-jobs/tool by
//! scripts/build-guests): it does what its arguments say.

use std::collections::BTreeMap;
use std::path::Path;

use mizzen_runtime::WorkerLimits;
use mizzen_runtime::executor::Source;

use crate::util::{Project, Run, run_js, run_js_with_limits};

/// The test tool's bytes.
fn tool() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm-jobs/tool.wasm"))
        .expect("tests/wasm-jobs/tool.wasm is committed")
}

/// `module` (a WASI preview 1 command) as a WASI preview 2 command
/// component, through wasmtime's preview 1 adapter.
pub fn component_of(module: &[u8], adapter: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .expect("the module is read")
        .adapter("wasi_snapshot_preview1", adapter)
        .expect("the adapter is read")
        .validate(true)
        .encode()
        .expect("the component is made")
}

/// A project whose source holds the tool as `tools/tool.wasm`, and as a
/// component as `tools/tool-p2.wasm`, with a workspace.
fn project(source: &Path) -> Project {
    std::fs::create_dir_all(source.join("tools")).unwrap();
    std::fs::write(source.join("tools/tool.wasm"), tool()).unwrap();
    std::fs::write(
        source.join("tools/tool-p2.wasm"),
        component_of(
            &tool(),
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        ),
    )
    .unwrap();
    std::fs::write(source.join("README.md"), "from the source\n").unwrap();
    Project {
        use_workspace: true,
        source: Some(Source::Directory(source.to_path_buf())),
        ..Project::default()
    }
}

/// A script whose handler runs `body`, with `tool(name, args, more)` making
/// a Wasm job of the tool.
fn script(body: &str) -> String {
    format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
        function tool(name, args, more) {{
          const job = new Job(name, "wasm:tools/tool.wasm", events.event);
          job.primaryContainer.arguments = args;
          Object.assign(job.primaryContainer, more || {{}});
          return job;
        }}
        events.on("brigade.sh/cli", "exec", async (event) => {{
          events.event = event;
          {body}
        }});
        events.process();"#
    )
}

async fn run(body: &str) -> (Run, tempfile::TempDir) {
    let source = tempfile::tempdir().unwrap();
    let run = run_js(&script(body), project(source.path())).await;
    (run, source)
}

#[tokio::test]
async fn command_and_arguments_are_argv_and_the_environment_its_environment() {
    let project_dir = tempfile::tempdir().unwrap();
    let mut project = project(project_dir.path());
    project.secrets = BTreeMap::from([("token".to_string(), "s3cret-4711".to_string())]);
    let run = run_js(
        &script(
            r#"await tool("named", ["args", "two words", "-x"]).run();
          await tool("own-name", ["a"], { command: ["lint", "args"] }).run();
          await tool("env", ["env", "GREETING", "TOKEN", "HOME"], {
            environment: { GREETING: "hello", TOKEN: "${{ secrets.token }}" },
          }).run();"#,
        ),
        project,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        [
            "[named] arg: tool.wasm",
            "[named] arg: args",
            "[named] arg: two words",
            "[named] arg: -x",
            "[own-name] arg: lint",
            "[own-name] arg: args",
            "[own-name] arg: a",
            "[env] GREETING=hello",
            "[env] TOKEN=s3cret-4711",
            "[env] HOME is not set",
        ]
    );
}

#[tokio::test]
async fn the_exit_code_decides_the_phase_and_stderr_is_logged_too() {
    let (run, _source) = run(r#"await tool("says", ["stderr", "to", "stderr"]).run();
          try {
            await tool("fails", ["exit", "7"]).run();
          } catch (e) {
            console.log(`caught: ${e.message}; phase ${e.phase}; exit code ${e.exitCode}; ${e.reason}`);
          }
          const fallible = tool("fallible", ["exit", "1"]);
          fallible.fallible = true;
          await fallible.run();
          await tool("zero", ["exit", "0"]).run();"#)
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[says] to stderr"]);
    run.assert_logged(
        r#"caught: Job "fails" failed; phase FAILED; exit code 7; job "fails" exited with code 7"#,
    );
}

#[tokio::test]
async fn a_container_job_and_wasm_jobs_share_the_workspace_and_each_gets_a_fresh_source() {
    let (run, source) = run(r#"const build = new Job("build", "localhost/busybox", event);
          build.primaryContainer.workspaceMountPath = "/work";
          build.primaryContainer.command = ["sh", "-c", "echo built by a container > /work/made.txt && mkdir -p /work/bin"];
          await build.run();
          await tool("read", ["cat", "/ws/made.txt", "/src/README.md"], {
            workspaceMountPath: "/ws",
            sourceMountPath: "/src",
          }).run();
          await tool("write", ["write", "/ws/from-wasm.txt", "written by a Wasm job"], { workspaceMountPath: "/ws" }).run();
          await tool("scribble", ["write", "/src/scribbled", "x"], { sourceMountPath: "/src" }).run();
          await tool("fresh", ["ls", "/src"], { sourceMountPath: "/src" }).run();
          const check = new Job("check", "localhost/busybox", event);
          check.primaryContainer.workspaceMountPath = "/work";
          check.primaryContainer.command = ["cat", "/work/from-wasm.txt"];
          await check.run();"#)
    .await;
    run.assert_succeeded();
    let lines = run.job_lines();
    for expected in [
        "[read] built by a container",
        "[read] from the source",
        "[check] written by a Wasm job",
        "[fresh] ls /src: README.md tools",
    ] {
        assert!(
            lines.contains(&expected.to_string()),
            "{expected}: {lines:#?}"
        );
    }
    assert!(
        !source.path().join("scribbled").exists(),
        "a job writes to its own checkout, never the project's directory"
    );
}

#[tokio::test]
async fn a_module_built_by_an_earlier_job_runs_from_the_workspace() {
    let (run, _source) = run(r#"const copy = new Job("copy", "localhost/busybox", event);
          copy.primaryContainer.workspaceMountPath = "/work";
          copy.primaryContainer.sourceMountPath = "/src";
          copy.primaryContainer.command = ["sh", "-c", "mkdir -p /work/out && cp /src/tools/tool.wasm /work/out/built.wasm"];
          await copy.run();
          const built = new Job("built", "wasm:workspace:out/built.wasm", event);
          built.primaryContainer.arguments = ["args"];
          await built.run();
          const missing = new Job("missing", "wasm:workspace:out/none.wasm", event);
          try { await missing.run(); } catch (e) { console.log(`missing: ${e.reason}`); }"#)
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        ["[built] arg: built.wasm", "[built] arg: args"]
    );
    run.assert_logged(
        r#"missing: job "missing": module out/none.wasm in the event's workspace: not found"#,
    );
}

#[tokio::test]
async fn limits_stop_a_runaway_a_memory_bomb_a_sleeper_and_a_flood_each_by_name() {
    let limits = WorkerLimits {
        cpu_time: std::time::Duration::from_millis(500),
        job_memory_bytes: 64 * 1024 * 1024,
        job_log_bytes: 64 * 1024,
        ..WorkerLimits::default()
    };
    let source = tempfile::tempdir().unwrap();
    let run = run_js_with_limits(
        &script(
            r#"const jobs = [
            tool("spin", ["spin"]),
            tool("bomb", ["alloc"]),
            tool("sleeper", ["sleep", "60"]),
            tool("flood", ["flood", "1073741824"]),
            tool("long-line", ["flood", "10485760", "0"]),
          ];
          jobs[2].timeoutSeconds = 1;
          for (const job of jobs) job.fallible = true;
          await Job.concurrent(...jobs).run();
          console.log("all ended");"#,
        ),
        project(source.path()),
        limits,
    )
    .await;
    run.assert_succeeded();
    let log = run.log.text();
    for expected in [
        r#"job spin ended FAILED: job "spin": CPU time limit exceeded"#,
        r#"job bomb ended FAILED: job "bomb": memory limit exceeded: the module asked for more than 64 MiB (spec.workerTemplate.limits.jobMemory)"#,
        r#"job sleeper ended TIMED_OUT: job "sleeper" timed out after 1s"#,
        "output of job flood truncated: its log limit of 64 KiB",
        "output of job long-line truncated",
    ] {
        assert!(log.contains(expected), "{expected}\n{log}");
    }
}

#[tokio::test]
async fn sequences_stop_at_a_failed_wasm_job_and_the_events_timeout_aborts_a_running_one() {
    let limits = WorkerLimits {
        wall_time: std::time::Duration::from_secs(2),
        ..WorkerLimits::default()
    };
    let source = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let run = run_js_with_limits(
        &script(
            r#"try {
            await Job.sequence(tool("first", ["exit", "4"]), tool("never", ["args"])).run();
          } catch (e) {
            console.log(`sequence stopped: ${e.message}`);
          }
          await tool("sleeper", ["sleep", "60"]).run();"#,
        ),
        project(source.path()),
        limits,
    )
    .await;
    assert_eq!(
        run.outcome.phase,
        mizzen_host_api::types::Phase::TimedOut,
        "{}",
        run.log.text()
    );
    run.assert_logged(r#"sequence stopped: Job "first" failed"#);
    let log = run.log.text();
    assert!(!log.contains("[never]"), "{log}");
    assert!(log.contains("job sleeper ended ABORTED"), "{log}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the sleeping job was not stopped with its event: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_wasi_preview2_command_component_runs_as_a_wasm_job() {
    let (run, _source) = run(r#"const p2 = (name, args, more) => {
            const job = new Job(name, "wasm:tools/tool-p2.wasm", event);
            job.primaryContainer.arguments = args;
            Object.assign(job.primaryContainer, more || {});
            return job;
          };
          await p2("p2-args", ["args", "two words"]).run();
          await p2("p2-env", ["env", "GREETING"], { environment: { GREETING: "hi" } }).run();
          await p2("p2-write", ["write", "/ws/p2.txt", "from a component\n"], { workspaceMountPath: "/ws" }).run();
          await p2("p2-read", ["cat", "/ws/p2.txt", "/etc/hostname"], { workspaceMountPath: "/ws" }).run();
          try { await p2("p2-fails", ["exit", "7"]).run(); }
          catch (e) { console.log(`p2-fails: ${e.phase} ${e.exitCode}`); }"#)
    .await;
    run.assert_succeeded();
    let lines = run.job_lines();
    for expected in [
        "[p2-args] arg: tool-p2.wasm",
        "[p2-args] arg: two words",
        "[p2-env] GREETING=hi",
        "[p2-write] wrote /ws/p2.txt",
        "[p2-read] from a component",
    ] {
        assert!(
            lines.contains(&expected.to_string()),
            "{expected}: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[p2-read] cannot read /etc/hostname")),
        "{lines:#?}"
    );
    // A component's wasi:cli/run says only success or failure.
    run.assert_logged("p2-fails: FAILED 1");
}
