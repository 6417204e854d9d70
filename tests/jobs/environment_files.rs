//! Environment files (`environmentFile`) through the real path: the host
//! reads them from the project's source or the event's workspace before a
//! container job (on the engine) or a Wasm job (in the sandbox) starts.

use std::path::Path;

use crate::util::{Project, run_js};
use mizzen_runtime::executor::Source;

/// A project whose source holds `ci.env`, `broken.env` and the Wasm jobs'
/// test tool, with a workspace.
fn project(source: &Path) -> Project {
    std::fs::write(
        source.join("ci.env"),
        "# settings for CI\r\n\
         export GREETING=\"hello from the file\"\r\n\
         OVERRIDDEN=from the file\r\n\
         QUOTED='a # b' # a comment\r\n",
    )
    .unwrap();
    std::fs::write(
        source.join("broken.env"),
        "A=1\n\nthis line has no equals sign\n",
    )
    .unwrap();
    std::fs::create_dir_all(source.join("tools")).unwrap();
    std::fs::write(
        source.join("tools/tool.wasm"),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm-jobs/tool.wasm")).unwrap(),
    )
    .unwrap();
    Project {
        use_workspace: true,
        source: Some(Source::Directory(source.to_path_buf())),
        ..Project::default()
    }
}

#[tokio::test]
async fn environment_files_from_the_source_and_the_workspace_reach_containers_and_wasm_jobs() {
    let source = tempfile::tempdir().unwrap();
    let run = run_js(
        r#"const { events, Job, Container } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const show = new Job("show", "localhost/busybox", event);
          show.primaryContainer.environmentFile = "ci.env";
          show.primaryContainer.environment = { OVERRIDDEN: "from the script" };
          show.primaryContainer.command = ["sh", "-c", 'echo "$GREETING|$OVERRIDDEN|$QUOTED"'];
          await show.run();

          const write = new Job("write", "localhost/busybox", event);
          write.primaryContainer.workspaceMountPath = "/work";
          write.primaryContainer.command = ["sh", "-c", "mkdir -p /work/out && echo BUILD_ID=42 > /work/out/build.env"];
          await write.run();

          const tool = new Job("tool", "wasm:tools/tool.wasm", event);
          tool.primaryContainer.environmentFile = "workspace:out/build.env";
          tool.primaryContainer.arguments = ["env", "BUILD_ID", "GREETING"];
          await tool.run();

          const sidecar = new Job("sidecar", "localhost/busybox", event);
          sidecar.primaryContainer.command = ["sh", "-c", "sleep 1"];
          const helper = new Container("localhost/busybox");
          helper.environmentFile = "workspace:out/build.env";
          helper.command = ["sh", "-c", 'echo "build $BUILD_ID"'];
          sidecar.sidecarContainers = { helper };
          await sidecar.run();
        });
        events.process();"#,
        project(source.path()),
    )
    .await;
    run.assert_succeeded();
    let lines = run.job_lines();
    for expected in [
        "[show] hello from the file|from the script|a # b",
        "[tool] BUILD_ID=42",
        "[tool] GREETING is not set",
        "[sidecar/helper] build 42",
    ] {
        assert!(
            lines.contains(&expected.to_string()),
            "{expected}: {lines:#?}"
        );
    }
}

#[tokio::test]
async fn a_bad_or_missing_environment_file_fails_its_job_naming_the_file_and_line() {
    let source = tempfile::tempdir().unwrap();
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          for (const [name, file] of [["broken", "broken.env"], ["missing", "workspace:none.env"], ["outside", "../x.env"]]) {
            const job = new Job(name, "localhost/busybox", event);
            job.primaryContainer.environmentFile = file;
            job.primaryContainer.command = ["echo", "ran"];
            try {
              await job.run();
              console.log(`${name} ran`);
            } catch (e) {
              console.log(`${name}: ${e.reason || e.message}`);
            }
          }
        });
        events.process();"#,
        project(source.path()),
    )
    .await;
    run.assert_succeeded();
    assert!(run.job_lines().is_empty(), "{:#?}", run.job_lines());
    run.assert_logged(
        r#"broken: job "broken": primaryContainer: environmentFile "broken.env": broken.env:3: expected VAR=value"#,
    );
    run.assert_logged(
        r#"missing: job "missing": primaryContainer: environmentFile "workspace:none.env": not found"#,
    );
    run.assert_logged(
        r#"outside: Error creating job "outside": job "outside": primaryContainer: environmentFile: "../x.env" must not contain '..'"#,
    );
}
