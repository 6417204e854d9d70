//! The durable store: projects, secrets, events, jobs, logs and principals in
//! SQLite (embedded, the default) or PostgreSQL (shared by several replicas),
//! through one code path (sqlx's `Any` driver and SQL both understand).
//!
//! Events are written by one task that commits many requests in one
//! transaction (group commit): each request is durable when its caller is
//! answered, and a busy server pays one disk sync per batch, not per event.
//! Log lines are batched the same way.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mizzen_host_api::types::Phase;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use futures_util::TryStreamExt;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, Row, SqlSafeStr};
use tokio::sync::{mpsc, oneshot, watch};

/// Requests the event writer commits in one transaction at most. Beyond a
/// few hundred, a bigger batch no longer saves disk syncs but makes the
/// first caller of the batch wait longer.
const MAX_EVENT_BATCH: usize = 512;

/// Log lines written in one transaction at most: enough to absorb a burst,
/// few enough that followers see lines soon.
const MAX_LOG_BATCH: usize = 1_000;

/// Documents read at once to filter events by qualifiers, labels or source
/// state: a chunk ends once its documents pass 8 MiB or it holds 500
/// events (few enough parameters for either database), so filtering costs
/// a few queries per thousand events and memory for one chunk, not for
/// every event.
const FILTER_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
const FILTER_CHUNK_EVENTS: usize = 500;

/// Connections to the database. SQLite writes one at a time anyway; the rest
/// serve reads (WAL lets readers run beside the writer). PostgreSQL replicas
/// each hold this many.
const MAX_CONNECTIONS: u32 = 16;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored document is not what this version of Mizzen wrote.
    #[error("stored {what} is corrupt: {message}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// The database URL is not one Mizzen can use.
    #[error("{0}")]
    Url(String),
    /// The event writer has stopped (the server is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

/// Microseconds since the Unix epoch, the store's clock.
pub fn now_micros() -> i64 {
    micros_at(SystemTime::now())
}

/// Takes the scheduler's lock for the rest of `tx` (a row lock in
/// PostgreSQL, the write lock in SQLite) and answers the time under it.
/// Claims and workers' ends both go through it, so they are ordered, and so
/// are their times: a project's next worker never starts before the one
/// whose slot it took has ended (read before the lock, the claim's time
/// could be older than an end it waited for).
async fn lock_scheduler(
    tx: &mut sqlx::Transaction<'_, Any>,
    owner: &str,
) -> Result<i64, StoreError> {
    sqlx::query("UPDATE scheduler_lock SET holder = $1 WHERE id = 1")
        .bind(owner)
        .execute(&mut **tx)
        .await?;
    Ok(now_micros())
}

/// Locks project `id`'s row for the rest of `tx` (a row lock in PostgreSQL,
/// the write lock in SQLite); whether the project exists.
///
/// A project's deletion takes the lock first, and every write of something
/// that belongs to a project (a secret, a project role, an event) takes it
/// before it writes: whichever comes second sees what the first did. A
/// write that checked the project and then wrote in separate statements
/// could land after the deletion had removed the project's rows, and the
/// next project created with that id (perhaps another tenant's) inherited
/// it; so could a single `INSERT ... WHERE EXISTS`, under PostgreSQL's READ
/// COMMITTED, when the deletion committed between the statement's snapshot
/// and its insert. The update changes nothing, so that it works the same
/// on both databases (SQLite has no `SELECT ... FOR SHARE`).
async fn lock_project(tx: &mut sqlx::Transaction<'_, Any>, id: &str) -> Result<bool, StoreError> {
    let locked = sqlx::query("UPDATE projects SET created = created WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(locked == 1)
}

/// A time as the store keeps it: microseconds since the Unix epoch.
pub fn micros_at(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The RFC 3339 form of a store time, as Brigade's API shows times.
pub fn rfc3339(micros: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_micros(time).to_string()
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A project as stored: its definition as the API received it (JSON).
#[derive(Debug, Clone)]
pub struct ProjectRecord {
    /// `metadata.id`.
    pub id: String,
    /// When it was created.
    pub created: i64,
    /// The definition.
    pub document: Value,
}

/// What an event carries besides its indexed columns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventDocument {
    /// Qualifiers.
    #[serde(default)]
    pub qualifiers: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A short title.
    #[serde(default)]
    pub short_title: String,
    /// A long title.
    #[serde(default)]
    pub long_title: String,
    /// Git overrides (`cloneURL`, `commit`, `ref`).
    #[serde(default)]
    pub git: Option<Value>,
    /// The payload.
    #[serde(default)]
    pub payload: String,
    /// State a gateway keeps on the event.
    #[serde(default)]
    pub source_state: BTreeMap<String, String>,
    /// The project's definition when the event was created: later edits do
    /// not change an existing event's worker (as in Brigade).
    pub project: Value,
}

/// An event as stored.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Insertion order; newer events have larger numbers.
    pub seq: i64,
    /// The id (a UUID).
    pub id: String,
    /// The project whose copy this is.
    pub project_id: String,
    /// When it was accepted.
    pub created: i64,
    /// The source.
    pub source: String,
    /// The type.
    pub event_type: String,
    /// The rest.
    pub document: EventDocument,
    /// The worker's summary.
    pub summary: String,
    /// The worker's phase.
    pub phase: Phase,
    /// When the worker started running.
    pub started: Option<i64>,
    /// When it ended.
    pub ended: Option<i64>,
    /// How many times a worker was started for it.
    pub attempts: i64,
}

/// What the API needs of an event to find it, check who may see it and
/// follow its worker: everything but its document, which holds the payload
/// (up to the API's body limit) and the project's definition.
#[derive(Debug, Clone)]
pub struct EventHead {
    /// Insertion order; newer events have larger numbers.
    pub seq: i64,
    /// The id (a UUID).
    pub id: String,
    /// The project whose copy this is.
    pub project_id: String,
    /// The source.
    pub source: String,
    /// The worker's phase.
    pub phase: Phase,
    /// When the worker started running.
    pub started: Option<i64>,
    /// When it ended.
    pub ended: Option<i64>,
    /// The stored document's length in bytes, about what the event's JSON
    /// adds to an answer.
    pub size: u64,
}

/// An event's place in a list: where it is in the store, and what its
/// document adds to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSlot {
    /// Insertion order; newer events have larger numbers.
    pub seq: i64,
    /// The stored document's length in bytes.
    pub size: u64,
}

/// The parts of an event's document that list filters look at.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentKeys {
    #[serde(default)]
    qualifiers: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    source_state: BTreeMap<String, String>,
}

/// A page of event heads being filled, newest first.
struct PageBuilder {
    items: Vec<EventSlot>,
    limit: usize,
    budget: u64,
    bytes: u64,
    /// Set by the first event that did not fit: none after it may join, or
    /// the order would break.
    full: bool,
    remaining: i64,
}

