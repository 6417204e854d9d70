//! Projects and their secrets as stored. A project's deletion takes its
//! rows with it; see `lock_project` (in the store's `mod.rs`) for why every
//! write of something a project owns takes the project's lock.

use std::collections::BTreeMap;

use mizzen_runtime::schedule::Schedule;
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::schedules::sync_schedules;
use super::{Page, Store, StoreError, corrupt, lock_project, now_micros, paginate};

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

impl Store {
    /// Stores a new project with its schedules (type and schedule);
    /// `false` when the id is taken.
    pub async fn create_project(
        &self,
        id: &str,
        document: &Value,
        schedules: &[(String, Schedule)],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO projects (id, created, document) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(now_micros())
        .bind(document.to_string())
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        sync_schedules(&mut tx, id, schedules).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces a project's definition and its schedules, in one
    /// transaction (a tick fired after it sees the new schedules); `false`
    /// when there is no such project.
    pub async fn update_project(
        &self,
        id: &str,
        document: &Value,
        schedules: &[(String, Schedule)],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The update takes the project's lock (see `lock_project`), which
        // a tick's firing takes too.
        let result = sqlx::query("UPDATE projects SET document = $1 WHERE id = $2")
            .bind(document.to_string())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        sync_schedules(&mut tx, id, schedules).await?;
        tx.commit().await?;
        Ok(true)
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
    /// (`lock_project`) from its start; `false` when there is no such
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
            "DELETE FROM artifacts WHERE project_id = $1",
            "DELETE FROM caches WHERE project_id = $1",
            "DELETE FROM secrets WHERE project_id = $1",
            "DELETE FROM schedules WHERE project_id = $1",
            "DELETE FROM schedule_ticks WHERE project_id = $1",
            "DELETE FROM role_assignments WHERE scope = $1 AND role LIKE 'PROJECT\\_%' ESCAPE '\\'",
            "DELETE FROM projects WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

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

    /// Stores a compiled script's text under its hash (once: the same
    /// hash is the same text).
    pub async fn put_script(&self, hash: &str, body: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO scripts (hash, body) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A compiled script's text by its hash.
    pub async fn script(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT body FROM scripts WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get("body").map_err(StoreError::from))
            .transpose()
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
}

fn project_record(row: &AnyRow) -> Result<ProjectRecord, StoreError> {
    let document: String = row.try_get("document")?;
    Ok(ProjectRecord {
        id: row.try_get("id")?,
        created: row.try_get("created")?,
        document: serde_json::from_str(&document).map_err(|e| corrupt("project", e))?,
    })
}
