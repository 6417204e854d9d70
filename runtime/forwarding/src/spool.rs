//! The spool: lines waiting for their collectors, in a SQLite file.
//!
//! Lines are rows numbered in the order they were committed (SQLite has one
//! writer at a time, so a number is never seen after a larger one); each
//! sink keeps a cursor, the last number it delivered. A row every sink
//! delivered is deleted; a running total of what remains bounds the spool.

use std::path::Path;
use std::sync::atomic::Ordering;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection as _, Row as _};

use crate::{ForwardingError, ForwardingStats};

/// When the spool is over its limit, the oldest lines go until it is this
/// fraction of it, so that a full spool is trimmed now and then rather than
/// at every append.
const TRIM_TO: f64 = 0.9;

pub(crate) struct Spool {
    pool: SqlitePool,
    limit_bytes: u64,
    sinks: Vec<&'static str>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` for these sinks; cursors of
    /// sinks no longer configured are forgotten so they hold nothing back.
    pub async fn open(
        dir: &Path,
        limit_bytes: u64,
        sinks: &[&'static str],
    ) -> Result<Self, ForwardingError> {
        std::fs::create_dir_all(dir).map_err(|source| ForwardingError::SpoolFile {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("spool.db");
        let failed = |source| ForwardingError::Spool {
            path: path.clone(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A process crash loses nothing committed; a power loss may
            // lose the last transactions (the price of not syncing each).
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        // One writer and each sink's reader.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(failed)?;
        let mut conn = pool.acquire().await.map_err(failed)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        for statement in [
            "CREATE TABLE IF NOT EXISTS lines (seq INTEGER PRIMARY KEY AUTOINCREMENT, line BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), lines INTEGER NOT NULL, bytes INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO totals (id, lines, bytes) VALUES (0, 0, 0)",
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        let known: Vec<String> = sqlx::query_scalar("SELECT sink FROM cursors")
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
        for sink in known {
            if !sinks.contains(&sink.as_str()) {
                sqlx::query("DELETE FROM cursors WHERE sink = ?")
                    .bind(&sink)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
        }
        for sink in sinks {
            sqlx::query("INSERT OR IGNORE INTO cursors (sink, seq) VALUES (?, 0)")
                .bind(*sink)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        drop(conn);
        let spool = Self {
            pool,
            limit_bytes,
            sinks: sinks.to_vec(),
        };
        // Lines every remaining sink had delivered (a sink was removed).
        if let Some(first) = sinks.first() {
            let seq = spool.cursor(first).await.map_err(failed)?;
            spool.advance(first, seq).await.map_err(failed)?;
        }
        Ok(spool)
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Stores lines; returns how many of the oldest were dropped to keep
    /// the spool within its limit.
    pub async fn append(&self, lines: &[Vec<u8>]) -> Result<u64, sqlx::Error> {
        if lines.is_empty() || self.sinks.is_empty() {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut bytes: i64 = 0;
        for line in lines {
            sqlx::query("INSERT INTO lines (line) VALUES (?)")
                .bind(line.as_slice())
                .execute(&mut *tx)
                .await?;
            bytes += line.len() as i64;
        }
        let total: i64 = sqlx::query_scalar(
            "UPDATE totals SET lines = lines + ?, bytes = bytes + ? WHERE id = 0 RETURNING bytes",
        )
        .bind(lines.len() as i64)
        .bind(bytes)
        .fetch_one(&mut *tx)
        .await?;
        let mut dropped = 0;
        if total as u64 > self.limit_bytes {
            let target = (self.limit_bytes as f64 * TRIM_TO) as i64;
            let mut to_free = total - target;
            let mut last = None;
            let mut freed_bytes = 0i64;
            // The oldest rows, read in pages until enough is freed.
            let mut after = 0i64;
            while to_free > 0 {
                let rows = sqlx::query(
                    "SELECT seq, length(line) AS n FROM lines WHERE seq > ? ORDER BY seq LIMIT 4096",
                )
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    let seq: i64 = row.try_get("seq")?;
                    let n: i64 = row.try_get("n")?;
                    after = seq;
                    last = Some(seq);
                    dropped += 1;
                    freed_bytes += n;
                    to_free -= n;
                    if to_free <= 0 {
                        break;
                    }
                }
            }
            if let Some(last) = last {
                sqlx::query("DELETE FROM lines WHERE seq <= ?")
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE totals SET lines = lines - ?, bytes = bytes - ? WHERE id = 0")
                    .bind(dropped as i64)
                    .bind(freed_bytes)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(dropped)
    }

    async fn cursor(&self, sink: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT seq FROM cursors WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await
            .map(Option::unwrap_or_default)
    }

    /// The next lines `sink` has not delivered: at most `max_lines`, and
    /// at most `max_bytes` unless the first line alone is larger.
    pub async fn batch(
        &self,
        sink: &str,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT seq, line FROM lines WHERE seq > (SELECT seq FROM cursors WHERE sink = ?)
             ORDER BY seq LIMIT ?",
        )
        .bind(sink)
        .bind(max_lines as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut batch = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in rows {
            let line: Vec<u8> = row.try_get("line")?;
            bytes += line.len();
            if bytes > max_bytes && !batch.is_empty() {
                break;
            }
            batch.push((row.try_get("seq")?, line));
        }
        Ok(batch)
    }

    /// Records that `sink` delivered every line up to `seq`, and deletes the
    /// lines every sink has.
    pub async fn advance(&self, sink: &str, seq: i64) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE cursors SET seq = max(seq, ?) WHERE sink = ?")
            .bind(seq)
            .bind(sink)
            .execute(&mut *tx)
            .await?;
        let done: i64 = sqlx::query_scalar("SELECT COALESCE(min(seq), 0) FROM cursors")
            .fetch_one(&mut *tx)
            .await?;
        let gone = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(length(line)), 0) AS bytes FROM lines WHERE seq <= ?",
        )
        .bind(done)
        .fetch_one(&mut *tx)
        .await?;
        let (n, bytes): (i64, i64) = (gone.try_get("n")?, gone.try_get("bytes")?);
        if n > 0 {
            sqlx::query("DELETE FROM lines WHERE seq <= ?")
                .bind(done)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE totals SET lines = lines - ?, bytes = bytes - ? WHERE id = 0")
                .bind(n)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Copies the spool's size into the stats (the queue-depth metrics).
    pub async fn publish_depth(&self, stats: &ForwardingStats) {
        let totals = sqlx::query("SELECT lines, bytes FROM totals WHERE id = 0")
            .fetch_one(&self.pool)
            .await;
        if let Ok(row) = totals {
            let lines: i64 = row.try_get("lines").unwrap_or_default();
            let bytes: i64 = row.try_get("bytes").unwrap_or_default();
            stats
                .spool_lines
                .store(lines.max(0) as u64, Ordering::Relaxed);
            stats
                .spool_bytes
                .store(bytes.max(0) as u64, Ordering::Relaxed);
        }
    }
}
