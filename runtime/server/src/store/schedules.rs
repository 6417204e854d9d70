//! Projects' cron schedules as stored: one row per scheduled type, written
//! in the transaction that saves the project's definition, and the ticks
//! fired, whose key decides which replica fires a tick.
//!
//! The rule for ticks (the ticker in `crate::schedules` applies it; this
//! module keeps it true under races): a schedule fires only ticks after it
//! appeared (`since`, the time its project was saved with it; a changed
//! expression or zone is a new schedule), and a tick fires at most once, in
//! the transaction that stores its event, under its project's lock — so a
//! tick racing a project update either fired before the update was
//! committed or sees the schedule as the update left it.

use jiff::Timestamp;
use mizzen_runtime::schedule::Schedule;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{NewEvent, Store, StoreError, insert_event, lock_project, now_micros};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// The project.
    pub project_id: String,
    /// The type it fires.
    pub event_type: String,
    /// The cron expression.
    pub expression: String,
    /// The IANA time zone.
    pub time_zone: String,
    /// When it appeared (microseconds since the epoch): no earlier tick
    /// fires.
    pub since: i64,
    /// The first tick not yet fired; `i64::MAX` when there is none.
    pub next_tick: i64,
    /// The last tick fired, and its event.
    pub last_tick: Option<i64>,
    /// The event the last tick made.
    pub last_event: Option<String>,
}

/// What became of a tick a replica tried to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// Its event was stored.
    Fired,
    /// Another replica fired it, or a later tick, first: no event.
    Taken,
    /// The schedule was changed or removed since it was read: no event.
    Changed,
}

/// A store time as jiff's, for the calendar.
pub(crate) fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::MAX)
}

/// The first tick of `schedule` strictly after `micros`, as the store keeps
/// it; `i64::MAX` when the calendar has none.
pub(crate) fn next_tick_after(schedule: &Schedule, micros: i64) -> i64 {
    schedule
        .next_after(timestamp(micros))
        .map_or(i64::MAX, |tick| tick.timestamp().as_microsecond())
}

const SCHEDULE_COLUMNS: &str =
    "project_id, event_type, expression, time_zone, since, next_tick, last_tick, last_event";

fn schedule_record(row: &AnyRow) -> Result<ScheduleRecord, StoreError> {
    Ok(ScheduleRecord {
        project_id: row.try_get("project_id")?,
        event_type: row.try_get("event_type")?,
        expression: row.try_get("expression")?,
        time_zone: row.try_get("time_zone")?,
        since: row.try_get("since")?,
        next_tick: row.try_get("next_tick")?,
        last_tick: row.try_get("last_tick")?,
        last_event: row.try_get("last_event")?,
    })
}

