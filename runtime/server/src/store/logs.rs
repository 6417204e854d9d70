//! Log lines as stored, line by line: queued to the log writer (in
//! [`super`]), read by streams, and expired after their retention.

use sqlx::Row;
use tokio::sync::oneshot;

use super::{LogMessage, Store, StoreError};

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

impl Store {
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
        rows.iter().map(log_line).collect()
    }

    /// The last `limit` lines of one stream, oldest first (a check run's
    /// log tail): read backwards through the stream's index.
    pub async fn log_tail(
        &self,
        event_id: &str,
        job: &str,
        container: &str,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, job, container, time, message FROM logs
             WHERE event_id = $1 AND job = $2 AND container = $3 ORDER BY seq DESC LIMIT $4",
        )
        .bind(event_id)
        .bind(job)
        .bind(container)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows.iter().map(log_line).collect::<Result<Vec<_>, _>>()?;
        lines.reverse();
        Ok(lines)
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
}

fn log_line(row: &sqlx::any::AnyRow) -> Result<LogLine, StoreError> {
    Ok(LogLine {
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
        job: row.try_get("job")?,
        container: row.try_get("container")?,
        time: row.try_get("time")?,
        message: row.try_get("message")?,
    })
}
