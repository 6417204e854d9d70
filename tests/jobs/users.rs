//! Containers' users (`user`) on the real engine: `nobody` unless a
//! container names another, root only under the project's `allowRoot`
//! policy, numbers only.

use mizzen_runtime::project::JobPolicies;

use crate::util::{Project, run_js};

/// A script whose handler runs `body` with `job(name, user, command)`
/// making a busybox job that mounts the workspace at /work.
fn script(body: &str) -> String {
    format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
        function job(name, user, command) {{
          const job = new Job(name, "localhost/busybox", event);
          if (user !== undefined) job.primaryContainer.user = user;
          job.primaryContainer.workspaceMountPath = "/work";
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

#[tokio::test]
async fn containers_run_as_nobody_or_the_user_they_name_and_share_the_workspace() {
    let run = run_js(
        &script(
            r#"await job("default", undefined, 'echo "$(id -u):$(id -g)" && echo from nobody > /work/shared.txt').run();
          await job("numbered", "1000:1001", 'echo "$(id -u):$(id -g)" && cat /work/shared.txt && echo from 1000 > /work/own.txt && cat /work/own.txt').run();
          await job("uid-only", "4242", 'echo "$(id -u):$(id -g)"').run();
          await job("named", "nobody", 'echo "$(id -u):$(id -g)"').run();"#,
        ),
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        [
            "[default] 65534:65534",
            "[numbered] 1000:1001",
            "[numbered] from nobody",
            "[numbered] from 1000",
            "[uid-only] 4242:4242",
            "[named] 65534:65534",
        ]
    );
}

#[tokio::test]
async fn root_needs_the_projects_policy_and_a_user_must_be_numbers() {
    let body = r#"for (const [name, user] of [["root", "root"], ["zero", "0:0"], ["name", "postgres"],
                  ["negative", "-1"], ["huge", "2147483648"], ["half", "1000:"]]) {
            try {
              await job(name, user, "id -u").run();
            } catch (e) {
              console.log(`${name}: ${e.message}`);
            }
          }"#;
    let refused = run_js(
        &script(body),
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    refused.assert_succeeded();
    assert!(refused.job_lines().is_empty(), "{:?}", refused.job_lines());
    for expected in [
        r#"root: Error creating job "root": job "root": primaryContainer: runs as root (user "root"), which the project's policy forbids (spec.workerTemplate.jobPolicies.allowRoot is not true)"#,
        r#"zero: Error creating job "zero": job "zero": primaryContainer: runs as root (user "0:0")"#,
        r#"name: Error creating job "name": job "name": primaryContainer: user "postgres" must be root, nobody, UID or UID:GID"#,
        r#"negative: Error creating job "negative": job "negative": primaryContainer: user "-1" must be root"#,
        r#"huge: Error creating job "huge": job "huge": primaryContainer: user "2147483648": an id is at most 2147483647"#,
        r#"half: Error creating job "half": job "half": primaryContainer: user "1000:" must be root"#,
    ] {
        refused.assert_logged(expected);
    }

    let allowed = run_js(
        &script(r#"await job("root", "root", 'echo "$(id -u):$(id -g)"').run();"#),
        Project {
            use_workspace: true,
            policies: JobPolicies {
                allow_root: true,
                ..JobPolicies::default()
            },
            ..Project::default()
        },
    )
    .await;
    allowed.assert_succeeded();
    assert_eq!(allowed.job_lines(), ["[root] 0:0"]);
}
