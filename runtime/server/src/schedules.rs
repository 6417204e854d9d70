//! The ticker: fires projects' cron schedules (`brigade.sh/cron`
//! subscriptions with a `schedule`, see [`mizzen_runtime::schedule`]). Every
//! replica runs one; the store decides which fires a tick (the tick's key,
//! claimed in the transaction that stores its event), never a replica's
//! clock alone, so each tick makes one event however many replicas see it.
//!
//! The rule for missed ticks: a ticker that finds a schedule's ticks due
//! fires only the latest of them, once — after every replica was down for
//! a night of hourly ticks, the first to start fires the last hour's tick,
//! not one event per hour (a clean-up run eight times in a row does the
//! work of one). A tick earlier than the schedule's appearance (the save of
//! its project that added it, or changed its expression or zone, which
//! starts it afresh) never fires, and neither does one of a schedule
//! removed by an update committed before the tick's event would have been.
//!
//! Firing only stores the event (the scheduler runs it with everyone
//! else's), so a project whose script fails or runs for hours delays no
//! other project's ticks.

use std::sync::Arc;
use std::time::Duration;

use mizzen_runtime::schedule::Schedule;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::store::{ScheduleRecord, TickOutcome, next_tick_after, now_micros, timestamp};

/// How often the ticker looks at the store even when no known tick is due
/// sooner: a schedule saved through another replica is seen within this
/// (the ticker sleeps to the earliest stored tick, so known ticks are on
/// time). Five seconds keeps a fleet of idle replicas at a cheap indexed
/// query each every few seconds, and a new schedule's first tick late by
/// at most that.
pub const TICK_CHECK: Duration = Duration::from_secs(5);

/// The wait before looking again after a pass that left a due tick
/// unfired (the store failed): soon, but not a loop against a database
/// that is down.
const RETRY: Duration = Duration::from_secs(1);

/// Due schedules fired in one pass at most; a pass that finds this many
/// starts the next at once. It bounds what one query reads.
const DUE_BATCH: i64 = 256;

/// Fires due ticks until `stop` changes.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match pass(&state).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "firing schedules failed; trying again");
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fires what is due now; how long to sleep before the next pass.
async fn pass(state: &AppState) -> Result<Duration, crate::store::StoreError> {
    let now = now_micros();
    let due = state.store.due_schedules(now, DUE_BATCH).await?;
    for record in &due {
        if let Err(e) = fire(state, record, now).await {
            tracing::error!(project = %record.project_id, r#type = %record.event_type, error = ?e, "firing a schedule's tick failed");
        }
    }
    if due.len() as i64 == DUE_BATCH {
        return Ok(Duration::ZERO);
    }
    let now = now_micros();
    Ok(match state.store.earliest_tick().await? {
        // A millisecond past the tick, so that it is due when looked at.
        Some(next) if next > now => {
            Duration::from_micros((next - now) as u64 + 1_000).min(TICK_CHECK)
        }
        Some(_) => RETRY,
        None => TICK_CHECK,
    })
}

/// Fires the latest tick of `record` at or before `now` (see the module's
/// rule), unless another replica did.
async fn fire(state: &AppState, record: &ScheduleRecord, now: i64) -> Result<(), api::ApiError> {
    let schedule = match Schedule::parse(&record.expression, Some(&record.time_zone)) {
        Ok(schedule) => schedule,
        Err(e) => {
            // Saved by a version that read it otherwise: it cannot fire.
            tracing::warn!(project = %record.project_id, r#type = %record.event_type, error = %e, "a stored schedule no longer parses; it does not fire");
            state.store.skip_tick(record, i64::MAX).await?;
            return Ok(());
        }
    };
    let Some(tick) = schedule
        .latest_at_or_before(timestamp(now))
        .filter(|tick| tick.timestamp().as_microsecond() > record.since)
    else {
        state
            .store
            .skip_tick(record, next_tick_after(&schedule, now))
            .await?;
        return Ok(());
    };
    let tick_micros = tick.timestamp().as_microsecond();
    let next_tick = next_tick_after(&schedule, tick_micros);
    if tick_micros > record.next_tick {
        tracing::info!(project = %record.project_id, r#type = %record.event_type, missed_from = %timestamp(record.next_tick), tick = %tick, "ticks were missed while no replica ran: only the latest fires");
    }
    let subscription = match state.store.project(&record.project_id).await? {
        Some(project) => state
            .projects
            .parse(&project.id, &project.document)
            .ok()
            .and_then(|parsed| {
                parsed
                    .project
                    .schedules()
                    .find(|(t, _, s)| *t == record.event_type && **s == schedule)
                    .map(|(_, subscription, _)| subscription.clone())
            }),
        None => None,
    };
    let Some(subscription) = subscription else {
        // Deleted or updated since the row was read (then the row's `since`
        // changed and this moves nothing: the next pass reads the new
        // row), or stored by a version whose project this one refuses.
        state.store.skip_tick(record, next_tick).await?;
        return Ok(());
    };
    match api::fire_tick(state, record, &subscription, &schedule, &tick, next_tick).await? {
        Some(TickOutcome::Fired) | Some(TickOutcome::Taken) | Some(TickOutcome::Changed) => {}
        None => state.store.skip_tick(record, next_tick).await?,
    }
    Ok(())
}
