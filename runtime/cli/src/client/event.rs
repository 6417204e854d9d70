//! `mizzen event`: creating events, following their workers, and managing
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use reqwest::Method;
use serde_json::{Value, json};

use super::http::{API_VERSION, Api};
use super::print::{self, OutputArg, Table, age_of, field, items, out};
use super::{Failure, bad_input, confirm, read_limited, warn};
use crate::{EXIT_FAILED, EXIT_NOT_SUBSCRIBED};

/// Brigade's gateways accepted payloads up to GitHub's 25 MB; so does the
/// CLI (as `mizzen run`).
const MAX_PAYLOAD_BYTES: u64 = 25 * 1024 * 1024;

/// How often a log stream that broke off is opened again before giving up.
const MAX_LOG_RECONNECTS: u32 = 5;

/// Every worker phase, in the SDK's order.
const ALL_PHASES: [&str; 10] = [
    "ABORTED",
    "CANCELED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SCHEDULING_FAILED",
    "STARTING",
    "SUCCEEDED",
    "TIMED_OUT",
    "UNKNOWN",
];

/// Phases a worker does not leave.
const TERMINAL_PHASES: [&str; 6] = [
    "ABORTED",
    "CANCELED",
    "FAILED",
    "SCHEDULING_FAILED",
    "SUCCEEDED",
    "TIMED_OUT",
];

/// Phases before a worker runs.
const WAITING_PHASES: [&str; 2] = ["PENDING", "STARTING"];

fn is_terminal_phase(phase: &str) -> bool {
    TERMINAL_PHASES.contains(&phase)
}

/// `mizzen event`.
#[derive(Subcommand)]
pub enum EventCommand {
    /// Create an event for a project
    Create(CreateArgs),
    /// Show an event and its jobs
    Get {
        #[command(flatten)]
        id: EventIdArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List events, newest first
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Cancel an event: a pending worker is CANCELED, a running one ABORTED
    Cancel {
        #[command(flatten)]
        id: EventIdArg,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Cancel a project's pending (and optionally starting and running) events
    #[command(visible_alias = "cm")]
    CancelMany {
        #[command(flatten)]
        project: ProjectArg,
        /// Cancel RUNNING events too
        #[arg(short, long)]
        running: bool,
        /// Cancel STARTING events too
        #[arg(short, long)]
        starting: bool,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Run a finished event again, keeping the jobs that succeeded
    Retry {
        #[command(flatten)]
        id: EventIdArg,
        /// Wait for the new event's worker and follow its logs
        #[arg(short, long)]
        follow: bool,
    },
    /// Create a new event like an existing one
    Clone {
        #[command(flatten)]
        id: EventIdArg,
        /// Wait for the new event's worker and follow its logs
        #[arg(short, long)]
        follow: bool,
    },
    /// Delete an event and its logs
    Delete {
        #[command(flatten)]
        id: EventIdArg,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Delete a project's events in the given phases
    #[command(visible_alias = "dm")]
    DeleteMany {
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        phases: PhaseFlags,
        /// Delete events in any phase
        #[arg(long)]
        any_phase: bool,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Print an event's worker or job logs
    #[command(visible_alias = "log")]
    Logs {
        #[command(flatten)]
        id: EventIdArg,
        /// A job's logs instead of the worker's
        #[arg(short, long, value_name = "NAME")]
        job: Option<String>,
        /// A container of the worker or job (a sidecar, or vcs)
        #[arg(short, long, value_name = "NAME")]
        container: Option<String>,
        /// Keep printing until the container ends
        #[arg(short, long)]
        follow: bool,
    },
    /// List and download what an event's jobs saved (job.artifacts)
    #[command(subcommand, visible_alias = "artifact")]
    Artifacts(super::kept::ArtifactCommand),
}

/// `-i/--id` (also `-e/--event`, as in brig).
#[derive(Args)]
pub struct EventIdArg {
    /// The event's ID; `@latest` for the newest event you may see,
    /// `PROJECT@latest` for a project's newest
    #[arg(
        short = 'i',
        long = "id",
        visible_short_alias = 'e',
        visible_alias = "event",
        value_name = "ID"
    )]
    pub(super) id: String,
}

/// What stands for the newest event in an event's ID (`@latest`,
/// `PROJECT@latest`), so that "the event I just created" needs no copying.
const LATEST: &str = "@latest";

impl EventIdArg {
    /// The event's ID, with `@latest` and `PROJECT@latest` looked up (the
    /// newest event of those the caller may see).
    pub(super) async fn resolve(&self, api: &Api) -> Result<String, Failure> {
        let Some(project) = self.id.strip_suffix(LATEST) else {
            return Ok(self.id.clone());
        };
        let list = api
            .get(&["v2", "events"])
            .query("limit", "1")
            .query_opt("projectID", (!project.is_empty()).then_some(project))
            .send()
            .await?;
        let newest = items(&list)
            .first()
            .map(|event| field(event, &["metadata", "id"]))
            .filter(|id| !id.is_empty());
        newest.ok_or_else(|| {
            bad_input(if project.is_empty() {
                anyhow::anyhow!("@latest: there are no events you may see")
            } else {
                anyhow::anyhow!("{}: project {project:?} has no events you may see", self.id)
            })
        })
    }
}

/// `-p/--project`.
#[derive(Args)]
pub struct ProjectArg {
    /// The project's ID
    #[arg(short = 'p', long = "project", value_name = "ID")]
    project: String,
}

/// `mizzen event create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The project's ID
    #[arg(short = 'p', long = "project", value_name = "ID")]
    project: String,
    /// The event's source
    #[arg(short, long, default_value = "brigade.sh/cli")]
    source: String,
    /// The event's type
    #[arg(
        short = 't',
        long = "type",
        value_name = "TYPE",
        default_value = "exec"
    )]
    event_type: String,
    /// The event's payload
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the event's payload from a file
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// Wait for the worker, print its logs, and exit 1 unless it SUCCEEDED
    #[arg(short, long)]
    follow: bool,
    /// What to print of the created events: a sentence each, their IDs
    /// alone (`name`, for scripts), or the API's list
    #[arg(short, long, value_enum, default_value_t = CreatedOutput::Text)]
    output: CreatedOutput,
    /// Print only the created events' IDs (as `-o name`)
    #[arg(short, long, conflicts_with = "output")]
    quiet: bool,
}

