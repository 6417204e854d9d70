//! A catalogue of bad inputs through the real sandbox: one table of hostile
//! scripts (grouped A, B... by what they attack, as the banners below say),
//! each run on one shared [`Sandbox`] with jobs going to a recording
//! executor, each checked for
//!
//! - **the named failure** it must end with (a [`WorkerFailure`] variant and
//!   the limit, rule or `file:line` its message names), or the refusal the
//!   script received (which it returns as its summary);
//! - **survival**: right after it, a well-behaved script (a timer, a job, a
//!   summary) still runs SUCCEEDED on the same sandbox, no case panicked and
//!   none outlived a generous bound;
//! - **no leak**: a canary secret given to the event's project never appears
//!   in what the case produced (log records, summary, failure, the jobs the
//!   executor was handed) unless the script itself printed it, and tenant
//!   A's secret never reaches tenant B's worker.
//!
//! The worker's log is not redacted here (the server redacts it,
//! runtime/server/src/redact.rs): what a tenant sees of a secret its own
//! script prints is tested at the server, in
//! runtime/cli/tests/adversarial_server.rs.
//!
//! The test prints `adversarial: N cases, 0 host crashes, 0 leaks`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mizzen_host_api::types::{Event, JobResult, Phase, ScriptErrorKind};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, Source, SpawnedJob,
    WorkspaceError,
};
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::{MAX_SCRIPT_BYTES, ScriptSource};
use mizzen_runtime::{JobCapability, Sandbox, WorkerFailure, WorkerLimits, WorkerRequest};
use mizzen_tests::worker::Run;

/// The secret every case's project holds.
const CANARY: &str = "s3cr3t-canary-7c1e9a52d4";
/// Tenant A's secret, for the cases that run tenant B after tenant A.
const TENANT_A_CANARY: &str = "s3cr3t-canary-tenant-a-4b8d0f";

/// How long any one case may take, however hostile: far above every limit a
/// case sets (the longest is a few seconds of CPU on a loaded machine).
const CASE_BOUND: Duration = Duration::from_secs(120);

async fn sandbox() -> &'static Sandbox {
    mizzen_tests::worker::sandbox(Path::new(env!("CARGO_TARGET_TMPDIR"))).await
}

// ----- a recording executor ---------------------------------------------------

/// A job as the executor received it.
#[derive(Debug, Clone)]
struct RecordedJob {
    project: String,
    event: String,
    name: String,
    /// The spec as JSON.
    spec: String,
}

/// Accepts every job, records it, prints one line for it and succeeds.
#[derive(Default)]
struct RecordingExecutor {
    jobs: Mutex<Vec<RecordedJob>>,
    /// The event's workspace and a directory beside it holding the canary,
    /// which links in the workspace point to, as a hostile job would leave
    /// them.
    workspace: Mutex<Option<(tempfile::TempDir, tempfile::TempDir)>>,
}

impl RecordingExecutor {
    fn jobs(&self) -> Vec<RecordedJob> {
        self.jobs.lock().unwrap().clone()
    }
}

#[async_trait]
impl JobExecutor for RecordingExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        self.jobs.lock().unwrap().push(RecordedJob {
            project: job.event.project_id.clone(),
            event: job.event.event_id.clone(),
            name: job.name.clone(),
            spec: serde_json::to_string(&job.spec).unwrap(),
        });
        job.output.line(&job.name, "recorded");
        Ok(SpawnedJob::spawn(|_| async {
            JobResult {
                phase: Phase::Succeeded,
                exit_code: Some(0),
                reason: None,
            }
        }))
    }

    async fn finish_event(&self, _event: &EventContext) {}

    async fn workspace_dir(&self, _event: &EventContext) -> Result<PathBuf, WorkspaceError> {
        let mut workspace = self.workspace.lock().unwrap();
        let (root, _) = workspace.get_or_insert_with(|| {
            let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            std::fs::write(outside.path().join("canary"), CANARY).unwrap();
            std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("canary"), root.path().join("leak"))
                .unwrap();
            (root, outside)
        });
        Ok(root.path().to_path_buf())
    }
}

// ----- running a case ------------------------------------------------------------

/// What one run left: the worker's run and the jobs its executor received.
struct Outcome {
    run: Run,
    jobs: Vec<RecordedJob>,
}

impl Outcome {
    fn failure(&self) -> Option<&WorkerFailure> {
        self.run.outcome.failure.as_ref()
    }

    fn summary(&self) -> &str {
        self.run.outcome.summary.as_deref().unwrap_or_default()
    }

    /// Everything the run produced that anyone could read.
    fn visible(&self) -> String {
        let mut text = self.run.log.text();
        text.push('\n');
        text.push_str(self.summary());
        text.push('\n');
        text.push_str(&self.run.failure());
        for job in &self.jobs {
            text.push('\n');
            text.push_str(&job.name);
            text.push('\n');
            text.push_str(&job.spec);
        }
        text
    }

    fn describe(&self) -> String {
        let mut log = self.run.log.text();
        if log.len() > 2000 {
            let mut cut = 2000;
            while !log.is_char_boundary(cut) {
                cut -= 1;
            }
            log.truncate(cut);
            log.push_str("...");
        }
        let summary = self.summary();
        let summary = if summary.len() > 500 {
            format!("{}... ({} bytes)", &summary[..500], summary.len())
        } else {
            summary.to_string()
        };
        let failure = self.run.failure();
        let failure = if failure.len() > 500 {
            format!("{}... ({} bytes)", &failure[..500], failure.len())
        } else {
            failure
        };
        format!(
            "phase {:?}, failure {:?}, summary {:?}, {} jobs\nlog:\n{log}",
            self.run.outcome.phase,
            failure,
            summary,
            self.jobs.len()
        )
    }
}

/// The event of a case: project `project` with one secret.
fn event(project: &str, secret: &str) -> Event {
    let mut event = Event::new(
        uuid::Uuid::new_v4().to_string(),
        project,
        "brigade.sh/cli",
        "exec",
    );
    event.project.secrets = BTreeMap::from([("canary".to_string(), secret.to_string())]);
    event
}

/// Runs `script` for an event of `project` whose secret is `secret`.
async fn run(script: ScriptSource, limits: WorkerLimits, project: &str, secret: &str) -> Outcome {
    let event = event(project, secret);
    let event_id = event.id.clone();
    let executor = Arc::new(RecordingExecutor::default());
    let context = Arc::new(EventContext {
        // Workspace and source are allowed, so that path rules, not these
        // policies, decide the mount cases.
        use_workspace: true,
        source: Some(Source::Directory(PathBuf::from("/nonexistent-source"))),
        ..mizzen_tests::worker::context(&event_id, project)
    });
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            &script,
            WorkerRequest {
                event,
                limits,
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: executor.clone(),
                    event: context,
                },
            },
        )
        .await;
    Outcome {
        run: Run {
            outcome,
            log,
            event_id,
        },
        jobs: executor.jobs(),
    }
}

