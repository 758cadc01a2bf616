//! The dataset catalogue on SQLite: `weir_dataset_versions`, each new version with its
//! event in `weir_messages`.

use sqlx::sqlite::SqlitePool;
use weir_core::model::DatasetVersion;

use crate::codec::{self, DATASET_COLUMNS};
use crate::StoreError;

pub(super) async fn record(pool: &SqlitePool, versions: &[DatasetVersion]) -> Result<u32, StoreError> {
    if versions.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let mut new = 0;
    for v in versions {
        let [schema, changes, origin] = codec::dataset_json(v)?;
        let inserted = sqlx::query(
            "INSERT INTO weir_dataset_versions (dataset, version, kind, schema, changes, origin, recorded_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, version) DO NOTHING",
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

pub(super) async fn versions(pool: &SqlitePool, dataset: &str) -> Result<Vec<DatasetVersion>, StoreError> {
    sqlx::query(&format!("SELECT {DATASET_COLUMNS} FROM weir_dataset_versions WHERE dataset = ? ORDER BY version"))
        .bind(dataset)
        .fetch_all(pool)
        .await?
        .iter()
        .map(codec::dataset_version)
        .collect()
}

pub(super) async fn list(pool: &SqlitePool, limit: u32) -> Result<Vec<DatasetVersion>, StoreError> {
    sqlx::query(&format!(
        "SELECT {DATASET_COLUMNS} FROM weir_dataset_versions v \
         WHERE version = (SELECT MAX(version) FROM weir_dataset_versions w WHERE w.dataset = v.dataset) \
         ORDER BY dataset LIMIT ?"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::dataset_version)
    .collect()
}
