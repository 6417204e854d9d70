//! One conformance suite for every guest language: each behaviour of
//! BEHAVIOURS.md is written once below (its event and its expected outcome)
//! and sent to the conformance script of every language, through the real
//! sandbox, with jobs on the machine's container engine (scripts/setup-engine
//! prepares one). Every language must end every behaviour the same way.
//!
//! The test prints the language × behaviour table that README.md shows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::{Event, LogLevel, Phase};
use mizzen_runtime::executor::{ContainerLimits, EventContext};
use mizzen_runtime::log::{LogSource, MemoryLog};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    JobCapability, Sandbox, WorkerFailure, WorkerLimits, WorkerOutcome, WorkerRequest,
};
use tokio::sync::OnceCell;

/// The languages, each with its conformance script (built from the sources
/// beside it for Rust and Go: see scripts/build-guests).
const LANGUAGES: [(&str, &str); 4] = [
    ("JavaScript", "js/brigade.js"),
    ("TypeScript", "ts/brigade.ts"),
    ("Rust", "rust/brigade.wasm"),
    ("Go", "go/brigade.wasm"),
];

const SECRET: &str = "s3cr3t-token-value";

/// Runs at once: enough to overlap the jobs' container start-ups, few enough
/// for a 2-core machine.
const PARALLEL_RUNS: usize = 6;

async fn sandbox() -> &'static Sandbox {
    mizzen_tests::worker::sandbox(Path::new(env!("CARGO_TARGET_TMPDIR"))).await
}

async fn executor() -> Arc<DockerExecutor> {
    static EXECUTOR: OnceCell<Arc<DockerExecutor>> = OnceCell::const_new();
    EXECUTOR
        .get_or_init(|| async {
            let config = DockerConfig {
                data_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-data"),
                storage: None,
            };
            let executor = DockerExecutor::connect(config).await.unwrap_or_else(|e| {
                panic!(
                    "the conformance suite needs a container engine; run scripts/setup-engine: {e}"
                )
            });
            Arc::new(executor)
        })
        .await
        .clone()
}

fn script(language: &str, file: &str) -> ScriptSource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = Path::new(file).file_name().unwrap().to_string_lossy();
    match language {
        "Rust" | "Go" => ScriptSource::module(name, bytes),
        _ => ScriptSource::new(name, String::from_utf8(bytes).unwrap()),
    }
}

/// What a behaviour's event and project are.
struct Setup {
    event: Event,
    use_workspace: bool,
    limits: WorkerLimits,
}

/// What one run left.
struct Run {
    outcome: WorkerOutcome,
    log: MemoryLog,
}