/// A script that behaves: a timer, a job, a summary. It must succeed after
/// every case.
const WELL_BEHAVED: &str = r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  await new Promise((resolve) => setTimeout(resolve, 1));
  const job = new Job("well-behaved", "busybox", event);
  job.primaryContainer.command = ["true"];
  await job.run();
  console.log("still serving");
  return "healthy";
});
events.process();
"#;

/// Whether the sandbox still serves a well-behaved worker, and why not.
async fn still_serves() -> Result<(), String> {
    let outcome = run(
        ScriptSource::new("brigade.js", WELL_BEHAVED),
        WorkerLimits::default(),
        "healthy-project",
        CANARY,
    )
    .await;
    let ok = outcome.run.outcome.succeeded()
        && outcome.summary() == "healthy"
        && outcome.jobs.len() == 1
        && outcome.run.worker_lines().contains(&"still serving".into());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the well-behaved script did not succeed: {}",
            outcome.describe()
        ))
    }
}

// ----- the catalogue ---------------------------------------------------------------

type Check = Box<dyn Fn(&Outcome) -> Result<(), String> + Send + Sync>;

/// One bad input.
struct Case {
    /// Its label: the group's letter (a banner below) and a number.
    entry: &'static str,
    name: String,
    script: ScriptSource,
    limits: WorkerLimits,
    /// The expected end.
    check: Check,
    /// Whether the script itself prints its secret (the raw log then holds
    /// it, and the server redacts it; the check says where it may appear).
    prints_secret: bool,
}

impl Case {
    fn new(
        entry: &'static str,
        name: impl Into<String>,
        js: impl Into<String>,
        check: Check,
    ) -> Self {
        Self {
            entry,
            name: name.into(),
            script: ScriptSource::new("brigade.js", js),
            limits: WorkerLimits::default(),
            check,
            prints_secret: false,
        }
    }

    fn limits(mut self, limits: WorkerLimits) -> Self {
        self.limits = limits;
        self
    }

    fn file(mut self, name: &str) -> Self {
        self.script.name = name.into();
        self.script.language = ScriptSource::new(name, "").language;
        self
    }
}

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

/// Fails with a failure `matches` accepts whose message contains `text`.
fn fails(matches: fn(&WorkerFailure) -> bool, text: &'static str) -> Check {
    Box::new(move |o: &Outcome| {
        let failure = o.failure();
        expect(
            !o.run.outcome.succeeded()
                && failure.is_some_and(matches)
                && o.run.failure().contains(text),
            || format!("expected a failure naming {text:?}"),
        )
    })
}

fn script_error(f: &WorkerFailure) -> bool {
    matches!(f, WorkerFailure::Script { .. })
}

fn uncaught(f: &WorkerFailure) -> bool {
    matches!(f, WorkerFailure::Uncaught { .. })
}

fn cpu(f: &WorkerFailure) -> bool {
    matches!(f, WorkerFailure::CpuTime { .. })
}

fn memory(f: &WorkerFailure) -> bool {
    matches!(f, WorkerFailure::Memory { .. })
}

fn log_limit(f: &WorkerFailure) -> bool {
    matches!(f, WorkerFailure::Log { .. })
}

/// Succeeds with a summary containing every one of `texts`, and no job
/// reached the executor (used for refusals the script catches and returns).
fn refused(texts: Vec<String>) -> Check {
    Box::new(move |o: &Outcome| {
        expect(o.run.outcome.succeeded(), || "expected SUCCEEDED".into())?;
        for text in &texts {
            expect(o.summary().contains(text.as_str()), || {
                format!("expected the refusal to name {text:?}")
            })?;
        }
        expect(o.jobs.is_empty(), || {
            format!("a refused job reached the executor: {:?}", o.jobs)
        })
    })
}

/// Succeeds, and `more` holds.
fn succeeds(more: fn(&Outcome) -> Result<(), String>) -> Check {
    Box::new(move |o: &Outcome| {
        expect(o.run.outcome.succeeded(), || "expected SUCCEEDED".into())?;
        more(o)
    })
}

/// Succeeds with exactly `summary`.
fn succeeds_with_summary(summary: &'static str) -> Check {
    Box::new(move |o: &Outcome| {
        expect(o.run.outcome.succeeded() && o.summary() == summary, || {
            format!("expected SUCCEEDED with summary {summary:?}")
        })
    })
}

/// A script whose handler runs `body` (with `event` and `Job` in scope)
/// and returns what the job's `run()` rejected with, or "no error".
fn job_refusal(setup: &str) -> String {
    format!(
        r#"const {{ events, Job, Container }} = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {{
  try {{
    {setup}
    await job.run();
  }} catch (e) {{
    return "refused: " + e.message;
  }}
  return "no error";
}});
events.process();
"#
    )
}

/// A string literal for JavaScript.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn mib(n: u64) -> u64 {
    n * 1024 * 1024
}

fn cpu_limit(ms: u64) -> WorkerLimits {
    WorkerLimits {
        cpu_time: Duration::from_millis(ms),
        ..WorkerLimits::default()
    }
}

fn memory_limit(bytes: u64) -> WorkerLimits {
    WorkerLimits {
        memory_bytes: bytes,
        ..WorkerLimits::default()
    }
}

