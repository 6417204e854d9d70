//! Events as stored: their documents, heads and places in a list, and what
//! is done to them once accepted (read, page, filter, cancel, delete).
//! Accepted events are stored by the event writer in [`super`].

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt;
use mizzen_host_api::types::Phase;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AssertSqlSafe, Row};
use tokio::sync::oneshot;

use super::jobs::JobRecord;
use super::{Page, Store, StoreError, corrupt, now_micros, phase, to_json};

/// Documents read at once to filter events by qualifiers, labels or source
/// state: a chunk ends once its documents pass 8 MiB or it holds 500
/// events (few enough parameters for either database), so filtering costs
/// a few queries per thousand events and memory for one chunk, not for
/// every event.
const FILTER_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
const FILTER_CHUNK_EVENTS: usize = 500;

/// Events after a page that a list counts (its `remainingItemCount`); past
/// this the count is left out. Counting them is most of a page's cost on a
/// large store: ten thousand keeps a page within milliseconds at any size.
pub(super) const REMAINING_COUNTED: i64 = 10_000;

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
    /// Its place in a trace, given when it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::traces::EventTrace>,
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
    /// When it was accepted.
    pub created: i64,
    /// The stored document's length in bytes.
    pub size: u64,
}

/// Where a page of events starts: after this event, in the list's order.
/// A list is in insertion order, newest first; a list filtered by time is in
/// order of acceptance (then insertion), which the time index serves
/// without reading the events outside the range. Written in a `continue`
/// token as `SEQ` or `CREATED.SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCursor {
    /// After the event of this insertion number.
    Seq(i64),
    /// After the event accepted at `created` with this insertion number.
    Created {
        /// When it was accepted.
        created: i64,
        /// Its insertion number.
        seq: i64,
    },
}

impl EventCursor {
    /// Reads a `continue` token given for a list with `filter`; `None` when
    /// it is not one this store gives for such a list.
    pub fn parse(text: &str, filter: &EventFilter) -> Option<Self> {
        if filter.by_time() {
            let (created, seq) = text.split_once('.')?;
            Some(Self::Created {
                created: created.parse().ok()?,
                seq: seq.parse().ok()?,
            })
        } else {
            text.parse().ok().map(Self::Seq)
        }
    }

    fn after(slot: &EventSlot, filter: &EventFilter) -> Self {
        if filter.by_time() {
            Self::Created {
                created: slot.created,
                seq: slot.seq,
            }
        } else {
            Self::Seq(slot.seq)
        }
    }

    fn token(&self) -> String {
        match self {
            Self::Seq(seq) => seq.to_string(),
            Self::Created { created, seq } => format!("{created}.{seq}"),
        }
    }
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

    fn finish(self, filter: &EventFilter) -> Page<EventSlot> {
        let next = (self.remaining > 0)
            .then(|| {
                self.items
                    .last()
                    .map(|slot| EventCursor::after(slot, filter).token())
            })
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
    /// Only events accepted after this time (microseconds since the epoch).
    pub created_after: Option<i64>,
    /// Only events accepted before this time.
    pub created_before: Option<i64>,
}

impl EventFilter {
    /// Whether the list is filtered by time, and so in order of acceptance.
    pub fn by_time(&self) -> bool {
        self.created_after.is_some() || self.created_before.is_some()
    }
}

impl Store {
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
            Ok(Err(e)) => Err(StoreError::EventBatch(e)),
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
        after: Option<EventCursor>,
        limit: i64,
        page_bytes: u64,
    ) -> Result<Page<EventSlot>, StoreError> {
        let (mut sql, binds) = event_query(filter, after, SLOT_COLUMNS);
        let by_document = !(filter.qualifiers.is_empty()
            && filter.labels.is_empty()
            && filter.source_state.is_empty());
        // The page and one event past it, which says whether another page
        // follows; those after it are counted apart, from the index alone.
        if !by_document {
            sql.push_str(&format!(" LIMIT {}", limit.max(1).saturating_add(1)));
        }
        let mut rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds).fetch(&self.pool);
        let mut page = PageBuilder::new(limit, page_bytes);
        let (mut chunk, mut chunk_bytes) = (Vec::new(), 0);
        while let Some(row) = rows.try_next().await? {
            let size: i64 = row.try_get("size")?;
            let slot = EventSlot {
                seq: row.try_get("seq")?,
                created: row.try_get("created")?,
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
        let mut page = page.finish(filter);
        if !by_document
            && page.remaining > 0
            && let Some(last) = page.items.last()
        {
            let after = EventCursor::after(last, filter);
            page.remaining = self.count_older(filter, after).await?;
        }
        Ok(page)
    }

    /// How many events matching `filter` come after `after`, counting at
    /// most REMAINING_COUNTED (past that, -1: unknown), so that a page's
    /// cost does not grow with the store (a million events would otherwise
    /// all be read to count those left). Only the columns of the filters
    /// are read: with a project's or a phase's filter, only its index.
    async fn count_older(
        &self,
        filter: &EventFilter,
        after: EventCursor,
    ) -> Result<i64, StoreError> {
        let (older, binds) = event_query(filter, Some(after), "1 AS one");
        let sql = format!("SELECT COUNT(*) AS n FROM ({older} LIMIT {REMAINING_COUNTED}) AS older");
        let n: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(if n >= REMAINING_COUNTED { -1 } else { n })
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

    /// Deletes an event with its jobs, logs and artifacts (their objects
    /// go at the next sweep); `false` when there was none.
    pub async fn delete_event(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_with(
            id,
            &[
                "DELETE FROM logs WHERE event_id = $1",
                "DELETE FROM jobs WHERE event_id = $1",
                "DELETE FROM artifacts WHERE event_id = $1",
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
}

/// Every column of an event.
pub(super) const EVENT_COLUMNS: &str = "seq, id, project_id, created, source, event_type, document, summary, phase, started, ended, attempts";

/// An event's place and size, from columns stored before its document.
const SLOT_COLUMNS: &str = "seq, created, CAST(OCTET_LENGTH(document) AS BIGINT) AS size";
/// An event's head; `size` is the document's length in bytes (OCTET_LENGTH
/// reads it from the row's header in SQLite, without the document).
const HEAD_COLUMNS: &str = "seq, id, project_id, source, phase, started, ended, CAST(OCTET_LENGTH(document) AS BIGINT) AS size";

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

fn event_query(
    filter: &EventFilter,
    after: Option<EventCursor>,
    columns: &str,
) -> (String, Vec<Bind>) {
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
    if let Some(time) = filter.created_after {
        push(&mut sql, " AND created > ?", Bind::Int(time));
    }
    if let Some(time) = filter.created_before {
        push(&mut sql, " AND created < ?", Bind::Int(time));
    }
    match after {
        None => {}
        Some(EventCursor::Seq(seq)) => push(&mut sql, " AND seq < ?", Bind::Int(seq)),
        Some(EventCursor::Created { created, seq }) => {
            push(&mut sql, " AND (created < ?", Bind::Int(created));
            push(&mut sql, " OR (created = ?", Bind::Int(created));
            push(&mut sql, " AND seq < ?))", Bind::Int(seq));
        }
    }
    // Insertion order, newest first. A time range is read in order of
    // acceptance through the time index (events_by_created): in insertion
    // order a database would read every newer event to reach an old range.
    sql.push_str(if filter.by_time() {
        " ORDER BY created DESC, seq DESC"
    } else {
        " ORDER BY seq DESC"
    });
    (sql, binds)
}

pub(super) fn event_record(row: &AnyRow) -> Result<EventRecord, StoreError> {
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