/// `event create -o`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CreatedOutput {
    /// `Created event "ID".`
    Text,
    /// The IDs, one a line
    Name,
    /// The API's EventList as JSON
    Json,
    /// The API's EventList as YAML
    Yaml,
}

/// `mizzen event list`.
#[derive(Args)]
pub struct ListArgs {
    /// Only this project's events
    #[arg(short = 'p', long = "project", value_name = "ID")]
    project: Option<String>,
    /// Only events from this source
    #[arg(short, long)]
    source: Option<String>,
    /// Only events of this type
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    #[command(flatten)]
    phases: PhaseFlags,
    /// Only events accepted after this: a time (RFC 3339) or how long ago
    /// (`90m`, `2h`, `7d`)
    #[arg(long, value_name = "WHEN", value_parser = when)]
    since: Option<String>,
    /// Only events accepted before this: a time (RFC 3339) or how long ago
    #[arg(long, value_name = "WHEN", value_parser = when)]
    before: Option<String>,
    /// Continue a previous listing from this token
    #[arg(long = "continue", value_name = "TOKEN")]
    continue_from: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

/// `--since` and `--before`: a time, or a duration before now, as the API's
/// RFC 3339 time in UTC.
fn when(text: &str) -> Result<String, String> {
    let time = match print::parse_rfc3339(text) {
        Some(time) => time,
        None => {
            let ago = humantime::parse_duration(text).map_err(|e| {
                format!("{e}: expected a time such as 2026-12-06T17:00:00Z or a duration such as 2h or 7d")
            })?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{text} ago is before the epoch"))?
        }
    };
    Ok(humantime::format_rfc3339_micros(time).to_string())
}

/// Worker phases to select events by.
#[derive(Args, Default)]
pub struct PhaseFlags {
    /// Events whose worker is ABORTED
    #[arg(long)]
    aborted: bool,
    /// Events whose worker is CANCELED
    #[arg(long)]
    canceled: bool,
    /// Events whose worker is FAILED
    #[arg(long)]
    failed: bool,
    /// Events whose worker is PENDING
    #[arg(long)]
    pending: bool,
    /// Events whose worker is RUNNING
    #[arg(long)]
    running: bool,
    /// Events whose worker is SCHEDULING_FAILED
    #[arg(long)]
    scheduling_failed: bool,
    /// Events whose worker is STARTING
    #[arg(long)]
    starting: bool,
    /// Events whose worker is SUCCEEDED
    #[arg(long)]
    succeeded: bool,
    /// Events whose worker is TIMED_OUT
    #[arg(long, visible_alias = "timedout")]
    timed_out: bool,
    /// Events whose worker is UNKNOWN
    #[arg(long)]
    unknown: bool,
    /// Events whose worker is in any terminal phase
    #[arg(long)]
    terminal: bool,
    /// Events whose worker is in any non-terminal phase
    #[arg(long)]
    non_terminal: bool,
}

impl PhaseFlags {
    /// The phases selected, in the SDK's order; empty for none.
    fn phases(&self) -> Vec<&'static str> {
        let chosen = [
            self.aborted,
            self.canceled,
            self.failed,
            self.pending,
            self.running,
            self.scheduling_failed,
            self.starting,
            self.succeeded,
            self.timed_out,
            self.unknown,
        ];
        ALL_PHASES
            .iter()
            .zip(chosen)
            .filter(|&(phase, chosen)| {
                chosen
                    || (self.terminal && is_terminal_phase(phase))
                    || (self.non_terminal && !is_terminal_phase(phase))
            })
            .map(|(phase, _)| *phase)
            .collect()
    }
}