/// Bytes from a small deterministic generator (no crate needed).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn catalogue() -> Vec<Case> {
    let mut cases = Vec::new();

    // --- A: scripts and modules -------------------------------------------------
    cases.push(Case::new(
        "A1",
        "an empty script does nothing and succeeds",
        "",
        succeeds(|_| Ok(())),
    ));
    for (i, seed) in [0x9e37_79b9_7f4a_7c15_u64, 0xdead_beef_cafe_f00d]
        .into_iter()
        .enumerate()
    {
        let text = String::from_utf8_lossy(&noise(4096, seed)).into_owned();
        cases.push(Case::new(
            "A1",
            format!("random bytes as a script ({i}) are a syntax error with a position"),
            text,
            fails(script_error, "brigade.js:"),
        ));
    }
    cases.push(Case::new(
        "A1",
        "NUL bytes in a script are a syntax error with a position",
        "console.log(1);\n\0\0\0\n",
        fails(script_error, "brigade.js:2:"),
    ));
    cases.push(Case::new(
        "A1",
        "a truncated script is a syntax error with a position",
        "const { events } = require(\"brigadier\");\nevents.on(\"brigade.sh/cli\", \"exec\", async () => {\n  console.log(\"cut",
        fails(script_error, "brigade.js:3:"),
    ));
    cases.push(
        Case::new(
            "A1",
            "a TypeScript script of garbage is a syntax error in the .ts file",
            "let x: = = = ;\n",
            fails(script_error, "brigade.ts:1:"),
        )
        .file("brigade.ts"),
    );
    cases.push(Case::new(
        "A1",
        "a byte-order mark before a script is accepted",
        "\u{feff}console.log(\"after a BOM\");\n",
        succeeds(|o| {
            expect(o.run.worker_lines() == ["after a BOM"], || {
                "expected the line after the BOM".into()
            })
        }),
    ));
    cases.push(Case::new(
        "A2",
        "a script over the size limit is refused before compiling",
        format!("// {}\n", "x".repeat(MAX_SCRIPT_BYTES)),
        fails(script_error, "the limit is 8388608 bytes"),
    ));
    cases.push(Case::new(
        "A3",
        "50,000 functions compile and run",
        {
            let mut text = String::new();
            for i in 0..50_000 {
                text.push_str(&format!("function f{i}() {{ return {i}; }}\n"));
            }
            text.push_str("console.log(f49999());\n");
            text
        },
        succeeds(|o| {
            expect(o.run.worker_lines() == ["49999"], || {
                "expected the last function's value".into()
            })
        }),
    ));
    cases.push(Case::new(
        "A3",
        "a 6 MB string literal is compiled or refused by name",
        format!(
            "const s = \"{}\";\nconsole.log(s.length);\n",
            "q".repeat(6_000_000)
        ),
        Box::new(|o: &Outcome| {
            let ok = o.run.outcome.succeeded() && o.run.worker_lines() == ["6000000"]
                || o.failure().is_some_and(|f| memory(f) || script_error(f));
            expect(ok, || "expected its length or a named failure".into())
        }),
    ));
    cases.push(Case::new(
        "A4",
        "requiring a Node module the sandbox does not have names it",
        "require(\"child_process\").execSync(\"id\");\n",
        fails(uncaught, "Cannot find module 'child_process'"),
    ));
    cases.push(Case::new(
        "A4",
        "importing a module the sandbox does not have is a named error",
        "import { readFileSync } from \"fs\";\nconsole.log(readFileSync(\"/etc/passwd\"));\n",
        Box::new(|o: &Outcome| {
            expect(
                !o.run.outcome.succeeded()
                    && (o.run.failure().contains("'fs'") || o.run.failure().contains("\"fs\"")),
                || "expected a failure naming the module".into(),
            )
        }),
    ));
    cases.push(Case::new(
        "A4",
        "the raw host binding is out of the script's reach",
        r#"const found = [];
for (const name of ["host", "__host", "mizzen", "__mizzen", "call", "take_reply", "Deno", "Bun", "wasi"]) {
  if (typeof globalThis[name] !== "undefined") found.push(name);
}
const brigadier = require("brigadier");
for (const name of Object.keys(brigadier)) {
  const v = brigadier[name];
  if (v && typeof v.call === "function" && v.length === 2 && name === "host") found.push("brigadier." + name);
}
if (typeof Function("return this")().host !== "undefined") found.push("Function host");
console.log("found: " + JSON.stringify(found));
"#,
        succeeds(|o| {
            expect(o.run.worker_lines() == ["found: []"], || {
                "expected no host binding on any global".into()
            })
        }),
    ));

    // --- B1: CPU ----------------------------------------------------------------------
    for (name, js) in [
        ("a top-level infinite loop", "while (true) {}\n"),
        (
            "a loop inside a timer callback",
            "setTimeout(() => { for (;;) {} }, 1);\n",
        ),
        (
            "a loop inside a microtask",
            "Promise.resolve().then(() => { for (;;) {} });\n",
        ),
        (
            "an endless chain of microtasks",
            "function again() { Promise.resolve().then(again); }\nagain();\n",
        ),
        (
            "a loop inside a getter the SDK reads while starting a job",
            r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const job = new Job("getter", "busybox", event);
  Object.defineProperty(job.primaryContainer, "command", { enumerable: true, get() { for (;;) {} } });
  await job.run();
});
events.process();
"#,
        ),
        (
            "catastrophic regular-expression backtracking",
            "/^(a+)+$/.test(\"a\".repeat(40) + \"b\");\n",
        ),
        (
            "a loop in a thrown value's getter while it is reported",
            "throw { get message() { for (;;) {} } };\n",
        ),
    ] {
        cases.push(
            Case::new(
                "B1",
                format!("{name} stops at the CPU limit"),
                js,
                fails(cpu, "CPU time limit of 300ms exceeded"),
            )
            .limits(cpu_limit(300)),
        );
    }

    // --- B2: memory ----------------------------------------------------------------
    for (name, js) in [
        (
            "an array that grows forever",
            "const a = [];\nwhile (true) a.push({ n: a.length, s: \"x\" + a.length });\n",
        ),
        (
            "a string that doubles forever",
            "let s = \"x\";\nconst keep = [];\nwhile (true) { s = s + s; keep.push(s + \"!\"); }\n",
        ),
        (
            "ArrayBuffers of 8 MiB until memory runs out",
            "const keep = [];\nwhile (true) keep.push(new Uint8Array(8 * 1024 * 1024).fill(1));\n",
        ),
        (
            "one 1 GiB ArrayBuffer",
            "const b = new ArrayBuffer(1024 * 1024 * 1024);\nnew Uint8Array(b).fill(1);\nconsole.log(b.byteLength);\n",
        ),
        (
            "a Map that grows forever",
            "const m = new Map();\nfor (let i = 0; ; i++) m.set(\"k\" + i, [i, i, i]);\n",
        ),
    ] {
        cases.push(
            Case::new(
                "B2",
                format!("{name} hits the named memory limit"),
                js,
                Box::new(|o: &Outcome| {
                    // QuickJS may see the failed allocation first and throw
                    // its own out-of-memory error; either names memory.
                    let named = o.failure().is_some_and(memory)
                        || o.run.failure().contains("out of memory")
                        || o.run.failure().contains("InternalError")
                        || o.run.failure().contains("RangeError");
                    expect(!o.run.outcome.succeeded() && named, || {
                        "expected the memory limit or an out-of-memory error".into()
                    })
                }),
            )
            .limits(memory_limit(mib(32))),
        );
    }

    // --- B4: recursion ---------------------------------------------------------------
    for (name, js) in [
        (
            "unbounded JavaScript recursion",
            "function down(n) { return down(n + 1) + 1; }\ndown(0);\n",
        ),
        (
            "mutual recursion through getters",
            "const o = { get a() { return this.b; }, get b() { return this.a; } };\no.a;\n",
        ),
        (
            "JSON.parse of 1,000,000 nested arrays",
            "JSON.parse(\"[\".repeat(1000000) + \"]\".repeat(1000000));\n",
        ),
        (
            "JSON.stringify of 100,000 nested objects",
            "let o = {};\nfor (let i = 0; i < 100000; i++) o = { o };\nJSON.stringify(o);\n",
        ),
        (
            "recursion through Function.prototype.toString",
            "function f() { return f.toString() + f(); }\nf();\n",
        ),
    ] {
        cases.push(Case::new(
            "B4",
            format!("{name} is a RangeError, not a crash"),
            js,
            Box::new(|o: &Outcome| {
                let named = o.failure().is_some_and(|f| {
                    matches!(
                        f,
                        WorkerFailure::Uncaught { .. } | WorkerFailure::Trap { .. }
                    )
                }) && (o.run.failure().contains("RangeError")
                    || o.run.failure().contains("stack"));
                expect(named, || "expected a stack overflow error by name".into())
            }),
        ));
    }
    cases.push(Case::new(
        "B4",
        "printing a 100,000-deep object stops at the inspection depth",
        "let o = {};\nfor (let i = 0; i < 100000; i++) o = { o };\nconsole.log(o);\n",
        succeeds(|o| {
            let lines = o.run.worker_lines();
            expect(lines.len() == 1 && lines[0].len() < 200, || {
                "expected one short line".into()
            })
        }),
    ));

    // --- B5: log output ----------------------------------------------------------------
    cases.push(
        Case::new(
            "B5",
            "100 MB of log lines are cut at the log limit with a marker",
            "const line = \"y\".repeat(999);\nfor (let i = 0; i < 100000; i++) console.log(line);\n",
            Box::new(|o: &Outcome| {
                fails(log_limit, "log limit of 1 MiB exceeded")(o)?;
                let logged: usize = o.run.log.records().iter().map(|r| r.message.len() + 1).sum();
                expect(logged <= 1024 * 1024 + 4096, || format!("{logged} bytes were logged"))?;
                expect(o.run.log.text().contains("log output truncated"), || {
                    "expected the truncation marker".into()
                })
            }),
        )
        .limits(WorkerLimits {
            log_bytes: mib(1),
            ..WorkerLimits::default()
        }),
    );
    cases.push(
        Case::new(
            "B5",
            "a million tiny lines are cut at the log limit",
            "for (let i = 0; i < 1000000; i++) console.log(\"ab\");\n",
            // The byte limit, or a limit on lines where the host has one.
            fails(
                |f| log_limit(f) || f.to_string().starts_with("log limit of "),
                "output truncated",
            ),
        )
        .limits(WorkerLimits {
            log_bytes: mib(1),
            ..WorkerLimits::default()
        }),
    );
    cases.push(Case::new(
        "B5",
        "one 20 MB line is cut with a marker",
        "console.log(\"z\".repeat(20 * 1000 * 1000));\n",
        succeeds(|o| {
            let lines = o.run.worker_lines();
            expect(
                lines.len() == 1
                    && lines[0].len() < 100 * 1024
                    && lines[0].ends_with("more characters]"),
                || "expected one line cut with a marker".into(),
            )
        }),
    ));
    cases.push(Case::new(
        "B5",
        "control characters, NUL, CR, ANSI and bidi overrides are escaped",
        "console.log(\"a\\u0000b\\rc\\u001b[2J\\u001b]0;title\\u0007d\\u202ee\\u0008f\\u009bg\");\nconsole.error(\"\\u001b[31merr\");\n",
        succeeds(|o| {
            for record in o.run.log.records() {
                let bad = record.message.chars().find(|c| {
                    (c.is_control() && *c != '\n' && *c != '\t') || *c == '\u{202e}'
                });
                expect(bad.is_none(), || format!("{bad:?} reached the log: {:?}", record.message))?;
            }
            expect(
                o.run.worker_lines()
                    == [
                        "a\\x00b\\x0dc\\x1b[2J\\x1b]0;title\\x07d\\x202ee\\x08f\\x9bg",
                        "\\x1b[31merr",
                    ],
                || "expected every control character escaped".into(),
            )
        }),
    ));
    cases.push(Case::new(
        "B5",
        "every byte value in a log line is escaped or kept as text",
        "let s = \"\";\nfor (let i = 0; i < 256; i++) s += String.fromCharCode(i);\nconsole.log(s);\n",
        succeeds(|o| {
            let lines = o.run.worker_lines();
            expect(lines.len() == 1, || "expected one line".into())?;
            let bad = lines[0]
                .chars()
                .find(|c| c.is_control() && *c != '\n' && *c != '\t');
            expect(bad.is_none(), || format!("{bad:?} reached the log"))
        }),
    ));
    // --- B6: host requests --------------------------------------------------------------
    // A script error beside a 24 h timer: the worker stayed RUNNING, holding
    // its slot, until the timer fired. With a 60 s lifetime, a worker that
    // waits ends TIMED_OUT instead of with the error.
    let day_timer = "setTimeout(() => console.log(\"timer fired\"), 24 * 60 * 60 * 1000);";
    for (name, body, error) in [
        (
            "a handler that throws beside a 24 h timer fails at once",
            format!(
                "const {{ events }} = require(\"@brigadecore/brigadier\");\nevents.on(\"brigade.sh/cli\", \"exec\", () => {{ {day_timer} throw new Error(\"gave up\"); }});\nevents.process();\n"
            ),
            "Error: gave up",
        ),
        (
            "a timer's callback that throws beside a 24 h timer fails at once",
            format!(
                "{day_timer}\nsetTimeout(() => {{ throw new Error(\"timer gave up\"); }}, 1);\n"
            ),
            "Error: timer gave up",
        ),
        (
            "a refused job nobody awaits beside a 24 h timer fails at once",
            format!(
                "const {{ Job }} = require(\"@brigadecore/brigadier\");\n{day_timer}\nnew Job(\"Not_A_Name\", \"busybox\", {{}}).run();\n"
            ),
            "Not_A_Name",
        ),
    ] {
        cases.push(
            Case::new("B7", name, body, fails(uncaught, error)).limits(WorkerLimits {
                wall_time: Duration::from_secs(60),
                ..WorkerLimits::default()
            }),
        );
    }
    cases.push(Case::new(
        "B6",
        "a 10 MB summary is refused at the request limit by name",
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => "s".repeat(10 * 1024 * 1024));
events.process();
"#,
        fails(uncaught, "exceeds the limit of 1048576 bytes per host call"),
    ));
    cases.push(Case::new(
        "B6",
        "a summary over 4096 characters is refused by name",
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => "s".repeat(4097));
events.process();
"#,
        fails(uncaught, "exceeds the limit of 4096 characters"),
    ));
    cases.push(Case::new(
        "B6",
        "a job with 2 MB of environment is refused at the request limit",
        job_refusal(
            r#"const job = new Job("fat-env", "busybox", event);
    job.primaryContainer.environment = { BIG: "e".repeat(2 * 1024 * 1024) };"#,
        ),
        refused(vec![
            "exceeds the limit of 1048576 bytes per host call".into(),
        ]),
    ));
    cases.push(Case::new(
        "B6",
        "a job whose spec nests 10,000 levels deep is refused by name",
        job_refusal(
            r#"let deep = {};
    for (let i = 0; i < 10000; i++) deep = { deep };
    const job = new Job("deep", "busybox", event);
    job.host.nodeSelector = deep;"#,
        ),
        // QuickJS's JSON.stringify runs out of Wasm stack before its own
        // depth check: a named trap, which the script cannot catch.
        Box::new(|o: &Outcome| {
            let trapped = o
                .failure()
                .is_some_and(|f| matches!(f, WorkerFailure::Trap { .. }))
                && o.run.failure().contains("call stack exhausted");
            expect(
                trapped || refused(vec!["job \"deep\"".into()])(o).is_ok(),
                || "expected a refusal or the named stack trap".into(),
            )?;
            expect(o.jobs.is_empty(), || "the job reached the executor".into())
        }),
    ));
    cases.push(Case::new(
        "B6",
        "10,001 timers outstanding are refused at the ticket limit",
        r#"const ids = [];
let message = "no error";
try {
  for (let i = 0; i < 10001; i++) ids.push(setTimeout(() => {}, 3600 * 1000));
} catch (e) {
  message = e.message;
}
for (const id of ids) clearTimeout(id);
console.log(ids.length + " " + message);
"#,
        succeeds(|o| {
            expect(
                o.run.worker_lines()
                    == ["10000 a worker may have at most 10000 timers and job waits outstanding"],
                || "expected the ticket limit by name after 10,000 timers".into(),
            )
        }),
    ));
    cases.push(Case::new(
        "B6",
        "5,000 timers firing at once all complete",
        "let fired = 0;\nfor (let i = 0; i < 5000; i++) setTimeout(() => { if (++fired === 5000) console.log(\"all fired\"); }, 1);\n",
        succeeds(|o| {
            expect(o.run.worker_lines() == ["all fired"], || "expected every timer".into())
        }),
    ));
    cases.push(Case::new(
        "B6",
        "100,000 host calls in a loop are served",
        "let n = 0;\nfor (let i = 0; i < 100000; i++) { clearTimeout(setTimeout(() => {}, 1000)); n++; }\nconsole.log(n);\n",
        succeeds(|o| expect(o.run.worker_lines() == ["100000"], || "expected every call".into())),
    ));

    // --- B7: ends that are not the script's --------------------------------------------
    cases.push(
        Case::new(
            "B7",
            "an interval that never ends times out at the wall-clock limit",
            "setInterval(() => {}, 5);\n",
            Box::new(|o: &Outcome| {
                fails(
                    |f| matches!(f, WorkerFailure::WallTime { .. }),
                    "timed out after 300ms",
                )(o)?;
                expect(o.run.outcome.phase == Phase::TimedOut, || {
                    "expected TIMED_OUT".into()
                })
            }),
        )
        .limits(WorkerLimits {
            wall_time: Duration::from_millis(300),
            ..WorkerLimits::default()
        }),
    );

    // --- B9: what the script hands the host -----------------------------------------------
    for (name, setup, text) in [
        (
            "a primary container that is a number",
            r#"const job = new Job("num", "busybox", event);
    job.primaryContainer = 42;"#,
            "primaryContainer",
        ),
        (
            "sidecars that are a string",
            r#"const job = new Job("str", "busybox", event);
    job.sidecarContainers = "oops";"#,
            "job \"str\"",
        ),
        (
            "a negative timeout",
            r#"const job = new Job("neg", "busybox", event);
    job.timeoutSeconds = -1;"#,
            "timeoutSeconds must be more than 0",
        ),
        (
            "an infinite timeout (null in JSON)",
            r#"const job = new Job("inf", "busybox", event);
    job.timeoutSeconds = Infinity;"#,
            "job \"inf\"",
        ),
        (
            "an unknown container property",
            r#"const job = new Job("typo", "busybox", event);
    job.primaryContainer.env = { A: "b" };"#,
            "unknown field `env`",
        ),
        (
            "an unknown host OS",
            r#"const job = new Job("os", "busybox", event);
    job.host.os = "plan9";"#,
            "host.os \"plan9\" must be \"linux\" or \"windows\"",
        ),
        (
            "an environment variable name with '='",
            r#"const job = new Job("env-eq", "busybox", event);
    job.primaryContainer.environment = { "A=B": "c" };"#,
            "must have a non-empty name without '=' or NUL",
        ),
        (
            "a NUL in a command",
            r#"const job = new Job("nul-cmd", "busybox", event);
    job.primaryContainer.command = ["sh", "-c", "echo\u0000hidden"];"#,
            "must not contain NUL",
        ),
        (
            "a sidecar readiness of two kinds",
            r#"const job = new Job("ready", "busybox", event);
    job.sidecarContainers = { db: new Container("busybox") };
    job.sidecarContainers.db.readiness = { tcpPort: 5432, exited: true };"#,
            "readiness must be either",
        ),
        (
            "a thousand sidecars",
            r#"const job = new Job("crowd", "busybox", event);
    for (let i = 0; i < 1000; i++) job.sidecarContainers["s" + i] = new Container("busybox");"#,
            "sidecars; the limit is",
        ),
    ] {
        cases.push(Case::new(
            "B9",
            format!("{name} is refused by name"),
            job_refusal(setup),
            refused(vec![text.to_string()]),
        ));
    }
    cases.push(Case::new(
        "B9",
        "a JSON.stringify replaced with garbage gets a named invalid-request error",
        r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const job = new Job("garbage", "busybox", event);
  const real = JSON.stringify;
  let message = "no error";
  JSON.stringify = () => "\u0000{not json";
  try { await job.run(); } catch (e) { message = e.message; }
  JSON.stringify = real;
  return "refused: " + message;
});
events.process();
"#,
        refused(vec!["refused: ".into(), "invalid".into()]),
    ));
    for (name, code, expected) in [
        ("process.exit(3)", "3", 3),
        ("process.exit(-1)", "-1", -1),
        ("process.exit(\"abc\")", "\"abc\"", 1),
        ("process.exit(1.5)", "1.5", 1),
        ("process.exit(2 ** 31 - 1)", "2 ** 31 - 1", i32::MAX),
    ] {
        cases.push(Case::new(
            "B9",
            format!("{name} ends the worker with a named exit code"),
            format!("setTimeout(() => console.log(\"never\"), 60000);\nprocess.exit({code});\nconsole.log(\"after exit\");\n"),
            Box::new(move |o: &Outcome| {
                expect(
                    o.failure() == Some(&WorkerFailure::Exit { code: expected })
                        && !o.run.log.text().contains("after exit")
                        && !o.run.log.text().contains("never"),
                    || format!("expected exit code {expected} and nothing after it"),
                )
            }),
        ));
    }
    cases.push(Case::new(
        "B9",
        "process.exit(2 ** 40) ends the worker with a named failure",
        "process.exit(2 ** 40);\nconsole.log(\"after exit\");\n",
        Box::new(|o: &Outcome| {
            expect(!o.run.outcome.succeeded() && o.failure().is_some(), || {
                "expected a named failure".into()
            })
        }),
    ));
    cases.push(Case::new(
        "B9",
        "process.exit(0) with timers pending succeeds at once",
        "setTimeout(() => console.log(\"never\"), 60000);\nprocess.exit(0);\n",
        succeeds(|o| {
            expect(o.run.worker_lines().is_empty(), || {
                "expected no output".into()
            })
        }),
    ));
    cases.push(Case::new(
        "B9",
        "a rejected promise with a 10 MB message fails the worker by name",
        "Promise.reject(new Error(\"m\".repeat(10 * 1024 * 1024)));\n",
        Box::new(|o: &Outcome| {
            expect(!o.run.outcome.succeeded() && o.failure().is_some(), || {
                "expected a named failure".into()
            })?;
            expect(o.run.failure().len() < 1024 * 1024, || {
                "the failure carried the whole message".into()
            })
        }),
    ));
    for (name, js) in [
        ("null", "throw null;\n"),
        ("undefined", "throw undefined;\n"),
        ("a symbol", "throw Symbol(\"s\");\n"),
        (
            "a Proxy that throws on every trap",
            "throw new Proxy({}, { get() { throw new Error(\"trap\"); }, getPrototypeOf() { throw new Error(\"trap\"); }, ownKeys() { throw new Error(\"trap\"); } });\n",
        ),
    ] {
        cases.push(Case::new(
            "B9",
            format!("throwing {name} fails the worker by name"),
            js,
            Box::new(|o: &Outcome| {
                expect(
                    !o.run.outcome.succeeded()
                        && o.failure().is_some_and(|f| {
                            matches!(
                                f,
                                WorkerFailure::Uncaught {
                                    kind: ScriptErrorKind::Uncaught,
                                    ..
                                }
                            ) || matches!(f, WorkerFailure::Uncaught { .. })
                        }),
                    || "expected an uncaught error".into(),
                )
            }),
        ));
    }

    // --- C1: paths ----------------------------------------------------------------------
    for (field, path, rule) in [
        (
            "workspaceMountPath",
            "/share/../etc",
            "must not contain '..'",
        ),
        (
            "workspaceMountPath",
            "../../etc/passwd",
            "must be an absolute path",
        ),
        ("workspaceMountPath", "share", "must be an absolute path"),
        ("workspaceMountPath", "/", "must not be the root directory"),
        ("workspaceMountPath", "//", "must not be the root directory"),
        ("workspaceMountPath", "/a/..", "must not contain '..'"),
        (
            "workspaceMountPath",
            "/a:/host",
            "must not contain control characters, ':' or ','",
        ),
        (
            "workspaceMountPath",
            "/a,rw",
            "must not contain control characters, ':' or ','",
        ),
        (
            "workspaceMountPath",
            "/a\nb",
            "must not contain control characters",
        ),
        (
            "workspaceMountPath",
            "/a\u{0}b",
            "must not contain control characters",
        ),
        (
            "sourceMountPath",
            "/src/../../root",
            "must not contain '..'",
        ),
        (
            "sourceMountPath",
            "..\\..\\windows",
            "must be an absolute path",
        ),
        (
            "workingDirectory",
            "/work/../../proc/self",
            "must not contain '..'",
        ),
        ("workingDirectory", "%2e%2e/x", "must be an absolute path"),
    ] {
        cases.push(Case::new(
            "C1",
            format!("{field} {path:?} is refused by rule"),
            job_refusal(&format!(
                "const job = new Job(\"paths\", \"busybox\", event);\n    job.primaryContainer.{field} = {};",
                js(path)
            )),
            refused(vec![format!("{field} {path:?} {rule}")]),
        ));
    }

    // --- C1: paths a script names in its workspace (read and write) -------------------
    let long = format!("{}b", "a/".repeat(3000));
    for (path, code) in [
        ("../canary", "invalid_request"),
        ("a/../../canary", "invalid_request"),
        ("/etc/passwd", "invalid_request"),
        ("..\\canary", "invalid_request"),
        ("a\u{0}b", "invalid_request"),
        ("", "invalid_request"),
        ("escape/canary", "permission_denied"),
        ("leak", "permission_denied"),
        (long.as_str(), "invalid_request"),
    ] {
        let expected = format!("codes: {code} {code}");
        cases.push(Case::new(
            "C1",
            format!(
                "workspace path {:?} is refused",
                &path[..path.len().min(40)]
            ),
            format!(
                r#"const {{ events, workspace }} = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => {{
  const code = (f) => {{ try {{ f(); return "none"; }} catch (e) {{ return e.code; }} }};
  const read = code(() => console.log(workspace.readFile({path})));
  const write = code(() => workspace.writeFile({path}, "planted"));
  return `codes: ${{read}} ${{write}}`;
}});
events.process();
"#,
                path = js(path)
            ),
            Box::new(move |o: &Outcome| {
                expect(o.run.outcome.succeeded() && o.summary() == expected, || {
                    format!("expected {expected:?}")
                })
            }),
        ));
    }
    cases.push(
        Case::new(
            "C1",
            "a workspace write past workspaceSize is refused naming it",
            r#"const { events, workspace } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => {
  workspace.writeFile("fits", "x".repeat(512));
  try { workspace.writeFile("too-much", "x".repeat(1024)); } catch (e) { return e.code + ": " + e.message; }
  return "written";
});
events.process();
"#,
            succeeds_with_summary(
                "limit_exceeded: writing \"too-much\" (1 KiB) would take the workspace to 1536 B, past its limit of 1 KiB (spec.workerTemplate.workspaceSize)",
            ),
        )
        .limits(WorkerLimits {
            workspace_bytes: 1024,
            ..WorkerLimits::default()
        }),
    );

    // --- C3: names -------------------------------------------------------------------------
    let long = "x".repeat(64);
    for name in [
        "",
        "a",
        "Build",
        "under_score",
        "-dash",
        "trailing-",
        long.as_str(),
        "../etc",
        "a/b",
        "b\u{0430}d",   // Cyrillic а
        "job\u{202e}",  // right-to-left override
        "jo\u{200d}b",  // zero-width joiner
        "j\u{f3}b",     // NFC ó
        "jo\u{301}b",   // NFD ó
        "job\u{1f680}", // emoji
        "job\u{0}",     // NUL
        "job\nname",
        " job",
        "job.name",
    ] {
        cases.push(Case::new(
            "C3",
            format!("job name {name:?} is refused by the name rule"),
            job_refusal(&format!(
                "const job = new Job({}, \"busybox\", event);",
                js(name)
            )),
            refused(vec![format!(
                "job name {name:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$"
            )]),
        ));
    }
    for sidecar in ["../x", "Side", "s\u{202e}", "s\u{0}"] {
        cases.push(Case::new(
            "C3",
            format!("sidecar name {sidecar:?} is refused by the name rule"),
            job_refusal(&format!(
                "const job = new Job(\"with-sidecar\", \"busybox\", event);\n    job.sidecarContainers = {{ [{}]: new Container(\"busybox\") }};",
                js(sidecar)
            )),
            refused(vec![format!("sidecar name {sidecar:?} must match")]),
        ));
    }
    cases.push(Case::new(
        "C4",
        "a job name used twice is refused the second time",
        job_refusal(
            r#"await new Job("twice", "busybox", event).run();
    const job = new Job("twice", "busybox", event);"#,
        ),
        Box::new(|o: &Outcome| {
            expect(
                o.summary().contains("a job named \"twice\" already exists"),
                || "expected the conflict by name".into(),
            )?;
            expect(o.jobs.len() == 1, || {
                "expected one job at the executor".into()
            })
        }),
    ));
    cases.push(Case::new(
        "C6",
        "a script cannot start jobs as another project or event",
        r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  event.project.id = "someone-elses-project";
  event.id = "00000000-0000-0000-0000-000000000000";
  await new Job("impostor", "busybox", event).run();
  return "ran";
});
events.process();
"#,
        succeeds(|o| {
            let job = o.jobs.first().ok_or("no job was started")?;
            expect(
                job.project == "adversarial-project" && job.event == o.run.event_id,
                || format!("the job ran as {}/{}", job.project, job.event),
            )
        }),
    ));

    // --- D1: images --------------------------------------------------------------------------
    let long_tag = format!("busybox:{}", "t".repeat(129));
    let long_name = "n".repeat(256);
    for image in [
        "",
        "busybox/UPPER",
        long_tag.as_str(),
        long_name.as_str(),
        "busybox@sha256:abc",
        "busybox@sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "a:b:c",
        "busy box",
        "--privileged",
        "$(id)",
        "busybox\n",
        "busybox\u{0}",
        "bad_host:5000/x",
        "-registry.example.com/x",
        "ex\u{e1}mple.com/x",
    ] {
        cases.push(Case::new(
            "D1",
            format!("image {image:?} is refused by the reference grammar"),
            job_refusal(&format!(
                "const job = new Job(\"image\", {}, event);",
                js(image)
            )),
            refused(vec![format!("image {image:?} ")]),
        ));
    }

    // --- G: secrets ---------------------------------------------------------------------------
    cases.push(Case::new(
        "G2",
        "a refusal does not echo a secret hidden in an environment value",
        job_refusal(
            r#"const job = new Job("env-nul", "busybox", event);
    job.primaryContainer.environment = { TOKEN: event.project.secrets.canary + "\u0000" };"#,
        ),
        refused(vec!["environment variable \"TOKEN\"".into()]),
    ));
    cases.push(Case::new(
        "G2",
        "a refusal of a huge summary does not echo the summary",
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => event.project.secrets.canary.repeat(300));
events.process();
"#,
        fails(uncaught, "exceeds the limit of 4096 characters"),
    ));
    cases.push(Case::new(
        "G2",
        "a refusal of a huge request does not echo the request",
        r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const job = new Job("fat-secret", "busybox", event);
  job.primaryContainer.environment = { S: event.project.secrets.canary.repeat(100000) };
  try { await job.run(); } catch (e) { return "refused: " + e.message; }
});
events.process();
"#,
        refused(vec![
            "exceeds the limit of 1048576 bytes per host call".into(),
        ]),
    ));
    cases.push(Case::new(
        "G6",
        "crafted secret keys find nothing",
        r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const s = event.project.secrets;
  const found = ["../tenant-a/canary", "*", "", "tenant-a/canary", "__proto__", "constructor", "CANARY", " canary"]
    .filter((k) => typeof s[k] === "string");
  return "found " + JSON.stringify(found) + " keys " + JSON.stringify(Object.keys(s));
});
events.process();
"#,
        succeeds(|o| {
            expect(o.summary() == "found [] keys [\"canary\"]", || {
                "expected only the project's own key".into()
            })
        }),
    ));

    cases
}

