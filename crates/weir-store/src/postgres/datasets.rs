//! The dataset catalogue on PostgreSQL: `weir_dataset_versions`, each new version with
//! its event in `weir_messages`.

use sqlx::postgres::PgPool;
use weir_core::model::DatasetVersion;

use crate::codec::{self, DATASET_COLUMNS};
use crate::StoreError;

pub(super) async fn record(pool: &PgPool, versions: &[DatasetVersion]) -> Result<u32, StoreError> {
    if versions.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let mut new = 0;
    for v in versions {
        let [schema, changes, origin] = codec::dataset_json(v)?;
        let inserted = sqlx::query(
            "INSERT INTO weir_dataset_versions (dataset, version, kind, schema, changes, origin, recorded_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dataset, version) DO NOTHING",
        )
        .bind(&v.dataset)
        .bind(i64::from(v.version.version))
        .bind(&v.kind)
        .bind(schema)
        .bind(changes)
        .bind(origin)
        .bind(v.recorded_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        new += 1;
        super::insert_message(&mut tx, &weir_core::events::schema_changed(v)).await?;
    }
    tx.commit().await?;
    Ok(new)
}

pub(super) async fn versions(pool: &PgPool, dataset: &str) -> Result<Vec<DatasetVersion>, StoreError> {
    sqlx::query(&format!("SELECT {DATASET_COLUMNS} FROM weir_dataset_versions WHERE dataset = $1 ORDER BY version"))
        .bind(dataset)
        .fetch_all(pool)
        .await?
        .iter()
        .map(codec::dataset_version)
        .collect()
}

pub(super) async fn list(pool: &PgPool, limit: u32) -> Result<Vec<DatasetVersion>, StoreError> {
    sqlx::query(&format!(
        "SELECT DISTINCT ON (dataset) {DATASET_COLUMNS} FROM weir_dataset_versions ORDER BY dataset, version DESC LIMIT $1"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::dataset_version)
    .collect()
}