/// Runs `mizzen event ...`.
pub async fn run(command: EventCommand) -> Result<(), Failure> {
    match command {
        EventCommand::Create(args) => create(args).await,
        EventCommand::Get { id, output } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            let event = api.get(&["v2", "events", &id]).send().await?;
            print::emit(output.output, &event, event_details)
        }
        EventCommand::List(args) => {
            let api = Api::from_config()?;
            let phases = args.phases.phases();
            let list = api
                .get(&["v2", "events"])
                .query_opt("projectID", args.project.as_deref())
                .query_opt("source", args.source.as_deref())
                .query_opt("type", args.event_type.as_deref())
                .query_opt(
                    "workerPhases",
                    (!phases.is_empty()).then(|| phases.join(",")).as_deref(),
                )
                .query_opt("createdAfter", args.since.as_deref())
                .query_opt("createdBefore", args.before.as_deref())
                .query_opt("continue", args.continue_from.as_deref())
                .send()
                .await?;
            print::emit(args.output.output, &list, |list| {
                print::list_table(list, "No events found.", events_table)
            })
        }
        EventCommand::Cancel { id, yes } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            if !confirm(yes, &format!("Cancel event {:?}?", id))? {
                return Ok(());
            }
            api.request(Method::PUT, &["v2", "events", &id, "cancellation"])
                .send()
                .await?;
            out(format!("Canceled event {:?}.", id));
            Ok(())
        }
        EventCommand::CancelMany {
            project,
            running,
            starting,
            yes,
        } => {
            let flags = PhaseFlags {
                pending: true,
                running,
                starting,
                ..PhaseFlags::default()
            };
            let phases = flags.phases().join(",");
            let api = Api::from_config()?;
            let question = format!(
                "Cancel all events of project {:?} whose worker is {}?",
                project.project,
                phases.replace(',', " or ")
            );
            if !confirm(yes, &question)? {
                return Ok(());
            }
            let result = api
                .request(Method::POST, &["v2", "events", "cancellations"])
                .query("projectID", &project.project)
                .query("workerPhases", phases)
                .send()
                .await?;
            out(format!("Canceled {} event(s).", count(&result)));
            Ok(())
        }
        EventCommand::Retry { id, follow } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            let event = api
                .request(Method::POST, &["v2", "events", &id, "retries"])
                .send()
                .await?;
            let new_id = field(&event, &["metadata", "id"]);
            out(format!("Created event {new_id:?} to retry event {:?}.", id));
            if follow {
                follow_event(&api, &new_id).await
            } else {
                Ok(())
            }
        }
        EventCommand::Clone { id, follow } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            let event = api
                .request(Method::POST, &["v2", "events", &id, "clones"])
                .send()
                .await?;
            let new_id = field(&event, &["metadata", "id"]);
            out(format!(
                "Created event {new_id:?} as a clone of event {:?}.",
                id
            ));
            if follow {
                follow_event(&api, &new_id).await
            } else {
                Ok(())
            }
        }
        EventCommand::Delete { id, yes } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            if !confirm(yes, &format!("Delete event {:?} and its logs?", id))? {
                return Ok(());
            }
            api.request(Method::DELETE, &["v2", "events", &id])
                .send()
                .await?;
            out(format!("Deleted event {:?}.", id));
            Ok(())
        }
        EventCommand::DeleteMany {
            project,
            phases,
            any_phase,
            yes,
        } => {
            let phases: Vec<&str> = if any_phase {
                ALL_PHASES.to_vec()
            } else {
                phases.phases()
            };
            if phases.is_empty() {
                return Err(bad_input(anyhow::anyhow!(
                    "say which events to delete: phase flags (--succeeded, --failed, ...), --terminal, --non-terminal or --any-phase"
                )));
            }
            let api = Api::from_config()?;
            let question = if any_phase {
                format!("Delete all events of project {:?}?", project.project)
            } else {
                format!(
                    "Delete all events of project {:?} whose worker is {}?",
                    project.project,
                    phases.join(" or ")
                )
            };
            if !confirm(yes, &question)? {
                return Ok(());
            }
            let result = api
                .request(Method::DELETE, &["v2", "events"])
                .query("projectID", &project.project)
                .query("workerPhases", phases.join(","))
                .send()
                .await?;
            out(format!("Deleted {} event(s).", count(&result)));
            Ok(())
        }
        EventCommand::Artifacts(command) => super::kept::artifacts(command).await,
        EventCommand::Logs {
            id,
            job,
            container,
            follow,
        } => {
            let api = Api::from_config()?;
            let id = id.resolve(&api).await?;
            print_logs(&api, &id, job.as_deref(), container.as_deref(), follow, "")
                .await
                .map(drop)
        }
    }
}

