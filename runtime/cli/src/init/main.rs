//! The project's script, built into .brigade/brigade.wasm by ../build.sh.
//! `mizzen run .` sends it a brigade.sh/cli exec event. The script API is in
//! ../brigadier (its README.md).

use brigadier::{Event, Events, Job, Result, concurrent, info};

fn shell(name: &str, script: &str) -> Job {
    Job::new(name, "debian:latest")
        .command(["sh", "-c"])
        .arguments([script])
}

async fn exec(event: Event) -> Result<String> {
    info!("handling event {}", event.id);
    let build = shell("build", "echo building");
    let test = shell("test", "echo testing");
    // Both jobs run at the same time; the first failure fails the event.
    concurrent([&build, &test]).run().await?;
    // What the handler returns is the event's summary.
    Ok("build and test succeeded".to_string())
}

fn main() {
    Events::new().on("brigade.sh/cli", "exec", exec).process();
}