/// Looks for `secret` in what an outcome made visible.
fn leaked(outcome: &Outcome, secret: &str) -> bool {
    outcome.visible().contains(secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_catalogue_ends_in_named_errors_without_crashes_or_leaks() {
    let cases = catalogue();
    let total = cases.len();
    let mut failures: Vec<String> = Vec::new();
    let (mut crashes, mut leaks) = (0, 0);
    for case in cases {
        let label = format!("[{}] {}", case.entry, case.name);
        let started = Instant::now();
        let (script, limits) = (case.script.clone(), case.limits);
        let task =
            tokio::spawn(async move { run(script, limits, "adversarial-project", CANARY).await });
        let outcome = match tokio::time::timeout(CASE_BOUND, task).await {
            Err(_) => {
                crashes += 1;
                failures.push(format!("{label}: still running after {CASE_BOUND:?}"));
                continue;
            }
            Ok(Err(panic)) => {
                crashes += 1;
                failures.push(format!("{label}: the host panicked: {panic}"));
                continue;
            }
            Ok(Ok(outcome)) => outcome,
        };
        if let Err(why) = (case.check)(&outcome) {
            failures.push(format!("{label}: {why}\n{}", outcome.describe()));
        }
        if !case.prints_secret && leaked(&outcome, CANARY) {
            leaks += 1;
            failures.push(format!(
                "{label}: the canary secret leaked\n{}",
                outcome.describe()
            ));
        }
        if let Err(why) = still_serves().await {
            crashes += 1;
            failures.push(format!("{label}: the host did not survive: {why}"));
        }
        eprintln!("  {:>6.2}s {label}", started.elapsed().as_secs_f64());
    }
    eprintln!("adversarial: {total} cases, {crashes} host crashes, {leaks} leaks");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert_eq!((crashes, leaks), (0, 0));
}

/// Tenant A's worker spreads its secret over its heap, its globals and its
/// log; tenant B's worker then runs on the same sandbox (the instance slot
/// A used is recycled) and looks for it everywhere a script can look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_sees_tenant_a_secret() {
    let tenant_a = r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const secret = event.project.secrets.canary;
  globalThis.stash = secret;
  globalThis.hoard = [];
  for (let i = 0; i < 2000; i++) globalThis.hoard.push(secret + i);
  const bytes = new TextEncoder().encode(secret.repeat(20000));
  globalThis.buffer = bytes;
  process.env.CANARY = secret;
  require("brigadier").stolen = secret;
  const job = new Job("tenant-a-job", "busybox", event);
  job.primaryContainer.environment = { SECRET: secret };
  await job.run();
  console.log("a has " + secret.length);
  return "a done";
});
events.process();
"#;
    // Everything a script can read: its event (and secrets under any key),
    // globals, process.env, the SDK's objects, fresh memory, a job's spec.
    let tenant_b = r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const seen = [];
  seen.push(JSON.stringify(event));
  for (const key of ["canary", "../tenant-a/canary", "tenant-a", "*", ""]) seen.push(String(event.project.secrets[key]));
  for (const name of Object.getOwnPropertyNames(globalThis)) {
    try { const v = globalThis[name]; if (typeof v !== "function") seen.push(name + "=" + String(v)); } catch (e) {}
  }
  seen.push(JSON.stringify(process.env));
  const brigadier = require("brigadier");
  for (const name of Object.getOwnPropertyNames(brigadier)) seen.push(name + "=" + String(brigadier[name]));
  const fresh = new Uint8Array(4 * 1024 * 1024);
  let nonzero = 0;
  for (let i = 0; i < fresh.length; i++) if (fresh[i] !== 0) nonzero++;
  seen.push("nonzero=" + nonzero);
  const job = new Job("tenant-b-job", "busybox", event);
  job.primaryContainer.environment = { A: String(event.project.secrets["tenant-a"]), B: event.project.secrets.canary };
  await job.run();
  const text = seen.join("\n");
  console.log(text);
  return "b saw " + text.length + " characters, nonzero=" + nonzero;
});
events.process();
"#;
    let mut leaks = 0;
    let rounds = 5;
    for _ in 0..rounds {
        let a = run(
            ScriptSource::new("brigade.js", tenant_a),
            WorkerLimits::default(),
            "tenant-a",
            TENANT_A_CANARY,
        )
        .await;
        assert!(a.run.outcome.succeeded(), "{}", a.describe());
        assert_eq!(a.summary(), "a done");
        let b = run(
            ScriptSource::new("brigade.js", tenant_b),
            WorkerLimits::default(),
            "tenant-b",
            CANARY,
        )
        .await;
        assert!(b.run.outcome.succeeded(), "{}", b.describe());
        assert!(b.summary().ends_with("nonzero=0"), "{}", b.summary());
        // B saw its own secret (the scan works) and never A's.
        assert!(b.visible().contains(CANARY), "{}", b.describe());
        if leaked(&b, TENANT_A_CANARY) {
            leaks += 1;
        }
        assert_eq!(b.jobs.len(), 1);
        assert!(!b.jobs[0].spec.contains(TENANT_A_CANARY), "{:?}", b.jobs);
        assert_eq!(b.jobs[0].project, "tenant-b");
    }
    eprintln!("adversarial (tenants): {rounds} cases, 0 host crashes, {leaks} leaks");
    assert_eq!(leaks, 0, "tenant A's secret reached tenant B");
}

