//! Workers waiting on jobs: `cargo bench -p mizzen-runtime --bench waiting`.
//!
//! 10,000 workers are alive at once, each inside `await job.run()` for a job
//! of a fake executor that ends the job only when told to. On one thread
//! (the figures are per core):
//!
//! 1. **Resident memory per waiting worker**: the growth of the process's
//!    `VmRSS` (/proc/self/status) from before the workers start to when every
//!    one of them waits, divided by their number. It counts everything a
//!    waiting worker holds: its instance's memory and stack, its Store, its
//!    host tasks, and the fake job. Goal: ≤ 350 KiB.
//! 2. **Wait/wake latency**: jobs are then ended one at a time, a few hundred
//!    microseconds apart, while the others keep waiting. For each, the time
//!    from the executor ending the job (stamped in the job's task as it
//!    returns its result) to the script's first line after the `await`
//!    (stamped by the log sink as the host hands it over): the host's ticket,
//!    the guest's resumption and QuickJS's promise machinery. No goal is set
//!    for it; it is reported with its p50 and p99.
//! 3. The remaining jobs are ended all at once, and the time until every
//!    worker has ended is reported (wakes per second under a burst).
//!
//! `MIZZEN_BENCH_WAITING` (default 10,000) sets the workers,
//! `MIZZEN_BENCH_WAKES` (default 2,000) the jobs ended one at a time.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{env_usize, figure, micros, percentile, proc_smaps_bytes, proc_status_bytes};
use mizzen_host_api::types::{JobResult, Phase};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, SpawnedJob,
};
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::project::JobPolicies;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, WorkerLimits, WorkerRequest};
use tokio::sync::oneshot;

const WAITING_WORKER: &str = r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const job = new Job("held", "localhost/busybox", event);
  await job.run();
  console.log("woke");
});
events.process();
"#;

/// Time between two jobs ended one at a time: longer than a worker takes to
/// wake, log and end (well under 100 µs), so that each wake is measured on
/// an otherwise idle thread, as the only job that just ended.
const WAKE_SPACING: Duration = Duration::from_micros(250);

/// Workers run before measuring, so that one-off allocations (the runtime's,
/// the first pool slots') are not counted as the waiting workers'.
const WARM_UP_WORKERS: usize = 16;

/// When each worker's job ended and when its script went on; indexed by
/// worker.
#[derive(Default)]
struct Times {
    ended: Mutex<Vec<Option<Instant>>>,
    woke: Mutex<Vec<Option<Instant>>>,
}

impl Times {
    fn new(workers: usize) -> Self {
        Self {
            ended: Mutex::new(vec![None; workers]),
            woke: Mutex::new(vec![None; workers]),
        }
    }

    fn set(slot: &Mutex<Vec<Option<Instant>>>, index: usize, at: Instant) {
        slot.lock().expect("not poisoned")[index] = Some(at);
    }
}

/// An executor whose jobs run until `release` ends them. A job belongs to
/// the worker whose index is its event's id.
struct HeldExecutor {
    times: Arc<Times>,
    releases: Mutex<HashMap<usize, oneshot::Sender<()>>>,
    /// `RunningJob::wait` calls so far: two per job (the host's end-of-job
    /// line and the script's `JobWait`), so that 2 × workers means every
    /// worker is waiting.
    waits: Arc<AtomicUsize>,
}

impl HeldExecutor {
    fn release(&self, index: usize) {
        let sender = self.releases.lock().expect("not poisoned").remove(&index);
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

#[async_trait]
impl JobExecutor for HeldExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        let index: usize = job.event.event_id.parse().expect("a worker index");
        let (sender, released) = oneshot::channel();
        self.releases
            .lock()
            .expect("not poisoned")
            .insert(index, sender);
        let times = self.times.clone();
        let spawned = SpawnedJob::spawn(move |mut cancelled| async move {
            tokio::select! {
                _ = released => {
                    Times::set(&times.ended, index, Instant::now());
                    JobResult { phase: Phase::Succeeded, exit_code: Some(0), reason: None }
                }
                _ = cancelled.wait_for(|c| *c) => {
                    JobResult::ended(Phase::Aborted, None, "cancelled")
                }
            }
        });
        Ok(Arc::new(HeldJob {
            job: spawned,
            waits: self.waits.clone(),
        }))
    }

