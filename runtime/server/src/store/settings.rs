//! Values the first server makes and every replica shares.

use mizzen_objects::JOB_TOKEN_KEY_BYTES;
use sqlx::Row;

use super::{Store, StoreError};

/// The setting that holds the key signing jobs' tokens.
const JOB_TOKEN_KEY: &str = "job_token_key";

impl Store {
    /// The key that signs jobs' tokens: made by whichever replica asks
    /// first (the others' inserts change nothing), then read by all.
    pub async fn job_token_key(&self) -> Result<[u8; JOB_TOKEN_KEY_BYTES], StoreError> {
        let mut key = [0u8; JOB_TOKEN_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| StoreError::Corrupt {
            what: "job token key",
            source: format!("no random bytes for a new key: {e}").into(),
        })?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(JOB_TOKEN_KEY)
        .bind(hex::encode(key))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(JOB_TOKEN_KEY)
            .fetch_one(&self.pool)
            .await?;
        let stored: String = row.try_get(0)?;
        hex::decode(&stored)
            .ok()
            .and_then(|bytes| <[u8; JOB_TOKEN_KEY_BYTES]>::try_from(bytes).ok())
            .ok_or_else(|| StoreError::Corrupt {
                what: "job token key",
                source: format!("expected {JOB_TOKEN_KEY_BYTES} bytes in hex").into(),
            })
    }
}
