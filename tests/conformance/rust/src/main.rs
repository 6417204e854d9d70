//! The Rust SDK's conformance script: one handler per row of
//! tests/conformance/BEHAVIOURS.md (the row's number leads each handler).
//! Built into brigade.wasm by
//! `guest-sdk/rust/build.sh tests/conformance/rust tests/conformance/rust/brigade.wasm`.

use std::hint::black_box;
use std::time::Duration;

use brigadier::{
    Error, Event, Events, Job, Level, Result, concurrent, info, logger, secret, sequence,
    set_summary, sleep, workspace,
};

const SOURCE: &str = "conformance";
const WILD: &str = "conformance-wild";
const IMAGE: &str = "localhost/busybox:latest";

/// A job that runs `script` with `sh -c`.
fn shell(name: &str, script: &str) -> Job {
    Job::new(name, IMAGE)
        .command(["sh", "-c"])
        .arguments([script])
}

fn main() {
    let mut events = Events::new();
    events
        // 1
        .on(SOURCE, "match", async |_| {
            info!("matched match");
            Ok(())
        })
        // 2
        .on(WILD, "*", async |event: Event| {
            info!("wildcard got {}", event.event_type);
            Ok(())
        })
        // 3
        .on(WILD, "exact", async |_| {
            info!("exact handler");
            Ok(())
        })
        // 4
        .on(SOURCE, "last-wins", async |_| {
            info!("first registration");
            Ok(())
        })
        .on(SOURCE, "last-wins", async |_| {
            info!("second registration");
            Ok(())
        })
        // 5: `unsubscribed` has no handler.
        // 6
        .on(SOURCE, "event-fields", async |event: Event| {
            let team = event.labels.get("team").map(String::as_str).unwrap_or("");
            info!(
                "id={} project={} source={} type={} label={} title={}",
                event.id, event.project.id, event.source, event.event_type, team, event.short_title
            );
            Ok(())
        })
        // 7
        .on(SOURCE, "payload", async |event: Event| {
            let payload: serde_json::Value = event.payload_json()?;
            let name = payload["name"].as_str().unwrap_or_default();
            info!("name={name} count={}", payload["count"]);
            Ok(())
        })
        // 8 and 9 (the log level is the event's)
        .on(SOURCE, "log-levels", async |_| {
            let logger = logger();
            logger.log(Level::Debug, "level debug");
            logger.info("level info");
            logger.warn("level warn");
            logger.error("level error");
            Ok(())
        })
        // 10: the handler's result becomes the summary.
        .on(SOURCE, "summary", async |_| Ok("conformance summary"))
        // 11
        .on(SOURCE, "summary-limit", async |_| {
            if let Err(error) = set_summary("x".repeat(4097)) {
                info!("summary refused: {}", error.code().unwrap_or("none"));
            }
            set_summary("short")?;
            Ok(())
        })
        // 12
        .on(SOURCE, "job-success", async |_| {
            shell("hello", "echo hello from job").run().await?;
            info!("job hello succeeded");
            Ok(())
        })
        // 13: the job's error fails the handler.
        .on(SOURCE, "job-failure", async |_| {
            shell("fails", "exit 3").run().await?;
            Ok(())
        })
        // 14
        .on(SOURCE, "job-failure-caught", async |_| {
            if let Err(error) = shell("fails", "exit 3").run().await {
                let phase = error.phase().map(|p| p.to_string()).unwrap_or_default();
                let code = error.exit_code().map(|c| c.to_string()).unwrap_or_default();
                info!("caught phase={phase} exitCode={code}");
            }
            Ok(())
        })
        // 15
        .on(SOURCE, "job-timeout", async |_| {
            if let Err(error) = shell("sleeper", "sleep 60").timeout_seconds(1).run().await {
                let phase = error.phase().map(|p| p.to_string()).unwrap_or_default();
                info!("caught phase={phase}");
            }
            Ok(())
        })
        // 16
        .on(SOURCE, "job-fallible", async |_| {
            shell("fails", "exit 3").fallible(true).run().await?;
            info!("fallible job done");
            Ok(())
        })
        // 17: the waiter fails unless both jobs run at once.
        .on(SOURCE, "concurrent", async |_| {
            let waiter = shell(
                "waiter",
                "for i in $(seq 1 300); do [ -f /workspace/signal ] && exit 0; sleep 0.1; done; exit 1",
            )
            .workspace_mount_path("/workspace");
            let signaller =
                shell("signaller", "touch /workspace/signal").workspace_mount_path("/workspace");
            concurrent([&waiter, &signaller]).run().await?;
            info!("concurrent done");
            Ok(())
        })
        // 18
        .on(SOURCE, "sequence", async |_| {
            let one = shell("one", "echo 1 >> /workspace/order").workspace_mount_path("/workspace");
            let two = shell("two", "echo 2 >> /workspace/order").workspace_mount_path("/workspace");
            sequence([one, two]).run().await?;
            let order = workspace::read("order")?;
            info!("order={}", order.lines().collect::<Vec<_>>().join(","));
            Ok(())
        })
        // 19
        .on(SOURCE, "sequence-stops", async |_| {
            let group = sequence([shell("fails", "exit 1"), shell("never", "echo never")]);
            if let Err(error) = group.run().await {
                info!("sequence stopped: {error}");
            }
            Ok(())
        })
        // 20
        .on(SOURCE, "logs", async |_| {
            let talker = shell("talker", "echo one; echo two");
            talker.run().await?;
            let logs = talker.logs().await?;
            info!("logs={}", logs.split('\n').collect::<Vec<_>>().join("|"));
            Ok(())
        })
        // 21
        .on(SOURCE, "secrets", async |_| {
            info!("token length={}", secret("token")?.chars().count());
            Ok(())
        })
        // 22
        .on(SOURCE, "script-secrets", async |event: Event| {
            let secrets = &event.project.secrets;
            info!(
                "visible={} hidden={}",
                secrets.contains_key("visible"),
                secrets.contains_key("hidden")
            );
            Ok(())
        })
        // 23
        .on(SOURCE, "workspace", async |_| {
            workspace::write("notes/a.txt", "hello workspace")?;
            let read = workspace::read("notes/a.txt")?;
            let names = |entries: Vec<workspace::Entry>| {
                entries.into_iter().map(|e| e.name).collect::<Vec<_>>().join(",")
            };
            let entries = names(workspace::list("notes")?);
            workspace::remove("notes")?;
            let after = names(workspace::list("")?);
            info!("read={read} entries={entries} after={after}");
            Ok(())
        })
        // 24
        .on(SOURCE, "workspace-refused", async |_| {
            if let Err(error) = workspace::read("../outside.txt") {
                info!("refused: {}", error.code().unwrap_or("none"));
            }
            Ok(())
        })
        // 25
        .on(SOURCE, "workspace-not-configured", async |_| {
            if let Err(error) = workspace::read("a.txt") {
                info!("workspace: {}", error.code().unwrap_or("none"));
            }
            Ok(())
        })
        // 26
        .on(SOURCE, "throw", async |_| -> Result<()> {
            Err(Error::new("boom from conformance"))
        })
        // 27
        .on(SOURCE, "panic", async |_| -> Result<()> {
            panic!("panic from conformance")
        })
        // 28: 1 MiB blocks, each touched, up to 256 MiB.
        .on(SOURCE, "memory", async |_| {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for i in 0..256 {
                let mut block = vec![0u8; 1 << 20];
                for byte in block.iter_mut().step_by(4096) {
                    *byte = i as u8;
                }
                blocks.push(black_box(block));
            }
            info!("allocated {} MiB", black_box(&blocks).len());
            Ok(())
        })
        // 29
        .on(SOURCE, "cpu", async |_| -> Result<()> {
            let mut x = 1u64;
            loop {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
            }
        })
        // 30
        .on(SOURCE, "exit", async |_| -> Result<()> { brigadier::exit(3) })
        // 31
        .on(SOURCE, "sleep", async |_| {
            sleep(Duration::from_millis(50)).await?;
            info!("slept");
            Ok(())
        });
    events.process();
}