    async fn finish_event(&self, _: &EventContext) {}
}

struct HeldJob {
    job: Arc<SpawnedJob>,
    waits: Arc<AtomicUsize>,
}

#[async_trait]
impl RunningJob for HeldJob {
    async fn wait(&self) -> JobResult {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.job.wait().await
    }

    async fn cancel(&self) {
        self.job.cancel().await;
    }
}

/// Stamps the moment the script's line after the `await` arrives.
struct WakeLog {
    index: usize,
    times: Arc<Times>,
}

impl LogSink for WakeLog {
    fn record(&self, record: LogRecord) {
        if record.message == "woke" {
            Times::set(&self.times.woke, self.index, Instant::now());
        }
    }
}

fn main() {
    // One thread: the memory and latency are those of one core's workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, bench());
}

async fn bench() {
    let workers = env_usize("MIZZEN_BENCH_WAITING", 10_000).max(1);
    let wakes = env_usize("MIZZEN_BENCH_WAKES", 2_000).min(workers);
    let total = workers + WARM_UP_WORKERS;
    // Every worker holds an instance while it waits; the default (1,000)
    // is a server's, far fewer than this.
    let sandbox = Arc::new(common::sandbox(total as u32 + 16).await);
    let script = sandbox
        .compile(&ScriptSource::new("brigade.js", WAITING_WORKER))
        .await
        .expect("compiles");
    let times = Arc::new(Times::new(total));
    let executor = Arc::new(HeldExecutor {
        times: times.clone(),
        releases: Mutex::new(HashMap::new()),
        waits: Arc::new(AtomicUsize::new(0)),
    });
    let start = |index: usize| {
        let (sandbox, script, executor) = (sandbox.clone(), script.clone(), executor.clone());
        let log = Arc::new(WakeLog {
            index,
            times: times.clone(),
        });
        tokio::task::spawn_local(async move {
            let event = EventContext {
                event_id: index.to_string(),
                project_id: "bench".into(),
                use_workspace: false,
                source: None,
                policies: JobPolicies::default(),
                image_pull_secrets: Vec::new(),
                pull_secrets: Vec::new(),
                workspace_size: None,
                container_limits: Default::default(),
                kept: Default::default(),
                volumes: Default::default(),
            };
            let request = WorkerRequest {
                event: common::event(&index.to_string()),
                limits: WorkerLimits::default(),
                log,
                jobs: JobCapability::Executor {
                    executor,
                    event: Arc::new(event),
                },
            };
            sandbox.run_compiled(&script, request).await
        })
    };
    let all_waiting = |count: usize| {
        let executor = executor.clone();
        async move {
            let started = Instant::now();
            while executor.waits.load(Ordering::Relaxed) < 2 * count {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "the workers did not all reach their job's wait"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    let warm_up: Vec<_> = (workers..total).map(start).collect();
    all_waiting(WARM_UP_WORKERS).await;
    for index in workers..total {
        executor.release(index);
    }
    for worker in warm_up {
        let outcome = worker.await.expect("joins");
        assert!(outcome.succeeded(), "{outcome:?}");
    }
    executor.waits.store(0, Ordering::Relaxed);

    let before = proc_status_bytes("VmRSS");
    let before_parts = ["RssAnon", "RssFile", "RssShmem"].map(proc_status_bytes);
    let before_pss = ["Pss", "Pss_Anon", "Pss_File"].map(proc_smaps_bytes);
    let started = Instant::now();
    let running: Vec<_> = (0..workers).map(start).collect();
    all_waiting(workers).await;
    let ready = started.elapsed();
    // Let whatever the last workers set in motion settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = proc_status_bytes("VmRSS");
    let during_parts = ["RssAnon", "RssFile", "RssShmem"].map(proc_status_bytes);
    let during_pss = ["Pss", "Pss_Anon", "Pss_File"].map(proc_smaps_bytes);
    let per_worker = during.saturating_sub(before) as f64 / workers as f64 / 1024.0;
    let part =
        |i: usize| during_parts[i].saturating_sub(before_parts[i]) as f64 / workers as f64 / 1024.0;
    let pss =
        |i: usize| during_pss[i].saturating_sub(before_pss[i]) as f64 / workers as f64 / 1024.0;
    println!("{workers} workers, each waiting in `await job.run()` (one thread)");
    println!(
        "  all waiting after        {:>8.0} ms",
        ready.as_secs_f64() * 1e3
    );
    println!(
        "  VmRSS before / during    {:>8.0} / {:.0} MiB",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0
    );
    println!("  resident per worker      {per_worker:>8.0} KiB");
    println!(
        "    of which anonymous {:.0} KiB, file {:.0} KiB, shared memory {:.0} KiB",
        part(0),
        part(1),
        part(2)
    );
    // The file pages are the compiled plugin's memory image, the same page
    // cache pages mapped into every instance's slot: VmRSS counts them once
    // per slot, the proportional set size once in all.
    println!(
        "  proportional (Pss) per worker {:>3.0} KiB: anonymous {:.0} KiB, file {:.0} KiB",
        pss(0),
        pss(1),
        pss(2)
    );

    // Wakes one at a time, from another thread as an engine's answer would
    // come, while the rest wait.
    let releaser = {
        let executor = executor.clone();
        std::thread::spawn(move || {
            for index in 0..wakes {
                executor.release(index);
                std::thread::sleep(WAKE_SPACING);
            }
        })
    };
    let mut running = running.into_iter();
    for worker in running.by_ref().take(wakes) {
        assert!(worker.await.expect("joins").succeeded());
    }
    releaser.join().expect("the releaser ends");
    let burst = Instant::now();
    for index in wakes..workers {
        executor.release(index);
    }
    for worker in running {
        assert!(worker.await.expect("joins").succeeded());
    }
    let burst = burst.elapsed();

    let (ended, woke) = (
        times.ended.lock().expect("not poisoned"),
        times.woke.lock().expect("not poisoned"),
    );
    let mut latencies: Vec<Duration> = (0..wakes)
        .map(|i| {
            let (ended, woke) = (ended[i].expect("ended"), woke[i].expect("woke"));
            woke.saturating_duration_since(ended)
        })
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!();
    println!(
        "wait/wake, {wakes} jobs ended one at a time ({} µs apart) while the others wait",
        WAKE_SPACING.as_micros()
    );
    println!("  job ended → script goes on  p50 {:.1} µs", micros(p50));
    println!("                              p99 {:.1} µs", micros(p99));
    println!(
        "                              max {:.1} µs",
        micros(latencies.last().copied().unwrap_or_default())
    );
    if workers > wakes {
        println!(
            "burst: the other {} jobs ended at once, every worker done after {:.0} ms ({:.0} wakes/s)",
            workers - wakes,
            burst.as_secs_f64() * 1e3,
            (workers - wakes) as f64 / burst.as_secs_f64()
        );
    }
    figure(
        &format!("resident memory per waiting worker ({workers} waiting on a job)"),
        format!("{per_worker:.0} KiB"),
        Some(("≤ 350 KiB", per_worker <= 350.0)),
    );
    figure(
        "resident memory per waiting worker as Pss (shared file pages counted once)",
        format!("{:.0} KiB", pss(0)),
        None,
    );
    figure(
        "wait/wake latency, job ended → script goes on, p50",
        format!("{:.1} µs", micros(p50)),
        None,
    );
    figure(
        "wait/wake latency, job ended → script goes on, p99",
        format!("{:.1} µs", micros(p99)),
        None,
    );
}