impl PageBuilder {
    fn new(limit: i64, budget: u64) -> Self {
        Self {
            items: Vec::new(),
            limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
            budget,
            bytes: 0,
            full: false,
            remaining: 0,
        }
    }

    /// Adds the next matching event, or counts it as one that follows.
    fn push(&mut self, slot: EventSlot) {
        let fits = self.items.is_empty() || self.bytes.saturating_add(slot.size) <= self.budget;
        if !self.full && self.items.len() < self.limit && fits {
            self.bytes = self.bytes.saturating_add(slot.size);
            self.items.push(slot);
        } else {
            self.full = true;
            self.remaining += 1;
        }
    }

    fn finish(self) -> Page<EventSlot> {
        let next = (self.remaining > 0)
            .then(|| self.items.last().map(|slot| slot.seq.to_string()))
            .flatten();
        Page {
            items: self.items,
            next,
            remaining: self.remaining,
        }
    }
}

/// A new event, before it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The id.
    pub id: String,
    /// The project.
    pub project_id: String,
    /// When it was accepted.
    pub created: i64,
    /// The source.
    pub source: String,
    /// The type.
    pub event_type: String,
    /// The rest.
    pub document: EventDocument,
    /// Jobs inherited from the event it retries (SUCCEEDED, no workspace).
    pub inherited_jobs: Vec<JobRecord>,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The event.
    pub event_id: String,
    /// The job's name.
    pub name: String,
    /// When the worker created it.
    pub created: i64,
    /// Its spec (Brigade's JobSpec JSON).
    pub spec: Value,
    /// Its phase.
    pub phase: Phase,
    /// When it started running.
    pub started: Option<i64>,
    /// When it ended.
    pub ended: Option<i64>,
    /// The event whose logs hold its output (itself unless inherited).
    pub logs_event_id: String,
    /// Whether it mounted the workspace (such jobs are not inherited).
    pub uses_workspace: bool,
}

/// One line of a log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Order within the store; resumes a stream.
    pub seq: i64,
    /// The event.
    pub event_id: String,
    /// The job, or empty for the worker.
    pub job: String,
    /// The container: `worker`, the job's name for its primary, a sidecar's name.
    pub container: String,
    /// When it was produced.
    pub time: i64,
    /// The text.
    pub message: String,
}

/// Filters of an event list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this project's.
    pub project_id: Option<String>,
    /// Only these projects' (the caller's visibility); `None` for all.
    pub visible_projects: Option<Vec<String>>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Only workers in these phases.
    pub phases: Vec<Phase>,
    /// Only events with these qualifiers.
    pub qualifiers: BTreeMap<String, String>,
    /// Only events with these labels.
    pub labels: BTreeMap<String, String>,
    /// Only events whose source state has these values.
    pub source_state: BTreeMap<String, String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
    /// How many items follow this page.
    pub remaining: i64,
}

/// A role held by a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleAssignment {
    /// The role, e.g. `READER` or `PROJECT_USER`.
    pub role: String,
    /// `USER` or `SERVICE_ACCOUNT`.
    pub principal_type: String,
    /// The principal's id.
    pub principal_id: String,
    /// The source (EVENT_CREATOR), the project (project roles), `*`, or
    /// empty.
    pub scope: String,
}

/// A service account as stored.
#[derive(Debug, Clone)]
pub struct ServiceAccountRecord {
    /// The id.
    pub id: String,
    /// What it is for.
    pub description: String,
    /// When it was created.
    pub created: i64,
    /// When it was locked.
    pub locked: Option<i64>,
}

/// An event the scheduler claimed for this replica.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The event.
    pub event: EventRecord,
}

/// How many workers may run at once, which claims stay within: worker
/// counts, not a worker's resources (those are the runtime's
/// `WorkerLimits`).
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// Workers starting or running at once, across all replicas.
    pub global: i64,
    /// Workers of one project starting or running at once.
    pub per_project: i64,
}

/// A request to the event writer, answered with the projects it found gone
/// (whose events it did not store), or why the batch failed.
type EventBatch = (
    Vec<NewEvent>,
    oneshot::Sender<Result<BTreeSet<String>, String>>,
);

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    events: mpsc::Sender<EventBatch>,
    logs: mpsc::UnboundedSender<LogMessage>,
    /// Bumped after each log batch is committed: followers wake on it.
    logs_written: watch::Receiver<u64>,
    /// Bumped after a worker's or job's status changes on this replica.
    changes: watch::Sender<u64>,
}