impl Run {
    /// The script's own lines (not its jobs' output), with their levels.
    fn lines(&self) -> Vec<(LogLevel, String)> {
        self.log
            .records()
            .into_iter()
            .filter(|r| !matches!(r.source, LogSource::Container(_)))
            .map(|r| (r.level, r.message))
            .collect()
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|(_, m)| m == line)
    }

    /// Output of job `job`'s containers.
    fn job_output(&self, job: &str) -> Vec<String> {
        self.log
            .records()
            .into_iter()
            .filter(|r| {
                matches!(r.source, LogSource::Container(_)) && r.job.as_deref() == Some(job)
            })
            .map(|r| r.message)
            .collect()
    }

    fn failure(&self) -> String {
        self.outcome
            .failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

type Check = fn(&Run, &Setup) -> Result<(), String>;

/// One row of BEHAVIOURS.md.
struct Behaviour {
    row: u32,
    source: &'static str,
    event_type: &'static str,
    setup: fn(&mut Setup),
    expect: Check,
}

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

fn succeeded(run: &Run) -> Result<(), String> {
    expect(run.outcome.phase == Phase::Succeeded, || {
        format!(
            "expected SUCCEEDED, got {:?}: {}",
            run.outcome.phase,
            run.failure()
        )
    })
}

fn line(run: &Run, text: &str) -> Result<(), String> {
    expect(run.has_line(text), || format!("expected the line {text:?}"))
}

fn no_line_starting(run: &Run, start: &str) -> Result<(), String> {
    expect(
        !run.lines().iter().any(|(_, m)| m.starts_with(start)),
        || format!("expected no line starting {start:?}"),
    )
}

fn failed_with(run: &Run, text: &str) -> Result<(), String> {
    expect(
        run.outcome.phase == Phase::Failed && run.failure().contains(text),
        || format!("expected FAILED naming {text:?}"),
    )
}

fn nothing(_: &mut Setup) {}

fn with_workspace(setup: &mut Setup) {
    setup.use_workspace = true;
}

fn behaviours() -> Vec<Behaviour> {
    let b = |row, source, event_type, setup: fn(&mut Setup), expect: Check| Behaviour {
        row,
        source,
        event_type,
        setup,
        expect,
    };
    vec![
        b(1, "conformance", "match", nothing, |r, _| {
            succeeded(r)?;
            line(r, "matched match")
        }),
        b(2, "conformance-wild", "anything", nothing, |r, _| {
            succeeded(r)?;
            line(r, "wildcard got anything")
        }),
        b(3, "conformance-wild", "exact", nothing, |r, _| {
            succeeded(r)?;
            line(r, "exact handler")?;
            no_line_starting(r, "wildcard got")
        }),
        b(4, "conformance", "last-wins", nothing, |r, _| {
            succeeded(r)?;
            line(r, "second registration")?;
            no_line_starting(r, "first registration")
        }),
        b(5, "conformance", "unsubscribed", nothing, |r, _| {
            succeeded(r)?;
            let info: Vec<_> = r
                .lines()
                .into_iter()
                .filter(|(level, m)| {
                    *level <= LogLevel::Info && !m.starts_with("brigade-worker version:")
                })
                .collect();
            expect(info.is_empty(), || {
                format!("expected no info lines, got {info:?}")
            })
        }),
        b(
            6,
            "conformance",
            "event-fields",
            |s| {
                s.event.labels = Some(BTreeMap::from([("team".into(), "ci".into())]));
                s.event.short_title = "short".into();
            },
            |r, s| {
                succeeded(r)?;
                let e = &s.event;
                line(
                    r,
                    &format!(
                        "id={} project={} source={} type={} label=ci title=short",
                        e.id, e.project.id, e.source, e.event_type
                    ),
                )
            },
        ),
        b(
            7,
            "conformance",
            "payload",
            |s| s.event.payload = r#"{"name":"Mizzen","count":3}"#.into(),
            |r, _| {
                succeeded(r)?;
                line(r, "name=Mizzen count=3")
            },
        ),
        b(8, "conformance", "log-levels", nothing, |r, _| {
            succeeded(r)?;
            let lines = r.lines();
            for (level, text) in [
                (LogLevel::Info, "level info"),
                (LogLevel::Warn, "level warn"),
                (LogLevel::Error, "level error"),
            ] {
                expect(lines.contains(&(level, text.into())), || {
                    format!("expected {text:?} at {level:?}")
                })?;
            }
            no_line_starting(r, "level debug")
        }),
        b(
            9,
            "conformance",
            "log-levels",
            |s| s.event.worker.log_level = LogLevel::Debug,
            |r, _| {
                succeeded(r)?;
                expect(
                    r.lines().contains(&(LogLevel::Debug, "level debug".into())),
                    || "expected \"level debug\" at DEBUG".into(),
                )?;
                line(r, "level error")
            },
        ),
        b(10, "conformance", "summary", nothing, |r, _| {
            succeeded(r)?;
            expect(
                r.outcome.summary.as_deref() == Some("conformance summary"),
                || format!("expected the summary, got {:?}", r.outcome.summary),
            )
        }),
        b(11, "conformance", "summary-limit", nothing, |r, _| {
            succeeded(r)?;
            line(r, "summary refused: limit_exceeded")?;
            expect(r.outcome.summary.as_deref() == Some("short"), || {
                format!(
                    "expected the summary \"short\", got {:?}",
                    r.outcome.summary
                )
            })
        }),
        b(12, "conformance", "job-success", nothing, |r, _| {
            succeeded(r)?;
            line(r, "job hello succeeded")?;
            expect(r.job_output("hello") == ["hello from job"], || {
                format!("expected the job's output, got {:?}", r.job_output("hello"))
            })
        }),
        b(13, "conformance", "job-failure", nothing, |r, _| {
            failed_with(r, r#"Job "fails" failed"#)
        }),
        b(14, "conformance", "job-failure-caught", nothing, |r, _| {
            succeeded(r)?;
            line(r, "caught phase=FAILED exitCode=3")
        }),
        b(15, "conformance", "job-timeout", nothing, |r, _| {
            succeeded(r)?;
            line(r, "caught phase=TIMED_OUT")
        }),
        b(16, "conformance", "job-fallible", nothing, |r, _| {
            succeeded(r)?;
            line(r, "fallible job done")
        }),
        b(17, "conformance", "concurrent", with_workspace, |r, _| {
            succeeded(r)?;
            line(r, "concurrent done")
        }),
        b(18, "conformance", "sequence", with_workspace, |r, _| {
            succeeded(r)?;
            line(r, "order=1,2")
        }),
        b(19, "conformance", "sequence-stops", nothing, |r, _| {
            succeeded(r)?;
            line(r, r#"sequence stopped: Job "fails" failed"#)?;
            expect(r.job_output("never").is_empty(), || {
                "job \"never\" ran".into()
            })
        }),
        b(20, "conformance", "logs", nothing, |r, _| {
            succeeded(r)?;
            line(r, "logs=one|two")
        }),
        b(
            21,
            "conformance",
            "secrets",
            |s| {
                s.event.project.secrets = BTreeMap::from([("token".into(), SECRET.into())]);
            },
            |r, _| {
                succeeded(r)?;
                line(r, "token length=18")
            },
        ),
        b(
            22,
            "conformance",
            "script-secrets",
            |s| {
                s.event.project.secrets = BTreeMap::from([
                    ("visible".into(), "v".into()),
                    ("hidden".into(), "h".into()),
                ]);
                s.event.project.script_secrets = Some(BTreeSet::from(["visible".into()]));
            },
            |r, _| {
                succeeded(r)?;
                line(r, "visible=true hidden=false")
            },
        ),
        b(23, "conformance", "workspace", with_workspace, |r, _| {
            succeeded(r)?;
            line(r, "read=hello workspace entries=a.txt after=")
        }),
        b(
            24,
            "conformance",
            "workspace-refused",
            with_workspace,
            |r, _| {
                succeeded(r)?;
                line(r, "refused: invalid_request")
            },
        ),
        b(
            25,
            "conformance",
            "workspace-not-configured",
            nothing,
            |r, _| {
                succeeded(r)?;
                line(r, "workspace: not_configured")
            },
        ),
        b(26, "conformance", "throw", nothing, |r, _| {
            failed_with(r, "boom from conformance")
        }),
        b(27, "conformance", "panic", nothing, |r, _| {
            failed_with(r, "panic from conformance")
        }),
        b(28, "conformance", "memory", nothing, |r, _| {
            expect(
                matches!(r.outcome.failure, Some(WorkerFailure::Memory { .. })),
                || format!("expected the memory limit, got {:?}", r.outcome.failure),
            )
        }),
        b(
            29,
            "conformance",
            "cpu",
            |s| s.limits.cpu_time = Duration::from_secs(2),
            |r, _| {
                expect(
                    matches!(r.outcome.failure, Some(WorkerFailure::CpuTime { .. })),
                    || format!("expected the CPU time limit, got {:?}", r.outcome.failure),
                )
            },
        ),
        b(30, "conformance", "exit", nothing, |r, _| {
            expect(
                matches!(r.outcome.failure, Some(WorkerFailure::Exit { code: 3 })),
                || format!("expected exit code 3, got {:?}", r.outcome.failure),
            )
        }),
        b(31, "conformance", "sleep", nothing, |r, _| {
            succeeded(r)?;
            line(r, "slept")
        }),
    ]
}

/// Runs one behaviour's event for one language's script.
async fn run(script: &ScriptSource, behaviour: &Behaviour) -> (Run, Setup) {
    let event_id = uuid::Uuid::new_v4().to_string();
    let mut setup = Setup {
        event: Event::new(
            &event_id,
            "conformance",
            behaviour.source,
            behaviour.event_type,
        ),
        use_workspace: false,
        limits: WorkerLimits::default(),
    };
    (behaviour.setup)(&mut setup);
    let context = Arc::new(EventContext {
        use_workspace: setup.use_workspace,
        container_limits: ContainerLimits::of(&setup.limits),
        kept: Default::default(),
        volumes: Default::default(),
        ..mizzen_tests::worker::context(&event_id, "conformance")
    });
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            script,
            WorkerRequest {
                event: setup.event.clone(),
                limits: setup.limits,
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: executor().await,
                    event: context,
                },
            },
        )
        .await;
    (Run { outcome, log }, setup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_behaves_the_same() {
    let behaviours = Arc::new(behaviours());
    // `MIZZEN_CONFORMANCE_LANGUAGES=Rust,Go` runs only those (while one
    // language's script is being written); CI runs them all.
    let only = std::env::var("MIZZEN_CONFORMANCE_LANGUAGES").ok();
    let languages: Vec<_> = LANGUAGES
        .into_iter()
        .filter(|(language, _)| {
            only.as_deref()
                .is_none_or(|only| only.split(',').any(|l| l == *language))
        })
        .collect();
    let scripts: Vec<_> = languages
        .iter()
        .map(|(language, file)| (*language, Arc::new(script(language, file))))
        .collect();
    let runs = scripts.iter().flat_map(|(language, script)| {
        let behaviours = behaviours.clone();
        (0..behaviours.len()).map(move |i| {
            let (behaviours, script) = (behaviours.clone(), script.clone());
            async move {
                let behaviour = &behaviours[i];
                let (run, setup) = run(&script, behaviour).await;
                let verdict = (behaviour.expect)(&run, &setup).map_err(|why| {
                    let mut log = run.log.text();
                    log.truncate(3000);
                    format!("{why}\nfailure: {}\nlog:\n{log}", run.failure())
                });
                (*language, behaviour.row, verdict)
            }
        })
    });
    let results: Vec<_> = futures_util::stream::iter(runs)
        .buffer_unordered(PARALLEL_RUNS)
        .collect()
        .await;

    let verdict = |language: &str, row: u32| {
        results
            .iter()
            .find(|(l, r, _)| *l == language && *r == row)
            .map(|(_, _, v)| v)
            .expect("every pair ran")
    };
    let mut table = String::from("| # | behaviour |");
    for (language, _) in &languages {
        table.push_str(&format!(" {language} |"));
    }
    table.push_str(&format!("\n|---|---|{}\n", "---|".repeat(languages.len())));
    let mut failures = Vec::new();
    for behaviour in behaviours.iter() {
        table.push_str(&format!(
            "| {} | `{}` |",
            behaviour.row, behaviour.event_type
        ));
        for (language, _) in &languages {
            match verdict(language, behaviour.row) {
                Ok(()) => table.push_str(" ✓ |"),
                Err(why) => {
                    table.push_str(" ✗ |");
                    failures.push(format!(
                        "{language}, row {} ({}): {why}",
                        behaviour.row, behaviour.event_type
                    ));
                }
            }
        }
        table.push('\n');
    }
    eprintln!("{table}");
    eprintln!(
        "conformance: {} behaviours × {} languages, {} failed",
        behaviours.len(),
        languages.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
