//! The durable store: projects, secrets, events, jobs, logs and principals in
//! SQLite (embedded, the default) or PostgreSQL (shared by several replicas),
//! through one code path (sqlx's `Any` driver and SQL both understand).
//!
//! This module owns the [`Store`] itself: opening the database, its schema
//! and migrations, and the two writers. Events are written by one task that
//! commits many requests in one transaction (group commit): each request is
//! durable when its caller is answered, and a busy server pays one disk
//! sync per batch, not per event. Log lines are batched the same way. The
//! store's methods live with their domain: `projects` (and their
//! secrets), `events`, `claims` (the scheduler's lock and leases),
//! `jobs`, `logs`, `principals` (sessions, service accounts, roles)
//! `deliveries` (webhook replays) and `kept` (jobs' artifacts and caches,
//! the catalog of `mizzen-objects`).

mod claims;
mod deliveries;
mod events;
mod jobs;
mod kept;
mod logs;
mod principals;
mod projects;
mod schedules;
mod settings;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mizzen_host_api::types::Phase;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, SqlSafeStr};
use tokio::sync::{mpsc, oneshot, watch};

pub use claims::{Claim, ClaimLimits};
pub use events::{
    EventCursor, EventDocument, EventFilter, EventHead, EventRecord, EventSlot, NewEvent,
};
pub use jobs::JobRecord;
pub use logs::LogLine;
pub use principals::{RoleAssignment, ServiceAccountRecord};
pub use projects::ProjectRecord;
pub use schedules::{ScheduleRecord, TickOutcome};
pub(crate) use schedules::{next_tick_after, timestamp};

use jobs::insert_job;

/// Requests the event writer commits in one transaction at most. Beyond a
/// few hundred, a bigger batch no longer saves disk syncs but makes the
/// first caller of the batch wait longer.
const MAX_EVENT_BATCH: usize = 512;

/// Log lines written in one transaction at most: enough to absorb a burst,
/// few enough that followers see lines soon.
const MAX_LOG_BATCH: usize = 1_000;

/// Connections to the database. SQLite writes one at a time anyway; the rest
/// serve reads (WAL lets readers run beside the writer). PostgreSQL replicas
/// each hold this many.
const MAX_CONNECTIONS: u32 = 16;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // These two say their cause in their message, for logs that print the
    // message alone, and so do not also give it as their source: a chain
    // printed whole (`mizzen: {error:#}`) would say it twice.
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A stored document is not what this version of Mizzen wrote.
    #[error("stored {what} is corrupt: {source}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it could not be read.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database URL is not one Mizzen can use.
    #[error("--database-url {url:?}: expected sqlite://PATH or postgres://USER@HOST/DB")]
    Url {
        /// The URL, its password hidden.
        url: String,
    },
    /// The event writer could not store the batch a request was part of.
    #[error("storing a batch of events failed: {0}")]
    EventBatch(#[source] Arc<StoreError>),
    /// The lock that SQLite's migrations are run under could not be taken.
    #[error("cannot lock {path} to bring the database's schema up to date: {source}")]
    MigrationLock {
        /// The lock file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The event writer has stopped (the server is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error)
    }
}

/// Microseconds since the Unix epoch, the store's clock.
pub fn now_micros() -> i64 {
    micros_at(SystemTime::now())
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

/// A request to the event writer, answered with the projects it found gone
/// (whose events it did not store), or why the batch failed (shared by
/// every request of the batch).
type EventBatch = (
    Vec<NewEvent>,
    oneshot::Sender<Result<BTreeSet<String>, Arc<StoreError>>>,
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
                return Err(StoreError::Url {
                    url: redact_url(url),
                });
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
        let _migrating = match backend {
            Backend::Sqlite => sqlite_migration_lock(&url).await?,
            Backend::Postgres => None,
        };
        migrator(backend).run(&pool).await?;
        drop(_migrating);

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
}

/// The auto-increment key as the schema writes it (SQLite's way), and as
/// PostgreSQL writes it.
const SERIAL_KEY: (&str, &str) = ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY");

/// Holds an exclusive lock on a file beside SQLite database `url` (none for
/// one in memory). sqlx's migrator locks a PostgreSQL database while it
/// migrates but not a SQLite one: two processes opening a new database at
/// once (two `mizzen run`s on a fresh data directory) both ran the first
/// migration, and one failed on "table scripts already exists".
async fn sqlite_migration_lock(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return Ok(None);
    }
    let path = format!("{path}.migrating");
    let locked = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    };
    locked
        .map(Some)
        .map_err(|source| StoreError::MigrationLock { path, source })
}

/// The schema's migrations, in order: (version, name, SQL).
const MIGRATIONS: [(i64, &str, &str); 7] = [
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "orphans",
        include_str!("../../migrations/0002_orphans.sql"),
    ),
    (
        3,
        "scripts",
        include_str!("../../migrations/0003_scripts.sql"),
    ),
    (
        4,
        "artifacts_caches",
        include_str!("../../migrations/0004_artifacts_caches.sql"),
    ),
    (
        5,
        "settings",
        include_str!("../../migrations/0005_settings.sql"),
    ),
    (
        6,
        "events_by_created",
        include_str!("../../migrations/0006_events_by_created.sql"),
    ),
    (
        7,
        "schedules",
        include_str!("../../migrations/0007_schedules.sql"),
    ),
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

fn corrupt(
    what: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Corrupt {
        what,
        source: source.into(),
    }
}

