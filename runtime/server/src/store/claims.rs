//! The scheduler's side of the store: claiming pending events under the
//! scheduler's lock and within [`ClaimLimits`], leases and their renewal,
//! taking back the events of a replica that stopped, and ending workers.

use std::time::Duration;

use mizzen_host_api::types::Phase;
use sqlx::{Any, AssertSqlSafe, Row};

use super::events::{EVENT_COLUMNS, EventRecord, event_record};
use super::{Store, StoreError, micros, now_micros};

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

impl Store {
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