/// A3: a script nested deeply enough overflowed the host's stack while it was
/// parsed, which aborted the whole process (every worker of a server); the
/// host now refuses nesting past `script::MAX_NESTING` before parsing. Each
/// depth runs in a child process (this binary, running
/// [`deep_nesting_child`]), so that the abort is observed, not suffered.
#[test]
fn deeply_nested_scripts_do_not_crash_the_host() {
    let mut crashed = Vec::new();
    for shape in ["brackets", "parentheses"] {
        for depth in [1_000, 10_000, 100_000] {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "deep_nesting_child", "--ignored", "--nocapture"])
                .env("MIZZEN_DEEP_NESTING", format!("{shape}:{depth}"))
                .output()
                .unwrap();
            if !output.status.success() {
                crashed.push(format!(
                    "{depth} nested {shape}: {}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .filter(|l| l.contains("overflow") || l.contains("panicked"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
        }
    }
    eprintln!(
        "adversarial (nesting): 6 cases, {} host crashes, 0 leaks",
        crashed.len()
    );
    assert!(crashed.is_empty(), "{}", crashed.join("\n"));
}

/// One nested script, as `deeply_nested_scripts_do_not_crash_the_host`
/// asks for it: it must end in a named error (a syntax error, or the Wasm
/// stack trap QuickJS's compiler meets at 1,000 levels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by deeply_nested_scripts_do_not_crash_the_host"]
async fn deep_nesting_child() {
    let Ok(which) = std::env::var("MIZZEN_DEEP_NESTING") else {
        return;
    };
    let (shape, depth) = which.split_once(':').unwrap();
    let depth: usize = depth.parse().unwrap();
    let text = match shape {
        "brackets" => format!("const a = {}{};\n", "[".repeat(depth), "]".repeat(depth)),
        _ => format!("const a = {}1{};\n", "(".repeat(depth), ")".repeat(depth)),
    };
    // On a worker thread, where a server compiles scripts.
    let outcome = tokio::spawn(async move {
        run(
            ScriptSource::new("brigade.js", text),
            WorkerLimits::default(),
            "adversarial-project",
            CANARY,
        )
        .await
    })
    .await
    .unwrap();
    assert!(
        outcome.run.outcome.succeeded()
            || outcome
                .failure()
                .is_some_and(|f| script_error(f) || matches!(f, WorkerFailure::Trap { .. })),
        "{}",
        outcome.describe()
    );
}

/// B5: "invalid UTF-8 … escaped", not fatal. A JavaScript string may hold a
/// lone surrogate (a string sliced inside a pair); the SDK sends it as a
/// `\ud800` JSON escape, which the host's JSON parser refused, so
/// `console.log` threw and failed the worker; the host now mends them into
/// U+FFFD. The SDK's own cut of a long line at 65,536 UTF-16 units can make
/// such a string from valid text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn log_lines_with_lone_surrogates_are_logged_not_fatal() {
    for (name, js) in [
        (
            "a lone surrogate",
            "console.log(\"broken \\ud800 pair \\udfff end\");\nconsole.log(\"after\");\n",
        ),
        (
            "an emoji line the SDK cuts inside a pair",
            "console.log(\"x\" + \"\\u{1f680}\".repeat(40000));\nconsole.log(\"after\");\n",
        ),
    ] {
        let outcome = run(
            ScriptSource::new("brigade.js", js),
            WorkerLimits::default(),
            "adversarial-project",
            CANARY,
        )
        .await;
        let lines = outcome.run.worker_lines();
        assert!(
            outcome.run.outcome.succeeded() && lines.len() == 2 && lines[1] == "after",
            "{name}: {}",
            outcome.describe()
        );
    }
}