fn count(result: &Value) -> u64 {
    result.get("count").and_then(Value::as_u64).unwrap_or(0)
}

/// `mizzen event create`: `POST /v2/events`, then perhaps follow the worker.
async fn create(args: CreateArgs) -> Result<(), Failure> {
    let payload = match (&args.payload_file, &args.payload) {
        (Some(path), _) => Some(read_limited(path, MAX_PAYLOAD_BYTES, "payload file")?),
        (None, payload) => payload.clone(),
    };
    let api = Api::from_config()?;
    let mut body = json!({
        "apiVersion": API_VERSION,
        "kind": "Event",
        "projectID": args.project,
        "source": args.source,
        "type": args.event_type,
    });
    if let Some(payload) = payload {
        body["payload"] = Value::String(payload);
    }
    let list = api
        .request(Method::POST, &["v2", "events"])
        .json(body)
        .send()
        .await?;
    let created: Vec<String> = items(&list)
        .iter()
        .map(|event| field(event, &["metadata", "id"]))
        .collect();
    let Some(first) = created.first() else {
        return Err(Failure {
            code: EXIT_NOT_SUBSCRIBED,
            error: anyhow::anyhow!(
                "project {:?} is not subscribed to events of source {:?} and type {:?}; no event was created",
                args.project,
                args.source,
                args.event_type
            ),
        });
    };
    let output = if args.quiet {
        CreatedOutput::Name
    } else {
        args.output
    };
    match output {
        CreatedOutput::Text => created
            .iter()
            .for_each(|id| out(format!("Created event {id:?}."))),
        CreatedOutput::Name => created.iter().for_each(out),
        CreatedOutput::Json => print::emit(print::Output::Json, &list, |_| String::new())?,
        CreatedOutput::Yaml => print::emit(print::Output::Yaml, &list, |_| String::new())?,
    }
    if args.follow {
        follow_event(&api, first).await
    } else {
        Ok(())
    }
}

