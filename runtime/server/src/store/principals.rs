//! Principals as stored: root's sessions, service accounts (by their
//! tokens' hashes) and role assignments.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Page, Store, StoreError, lock_project, micros, now_micros, paginate};

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

impl Store {
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
}

fn service_account_record(row: &AnyRow) -> Result<ServiceAccountRecord, StoreError> {
    Ok(ServiceAccountRecord {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        created: row.try_get("created")?,
        locked: row.try_get("locked")?,
    })
}