impl Store {
    /// Opens (creating and migrating) the store at `url`: `sqlite://PATH` or
    /// `postgres://...`; without a URL, `mizzen.db` in `data_dir`.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match url {
            None => (
                format!("sqlite://{}?mode=rwc", data_dir.join("mizzen.db").display()),
                Backend::Sqlite,
            ),
            Some(url) if url.starts_with("sqlite:") => (url.to_string(), Backend::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_string(), Backend::Postgres)
            }
            Some(url) => {
                return Err(StoreError::Url(format!(
                    "--database-url {:?}: expected sqlite://PATH or postgres://USER@HOST/DB",
                    redact_url(url)
                )));
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Only accepted events must be on disk before the caller
                    // hears of them; the event writer's own connection
                    // asks for that (`durable_connection`). Every other
                    // write (claims, statuses, logs) may be lost in a power
                    // cut without losing an event: a lost claim or status
                    // leaves the event to run again, as after a crash.
                    match backend {
                        Backend::Sqlite => {
                            // WAL lets readers run beside the writer; the busy
                            // timeout lets writers queue instead of failing.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                        }
                        Backend::Postgres => {
                            conn.execute("SET synchronous_commit = off").await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrator(backend).run(&pool).await?;

        let (events, event_rx) = mpsc::channel(4 * MAX_EVENT_BATCH);
        let (logs, log_rx) = mpsc::unbounded_channel();
        let (logs_written_tx, logs_written) = watch::channel(0);
        tokio::spawn(write_events(pool.clone(), backend, event_rx));
        tokio::spawn(write_logs(pool.clone(), log_rx, logs_written_tx));
        let (changes, _) = watch::channel(0);
        Ok(Self {
            pool,
            backend,
            events,
            logs,
            logs_written,
            changes,
        })
    }

    /// Which database is behind the store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A receiver that changes whenever a log batch was committed.
    pub fn log_updates(&self) -> watch::Receiver<u64> {
        self.logs_written.clone()
    }

    /// A receiver that changes whenever a status changed on this replica.
    pub fn status_updates(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    // ----- projects -------------------------------------------------------

    /// Stores a new project; `false` when the id is taken.
    pub async fn create_project(&self, id: &str, document: &Value) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO projects (id, created, document) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(now_micros())
        .bind(document.to_string())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces a project's definition; `false` when there is no such project.
    pub async fn update_project(&self, id: &str, document: &Value) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE projects SET document = $1 WHERE id = $2")
            .bind(document.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// A project.
    pub async fn project(&self, id: &str) -> Result<Option<ProjectRecord>, StoreError> {
        let row = sqlx::query("SELECT id, created, document FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| project_record(&row)).transpose()
    }

    /// Projects in id order, after `after`, limited to `visible` when given.
    pub async fn projects(
        &self,
        after: &str,
        limit: i64,
        visible: Option<&[String]>,
    ) -> Result<Page<ProjectRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, created, document FROM projects WHERE id > $1 ORDER BY id")
                .bind(after)
                .fetch_all(&self.pool)
                .await?;
        let mut all = Vec::new();
        for row in &rows {
            let record = project_record(row)?;
            if visible.is_none_or(|v| v.contains(&record.id)) {
                all.push(record);
            }
        }
        Ok(paginate(all, limit, |p| p.id.clone()))
    }

    /// Deletes a project with its events, jobs, logs, secrets and project
    /// role assignments, in one transaction that holds the project's lock
    /// ([`lock_project`]) from its start; `false` when there is no such
    /// project.
    pub async fn delete_project(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_project(&mut tx, id).await? {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM logs WHERE event_id IN (SELECT id FROM events WHERE project_id = $1)",
            "DELETE FROM jobs WHERE event_id IN (SELECT id FROM events WHERE project_id = $1)",
            "DELETE FROM events WHERE project_id = $1",
            "DELETE FROM secrets WHERE project_id = $1",
            "DELETE FROM role_assignments WHERE scope = $1 AND role LIKE 'PROJECT\\_%' ESCAPE '\\'",
            "DELETE FROM projects WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Runs `dependents` and then `owner` for `id` in one transaction;
    /// whether `owner` deleted a row.
    async fn delete_with(
        &self,
        id: &str,
        dependents: &[&'static str],
        owner: &'static str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for sql in dependents {
            sqlx::query(*sql).bind(id).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query(owner)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted == 1)
    }

    // ----- secrets --------------------------------------------------------

    /// Sets a secret; `false` when there is no such project (it may have
    /// been deleted a moment ago: the secret must not outlive it).
    pub async fn set_secret(
        &self,
        project: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_project(&mut tx, project).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO secrets (project_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(project)
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a secret; `false` when it was not set.
    pub async fn unset_secret(&self, project: &str, key: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM secrets WHERE project_id = $1 AND key = $2")
            .bind(project)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// A project's secrets.
    pub async fn secrets(&self, project: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM secrets WHERE project_id = $1 ORDER BY key")
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key")?, row.try_get("value")?)))
            .collect()
    }

    // ----- events ---------------------------------------------------------

    /// Stores events durably (group commit) and wakes the scheduler.
    /// Returns the projects that no longer exist (deleted while the events
    /// were on their way): their events were not stored, and the others
    /// were.
    pub async fn insert_events(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<BTreeSet<String>, StoreError> {
        if events.is_empty() {
            return Ok(BTreeSet::new());
        }
        let (done, result) = oneshot::channel();
        self.events
            .send((events, done))
            .await
            .map_err(|_| StoreError::Closed)?;
        match result.await {
            Ok(Ok(gone)) => {
                self.changed();
                Ok(gone)
            }
            Ok(Err(message)) => Err(StoreError::Database(sqlx::Error::Protocol(message))),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// An event.
    pub async fn event(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| event_record(&row)).transpose()
    }

    /// An event by its place in the store ([`EventHead::seq`]).
    pub async fn event_by_seq(&self, seq: i64) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq = $1"
        )))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| event_record(&row)).transpose()
    }

    /// An event's head: what it is, whose, and its worker's phase, without
    /// its document.
    pub async fn event_head(&self, id: &str) -> Result<Option<EventHead>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {HEAD_COLUMNS} FROM events WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| event_head(&row)).transpose()
    }

    /// The events matching `filter` that are not in a list's pages: their
    /// heads, newest first. Only the filters on columns apply (project,
    /// source, type, phases).
    pub async fn event_heads(&self, filter: &EventFilter) -> Result<Vec<EventHead>, StoreError> {
        let (sql, binds) = event_query(filter, None, HEAD_COLUMNS);
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_head).collect()
    }

    /// A page of the events matching `filter`, newest first, after the
    /// `after` cursor: at most `limit` events whose documents add up to at
    /// most `page_bytes` (but never an empty page while events match), where
    /// the next page starts and how many events follow.
    ///
    /// No document is held for the page: rows are read as a stream, of
    /// columns stored before the document (SQLite would walk a large
    /// document's overflow pages to reach the columns after it), and for
    /// the filters that look into documents (qualifiers, labels, source
    /// state) documents are read a chunk at a time. Memory does not grow
    /// with the number of events, nor with their payloads.
    pub async fn event_page(
        &self,
        filter: &EventFilter,
        after: Option<i64>,
        limit: i64,
        page_bytes: u64,
    ) -> Result<Page<EventSlot>, StoreError> {
        let (sql, binds) = event_query(filter, after, SLOT_COLUMNS);
        let mut rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds).fetch(&self.pool);
        let mut page = PageBuilder::new(limit, page_bytes);
        let by_document = !(filter.qualifiers.is_empty()
            && filter.labels.is_empty()
            && filter.source_state.is_empty());
        let (mut chunk, mut chunk_bytes) = (Vec::new(), 0);
        while let Some(row) = rows.try_next().await? {
            let size: i64 = row.try_get("size")?;
            let slot = EventSlot {
                seq: row.try_get("seq")?,
                size: u64::try_from(size).unwrap_or(0),
            };
            if !by_document {
                page.push(slot);
                continue;
            }
            chunk_bytes += slot.size;
            chunk.push(slot);
            if chunk_bytes >= FILTER_CHUNK_BYTES || chunk.len() >= FILTER_CHUNK_EVENTS {
                self.filter_by_documents(filter, std::mem::take(&mut chunk), &mut page)
                    .await?;
                chunk_bytes = 0;
            }
        }
        drop(rows);
        self.filter_by_documents(filter, chunk, &mut page).await?;
        Ok(page.finish())
    }

    /// Adds to `page` the events of `chunk` whose qualifiers, labels and
    /// source state match `filter`, in order.
    async fn filter_by_documents(
        &self,
        filter: &EventFilter,
        chunk: Vec<EventSlot>,
        page: &mut PageBuilder,
    ) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, document FROM events WHERE seq IN ({})",
            placeholders.join(", ")
        )));
        for slot in &chunk {
            query = query.bind(slot.seq);
        }
        let mut matching = BTreeSet::new();
        for row in query.fetch_all(&self.pool).await? {
            let document: String = row.try_get("document")?;
            // Only the three maps are read; the payload is skipped over.
            let keys: DocumentKeys =
                serde_json::from_str(&document).map_err(|e| corrupt("event", e))?;
            let contains = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
                want.iter().all(|(k, v)| have.get(k) == Some(v))
            };
            if contains(&keys.qualifiers, &filter.qualifiers)
                && contains(&keys.labels, &filter.labels)
                && contains(&keys.source_state, &filter.source_state)
            {
                matching.insert(row.try_get::<i64, _>("seq")?);
            }
        }
        for slot in chunk {
            if matching.contains(&slot.seq) {
                page.push(slot);
            }
        }
        Ok(())
    }

    /// Deletes an event with its jobs and logs; `false` when there was none.
    pub async fn delete_event(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_with(
            id,
            &[
                "DELETE FROM logs WHERE event_id = $1",
                "DELETE FROM jobs WHERE event_id = $1",
            ],
            "DELETE FROM events WHERE id = $1",
        )
        .await
    }

    /// Sets a worker's summary.
    pub async fn set_summary(&self, id: &str, summary: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE events SET summary = $1 WHERE id = $2")
            .bind(summary)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces an event's source state.
    pub async fn set_source_state(
        &self,
        event: &EventRecord,
        state: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut document = event.document.clone();
        document.source_state = state;
        sqlx::query("UPDATE events SET document = $1 WHERE id = $2")
            .bind(to_json(&document))
            .bind(&event.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cancels an event: a PENDING worker becomes CANCELED at once; a
    /// STARTING or RUNNING one is flagged for its replica to abort. Returns
    /// the phase the worker had, `None` when there is no such event.
    pub async fn cancel_event(&self, id: &str) -> Result<Option<Phase>, StoreError> {
        let Some(event) = self.event_head(id).await? else {
            return Ok(None);
        };
        match event.phase {
            Phase::Pending => {
                let now = now_micros();
                let result = sqlx::query(
                    "UPDATE events SET phase = 'CANCELED', ended = $1 WHERE id = $2 AND phase = 'PENDING'",
                )
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
                if result.rows_affected() == 0 {
                    // It was claimed meanwhile: cancel it as a running one.
                    return Box::pin(self.cancel_event(id)).await;
                }
                self.changed();
            }
            Phase::Starting | Phase::Running => {
                sqlx::query("UPDATE events SET cancel_requested = 1 WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
            _ => {}
        }
        Ok(Some(event.phase))
    }

    /// Ids of this replica's running events whose cancellation was asked
    /// for (possibly through another replica).
    pub async fn cancel_requests(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM events WHERE lease_owner = $1 AND cancel_requested = 1
             AND phase IN ('STARTING', 'RUNNING')",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(Into::into))
            .collect()
    }

    // ----- the scheduler's side --------------------------------------------

    /// Claims up to `room` PENDING events for `owner` within `limits` and
    /// marks their workers RUNNING: a worker starts in this process within
    /// microseconds of its claim, so Brigade's STARTING phase (the time a
    /// worker pod took to start) is skipped rather than written to disk.
    /// Fair between projects: each round gives one worker to every
    /// project with work, fewest running first, oldest event first.
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limits: ClaimLimits,
        room: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        if room == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let now = lock_scheduler(&mut tx, owner).await?;
        // One statement, so that a claim costs one round trip to the
        // database: each pending event gets a slot number, its project's
        // running workers plus its rank among the project's pending events;
        // the smallest slots win (one per project per round, oldest first),
        // none beyond the per-project limit, and no more than the room left
        // under the global limit.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH running AS (
                 SELECT project_id, COUNT(*) AS n FROM events
                 WHERE phase IN ('STARTING', 'RUNNING') GROUP BY project_id
             ),
             ranked AS (
                 SELECT e.id, e.seq,
                        COALESCE(r.n, 0) + ROW_NUMBER() OVER (PARTITION BY e.project_id ORDER BY e.seq) AS slot
                 FROM events e LEFT JOIN running r ON r.project_id = e.project_id
                 WHERE e.phase = 'PENDING'
             ),
             picked AS (
                 SELECT id FROM ranked WHERE slot <= $1 ORDER BY slot, seq
                 LIMIT (SELECT CASE WHEN $2 - COUNT(*) <= 0 THEN 0
                                    WHEN $2 - COUNT(*) < $3 THEN $2 - COUNT(*)
                                    ELSE $3 END
                        FROM events WHERE phase IN ('STARTING', 'RUNNING'))
             )
             UPDATE events SET phase = 'RUNNING', started = $4, lease_owner = $5, lease_until = $6,
                 attempts = attempts + 1
             WHERE id IN (SELECT id FROM picked) AND phase = 'PENDING'
             RETURNING {EVENT_COLUMNS}"
        )))
        .bind(limits.per_project)
        .bind(limits.global)
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .bind(now)
        .bind(owner)
        .bind(now + micros(lease))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events = rows
            .iter()
            .map(event_record)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.seq);
        if !events.is_empty() {
            self.changed();
        }
        Ok(events)
    }

    /// Extends the leases of `owner`'s events.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE events SET lease_until = $1 WHERE lease_owner = $2 AND phase IN ('STARTING', 'RUNNING')",
        )
        .bind(now_micros() + micros(lease))
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes back events whose worker's replica stopped: with `all`, every
    /// STARTING or RUNNING event not owned by `owner` (a single SQLite server
    /// starting up knows nobody else runs them); otherwise those whose lease
    /// ran out. Each goes back to PENDING to run again, keeping the jobs that
    /// SUCCEEDED without a workspace, unless it already had `max_attempts`
    /// workers: then it ends FAILED. Returns the events re-queued and failed.
    pub async fn recover(
        &self,
        owner: &str,
        all: bool,
        max_attempts: i64,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let now = now_micros();
        let rows = if all {
            sqlx::query(
                "SELECT id, attempts FROM events WHERE phase IN ('STARTING', 'RUNNING')
                 AND (lease_owner IS NULL OR lease_owner <> $1)",
            )
            .bind(owner)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(
                "SELECT id, attempts FROM events WHERE phase IN ('STARTING', 'RUNNING') AND lease_until < $1",
            )
            .bind(now)
            .fetch_all(&self.pool)
            .await?
        };
        let (mut requeued, mut failed) = (Vec::new(), Vec::new());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let give_up = attempts >= max_attempts;
            let mut tx = self.pool.begin().await?;
            let sql = if give_up {
                "UPDATE events SET phase = 'FAILED', ended = $1, lease_owner = NULL, lease_until = NULL
                 WHERE id = $2 AND phase IN ('STARTING', 'RUNNING')"
            } else {
                "UPDATE events SET phase = 'PENDING', started = NULL, lease_owner = NULL, lease_until = NULL,
                 ended = $1 WHERE id = $2 AND phase IN ('STARTING', 'RUNNING')"
            };
            let updated = sqlx::query(sql)
                .bind(if give_up { Some(now) } else { None })
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 1 {
                end_open_jobs(&mut tx, &id, now).await?;
                if give_up {
                    failed.push(id);
                } else {
                    forget_unfinished_jobs(&mut tx, &id).await?;
                    requeued.push(id);
                }
            }
            tx.commit().await?;
        }
        if !requeued.is_empty() || !failed.is_empty() {
            self.changed();
        }
        Ok((requeued, failed))
    }

    /// Gives `owner`'s running events back (graceful shutdown): PENDING
    /// again, not counted as an attempt.
    pub async fn release(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE events SET phase = 'PENDING', started = NULL, lease_owner = NULL, lease_until = NULL,
             attempts = attempts - 1 WHERE id = $1 AND lease_owner = $2 AND phase IN ('STARTING', 'RUNNING')",
        )
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            forget_unfinished_jobs(&mut tx, id).await?;
        }
        tx.commit().await?;
        self.changed();
        Ok(())
    }

    /// Ends `owner`'s worker with `phase` (the first terminal phase wins) and
    /// ends its jobs that are still open: PENDING ones CANCELED, the rest
    /// ABORTED (Brigade left them PENDING forever, #1902).
    pub async fn worker_ended(
        &self,
        owner: &str,
        id: &str,
        phase: Phase,
        summary: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = lock_scheduler(&mut tx, owner).await?;
        let result = sqlx::query(
            "UPDATE events SET phase = $1, ended = $2, summary = COALESCE($3, summary),
             lease_owner = NULL, lease_until = NULL
             WHERE id = $4 AND lease_owner = $5 AND phase IN ('STARTING', 'RUNNING')",
        )
        .bind(phase.as_str())
        .bind(now)
        .bind(summary)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        end_open_jobs(&mut tx, id, now).await?;
        tx.commit().await?;
        self.changed();
        Ok(result.rows_affected() == 1)
    }

    /// Events waiting for a worker, and workers running, for the metrics.
    pub async fn phase_counts(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT phase, COUNT(*) AS n FROM events WHERE phase IN ('PENDING', 'STARTING', 'RUNNING') GROUP BY phase",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("phase")?, r.try_get("n")?)))
            .collect()
    }

    // ----- jobs -----------------------------------------------------------

    /// An event's jobs in creation order.
    pub async fn jobs(&self, event_id: &str) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE event_id = $1 ORDER BY created, name"
        )))
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_record).collect()
    }

    /// A job.
    pub async fn job(&self, event_id: &str, name: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE event_id = $1 AND name = $2"
        )))
        .bind(event_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_record).transpose()
    }

    /// Records a new PENDING job (replacing an inherited one of the same
    /// name whose spec differs).
    pub async fn create_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM jobs WHERE event_id = $1 AND name = $2")
            .bind(&job.event_id)
            .bind(&job.name)
            .execute(&mut *tx)
            .await?;
        insert_job(&mut tx, job).await?;
        tx.commit().await?;
        self.changed();
        Ok(())
    }

    /// Moves a job to `phase`, stamping its start or end; a job that has
    /// ended stays as it ended.
    pub async fn job_phase(
        &self,
        event_id: &str,
        name: &str,
        phase: Phase,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        let (started, ended) = match phase {
            Phase::Running => (Some(now), None),
            p if p.is_terminal() => (None, Some(now)),
            _ => (None, None),
        };
        sqlx::query(
            "UPDATE jobs SET phase = $1, started = COALESCE(started, $2), ended = COALESCE($3, ended)
             WHERE event_id = $4 AND name = $5
             AND phase NOT IN ('SUCCEEDED', 'FAILED', 'ABORTED', 'CANCELED', 'TIMED_OUT', 'SCHEDULING_FAILED')",
        )
        .bind(phase.as_str())
        .bind(started)
        .bind(ended)
        .bind(event_id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        self.changed();
        Ok(())
    }

    // ----- logs -----------------------------------------------------------

    /// Queues a log line; it is committed with the next batch.
    pub fn append_log(&self, line: LogLine) {
        // The writer only stops when the process does.
        let _ = self.logs.send(LogMessage::Line(line));
    }

    /// Waits until every line queued so far is committed (before the
    /// process exits).
    pub async fn flush_logs(&self) {
        let (done, flushed) = oneshot::channel();
        if self.logs.send(LogMessage::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Up to `limit` lines of one stream after `after`.
    pub async fn logs(
        &self,
        event_id: &str,
        job: &str,
        container: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, job, container, time, message FROM logs
             WHERE event_id = $1 AND job = $2 AND container = $3 AND seq > $4 ORDER BY seq LIMIT $5",
        )
        .bind(event_id)
        .bind(job)
        .bind(container)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LogLine {
                    seq: row.try_get("seq")?,
                    event_id: row.try_get("event_id")?,
                    job: row.try_get("job")?,
                    container: row.try_get("container")?,
                    time: row.try_get("time")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }

    /// Deletes the logs of events that ended before `before`; returns how
    /// many lines went.
    pub async fn expire_logs(&self, before: i64) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM logs WHERE event_id IN (SELECT id FROM events WHERE ended IS NOT NULL AND ended < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    // ----- principals -----------------------------------------------------

    /// Stores a session token's hash.
    pub async fn create_session(
        &self,
        token_hash: &str,
        principal_type: &str,
        principal_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO sessions (token_hash, principal_type, principal_id, created, expires) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(principal_type)
        .bind(principal_id)
        .bind(now)
        .bind(now + micros(ttl))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The principal of an unexpired session.
    pub async fn session(&self, token_hash: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT principal_type, principal_id FROM sessions WHERE token_hash = $1 AND expires > $2",
        )
        .bind(token_hash)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("principal_type")?, r.try_get("principal_id")?)))
            .transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1 OR expires < $2")
            .bind(token_hash)
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a service account; `false` when the id is taken.
    pub async fn create_service_account(
        &self,
        id: &str,
        description: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO service_accounts (id, description, created, token_hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(description)
        .bind(now_micros())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// A service account by id.
    pub async fn service_account(
        &self,
        id: &str,
    ) -> Result<Option<ServiceAccountRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, description, created, locked FROM service_accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_account_record).transpose()
    }

    /// A service account by its token's hash.
    pub async fn service_account_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<ServiceAccountRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, description, created, locked FROM service_accounts WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_account_record).transpose()
    }

    /// Service accounts in id order.
    pub async fn service_accounts(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Page<ServiceAccountRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, description, created, locked FROM service_accounts WHERE id > $1 ORDER BY id",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let all = rows
            .iter()
            .map(service_account_record)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(all, limit, |s| s.id.clone()))
    }

    /// Locks (with no new token) or unlocks (with a new token's hash) a
    /// service account; `false` when there is none.
    pub async fn lock_service_account(
        &self,
        id: &str,
        unlock_with: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = match unlock_with {
            None => {
                sqlx::query("UPDATE service_accounts SET locked = $1 WHERE id = $2")
                    .bind(now_micros())
                    .bind(id)
                    .execute(&self.pool)
                    .await?
            }
            Some(hash) => {
                sqlx::query(
                    "UPDATE service_accounts SET locked = NULL, token_hash = $1 WHERE id = $2",
                )
                .bind(hash)
                .bind(id)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(result.rows_affected() == 1)
    }

    /// Deletes a service account and its roles; `false` when there is none.
    pub async fn delete_service_account(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_with(
            id,
            &["DELETE FROM role_assignments WHERE principal_type = 'SERVICE_ACCOUNT' AND principal_id = $1"],
            "DELETE FROM service_accounts WHERE id = $1",
        )
        .await
    }

    /// Grants a role (idempotent); `false` when it is a project role and
    /// there is no such project (it may have been deleted a moment ago: the
    /// grant must not outlive it, or the next project of that id would
    /// belong to the grantee).
    pub async fn grant(&self, role: &RoleAssignment) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if crate::auth::PROJECT_ROLES.contains(&role.role.as_str())
            && !lock_project(&mut tx, &role.scope).await?
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO role_assignments (role, principal_type, principal_id, scope) VALUES ($1, $2, $3, $4)
             ON CONFLICT (role, principal_type, principal_id, scope) DO NOTHING",
        )
        .bind(&role.role)
        .bind(&role.principal_type)
        .bind(&role.principal_id)
        .bind(&role.scope)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a role (idempotent).
    pub async fn revoke(&self, role: &RoleAssignment) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM role_assignments WHERE role = $1 AND principal_type = $2 AND principal_id = $3 AND scope = $4",
        )
        .bind(&role.role)
        .bind(&role.principal_type)
        .bind(&role.principal_id)
        .bind(&role.scope)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Role assignments, all or one principal's.
    pub async fn role_assignments(
        &self,
        principal: Option<(&str, &str)>,
    ) -> Result<Vec<RoleAssignment>, StoreError> {
        let rows = match principal {
            Some((kind, id)) => {
                sqlx::query(
                    "SELECT role, principal_type, principal_id, scope FROM role_assignments
                     WHERE principal_type = $1 AND principal_id = $2 ORDER BY role, scope",
                )
                .bind(kind)
                .bind(id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT role, principal_type, principal_id, scope FROM role_assignments
                     ORDER BY role, principal_type, principal_id, scope",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(RoleAssignment {
                    role: r.try_get("role")?,
                    principal_type: r.try_get("principal_type")?,
                    principal_id: r.try_get("principal_id")?,
                    scope: r.try_get("scope")?,
                })
            })
            .collect()
    }

    /// Records a webhook delivery; `false` when it was seen before.
    pub async fn record_delivery(
        &self,
        gateway: &str,
        delivery_id: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO deliveries (gateway, delivery_id, created) VALUES ($1, $2, $3)
             ON CONFLICT (gateway, delivery_id) DO NOTHING",
        )
        .bind(gateway)
        .bind(delivery_id)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Forgets a delivery whose event could not be stored, so that GitHub's
    /// redelivery is accepted.
    pub async fn forget_delivery(
        &self,
        gateway: &str,
        delivery_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deliveries WHERE gateway = $1 AND delivery_id = $2")
            .bind(gateway)
            .bind(delivery_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The auto-increment key as the schema writes it (SQLite's way), and as
/// PostgreSQL writes it.
const SERIAL_KEY: (&str, &str) = ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY");

/// The schema's migrations, in order: (version, name, SQL).
const MIGRATIONS: [(i64, &str, &str); 2] = [
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "orphans", include_str!("../migrations/0002_orphans.sql")),
];

/// The schema, in the dialect of the store's backend, up to `last`.
fn migrator_to(backend: Backend, last: i64) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .filter(|(version, _, _)| *version <= last)
        .map(|(version, name, schema)| {
            let sql = match backend {
                Backend::Sqlite => schema.to_string(),
                Backend::Postgres => schema.replace(SERIAL_KEY.0, SERIAL_KEY.1),
            };
            Migration::new(
                *version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The whole schema, in the dialect of the store's backend.
fn migrator(backend: Backend) -> Migrator {
    migrator_to(backend, i64::MAX)
}

/// A database URL with its password hidden, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

const EVENT_COLUMNS: &str = "seq, id, project_id, created, source, event_type, document, summary, phase, started, ended, attempts";
/// An event's head; `size` is the document's length in bytes (OCTET_LENGTH
/// reads it from the row's header in SQLite, without the document).
/// An event's place and size, from columns stored before its document.
const SLOT_COLUMNS: &str = "seq, CAST(OCTET_LENGTH(document) AS BIGINT) AS size";
const HEAD_COLUMNS: &str = "seq, id, project_id, source, phase, started, ended, CAST(OCTET_LENGTH(document) AS BIGINT) AS size";
const JOB_COLUMNS: &str =
    "event_id, name, created, spec, phase, started, ended, logs_event_id, uses_workspace";

enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all(
    mut query: sqlx::query::Query<'_, Any, AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'_, Any, AnyArguments> {
    for bind in binds {
        query = match bind {
            Bind::Text(s) => query.bind(s),
            Bind::Int(i) => query.bind(i),
        };
    }
    query
}

fn event_query(filter: &EventFilter, after: Option<i64>, columns: &str) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {columns} FROM events WHERE 1 = 1");
    let mut binds = Vec::new();
    let mut push = |sql: &mut String, clause: &str, bind: Bind| {
        binds.push(bind);
        sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
    };
    if let Some(project) = &filter.project_id {
        push(&mut sql, " AND project_id = ?", Bind::Text(project.clone()));
    }
    if let Some(visible) = &filter.visible_projects {
        if visible.is_empty() {
            sql.push_str(" AND 1 = 0");
        } else {
            sql.push_str(" AND project_id IN (");
            for (i, project) in visible.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                push(&mut sql, "?", Bind::Text(project.clone()));
            }
            sql.push(')');
        }
    }
    if let Some(source) = &filter.source {
        push(&mut sql, " AND source = ?", Bind::Text(source.clone()));
    }
    if let Some(event_type) = &filter.event_type {
        push(
            &mut sql,
            " AND event_type = ?",
            Bind::Text(event_type.clone()),
        );
    }
    if !filter.phases.is_empty() {
        sql.push_str(" AND phase IN (");
        for (i, phase) in filter.phases.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "?", Bind::Text(phase.as_str().to_string()));
        }
        sql.push(')');
    }
    if let Some(after) = after {
        push(&mut sql, " AND seq < ?", Bind::Int(after));
    }
    sql.push_str(" ORDER BY seq DESC");
    (sql, binds)
}

fn paginate<T>(mut all: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
    let remaining = all.len().saturating_sub(limit);
    all.truncate(limit);
    let next = (remaining > 0).then(|| all.last().map(&key)).flatten();
    Page {
        items: all,
        next,
        remaining: i64::try_from(remaining).unwrap_or(i64::MAX),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising plain data structures to JSON cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn corrupt(what: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        message: message.to_string(),
    }
}

fn phase(text: &str) -> Result<Phase, StoreError> {
    Phase::from_str(text).map_err(|e| corrupt("phase", e))
}

fn project_record(row: &AnyRow) -> Result<ProjectRecord, StoreError> {
    let document: String = row.try_get("document")?;
    Ok(ProjectRecord {
        id: row.try_get("id")?,
        created: row.try_get("created")?,
        document: serde_json::from_str(&document).map_err(|e| corrupt("project", e))?,
    })
}

fn event_record(row: &AnyRow) -> Result<EventRecord, StoreError> {
    // Parsed where the row holds it: a document may be many MiB.
    let document: &str = row.try_get("document")?;
    let phase_text: String = row.try_get("phase")?;
    Ok(EventRecord {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        created: row.try_get("created")?,
        source: row.try_get("source")?,
        event_type: row.try_get("event_type")?,
        document: serde_json::from_str(document).map_err(|e| corrupt("event", e))?,
        summary: row.try_get("summary")?,
        phase: phase(&phase_text)?,
        started: row.try_get("started")?,
        ended: row.try_get("ended")?,
        attempts: row.try_get("attempts")?,
    })
}

fn event_head(row: &AnyRow) -> Result<EventHead, StoreError> {
    let phase_text: String = row.try_get("phase")?;
    let size: i64 = row.try_get("size")?;
    Ok(EventHead {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        source: row.try_get("source")?,
        phase: phase(&phase_text)?,
        started: row.try_get("started")?,
        ended: row.try_get("ended")?,
        size: u64::try_from(size).unwrap_or(0),
    })
}

fn job_record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let spec: String = row.try_get("spec")?;
    let phase_text: String = row.try_get("phase")?;
    let uses_workspace: i64 = row.try_get("uses_workspace")?;
    Ok(JobRecord {
        event_id: row.try_get("event_id")?,
        name: row.try_get("name")?,
        created: row.try_get("created")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("job", e))?,
        phase: phase(&phase_text)?,
        started: row.try_get("started")?,
        ended: row.try_get("ended")?,
        logs_event_id: row.try_get("logs_event_id")?,
        uses_workspace: uses_workspace != 0,
    })
}

fn service_account_record(row: &AnyRow) -> Result<ServiceAccountRecord, StoreError> {
    Ok(ServiceAccountRecord {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        created: row.try_get("created")?,
        locked: row.try_get("locked")?,
    })
}

async fn insert_job(
    tx: &mut sqlx::Transaction<'_, Any>,
    job: &JobRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (event_id, name, created, spec, phase, started, ended, logs_event_id, uses_workspace)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&job.event_id)
    .bind(&job.name)
    .bind(job.created)
    .bind(job.spec.to_string())
    .bind(job.phase.as_str())
    .bind(job.started)
    .bind(job.ended)
    .bind(&job.logs_event_id)
    .bind(i64::from(job.uses_workspace))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Before an event runs again, forgets its jobs except those that
/// SUCCEEDED and used no workspace: the next worker inherits those.
async fn forget_unfinished_jobs(
    tx: &mut sqlx::Transaction<'_, Any>,
    event_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM jobs WHERE event_id = $1 AND NOT (phase = 'SUCCEEDED' AND uses_workspace = 0)",
    )
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends an event's open jobs: PENDING ones CANCELED, the rest ABORTED.
async fn end_open_jobs(
    tx: &mut sqlx::Transaction<'_, Any>,
    event_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET phase = 'CANCELED', ended = $1 WHERE event_id = $2 AND phase = 'PENDING'",
    )
    .bind(now)
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET phase = 'ABORTED', ended = $1 WHERE event_id = $2 AND phase IN ('STARTING', 'RUNNING', 'UNKNOWN')",
    )
    .bind(now)
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The event writer: commits whatever requests are waiting in one
/// transaction, then answers each.
async fn write_events(pool: AnyPool, backend: Backend, mut requests: mpsc::Receiver<EventBatch>) {
    let mut connection: Option<PoolConnection<Any>> = None;
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_EVENT_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if connection.is_none() {
            connection = durable_connection(&pool, backend)
                .await
                .inspect_err(|e| tracing::error!(error = %e, "the event writer cannot connect"))
                .ok();
        }
        let result = match connection.as_deref_mut() {
            Some(connection) => commit_events(connection, &batch).await,
            None => Err("the database cannot be reached".to_string()),
        };
        if result.is_err() {
            // Start afresh with a new connection next time.
            connection = None;
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

/// A connection whose commits are on disk when they return: FULL
/// synchronisation in SQLite, synchronous commit in PostgreSQL.
async fn durable_connection(
    pool: &AnyPool,
    backend: Backend,
) -> Result<PoolConnection<Any>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let setting = match backend {
        Backend::Sqlite => "PRAGMA synchronous = FULL",
        Backend::Postgres => "SET synchronous_commit = on",
    };
    connection.execute(setting).await?;
    Ok(connection)
}

async fn commit_events(
    connection: &mut AnyConnection,
    batch: &[EventBatch],
) -> Result<BTreeSet<String>, String> {
    let attempt = async {
        let mut tx = connection.begin().await?;
        // The projects' locks make the events and a deletion of their
        // project one after the other (see `lock_project`); they are taken
        // in one order, so that no two transactions wait for each other. An
        // event whose project is gone is left out, not the batch.
        let projects: BTreeSet<&str> = batch
            .iter()
            .flat_map(|(events, _)| events.iter().map(|e| e.project_id.as_str()))
            .collect();
        let mut gone = BTreeSet::new();
        for project in projects {
            if !lock_project(&mut tx, project).await? {
                gone.insert(project.to_string());
            }
        }
        for (events, _) in batch {
            for event in events.iter().filter(|e| !gone.contains(&e.project_id)) {
                sqlx::query(
                    "INSERT INTO events (id, project_id, created, source, event_type, document, phase)
                     VALUES ($1, $2, $3, $4, $5, $6, 'PENDING')",
                )
                .bind(&event.id)
                .bind(&event.project_id)
                .bind(event.created)
                .bind(&event.source)
                .bind(&event.event_type)
                .bind(to_json(&event.document))
                .execute(&mut *tx)
                .await?;
                for job in &event.inherited_jobs {
                    insert_job(&mut tx, job).await?;
                }
            }
        }
        tx.commit().await?;
        Ok::<_, StoreError>(gone)
    };
    attempt.await.map_err(|e| {
        tracing::error!(error = %e, "storing events failed");
        e.to_string()
    })
}

/// What the log writer receives.
enum LogMessage {
    /// A line to store.
    Line(LogLine),
    /// Answer once everything received before is committed.
    Flush(oneshot::Sender<()>),
}

/// The log writer: commits waiting lines in batches and tells followers.
/// A batch of log lines is tried this many times before it is given up: a
/// database that restarts or fails over comes back within seconds, and the
/// lines wait in memory meanwhile.
const LOG_WRITE_ATTEMPTS: u32 = 6;

/// The wait before the next attempt, times the attempts so far (0.5 s, then
/// 1 s, ... 7.5 s in all).
const LOG_WRITE_RETRY: Duration = Duration::from_millis(500);

/// Stores one batch of lines in one transaction, one prepared statement per
/// line: a multi-row INSERT would bind parameters by name, which SQLite
/// resolves in time quadratic in their number.
async fn write_log_batch(pool: &AnyPool, batch: &[LogMessage]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for message in batch {
        let LogMessage::Line(line) = message else {
            continue;
        };
        sqlx::query(
            "INSERT INTO logs (event_id, job, container, time, message) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&line.event_id)
        .bind(&line.job)
        .bind(&line.container)
        .bind(line.time)
        .bind(&line.message)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

async fn write_logs(
    pool: AnyPool,
    mut messages: mpsc::UnboundedReceiver<LogMessage>,
    written: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(MAX_LOG_BATCH);
    while messages.recv_many(&mut batch, MAX_LOG_BATCH).await > 0 {
        // One prepared statement per line in one transaction: a multi-row
        // INSERT would bind parameters by name, which SQLite resolves in
        // time quadratic in their number.
        let mut attempt = 0;
        while let Err(e) = write_log_batch(&pool, &batch).await {
            attempt += 1;
            if attempt == LOG_WRITE_ATTEMPTS {
                tracing::error!(error = %e, lines = batch.len(), "storing log lines failed {LOG_WRITE_ATTEMPTS} times; they are lost");
                break;
            }
            tracing::warn!(error = %e, lines = batch.len(), attempt, "storing log lines failed; trying again");
            tokio::time::sleep(LOG_WRITE_RETRY * attempt).await;
        }
        for message in batch.drain(..) {
            if let LogMessage::Flush(done) = message {
                let _ = done.send(());
            }
        }
        written.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_not_repeated() {
        assert_eq!(
            redact_url("postgres://mizzen:hunter2@db:5432/mizzen"),
            "postgres://mizzen:***@db:5432/mizzen"
        );
        assert_eq!(redact_url("mysql://db/x"), "mysql://db/x");
    }

    #[test]
    fn the_schema_has_one_dialect_difference() {
        let schema = include_str!("../migrations/0001_init.sql");
        assert_eq!(schema.matches(SERIAL_KEY.0).count(), 2);
    }

    /// A database written before 0002 may hold grants, secrets and events
    /// of projects deleted while they were written; opening it with this
    /// version removes them, and nothing else.
    #[tokio::test]
    async fn what_outlived_its_project_is_removed_when_the_store_opens() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        let pool = AnyPoolOptions::new().connect(&url).await.unwrap();
        migrator_to(Backend::Sqlite, 1).run(&pool).await.unwrap();
        for sql in [
            "INSERT INTO projects (id, created, document) VALUES ('kept', 0, '{}')",
            "INSERT INTO secrets VALUES ('kept', 'k', 'v'), ('gone', 'k', 'v')",
            "INSERT INTO role_assignments VALUES
                 ('PROJECT_ADMIN', 'SERVICE_ACCOUNT', 'a', 'kept'),
                 ('PROJECT_ADMIN', 'SERVICE_ACCOUNT', 'a', 'gone'),
                 ('PROJECT_USER', 'SERVICE_ACCOUNT', 'a', '*'),
                 ('PROJECT_CREATOR', 'SERVICE_ACCOUNT', 'a', ''),
                 ('EVENT_CREATOR', 'SERVICE_ACCOUNT', 'a', 'gone')",
            "INSERT INTO events (id, project_id, created, source, event_type, document, phase) VALUES
                 ('e1', 'kept', 0, 's', 't', '{}', 'PENDING'),
                 ('e2', 'gone', 0, 's', 't', '{}', 'PENDING')",
            "INSERT INTO jobs (event_id, name, created, spec, phase) VALUES
                 ('e1', 'j', 0, '{}', 'PENDING'), ('e2', 'j', 0, '{}', 'PENDING')",
            "INSERT INTO logs (event_id, job, container, time, message) VALUES
                 ('e1', '', 'worker', 0, 'm'), ('e2', '', 'worker', 0, 'm')",
        ] {
            pool.execute(sql).await.unwrap();
        }
        pool.close().await;

        let store = Store::open(Some(&url), dir.path()).await.unwrap();
        let remaining = |sql: &'static str| {
            let pool = store.pool.clone();
            async move {
                let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
                rows.iter()
                    .map(|r| r.try_get::<String, _>(0).unwrap())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(remaining("SELECT project_id FROM secrets").await, ["kept"]);
        assert_eq!(
            remaining("SELECT role || ' ' || scope FROM role_assignments ORDER BY role, scope")
                .await,
            [
                "EVENT_CREATOR gone",
                "PROJECT_ADMIN kept",
                "PROJECT_CREATOR ",
                "PROJECT_USER *"
            ]
        );
        assert_eq!(remaining("SELECT id FROM events").await, ["e1"]);
        assert_eq!(remaining("SELECT event_id FROM jobs").await, ["e1"]);
        assert_eq!(remaining("SELECT event_id FROM logs").await, ["e1"]);
    }

    #[test]
    fn pages_say_where_the_next_starts() {
        let page = paginate(vec![1, 2, 3, 4, 5], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next.as_deref(), Some("2"));
        assert_eq!(page.remaining, 3);
        let last = paginate(vec![1], 2, |n| n.to_string());
        assert_eq!(last.next, None);
    }
}
