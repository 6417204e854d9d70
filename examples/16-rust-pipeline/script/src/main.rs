//! examples/16-rust-pipeline: two sequences of jobs that run concurrently,
//! as examples/05-groups does in JavaScript, and a summary of how it went.
//!
//! Build it (from the repository's root) with
//!
//!     guest-sdk/rust/build.sh examples/16-rust-pipeline/script examples/16-rust-pipeline/.brigade/brigade.wasm
//!
//! and run it with `mizzen run examples/16-rust-pipeline`.

use std::time::Instant;

use brigadier::{Event, Events, Job, Result, concurrent, info, sequence};

const IMAGE: &str = "debian:latest";

/// A job that echoes `message`.
fn echo(name: &str, message: &str) -> Job {
    Job::new(name, IMAGE).command(["echo"]).arguments([message])
}

async fn exec(event: Event) -> Result<String> {
    info!(
        "event {} from {} ({})",
        event.id, event.source, event.event_type
    );
    let started = Instant::now();

    let job1 = echo("my-first-job", "My first job!");
    let job2 = echo("my-second-job", "My second job!");
    let job_a = echo("my-a-job", "My A job!");
    let job_b = echo("my-b-job", "My B job!");

    // The two sequences run at the same time; within each, one job after the
    // other. The first failure fails the group (and, through `?`, the event).
    concurrent([sequence([&job1, &job2]), sequence([&job_a, &job_b])])
        .run()
        .await?;

    let last = job2.logs().await?;
    let summary = format!(
        "4 jobs in 2 concurrent sequences succeeded in {:.1} s; my-second-job said {last:?}",
        started.elapsed().as_secs_f64()
    );
    info!("{summary}");
    // What the handler returns becomes the event's summary.
    Ok(summary)
}

fn main() {
    Events::new().on("brigade.sh/cli", "exec", exec).process();
}
