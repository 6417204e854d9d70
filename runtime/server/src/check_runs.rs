//! Tracked events reported back to GitHub as check runs, as Brigade's
//! GitHub gateway's monitor did: each job becomes a check run named
//! `<project>:<job>` on the event's commit, going queued → in progress →
//! completed with its conclusion and the tail of its log, and the worker's
//! run, named `<project>`, carries the event's summary.
//!
//! An event asks to be tracked through its source state (`tracking`,
//! `installationID`, `owner`, `repo`, `headSHA`, or `pullRequest` when the
//! commit is the pull request's head), which the GitHub gateway writes for
//! deliveries from an App installation. Only events from the App Mizzen is
//! configured as (label `appID`) are reported: another App's installations
//! are not Mizzen's to write to.
//!
//! The scheduler says when an event or one of its jobs changed
//! ([`TrackedEvent::changed`], which never waits); its installation's task
//! reads the event as stored and brings its check runs up to date. Changes
//! to one event coalesce, so what is queued is bounded by the events
//! running. Each installation (a tenant's organisation) has a task of its
//! own, so one waiting out a rate limit holds back no other; within one,
//! calls go to GitHub one at a time, as GitHub asks of integrations. A
//! failed call is logged and never fails the event. The check runs' ids
//! live in this process: an event taken over by another replica gets check
//! runs of its own, which GitHub shows in place of the first ones (same
//! name).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use mizzen_host_api::types::Phase;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::github_app::{GitHubApp, GitHubError};
use crate::store::{EventRecord, JobRecord, Store, StoreError};

/// The lines of a job's log a completed check run shows: the end of a
/// failed build's output, which is what a reader looks for first.
const LOG_TAIL_LINES: i64 = 50;

/// The most of a log tail a check run carries, in bytes: GitHub refuses an
/// `output.text` over 65,535 characters.
const LOG_TAIL_BYTES: usize = 60_000;

/// GitHub's limit on an `output.summary`, less room for the wrapping.
const SUMMARY_BYTES: usize = 60_000;

/// The least time between two rounds of reports. An event is read whole
/// (its jobs) each time it is reported: without a pause, an event of N jobs
/// would be read once per job change, N² rows in its life; with it, the
/// changes of a round coalesce and the reading grows with time, not with
/// jobs squared. A quarter second is not seen on GitHub's page.
const ROUND_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// What the reporter could not do for one event.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
}

/// Check runs made for one event, by name, with the status last sent.
#[derive(Default)]
struct EventRuns {
    /// The commit, once known (a `/brig run` comment names only the pull
    /// request).
    head_sha: Option<String>,
    runs: HashMap<String, (u64, Sent)>,
}

/// What a check run was last told.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Queued,
    InProgress,
    Completed,
}

/// Reports tracked events' jobs as check runs.
pub struct CheckRunReporter {
    app: GitHubApp,
    store: Store,
    /// The installations with events to report, each served by a task of
    /// its own (see [`CheckRunReporter::serve`]).
    installations: Mutex<HashMap<u64, Arc<InstallationQueue>>>,
}

/// One installation's events changed since they were last reported, in
/// order, each once, and those this replica no longer runs.
#[derive(Default)]
struct InstallationQueue {
    changed: Mutex<(VecDeque<String>, HashSet<String>, Vec<String>)>,
    wake: Notify,
}

/// A tracked event, as the scheduler tells the reporter of it.
#[derive(Clone)]
pub struct TrackedEvent {
    reporter: Arc<CheckRunReporter>,
    installation: u64,
    event_id: String,
}

impl TrackedEvent {
    /// Notes that the event or one of its jobs changed; returns at once.
    pub fn changed(&self) {
        self.reporter
            .enqueue(self.installation, &self.event_id, false);
    }

    /// Notes that this replica no longer runs the event (another took it
    /// over); returns at once.
    pub fn forget(&self) {
        self.reporter
            .enqueue(self.installation, &self.event_id, true);
    }
}

/// Where a tracked event's check runs go.
struct Tracking {
    installation: u64,
    owner: String,
    repo: String,
    /// The commit: from the event, or read from its pull request.
    head_sha: String,
    pull_request: Option<u64>,
}

/// How long an installation's task waits for more work before it ends;
/// the next change starts another. Long enough that a pipeline's pauses
/// between jobs do not start and end tasks, short enough that a server
/// serving many installations keeps few tasks.
const IDLE_INSTALLATION: std::time::Duration = std::time::Duration::from_secs(60);

impl CheckRunReporter {
    /// A reporter writing as `app`.
    pub fn new(app: GitHubApp, store: Store) -> Arc<Self> {
        Arc::new(Self {
            app,
            store,
            installations: Mutex::default(),
        })
    }

