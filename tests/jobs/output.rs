//! A job's output: every line up to the job's log limit kept once and in
//! order, whatever its volume; past the limit, the log says how much was cut.

use mizzen_runtime::WorkerLimits;

use crate::util::{Project, Run, run_js, run_js_with_limits};

/// A script whose one job runs `command` in busybox and returns how many
/// lines `job.logs()` gave back.
fn printing(command: &str) -> String {
    format!(
        r#"const {{ events, Job }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("printer", "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", {command:?}];
          await job.run();
          return String((await job.logs()).split("\n").length);
        }});
        events.process();"#
    )
}

/// The primary's lines, in the order they were logged.
fn printed(run: &Run) -> Vec<String> {
    run.job_lines()
        .into_iter()
        .filter_map(|line| line.strip_prefix("[printer] ").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn every_line_of_a_fast_printing_job_is_kept_once_and_in_order() {
    // Podman's log stream, which the executor used to follow, lost and
    // repeated lines of a container printing this fast (1,833 lost and
    // 1,619 repeated of 500,000).
    const LINES: usize = 500_000;
    let run = run_js(&printing(&format!("seq 1 {LINES}")), Project::default()).await;
    run.assert_succeeded();
    let printed = printed(&run);
    let expected: Vec<String> = (1..=LINES).map(|n| n.to_string()).collect();
    if printed != expected {
        let first_difference = printed
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(printed.len().min(LINES));
        panic!(
            "{} lines logged for {LINES} printed; the first difference is at line {}: {:?}",
            printed.len(),
            first_difference + 1,
            printed.get(first_difference)
        );
    }
    assert_eq!(run.outcome.summary.as_deref(), Some("500000"));
}

#[tokio::test]
async fn each_stream_of_a_container_keeps_its_own_lines_whole() {
    // Both streams write parts of lines; neither may splice into the
    // other's unfinished line.
    let run = run_js(
        &printing(
            "for i in 1 2 3 4 5 6 7 8 9 10; do printf out-$i-; printf err-$i- >&2; echo end-$i; echo end-$i >&2; done",
        ),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    let printed = printed(&run);
    let out: Vec<&String> = printed.iter().filter(|l| l.starts_with("out")).collect();
    let err: Vec<&String> = printed.iter().filter(|l| l.starts_with("err")).collect();
    for i in 1..=10 {
        assert_eq!(out[i - 1], &format!("out-{i}-end-{i}"), "{printed:?}");
        assert_eq!(err[i - 1], &format!("err-{i}-end-{i}"), "{printed:?}");
    }
    assert_eq!(printed.len(), 20, "{printed:?}");
}

#[tokio::test]
async fn output_past_the_jobs_log_limit_is_cut_and_the_log_says_how_much() {
    const LINES: u64 = 300_000;
    const LIMIT: u64 = 1024 * 1024;
    let limits = WorkerLimits {
        job_log_bytes: LIMIT,
        ..WorkerLimits::default()
    };
    let run = run_js_with_limits(
        &printing(&format!("seq 1 {LINES}")),
        Project::default(),
        limits,
    )
    .await;
    run.assert_succeeded();
    // Lines are kept whole while they fit; each counts its newline.
    let size = |n: u64| n.to_string().len() as u64 + 1;
    let (mut kept, mut bytes) = (0, 0);
    while kept < LINES && bytes + size(kept + 1) <= LIMIT {
        kept += 1;
        bytes += size(kept);
    }
    let cut_bytes: u64 = (kept + 1..=LINES).map(size).sum();
    let printed = printed(&run);
    let expected: Vec<String> = (1..=kept).map(|n| n.to_string()).collect();
    assert!(
        printed == expected,
        "{} lines kept, expected {kept}",
        printed.len()
    );
    let messages = run.messages();
    let said = format!(
        "output of job printer was truncated at its log limit of 1 MiB (spec.workerTemplate.limits.jobLogSize): {} more lines ({cut_bytes} bytes) were not kept",
        LINES - kept
    );
    assert!(
        messages.contains(&said),
        "expected {said:?} among {:?}",
        messages
            .iter()
            .filter(|m| !m.chars().all(|c| c.is_ascii_digit()))
            .collect::<Vec<_>>()
    );
    // Said once as it happens, once when the job ends, then the end.
    let cut = messages
        .iter()
        .position(|m| m.contains("truncated: its log limit of 1 MiB"))
        .expect("the cut is said as it happens");
    let summary = messages.iter().position(|m| *m == said).unwrap();
    let ended = messages
        .iter()
        .position(|m| m.starts_with("job printer ended"))
        .unwrap_or(usize::MAX);
    assert!(cut < summary && summary < ended, "{cut} {summary} {ended}");
}