/// Brings `project`'s schedules to `schedules` (type and schedule) in `tx`,
/// which holds the project's row: one that is unchanged keeps its state, a
/// changed one starts afresh from now, a removed one goes with its ticks.
/// `since` is read after the lock is taken, so a tick fired before this
/// update committed is earlier than any tick the new schedule fires.
pub(super) async fn sync_schedules(
    tx: &mut sqlx::Transaction<'_, Any>,
    project: &str,
    schedules: &[(String, Schedule)],
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "SELECT event_type, expression, time_zone FROM schedules WHERE project_id = $1",
    )
    .bind(project)
    .fetch_all(&mut **tx)
    .await?;
    let mut kept = Vec::new();
    for row in &rows {
        let event_type: String = row.try_get("event_type")?;
        let expression: String = row.try_get("expression")?;
        let time_zone: String = row.try_get("time_zone")?;
        match schedules.iter().find(|(t, _)| *t == event_type) {
            Some((_, s)) if s.expression() == expression && s.time_zone() == time_zone => {
                kept.push(event_type);
            }
            Some(_) => {}
            None => {
                for sql in [
                    "DELETE FROM schedules WHERE project_id = $1 AND event_type = $2",
                    "DELETE FROM schedule_ticks WHERE project_id = $1 AND event_type = $2",
                ] {
                    sqlx::query(sql)
                        .bind(project)
                        .bind(&event_type)
                        .execute(&mut **tx)
                        .await?;
                }
            }
        }
    }
    let since = now_micros();
    for (event_type, schedule) in schedules.iter().filter(|(t, _)| !kept.contains(t)) {
        // A changed schedule keeps its fired ticks' rows: should the new
        // one name an instant the old one fired, the key refuses it again.
        sqlx::query(
            "INSERT INTO schedules (project_id, event_type, expression, time_zone, since, next_tick, last_tick, last_event)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)
             ON CONFLICT (project_id, event_type) DO UPDATE SET
                 expression = excluded.expression, time_zone = excluded.time_zone,
                 since = excluded.since, next_tick = excluded.next_tick,
                 last_tick = NULL, last_event = NULL",
        )
        .bind(project)
        .bind(event_type)
        .bind(schedule.expression())
        .bind(schedule.time_zone())
        .bind(since)
        .bind(next_tick_after(schedule, since))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Schedules whose next tick is at or before `now`, earliest first, at
    /// most `limit`.
    pub async fn due_schedules(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_tick <= $1 ORDER BY next_tick LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_record).collect()
    }

    /// The earliest next tick of all schedules, if there is any.
    pub async fn earliest_tick(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(next_tick) AS next FROM schedules")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("next")?)
    }

    /// A project's schedules, by type.
    pub async fn project_schedules(
        &self,
        project: &str,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE project_id = $1 ORDER BY event_type"
        )))
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_record).collect()
    }

    /// Fires `tick` of `schedule` (as read by the caller): in one
    /// transaction under the project's lock, checks that the schedule is
    /// still the one read and has not fired this tick or a later one,
    /// claims the tick's key, stores `event` and moves the schedule on to
    /// `next_tick`. A conflict on the key is another replica's firing.
    pub async fn fire_tick(
        &self,
        schedule: &ScheduleRecord,
        tick: i64,
        next_tick: i64,
        event: &NewEvent,
    ) -> Result<TickOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_project(&mut tx, &schedule.project_id).await? {
            return Ok(TickOutcome::Changed);
        }
        let current = sqlx::query(
            "SELECT expression, time_zone, since, last_tick FROM schedules
             WHERE project_id = $1 AND event_type = $2",
        )
        .bind(&schedule.project_id)
        .bind(&schedule.event_type)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(current) = current else {
            return Ok(TickOutcome::Changed);
        };
        let same = current.try_get::<String, _>("expression")? == schedule.expression
            && current.try_get::<String, _>("time_zone")? == schedule.time_zone
            && current.try_get::<i64, _>("since")? == schedule.since;
        if !same {
            return Ok(TickOutcome::Changed);
        }
        if current
            .try_get::<Option<i64>, _>("last_tick")?
            .is_some_and(|last| last >= tick)
        {
            return Ok(TickOutcome::Taken);
        }
        let claimed = sqlx::query(
            "INSERT INTO schedule_ticks (project_id, event_type, tick, event_id, fired)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project_id, event_type, tick) DO NOTHING",
        )
        .bind(&schedule.project_id)
        .bind(&schedule.event_type)
        .bind(tick)
        .bind(&event.id)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(TickOutcome::Taken);
        }
        insert_event(&mut tx, event).await?;
        sqlx::query(
            "UPDATE schedules SET last_tick = $1, last_event = $2, next_tick = $3
             WHERE project_id = $4 AND event_type = $5",
        )
        .bind(tick)
        .bind(&event.id)
        .bind(next_tick)
        .bind(&schedule.project_id)
        .bind(&schedule.event_type)
        .execute(&mut *tx)
        .await?;
        // Older ticks need no key: `last_tick` already refuses them.
        sqlx::query(
            "DELETE FROM schedule_ticks WHERE project_id = $1 AND event_type = $2 AND tick < $3",
        )
        .bind(&schedule.project_id)
        .bind(&schedule.event_type)
        .bind(tick)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed();
        Ok(TickOutcome::Fired)
    }

    /// Moves a schedule past a tick that made no event (its project no
    /// longer parses), if it is still the one read.
    pub async fn skip_tick(
        &self,
        schedule: &ScheduleRecord,
        next_tick: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedules SET next_tick = $1
             WHERE project_id = $2 AND event_type = $3 AND since = $4 AND next_tick < $1",
        )
        .bind(next_tick)
        .bind(&schedule.project_id)
        .bind(&schedule.event_type)
        .bind(schedule.since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
