//! Jobs' artifacts and caches: the store as `mizzen-objects`' [`Catalog`].
//! Every check-then-write (an event's artifact quota, a project's cache
//! quota and eviction) holds a lock on what it counts for its whole
//! transaction, so that two jobs saving at once cannot both fit in the room
//! for one.

use async_trait::async_trait;
use mizzen_objects::{
    CacheKept, Catalog, CatalogError, Digest, KeptArtifact, KeptCache, MAX_CACHE_ENTRIES,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{Backend, Store, StoreError, now_micros};

impl From<StoreError> for CatalogError {
    fn from(error: StoreError) -> Self {
        CatalogError::Database(error.to_string())
    }
}

fn database(error: sqlx::Error) -> CatalogError {
    CatalogError::Database(error.to_string())
}

/// Caches evicted in one statement at most, while making room.
const EVICTION_BATCH: i64 = 64;

impl Store {
    /// Holds the lock named `scope` (an event's artifacts, a project's
    /// caches) until `tx` ends: an advisory lock in PostgreSQL; in SQLite a
    /// write, which takes the database's write lock (a statement that
    /// writes takes it even when it changes no row).
    async fn lock_scope(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT pg_advisory_xact_lock(hashtext($1))::TEXT",
            Backend::Sqlite => "DELETE FROM caches WHERE cache_key = $1 AND 0 = 1",
        };
        sqlx::query(sql).bind(scope).execute(&mut **tx).await?;
        Ok(())
    }

    /// Deletes artifact `name` of event `event_id`; whether there was one.
    pub async fn delete_artifact(&self, event_id: &str, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM artifacts WHERE event_id = $1 AND name = $2")
            .bind(event_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes the artifacts saved before `before` (microseconds since the
    /// Unix epoch); how many.
    pub async fn delete_artifacts_before(&self, before: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM artifacts WHERE created < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// Every cache entry of project `project_id`, most recently used first.
    pub async fn caches(&self, project_id: &str) -> Result<Vec<KeptCache>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM caches WHERE project_id = $1 ORDER BY last_used DESC, cache_key",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cache_of).collect()
    }

    /// Deletes cache entry `key` of project `project_id`; whether there was
    /// one.
    pub async fn delete_cache(&self, project_id: &str, key: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM caches WHERE project_id = $1 AND cache_key = $2")
            .bind(project_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }
}

fn digest_of(text: String) -> Result<Digest, StoreError> {
    text.parse().map_err(|why: String| StoreError::Corrupt {
        what: "tree digest",
        source: why.into(),
    })
}

fn size_of(row: &AnyRow, column: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.try_get::<i64, _>(column)?).unwrap_or(0))
}

fn artifact_of(row: &AnyRow) -> Result<KeptArtifact, StoreError> {
    Ok(KeptArtifact {
        event_id: row.try_get("event_id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        job: row.try_get("job")?,
        path: row.try_get("path")?,
        tree: digest_of(row.try_get("tree")?)?,
        bytes: size_of(row, "size")?,
        files: size_of(row, "files")?,
        created: row.try_get("created")?,
    })
}

fn cache_of(row: &AnyRow) -> Result<KeptCache, StoreError> {
    Ok(KeptCache {
        project_id: row.try_get("project_id")?,
        key: row.try_get("cache_key")?,
        tree: digest_of(row.try_get("tree")?)?,
        bytes: size_of(row, "size")?,
        files: size_of(row, "files")?,
        created: row.try_get("created")?,
        last_used: row.try_get("last_used")?,
    })
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Catalog for Store {
    async fn artifact(
        &self,
        event_id: &str,
        name: &str,
    ) -> Result<Option<KeptArtifact>, CatalogError> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE event_id = $1 AND name = $2")
            .bind(event_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(database)?;
        Ok(row.as_ref().map(artifact_of).transpose()?)
    }

    async fn artifacts(&self, event_id: &str) -> Result<Vec<KeptArtifact>, CatalogError> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE event_id = $1 ORDER BY name")
            .bind(event_id)
            .fetch_all(&self.pool)
            .await
            .map_err(database)?;
        Ok(rows.iter().map(artifact_of).collect::<Result<_, _>>()?)
    }

    async fn keep_artifact(&self, artifact: &KeptArtifact, quota: u64) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await.map_err(database)?;
        self.lock_scope(&mut tx, &format!("artifacts/{}", artifact.event_id))
            .await
            .map_err(database)?;
        let existing = sqlx::query("SELECT job FROM artifacts WHERE event_id = $1 AND name = $2")
            .bind(&artifact.event_id)
            .bind(&artifact.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database)?;
        if let Some(row) = existing {
            return Err(CatalogError::ArtifactExists {
                name: artifact.name.clone(),
                job: row.try_get("job").map_err(database)?,
            });
        }
        let used: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM artifacts WHERE event_id = $1",
        )
        .bind(&artifact.event_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(database)?
        .try_get("used")
        .map_err(database)?;
        let total = u64::try_from(used).unwrap_or(0) + artifact.bytes;
        if total > quota {
            return Err(CatalogError::ArtifactQuota {
                name: artifact.name.clone(),
                bytes: artifact.bytes,
                total,
                quota,
            });
        }
        sqlx::query(
            "INSERT INTO artifacts (event_id, name, project_id, job, path, tree, size, files, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&artifact.event_id)
        .bind(&artifact.name)
        .bind(&artifact.project_id)
        .bind(&artifact.job)
        .bind(&artifact.path)
        .bind(artifact.tree.to_string())
        .bind(signed(artifact.bytes))
        .bind(signed(artifact.files))
        .bind(artifact.created)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)?;
        Ok(())
    }

    async fn find_cache(
        &self,
        project_id: &str,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<KeptCache>, CatalogError> {
        let mut found =
            sqlx::query("SELECT * FROM caches WHERE project_id = $1 AND cache_key = $2")
                .bind(project_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(database)?;
        for prefix in restore_keys {
            if found.is_some() {
                break;
            }
            // A prefix compared by `substr`, not `LIKE`: a key may hold `%`
            // and `_`, and SQLite's LIKE ignores case. The length is a
            // 32-bit number: PostgreSQL has no substr(text, int, bigint).
            found = sqlx::query(
                "SELECT * FROM caches WHERE project_id = $1 AND substr(cache_key, 1, $2) = $3
                 ORDER BY created DESC, cache_key LIMIT 1",
            )
            .bind(project_id)
            .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
            .bind(prefix)
            .fetch_optional(&self.pool)
            .await
            .map_err(database)?;
        }
        let Some(row) = found else {
            return Ok(None);
        };
        let mut cache = cache_of(&row)?;
        cache.last_used = now_micros();
        sqlx::query("UPDATE caches SET last_used = $1 WHERE project_id = $2 AND cache_key = $3")
            .bind(cache.last_used)
            .bind(project_id)
            .bind(&cache.key)
            .execute(&self.pool)
            .await
            .map_err(database)?;
        Ok(Some(cache))
    }

    async fn forget_cache(&self, project_id: &str, key: &str) -> Result<(), CatalogError> {
        self.delete_cache(project_id, key).await?;
        Ok(())
    }

    async fn kept_trees(&self) -> Result<Vec<Digest>, CatalogError> {
        let rows = sqlx::query("SELECT tree FROM artifacts UNION SELECT tree FROM caches")
            .fetch_all(&self.pool)
            .await
            .map_err(database)?;
        Ok(rows
            .iter()
            .map(|row| digest_of(row.try_get("tree")?))
            .collect::<Result<_, StoreError>>()?)
    }

    async fn keep_cache(&self, cache: &KeptCache, quota: u64) -> Result<CacheKept, CatalogError> {
        let mut tx = self.pool.begin().await.map_err(database)?;
        self.lock_scope(&mut tx, &format!("caches/{}", cache.project_id))
            .await
            .map_err(database)?;
        let inserted = sqlx::query(
            "INSERT INTO caches (project_id, cache_key, tree, size, files, created, last_used)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, cache_key) DO NOTHING",
        )
        .bind(&cache.project_id)
        .bind(&cache.key)
        .bind(cache.tree.to_string())
        .bind(signed(cache.bytes))
        .bind(signed(cache.files))
        .bind(cache.created)
        .bind(cache.last_used)
        .execute(&mut *tx)
        .await
        .map_err(database)?
        .rows_affected();
        if inserted == 0 {
            return Ok(CacheKept::AlreadyKept);
        }
        let mut evicted = Vec::new();
        loop {
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used, COUNT(*) AS entries
                 FROM caches WHERE project_id = $1",
            )
            .bind(&cache.project_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(database)?;
            let used = u64::try_from(row.try_get::<i64, _>("used").map_err(database)?).unwrap_or(0);
            let entries =
                u64::try_from(row.try_get::<i64, _>("entries").map_err(database)?).unwrap_or(0);
            if used <= quota && entries <= MAX_CACHE_ENTRIES {
                break;
            }
            let oldest = sqlx::query(
                "SELECT cache_key, size FROM caches WHERE project_id = $1 AND cache_key <> $2
                 ORDER BY last_used, cache_key LIMIT $3",
            )
            .bind(&cache.project_id)
            .bind(&cache.key)
            .bind(EVICTION_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(database)?;
            if oldest.is_empty() {
                break;
            }
            let (mut over_bytes, mut over_entries) = (
                used.saturating_sub(quota),
                entries.saturating_sub(MAX_CACHE_ENTRIES),
            );
            for row in oldest {
                if over_bytes == 0 && over_entries == 0 {
                    break;
                }
                let key: String = row.try_get("cache_key").map_err(database)?;
                let size =
                    u64::try_from(row.try_get::<i64, _>("size").map_err(database)?).unwrap_or(0);
                sqlx::query("DELETE FROM caches WHERE project_id = $1 AND cache_key = $2")
                    .bind(&cache.project_id)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .map_err(database)?;
                over_bytes = over_bytes.saturating_sub(size);
                over_entries = over_entries.saturating_sub(1);
                evicted.push(key);
            }
        }
        tx.commit().await.map_err(database)?;
        Ok(CacheKept::Kept { evicted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store on SQLite, and on PostgreSQL when the tests have one
    /// (MIZZEN_TEST_DATABASE_URL, from scripts/setup-postgres).
    async fn stores(test: &str) -> Vec<(Store, tempfile::TempDir)> {
        let mut stores = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("kept.db").display());
        stores.push((Store::open(Some(&url), dir.path()).await.unwrap(), dir));
        if let Ok(admin) = std::env::var("MIZZEN_TEST_DATABASE_URL") {
            sqlx::any::install_default_drivers();
            // One database per test, made afresh: a run leaves nothing
            // behind but its own, which the next run drops.
            let database = format!("kept_{test}");
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                .await
                .unwrap();
            for sql in [
                format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                format!("CREATE DATABASE {database}"),
            ] {
                sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql))
                    .await
                    .unwrap();
            }
            let (base, _) = admin.rsplit_once('/').unwrap();
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(Some(&format!("{base}/{database}")), dir.path())
                .await
                .unwrap();
            stores.push((store, dir));
        }
        stores
    }

    fn tree(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn cache(key: &str, bytes: u64) -> KeptCache {
        KeptCache {
            project_id: "p".into(),
            key: key.into(),
            tree: tree(1),
            bytes,
            files: 1,
            created: now_micros(),
            last_used: now_micros(),
        }
    }

    /// Twenty jobs keeping entries of 100 bytes at once under a quota of
    /// 1,000: all are kept, ten evicted, and the project never holds more
    /// than its quota.
    #[tokio::test(flavor = "multi_thread")]
    async fn caches_kept_at_once_stay_under_the_quota() {
        for (store, _dir) in stores("caches_race").await {
            let saves = (0..20).map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.keep_cache(&cache(&format!("k{i}"), 100), 1000).await },
                )
            });
            let mut evicted = 0;
            for save in futures_util::future::join_all(saves).await {
                match save.unwrap().unwrap() {
                    CacheKept::Kept { evicted: keys } => evicted += keys.len(),
                    CacheKept::AlreadyKept => panic!("distinct keys"),
                }
            }
            let kept = store.caches("p").await.unwrap();
            assert_eq!(evicted, 10);
            assert_eq!(kept.len(), 10);
            assert_eq!(kept.iter().map(|c| c.bytes).sum::<u64>(), 1000);
        }
    }

    /// Ten jobs keeping one key at once: one entry, the others told so.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_key_kept_at_once_is_kept_once() {
        for (store, _dir) in stores("one_key").await {
            let saves = (0..10).map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.keep_cache(&cache("same", 10), 1000).await })
            });
            let outcomes: Vec<CacheKept> = futures_util::future::join_all(saves)
                .await
                .into_iter()
                .map(|r| r.unwrap().unwrap())
                .collect();
            let kept = outcomes
                .iter()
                .filter(|o| matches!(o, CacheKept::Kept { .. }))
                .count();
            assert_eq!(kept, 1, "{outcomes:?}");
        }
    }

    /// Ten artifacts of 100 bytes saved at once in one event under a quota
    /// of 550: five are kept, five refused naming the quota.
    #[tokio::test(flavor = "multi_thread")]
    async fn artifacts_kept_at_once_stay_under_the_quota() {
        for (store, _dir) in stores("artifacts_race").await {
            let saves = (0..10).map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let artifact = KeptArtifact {
                        event_id: "e".into(),
                        project_id: "p".into(),
                        name: format!("a{i}"),
                        job: format!("j{i}"),
                        path: "/out".into(),
                        tree: tree(2),
                        bytes: 100,
                        files: 1,
                        created: now_micros(),
                    };
                    store.keep_artifact(&artifact, 550).await
                })
            });
            let outcomes: Vec<_> = futures_util::future::join_all(saves)
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            let kept = outcomes.iter().filter(|o| o.is_ok()).count();
            assert_eq!(kept, 5, "{outcomes:?}");
            for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
                assert!(
                    refused
                        .to_string()
                        .contains("over the project's artifactSize limit of 550 bytes"),
                    "{refused}"
                );
            }
            assert_eq!(store.artifacts("e").await.unwrap().len(), 5);
        }
    }

    /// A restore key is a literal prefix: `%` and `_` match themselves, and
    /// case counts.
    #[tokio::test(flavor = "multi_thread")]
    async fn restore_keys_are_literal_prefixes() {
        for (store, _dir) in stores("prefixes").await {
            for key in ["npm-a%b", "npm-axb", "NPM-a%c"] {
                store.keep_cache(&cache(key, 1), 1000).await.unwrap();
            }
            let found = store
                .find_cache("p", "npm-zzz", &["npm-a%".into()])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(found.key, "npm-a%b");
            let found = store
                .find_cache("p", "npm-zzz", &["npm-a_".into(), "nothing".into()])
                .await
                .unwrap();
            assert_eq!(found, None);
            assert_eq!(
                store.find_cache("q", "npm-a%b", &[]).await.unwrap(),
                None,
                "another project's"
            );
        }
    }
}