    /// The event's handle for the scheduler, when its source state asks
    /// for check runs from this App.
    pub fn track(self: &Arc<Self>, event: &EventRecord) -> Option<TrackedEvent> {
        let tracking = tracking(event, self.app.app_id())?;
        Some(TrackedEvent {
            reporter: self.clone(),
            installation: tracking.installation,
            event_id: event.id.clone(),
        })
    }

    /// Queues `event_id` on its installation's task, starting the task when
    /// there is none. Under the installations' lock, so that a task ending
    /// for want of work cannot miss what is queued meanwhile.
    fn enqueue(self: &Arc<Self>, installation: u64, event_id: &str, forget: bool) {
        let mut installations = self.installations.lock().unwrap_or_else(|e| e.into_inner());
        let queue = match installations.get(&installation) {
            Some(queue) => queue.clone(),
            None => {
                let queue = Arc::new(InstallationQueue::default());
                installations.insert(installation, queue.clone());
                tokio::spawn(self.clone().serve(installation, queue.clone()));
                queue
            }
        };
        let mut changed = queue.changed.lock().unwrap_or_else(|e| e.into_inner());
        if forget {
            changed.2.push(event_id.to_owned());
        } else if changed.1.insert(event_id.to_owned()) {
            changed.0.push_back(event_id.to_owned());
        }
        drop(changed);
        queue.wake.notify_one();
    }

