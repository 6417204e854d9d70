//! Webhook deliveries already received, so that a source's redelivery (or
//! an attacker's replay) of one creates no second event.

use super::{Store, StoreError, now_micros};

impl Store {
    /// Records a webhook delivery; `false` when it was seen before.
    pub async fn record_delivery(
        &self,
        gateway: &str,
        delivery_id: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO deliveries (gateway, delivery_id, created) VALUES ($1, $2, $3)
             ON CONFLICT (gateway, delivery_id) DO NOTHING",
        )
        .bind(gateway)
        .bind(delivery_id)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Forgets a delivery whose event could not be stored, so that GitHub's
    /// redelivery is accepted.
    pub async fn forget_delivery(
        &self,
        gateway: &str,
        delivery_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deliveries WHERE gateway = $1 AND delivery_id = $2")
            .bind(gateway)
            .bind(delivery_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
