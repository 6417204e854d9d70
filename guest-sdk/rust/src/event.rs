//! The event a worker handles, and the registry of handlers.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::host::{self, op};
use crate::logger::{Level, logger};

/// The event a worker handles: Brigade's `event.json`, every field of the
/// host's `Event` (docs/host-api.md, `event.get`).
///
/// Maps that the host sends as `null` (qualifiers, labels, default config
/// files) are empty here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Event {
    /// The event's id (a UUID).
    pub id: String,
    /// The project whose worker handles this copy of the event.
    pub project: Project,
    /// Who created the event, e.g. `brigade.sh/cli` or `brigade.sh/github`.
    pub source: String,
    /// What happened, e.g. `exec` or `push`; its meaning depends on the source.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Qualifiers the project's subscription matched exactly.
    #[serde(deserialize_with = "null_as_default")]
    pub qualifiers: BTreeMap<String, String>,
    /// Labels the project's subscription matched. Some sources set their
    /// own: `job` (GitHub's `ci:job_requested`), `release`
    /// (`cd:pipeline_requested`), `appID` (GitHub App), `teamID`,
    /// `channelID` and `userID` (Slack), `tick` (`brigade.sh/cron`: the
    /// tick, RFC 3339).
    #[serde(deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// A short title for lists; may be empty.
    pub short_title: String,
    /// A longer title; may be empty.
    pub long_title: String,
    /// The payload: an opaque string (see [`Event::payload_json`]).
    pub payload: String,
    /// The worker's settings for this event.
    pub worker: Worker,
}

impl Event {
    /// The payload parsed as JSON, into any type that implements
    /// `serde::Deserialize` (a `serde_json::Value`, or a struct of your own).
    #[track_caller]
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let at = Location::caller();
        serde_json::from_str(&self.payload).map_err(|e| Error::new(e).located_at(at))
    }
}

/// The project part of an [`Event`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Project {
    /// The project's id.
    pub id: String,
    /// Where the project's jobs run in Kubernetes (empty without a cluster).
    pub kubernetes: Kubernetes,
    /// The project's secrets: all of them, or only those the script may read
    /// when the project lists them in `spec.workerTemplate.scriptSecrets`.
    #[serde(deserialize_with = "null_as_default")]
    pub secrets: BTreeMap<String, String>,
}

/// The Kubernetes settings of a project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Kubernetes {
    /// The namespace of the project's jobs; empty when no cluster is used.
    pub namespace: String,
}

/// The worker part of an [`Event`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Worker {
    /// The API server's address; empty in a local run.
    pub api_address: String,
    /// The worker's API token; empty in a local run.
    pub api_token: String,
    /// The level below which the [`logger`](crate::logger())'s lines are
    /// dropped: `ERROR`, `WARN`, `INFO` or `DEBUG`.
    pub log_level: String,
    /// Where config files live, relative to the project's source.
    pub config_files_directory: String,
    /// Config files given inline in the project definition.
    #[serde(deserialize_with = "null_as_default")]
    pub default_config_files: BTreeMap<String, String>,
    /// The project's git settings, with the event's overrides.
    pub git: Option<GitConfig>,
}

/// Where a project's source lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct GitConfig {
    /// The repository URL.
    #[serde(rename = "cloneURL")]
    pub clone_url: String,
    /// A commit to check out; wins over `git_ref`.
    pub commit: String,
    /// A branch or tag (`refs/heads/x`, `refs/tags/x` or a short name).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether to check out submodules too.
    pub init_submodules: bool,
}

fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

thread_local! {
    static EVENT: OnceCell<&'static Event> = const { OnceCell::new() };
}

/// This worker's event, read from the host once (`event.get`).
#[track_caller]
pub fn event() -> Result<&'static Event> {
    if let Some(event) = EVENT.with(|cell| cell.get().copied()) {
        return Ok(event);
    }
    let at = Location::caller();
    let event: Event = host::call(op::EVENT_GET, &()).map_err(|e| Error::host(e, Some(at)))?;
    let event: &'static Event = Box::leak(Box::new(event));
    EVENT.with(|cell| {
        let _ = cell.set(event);
    });
    Ok(event)
}

