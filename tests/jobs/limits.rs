//! What a job's containers may use on a local engine: memory, CPU and
//! processes, by default and as a project sets them (`jobMemory`, `jobCpu`,
//! `jobProcesses`), as a Pod's limits would be on Kubernetes.

use mizzen_runtime::WorkerLimits;

use crate::util::{Project, Run, run_js_with_limits};

/// Runs one busybox job of `command` under `limits`; a failing job does
/// not fail the worker.
async fn job(command: &str, limits: WorkerLimits) -> Run {
    let script = format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("limited", "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", {command:?}];
          job.fallible = true;
          await job.run();
        }});
        events.process();"#
    );
    run_js_with_limits(&script, Project::default(), limits).await
}

fn output(run: &Run) -> String {
    run.job_lines().join("\n")
}

/// The words the job printed, without the job's prefix.
fn words(run: &Run) -> Vec<String> {
    run.job_lines()
        .iter()
        .flat_map(|line| line.trim_start_matches("[limited]").split_whitespace())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_job_that_takes_more_memory_than_its_limit_is_killed() {
    let limits = WorkerLimits {
        job_memory_bytes: 64 * 1024 * 1024,
        ..WorkerLimits::default()
    };
    // dd holds its whole block in memory.
    let run = job(
        "dd if=/dev/zero of=/dev/null bs=200M count=1 && echo survived",
        limits,
    )
    .await;
    run.assert_succeeded();
    assert!(!output(&run).contains("survived"), "{}", run.log.text());
    assert!(
        run.messages()
            .iter()
            .any(|m| m.starts_with("job limited ended FAILED (exit code 137)")),
        "{}",
        run.log.text()
    );
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_jobs_process_limit() {
    let limits = WorkerLimits {
        job_processes: 40,
        ..WorkerLimits::default()
    };
    let run = job(
        "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo started all",
        limits,
    )
    .await;
    run.assert_succeeded();
    let printed = output(&run);
    assert!(printed.contains("can't fork"), "{}", run.log.text());
    assert!(!printed.contains("started all"), "{}", run.log.text());
}

#[tokio::test]
async fn a_jobs_containers_have_the_default_limits_and_a_projects_cpu() {
    // cgroup v2 and v1 name the limits differently; the job prints both.
    let show = "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max 2>/dev/null \
        || cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us";
    let run = job(show, WorkerLimits::default()).await;
    run.assert_succeeded();
    let values = words(&run);
    assert_eq!(values[0], "1024", "{values:?}");
    assert_eq!(values[1], (2u64 << 30).to_string(), "{values:?}");
    let quota: f64 = values[2].parse().unwrap();
    let period: f64 = values[3].parse().unwrap();
    assert_eq!(quota / period, 2.0, "{values:?}");

    let limits = WorkerLimits {
        job_cpu_millis: 500,
        ..WorkerLimits::default()
    };
    let run = job(show, limits).await;
    let values = words(&run);
    let quota: f64 = values[2].parse().unwrap();
    let period: f64 = values[3].parse().unwrap();
    assert_eq!(quota / period, 0.5, "{values:?}");
}