    /// Reports one installation's changes: in rounds, each taking every
    /// event changed since the last, at most one round per
    /// [`ROUND_PAUSE`]. Each installation has a task of its own, so one
    /// tenant's installation waiting out GitHub's rate limit, or holding
    /// thousands of jobs, delays no other installation's reports; within
    /// one, calls go one at a time, as GitHub asks of Apps. The task ends
    /// when it has had nothing to do for [`IDLE_INSTALLATION`] and no event
    /// of its is unfinished.
    async fn serve(self: Arc<Self>, installation: u64, queue: Arc<InstallationQueue>) {
        let mut events: HashMap<String, EventRuns> = HashMap::new();
        loop {
            let (mut round, forgotten) = {
                let mut changed = queue.changed.lock().unwrap_or_else(|e| e.into_inner());
                changed.1.clear();
                (
                    std::mem::take(&mut changed.0),
                    std::mem::take(&mut changed.2),
                )
            };
            round.retain(|id| !forgotten.contains(id));
            for id in &forgotten {
                events.remove(id);
            }
            if round.is_empty() {
                tokio::select! {
                    _ = queue.wake.notified() => continue,
                    _ = tokio::time::sleep(IDLE_INSTALLATION), if events.is_empty() => {
                        let mut installations =
                            self.installations.lock().unwrap_or_else(|e| e.into_inner());
                        let changed = queue.changed.lock().unwrap_or_else(|e| e.into_inner());
                        if changed.0.is_empty() && changed.2.is_empty() {
                            installations.remove(&installation);
                            return;
                        }
                        continue;
                    }
                }
            }
            for event_id in round {
                if let Err(error) = self.report(&mut events, &event_id).await {
                    tracing::warn!(event = %event_id, installation, %error, "the event's check runs could not be reported to GitHub");
                }
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// Brings the event's check runs up to date with the store; `events`
    /// holds what its installation's task made so far.
    async fn report(
        &self,
        events: &mut HashMap<String, EventRuns>,
        event_id: &str,
    ) -> Result<(), ReportError> {
        let Some(event) = self.store.event(event_id).await? else {
            events.remove(event_id);
            return Ok(());
        };
        let Some(mut tracking) = tracking(&event, self.app.app_id()) else {
            return Ok(());
        };
        let jobs = self.store.jobs(event_id).await?;
        let runs = events.entry(event_id.to_owned()).or_default();
        tracking.head_sha = match &runs.head_sha {
            Some(sha) => sha.clone(),
            None => {
                let sha = self.head_sha(&tracking).await?;
                runs.head_sha = Some(sha.clone());
                sha
            }
        };
        for job in &jobs {
            let name = format!("{}:{}", event.project_id, job.name);
            let Some((sent, mut body)) = update(runs, &name, job.phase, &event.id) else {
                continue;
            };
            if sent == Sent::Completed {
                body["output"] = self.job_output(job).await?;
            }
            self.send(&tracking, &name, runs, body, sent).await?;
        }
        // The worker's run: in progress once it runs, completed with the
        // summary once the event ends.
        let name = event.project_id.clone();
        if let Some((sent, mut body)) = update(runs, &name, event.phase, &event.id) {
            if sent == Sent::Completed {
                body["output"] = json!({
                    "title": format!("{}: {}", event.project_id, event.phase),
                    "summary": if event.summary.is_empty() {
                        format!("The worker ended {}.", event.phase)
                    } else {
                        truncate_start(&event.summary, SUMMARY_BYTES).to_owned()
                    },
                    "text": self.log_tail(&event.id, "", "worker").await?,
                });
            }
            self.send(&tracking, &name, runs, body, sent).await?;
        }
        if event.phase.is_terminal() && jobs.iter().all(|job| job.phase.is_terminal()) {
            events.remove(event_id);
        }
        Ok(())
    }

    /// Creates the named check run, or updates it, and notes what it was
    /// told.
    async fn send(
        &self,
        tracking: &Tracking,
        name: &str,
        runs: &mut EventRuns,
        mut body: Value,
        sent: Sent,
    ) -> Result<(), ReportError> {
        let repo = &format!("/repos/{}/{}/check-runs", tracking.owner, tracking.repo);
        let id = match runs.runs.get(name) {
            Some((id, _)) => {
                self.app
                    .call(
                        tracking.installation,
                        Method::PATCH,
                        &format!("{repo}/{id}"),
                        Some(&body),
                    )
                    .await?;
                *id
            }
            None => {
                body["name"] = json!(name);
                body["head_sha"] = json!(tracking.head_sha);
                let answer = self
                    .app
                    .call(tracking.installation, Method::POST, repo, Some(&body))
                    .await?;
                answer
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or(GitHubError::Answer {
                        method: Method::POST,
                        path: repo.to_owned(),
                        field: "id",
                    })?
            }
        };
        runs.runs.insert(name.to_owned(), (id, sent));
        Ok(())
    }

    /// The commit the check runs go on: the event's, or its pull request's
    /// head, read from GitHub.
    async fn head_sha(&self, tracking: &Tracking) -> Result<String, ReportError> {
        if !tracking.head_sha.is_empty() {
            return Ok(tracking.head_sha.clone());
        }
        let Some(number) = tracking.pull_request else {
            return Ok(String::new());
        };
        let path = format!("/repos/{}/{}/pulls/{number}", tracking.owner, tracking.repo);
        let pull = self
            .app
            .call(tracking.installation, Method::GET, &path, None)
            .await?;
        pull.get("head")
            .and_then(|head| head.get("sha"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                GitHubError::Answer {
                    method: Method::GET,
                    path,
                    field: "head.sha",
                }
                .into()
            })
    }

    /// A completed job's title, summary and log tail.
    async fn job_output(&self, job: &JobRecord) -> Result<Value, ReportError> {
        Ok(json!({
            "title": format!("{}: {}", job.name, job.phase),
            "summary": format!("Job `{}` ended {}.", job.name, job.phase),
            "text": self.log_tail(&job.logs_event_id, &job.name, &job.name).await?,
        }))
    }

    /// The last lines of a log as a Markdown code block (masked as they
    /// were stored), or nothing when there are none.
    async fn log_tail(
        &self,
        event_id: &str,
        job: &str,
        container: &str,
    ) -> Result<String, ReportError> {
        let lines = self
            .store
            .log_tail(event_id, job, container, LOG_TAIL_LINES)
            .await?;
        if lines.is_empty() {
            return Ok(String::new());
        }
        let text = lines
            .iter()
            .map(|line| line.message.trim_end_matches('\n'))
            .collect::<Vec<_>>()
            .join("\n");
        // A line of backticks in the log would end the block early.
        let text = truncate_start(&text, LOG_TAIL_BYTES).replace("```", "ʼʼʼ");
        Ok(format!("The last lines of the log:\n```\n{text}\n```"))
    }
}

/// Where `event`'s check runs go, when its source state asks for them from
/// App `app_id` and names an installation and a repository GitHub could have.
fn tracking(event: &EventRecord, app_id: u64) -> Option<Tracking> {
    let state = &event.document.source_state;
    if event.source != crate::gateways::GITHUB_SOURCE
        || state.get("tracking").map(String::as_str) != Some("true")
        || event.document.labels.get("appID") != Some(&app_id.to_string())
    {
        return None;
    }
    Some(Tracking {
        installation: state.get("installationID")?.parse().ok()?,
        owner: state.get("owner").filter(|o| github_name(o))?.clone(),
        repo: state.get("repo").filter(|r| github_name(r))?.clone(),
        head_sha: state.get("headSHA").cloned().unwrap_or_default(),
        pull_request: state.get("pullRequest").and_then(|n| n.parse().ok()),
    })
}

/// Whether `name` can be a GitHub owner or repository name (letters,
/// digits, `.`, `-`, `_`, at most 100): anything else would put another
/// path into the API's URL (`../app/installations`).
fn github_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What brings the named check run to `phase` (its status, and its
/// conclusion once completed), unless it was told so already or has
/// completed.
fn update(runs: &EventRuns, name: &str, phase: Phase, event_id: &str) -> Option<(Sent, Value)> {
    let (wanted, status) = job_status(phase);
    let sent = runs.runs.get(name).map(|(_, sent)| *sent);
    if sent == Some(wanted) || sent == Some(Sent::Completed) {
        return None;
    }
    let mut body = json!({ "status": status, "external_id": event_id });
    if wanted == Sent::Completed {
        body["conclusion"] = json!(conclusion(phase));
    }
    Some((wanted, body))
}

/// A phase as a check run's status.
fn job_status(phase: Phase) -> (Sent, &'static str) {
    match phase {
        Phase::Pending | Phase::Starting | Phase::Unknown => (Sent::Queued, "queued"),
        Phase::Running => (Sent::InProgress, "in_progress"),
        _ => (Sent::Completed, "completed"),
    }
}

/// A terminal phase as a check run's conclusion.
fn conclusion(phase: Phase) -> &'static str {
    match phase {
        Phase::Succeeded => "success",
        Phase::TimedOut => "timed_out",
        Phase::Aborted | Phase::Canceled => "cancelled",
        _ => "failure",
    }
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
fn truncate_start(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_become_githubs_statuses_and_conclusions() {
        assert_eq!(job_status(Phase::Pending).1, "queued");
        assert_eq!(job_status(Phase::Running).1, "in_progress");
        assert_eq!(job_status(Phase::Failed).1, "completed");
        assert_eq!(conclusion(Phase::Succeeded), "success");
        assert_eq!(conclusion(Phase::Failed), "failure");
        assert_eq!(conclusion(Phase::TimedOut), "timed_out");
        assert_eq!(conclusion(Phase::Aborted), "cancelled");
        assert_eq!(conclusion(Phase::SchedulingFailed), "failure");
    }

    #[test]
    fn only_a_whole_tracking_state_of_this_app_is_reported() {
        let event = |source: &str, app: &str, state: &[(&str, &str)]| EventRecord {
            seq: 1,
            id: "e".into(),
            project_id: "p".into(),
            created: 0,
            source: source.into(),
            event_type: "ci:pipeline_requested".into(),
            document: crate::store::EventDocument {
                labels: [("appID".to_owned(), app.to_owned())].into(),
                source_state: state
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            summary: String::new(),
            phase: Phase::Pending,
            started: None,
            ended: None,
            attempts: 0,
        };
        let whole = [
            ("tracking", "true"),
            ("installationID", "957387"),
            ("owner", "Codertocat"),
            ("repo", "Hello-World"),
            ("headSHA", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"),
        ];
        let github = crate::gateways::GITHUB_SOURCE;
        let tracked = tracking(&event(github, "42", &whole), 42).expect("tracked");
        assert_eq!(
            (
                tracked.installation,
                tracked.owner.as_str(),
                tracked.repo.as_str()
            ),
            (957387, "Codertocat", "Hello-World")
        );
        // Another App's, another source's, or not asking: not ours.
        assert!(tracking(&event(github, "43", &whole), 42).is_none());
        assert!(tracking(&event("brigade.sh/slack", "42", &whole), 42).is_none());
        let with = |key: &'static str, value: &'static str| {
            let mut state = whole.to_vec();
            state.retain(|(k, _)| *k != key);
            state.push((key, value));
            tracking(&event(github, "42", &state), 42)
        };
        assert!(with("tracking", "false").is_none());
        // What a hostile EVENT_CREATOR could write never reaches a URL.
        for (key, value) in [
            ("installationID", "../1"),
            ("installationID", "99999999999999999999999"),
            ("installationID", "-1"),
            ("owner", ".."),
            ("owner", "a/b"),
            ("repo", "../../app/installations"),
            ("repo", "x?y=1"),
            ("repo", ""),
        ] {
            assert!(with(key, value).is_none(), "{key}={value}");
        }
    }

    #[test]
    fn only_githubs_names_go_into_a_path() {
        for good in ["Codertocat", "Hello-World", "brigade.sh", "a_b"] {
            assert!(github_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../app",
            "a?b",
            "a b",
            "%2e%2e",
            &"a".repeat(101),
        ] {
            assert!(!github_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_tail_is_cut_at_a_character() {
        assert_eq!(truncate_start("abc", 5), "abc");
        assert_eq!(truncate_start("aé€", 3), "€");
        assert_eq!(truncate_start("aé€", 4), "€");
        assert_eq!(truncate_start("aé€", 5), "é€");
    }
}
