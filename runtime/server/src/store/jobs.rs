//! Jobs as stored: what a worker's jobs are, and their phases.

use mizzen_host_api::types::Phase;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Store, StoreError, corrupt, now_micros, phase};

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

impl Store {
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
}

const JOB_COLUMNS: &str =
    "event_id, name, created, spec, phase, started, ended, logs_event_id, uses_workspace";

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

pub(super) async fn insert_job(
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