/// `--follow`: waits (with a spinner on a terminal) until the worker leaves
/// PENDING and STARTING, then prints the worker's log and, as jobs start,
/// each job's and sidecar's lines prefixed `[job: name]` (as `mizzen run`
/// prints them) until the worker ends; then the worker's phase, its
/// summary, and for each job that failed its last lines and the command
/// that shows the rest. Fails unless the worker SUCCEEDED.
async fn follow_event(api: &Api, id: &str) -> Result<(), Failure> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("Waiting for event's worker to be RUNNING...");
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let started = watch_status(api, id, |phase| !WAITING_PHASES.contains(&phase)).await;
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    let started = started?;
    let mut followers = tokio::task::JoinSet::new();
    // A worker canceled or never scheduled has no logs to wait for.
    if !matches!(started.as_str(), "CANCELED" | "SCHEDULING_FAILED") {
        let (api, id) = (api.clone(), id.to_string());
        followers.spawn(async move {
            let tail = print_logs(&api, &id, None, None, true, "").await;
            (None, tail)
        });
    }
    // Jobs are found as the worker starts them: each container's log is
    // followed from then on, beside the worker's.
    let mut followed = BTreeSet::new();
    let event = loop {
        let event = api.get(&["v2", "events", id]).send().await?;
        for (job, container) in containers(&event) {
            if followed.insert((job.clone(), container.clone())) {
                let (api, id) = (api.clone(), id.to_string());
                // As `mizzen run` prints a job's lines.
                let prefix = if container == job {
                    format!("[job: {job}] ")
                } else {
                    format!("[job: {job}/{container}] ")
                };
                followers.spawn(async move {
                    let tail =
                        print_logs(&api, &id, Some(&job), Some(&container), true, &prefix).await;
                    (Some(job), tail)
                });
            }
        }
        if is_terminal_phase(&field(&event, &["worker", "status", "phase"])) {
            break event;
        }
        tokio::time::sleep(JOB_POLL).await;
    };
    // The worker has ended: its jobs have too, or end now; their last lines
    // are on their way.
    let mut tails: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let drained = tokio::time::timeout(LOG_DRAIN, async {
        while let Some(joined) = followers.join_next().await {
            match joined {
                Ok((job, Ok(tail))) => {
                    if let Some(job) = job {
                        tails.entry(job).or_default().extend(tail);
                    }
                }
                Ok((_, Err(failure))) => warn(format!(
                    "cannot follow the event's logs: {:#}",
                    failure.error
                )),
                Err(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        followers.abort_all();
        warn(format!(
            "some logs were still open {LOG_DRAIN:?} after the worker ended; `mizzen event logs --id {id}` shows them"
        ));
    }
    print_outcome(id, &event, &tails);
    let phase = field(&event, &["worker", "status", "phase"]);
    if phase == "SUCCEEDED" {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            error: anyhow::anyhow!("event {id:?}: worker {phase}"),
        })
    }
}

/// How often a followed event is read for the jobs its worker started.
const JOB_POLL: Duration = Duration::from_secs(1);
/// How long the logs of an ended worker's jobs may take to end: a job's log
/// ends when the job does, which the worker's end brings about at once.
const LOG_DRAIN: Duration = Duration::from_secs(15);
/// The lines of a failed job printed again at the end.
const FAILED_JOB_TAIL: usize = 10;

/// An event's jobs (`worker.jobs`), none when it has none.
fn jobs_of(event: &Value) -> &[Value] {
    event
        .pointer("/worker/jobs")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// Every (job, container) of an event's jobs: each job's primary container
/// (named as the job) and its sidecars.
fn containers(event: &Value) -> Vec<(String, String)> {
    let jobs = jobs_of(event);
    let mut all = Vec::new();
    for job in jobs {
        let name = field(job, &["name"]);
        if name.is_empty() {
            continue;
        }
        all.push((name.clone(), name.clone()));
        if let Some(sidecars) = job
            .pointer("/spec/sidecarContainers")
            .and_then(Value::as_object)
        {
            all.extend(
                sidecars
                    .keys()
                    .map(|sidecar| (name.clone(), sidecar.clone())),
            );
        }
    }
    all
}

/// The end of a followed event: the worker's phase and how long it ran,
/// its summary, and each failed job's last lines with the command that
/// shows them all.
fn print_outcome(id: &str, event: &Value, tails: &BTreeMap<String, Vec<String>>) {
    let status = &event["worker"]["status"];
    let phase = field(status, &["phase"]);
    let took = match (
        print::parse_rfc3339(&field(status, &["started"])),
        print::parse_rfc3339(&field(status, &["ended"])),
    ) {
        (Some(started), Some(ended)) => ended
            .duration_since(started)
            .map(|d| format!(" in {:.1} s", d.as_secs_f64()))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut text = String::new();
    let jobs = jobs_of(event);
    for job in jobs {
        let job_phase = field(job, &["status", "phase"]);
        if !matches!(job_phase.as_str(), "FAILED" | "TIMED_OUT" | "ABORTED") {
            continue;
        }
        let name = field(job, &["name"]);
        text.push_str(&format!("\nJob {name:?} {}", print::phase(&job_phase)));
        match tails.get(&name).filter(|t| !t.is_empty()) {
            Some(tail) => {
                text.push_str("; its last lines:\n");
                let skip = tail.len().saturating_sub(FAILED_JOB_TAIL);
                for line in &tail[skip..] {
                    text.push_str(&format!("  {line}\n"));
                }
            }
            None => text.push('\n'),
        }
        text.push_str(&format!(
            "All of its log: mizzen event logs --id {id} --job {name}\n"
        ));
    }
    text.push_str(&format!(
        "\nEvent {id:?}: worker {}{took}.",
        print::phase(&phase)
    ));
    let summary = field(event, &["summary"]);
    if !summary.is_empty() {
        text.push_str(&format!("\nSummary: {summary}"));
    }
    out(text.trim_start_matches('\n'));
}

/// Watches the worker's status (`?watch=true&sse=true`) until `until`
/// holds for its phase; returns that phase. A stream that ends too soon is
/// checked with a plain GET and watched again.
async fn watch_status(
    api: &Api,
    id: &str,
    until: impl Fn(&str) -> bool,
) -> Result<String, Failure> {
    let path = ["v2", "events", id, "worker", "status"];
    loop {
        let mut stream = api
            .get(&path)
            .query("watch", "true")
            .query("sse", "true")
            .stream()
            .await?;
        loop {
            match stream.next().await {
                Ok(Some(frame)) if frame.event == "message" => {
                    let Ok(status) = serde_json::from_str::<Value>(&frame.data) else {
                        continue;
                    };
                    let phase = field(&status, &["phase"]);
                    if until(&phase) {
                        return Ok(phase);
                    }
                }
                Ok(Some(frame)) if frame.event == "done" => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let phase = field(&api.get(&path).send().await?, &["phase"]);
        if until(&phase) {
            return Ok(phase);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Prints log lines (`GET /v2/events/{id}/logs?sse=true`) until the
/// server says `done`, each after `prefix`. A followed stream that
/// breaks off is opened again from the last line's id. Returns the last
/// lines printed (at most [`FAILED_JOB_TAIL`]).
async fn print_logs(
    api: &Api,
    id: &str,
    job: Option<&str>,
    container: Option<&str>,
    follow: bool,
    prefix: &str,
) -> Result<Vec<String>, Failure> {
    let mut tail = std::collections::VecDeque::with_capacity(FAILED_JOB_TAIL);
    let mut last_id: Option<String> = None;
    let mut printed = false;
    let mut attempts = 0;
    loop {
        let mut call = api
            .get(&["v2", "events", id, "logs"])
            .query("sse", "true")
            .query_opt("job", job)
            .query_opt("container", container)
            .last_event_id(last_id.as_deref());
        if follow {
            call = call.query("follow", "true");
        }
        let mut stream = call.stream().await?;
        let broke = loop {
            match stream.next().await {
                Ok(Some(frame)) => match frame.event.as_str() {
                    "done" => return Ok(tail.into()),
                    "message" => {
                        attempts = 0;
                        if frame.id.is_some() {
                            last_id = frame.id;
                        }
                        let line = log_line(&frame.data);
                        let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
                        if tail.len() == FAILED_JOB_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                        printed = true;
                    }
                    _ => {}
                },
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            }
        };
        // The stream ended without `done`.
        attempts += 1;
        let resumable = last_id.is_some() || !printed;
        if !follow || !resumable || attempts > MAX_LOG_RECONNECTS {
            return match broke {
                Some(failure) => Err(failure),
                None => Ok(tail.into()),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A LogEntry's message without its line ending (or the data as it came,
/// if it is not one).
fn log_line(data: &str) -> String {
    let message = serde_json::from_str::<Value>(data).ok().and_then(|entry| {
        entry
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
    });
    let line = match &message {
        Some(message) => message.strip_suffix('\n').unwrap_or(message),
        None => data,
    };
    line.strip_suffix('\r').unwrap_or(line).to_string()
}

fn events_table(items: &[Value]) -> Table {
    let mut table = Table::new(&["ID", "PROJECT", "SOURCE", "TYPE", "AGE", "WORKER PHASE"]);
    for item in items {
        table.row(vec![
            field(item, &["metadata", "id"]),
            field(item, &["projectID"]),
            field(item, &["source"]),
            field(item, &["type"]),
            age_of(item, &["metadata", "created"]),
            print::phase(&field(item, &["worker", "status", "phase"])),
        ]);
    }
    table
}

/// `event get`: the event's row, then its jobs.
fn event_details(event: &Value) -> String {
    let mut text = events_table(std::slice::from_ref(event)).render();
    let jobs = jobs_of(event);
    if !jobs.is_empty() {
        text.push_str(&format!(
            "\nEvent {:?} jobs:\n\n",
            field(event, &["metadata", "id"])
        ));
        let mut table = Table::new(&["NAME", "STARTED", "ENDED", "PHASE"]);
        for job in jobs {
            table.row(vec![
                field(job, &["name"]),
                age_of(job, &["status", "started"]),
                age_of(job, &["status", "ended"]),
                print::phase(&field(job, &["status", "phase"])),
            ]);
        }
        text.push_str(&table.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_flags() {
        let none = PhaseFlags::default();
        assert!(none.phases().is_empty());
        let some = PhaseFlags {
            succeeded: true,
            failed: true,
            ..PhaseFlags::default()
        };
        assert_eq!(some.phases(), ["FAILED", "SUCCEEDED"]);
        let terminal = PhaseFlags {
            terminal: true,
            failed: true,
            ..PhaseFlags::default()
        };
        assert_eq!(terminal.phases(), TERMINAL_PHASES);
        let non_terminal = PhaseFlags {
            non_terminal: true,
            ..PhaseFlags::default()
        };
        assert_eq!(
            non_terminal.phases(),
            ["PENDING", "RUNNING", "STARTING", "UNKNOWN"]
        );
        let both = PhaseFlags {
            terminal: true,
            non_terminal: true,
            ..PhaseFlags::default()
        };
        assert_eq!(both.phases(), ALL_PHASES);
    }

    #[test]
    fn event_tables() {
        let event = json!({
            "metadata": {"id": "ev-1", "created": "2000-01-01T00:00:00Z"},
            "projectID": "hello-world",
            "source": "brigade.sh/cli",
            "type": "exec",
            "worker": {
                "status": {"phase": "SUCCEEDED"},
                "jobs": [
                    {"name": "build", "status": {"phase": "SUCCEEDED", "started": "2000-01-01T00:00:00Z", "ended": "2000-01-01T00:00:01Z"}},
                    {"name": "pending-job", "status": {"phase": "PENDING"}},
                ],
            },
        });
        let text = event_details(&event);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID     PROJECT       SOURCE           TYPE   AGE   WORKER PHASE"
        );
        assert!(
            lines[1].starts_with("ev-1   hello-world   brigade.sh/cli   exec   "),
            "{text}"
        );
        assert!(lines[1].ends_with("   SUCCEEDED"), "{text}");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "Event \"ev-1\" jobs:");
        assert_eq!(lines[5], "NAME          STARTED   ENDED   PHASE");
        assert!(lines[6].starts_with("build         "), "{text}");
        assert!(lines[6].ends_with("   SUCCEEDED"), "{text}");
        assert_eq!(lines[7], "pending-job                     PENDING");
    }
}