/// What a handler may return as the event's summary: nothing (`()`), a
/// `String` or `&str` (an empty one sets none), or an `Option` of those.
pub trait IntoSummary {
    /// The summary, if any.
    fn into_summary(self) -> Option<String>;
}

impl IntoSummary for () {
    fn into_summary(self) -> Option<String> {
        None
    }
}

impl IntoSummary for String {
    fn into_summary(self) -> Option<String> {
        (!self.is_empty()).then_some(self)
    }
}

impl IntoSummary for &str {
    fn into_summary(self) -> Option<String> {
        self.to_string().into_summary()
    }
}

impl<T: IntoSummary> IntoSummary for Option<T> {
    fn into_summary(self) -> Option<String> {
        self.and_then(IntoSummary::into_summary)
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Option<String>>>>>;
type Handler = Box<dyn FnOnce(Event) -> HandlerFuture>;

/// The script's handlers, by event source and type: Brigade's `events`.
///
/// ```no_run
/// use brigadier::{Event, Events, Result, info};
///
/// async fn exec(event: Event) -> Result<()> {
///     info!("got {} from {}", event.event_type, event.source);
///     Ok(())
/// }
///
/// fn main() {
///     Events::new().on("brigade.sh/cli", "exec", exec).process();
/// }
/// ```
#[derive(Default)]
pub struct Events {
    handlers: BTreeMap<(String, String), Handler>,
}

impl Events {
    /// A registry without handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for events of `source` and `event_type`; `"*"` as
    /// the type matches every type of that source, and an exact type wins
    /// over it. The last registration for a source and type wins.
    ///
    /// A handler is an `async fn(Event) -> Result<T>` (or a closure returning
    /// a future, or an async closure) where `T` is `()`, or a summary for the
    /// event: a `String`, `&str` or `Option` of them.
    pub fn on<F, T>(&mut self, source: &str, event_type: &str, handler: F) -> &mut Self
    where
        F: AsyncFnOnce(Event) -> Result<T> + 'static,
        T: IntoSummary,
    {
        let handler: Handler = Box::new(move |event| {
            Box::pin(async move { handler(event).await.map(IntoSummary::into_summary) })
        });
        self.handlers
            .insert((source.to_string(), event_type.to_string()), handler);
        self
    }

    /// Handles this worker's event: reads it (`event.get`), runs the handler
    /// that matches it to completion, sets the summary it returns, and
    /// reports its error (or the executor's) with `script.error`, which fails
    /// the worker. An event no handler matches succeeds, with a line at
    /// debug level.
    ///
    /// Installs the SDK's panic hook first ([`install_panic_hook`](crate::install_panic_hook)).
    pub fn process(&mut self) {
        crate::install_panic_hook();
        if let Err(error) = self.try_process()
            && !host::report_script_error(&error.report())
        {
            eprintln!("{}", error.report());
        }
    }

    /// [`process`](Events::process) without the reporting: the handler's
    /// error (or the SDK's) is returned instead. The summary is set as by
    /// `process`.
    pub fn try_process(&mut self) -> Result<()> {
        let event = event()?;
        let exact = (event.source.clone(), event.event_type.clone());
        let wildcard = (event.source.clone(), "*".to_string());
        let handler = match self.handlers.remove(&exact) {
            Some(handler) => handler,
            None => match self.handlers.remove(&wildcard) {
                Some(handler) => handler,
                None => {
                    logger().log(
                        Level::Debug,
                        format_args!(
                            "no handler for events of source \"{}\" and type \"{}\"",
                            event.source, event.event_type
                        ),
                    );
                    return Ok(());
                }
            },
        };
        let summary = crate::executor::block_on(handler(event.clone()))??;
        if let Some(summary) = summary {
            crate::summary(summary)?;
        }
        Ok(())
    }
}