fn phase(text: &str) -> Result<Phase, StoreError> {
    Phase::from_str(text).map_err(|e| corrupt("phase", e))
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
        let connected = match connection.take() {
            Some(connected) => Ok(connected),
            None => durable_connection(&pool, backend)
                .await
                .inspect_err(|e| tracing::error!(error = %e, "the event writer cannot connect")),
        };
        let result = match connected {
            Ok(mut connected) => {
                let committed = commit_events(&mut connected, &batch).await;
                // After a failure, start afresh with a new connection.
                if committed.is_ok() {
                    connection = Some(connected);
                }
                committed
            }
            Err(e) => Err(StoreError::Database(e)),
        }
        .map_err(Arc::new);
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
) -> Result<BTreeSet<String>, StoreError> {
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
                insert_event(&mut tx, event).await?;
            }
        }
        tx.commit().await?;
        Ok::<_, StoreError>(gone)
    };
    attempt
        .await
        .inspect_err(|e| tracing::error!(error = %e, "storing events failed"))
}

/// Writes a new event (PENDING) and the jobs it inherits in `tx`, whose
/// caller holds the event's project lock: the one way events are stored,
/// by the event writer and by a schedule's tick.
async fn insert_event(
    tx: &mut sqlx::Transaction<'_, Any>,
    event: &NewEvent,
) -> Result<(), StoreError> {
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
    .execute(&mut **tx)
    .await?;
    for job in &event.inherited_jobs {
        insert_job(tx, job).await?;
    }
    Ok(())
}

/// What the log writer receives.
enum LogMessage {
    /// A line to store.
    Line(LogLine),
    /// Answer once everything received before is committed.
    Flush(oneshot::Sender<()>),
}

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

/// The log writer: commits waiting lines in batches and tells followers.
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
    use sqlx::Row;

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
        let schema = include_str!("../../migrations/0001_init.sql");
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

    /// A page of a large store reads the page and a bounded count after it:
    /// past that the count is unknown (negative), and paging still reaches
    /// every event once.
    #[tokio::test]
    async fn a_page_of_a_large_store_counts_a_bounded_remainder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let total = events::REMAINING_COUNTED as usize + 45;
        sqlx::query(AssertSqlSafe(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {total})
             INSERT INTO events (id, project_id, created, source, event_type, document, phase)
             SELECT 'e' || i, 'p', i, 's', 't', '{{\"project\":{{}}}}', 'SUCCEEDED' FROM n"
        )))
        .execute(&store.pool)
        .await
        .unwrap();
        let filter = EventFilter::default();
        let first = store.event_page(&filter, None, 20, u64::MAX).await.unwrap();
        assert_eq!(first.items.len(), 20);
        assert_eq!(first.remaining, -1, "more than it counts: unknown");
        let mut seen = first.items.len();
        let mut next = first.next;
        let mut last_remaining = first.remaining;
        while let Some(after) = next {
            let page = store
                .event_page(
                    &filter,
                    EventCursor::parse(&after, &filter),
                    1_000,
                    u64::MAX,
                )
                .await
                .unwrap();
            seen += page.items.len();
            last_remaining = page.remaining;
            next = page.next;
        }
        assert_eq!(seen, total, "every event once");
        assert_eq!(last_remaining, 0);
        let near_end = store
            .event_page(&filter, Some(EventCursor::Seq(31)), 20, u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            (near_end.items.len(), near_end.remaining),
            (20, 10),
            "counted exactly"
        );
    }

    /// The time filters keep the events accepted strictly between their
    /// bounds, with the other filters, newest first.
    #[tokio::test]
    async fn a_time_range_lists_the_events_accepted_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO events (id, project_id, created, source, event_type, document, phase)
             SELECT 'e' || i, 'p' || (i % 2), i * 10, 's', 't', '{\"project\":{}}', 'SUCCEEDED' FROM n",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let filter = EventFilter {
            project_id: Some("p1".into()),
            created_after: Some(1_000),
            created_before: Some(2_000),
            ..EventFilter::default()
        };
        let page = store.event_page(&filter, None, 20, u64::MAX).await.unwrap();
        // Odd i with 100 < i < 200: 101, 103, ... 199.
        assert_eq!((page.items.len(), page.remaining), (20, 30));
        let heads = store.event_heads(&filter).await.unwrap();
        let ids: Vec<&str> = heads.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids.len(), 50);
        assert_eq!((ids[0], ids[49]), ("e199", "e101"));
        // Paged in order of acceptance: events accepted out of insertion
        // order (as replicas' clocks allow) are each listed once, in time.
        sqlx::query(
            "INSERT INTO events (id, project_id, created, source, event_type, document, phase)
             VALUES ('late', 'p1', 1500, 's', 't', '{\"project\":{}}', 'SUCCEEDED'),
                    ('same', 'p1', 1510, 's', 't', '{\"project\":{}}', 'SUCCEEDED')",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let ids: std::collections::BTreeMap<i64, String> = store
            .event_heads(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|head| (head.seq, head.id))
            .collect();
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = store.event_page(&filter, after, 7, u64::MAX).await.unwrap();
            listed.extend(
                page.items
                    .iter()
                    .map(|slot| (slot.created, ids[&slot.seq].clone())),
            );
            match page.next {
                Some(next) => after = EventCursor::parse(&next, &filter),
                None => break,
            }
        }
        assert_eq!(listed.len(), 52, "{listed:?}");
        assert!(listed.windows(2).all(|w| w[0].0 >= w[1].0), "{listed:?}");
        let place = |id: &str| listed.iter().position(|(_, i)| i == id).unwrap();
        assert_eq!(listed[place("late") + 1].1, "e149");
        assert_eq!(listed[place("same") + 1].1, "e151");
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
