//! Named connections on PostgreSQL: `weir_connections`, written in the commit of the
//! admin's audit record.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Transaction;
use weir_core::connection::{Connection, ConnectionChange};

use crate::codec::{self, CONNECTION_COLUMNS};
use crate::StoreError;

pub(super) async fn apply(tx: &mut Transaction<'_, Postgres>, changes: &[ConnectionChange]) -> Result<(), StoreError> {
    for c in changes {
        match c {
            ConnectionChange::Put(c) => {
                sqlx::query(&format!(
                    "INSERT INTO weir_connections ({CONNECTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (namespace, name) DO UPDATE SET description = EXCLUDED.description, \
                     config = EXCLUDED.config, updated_ms = EXCLUDED.updated_ms, updated_by = EXCLUDED.updated_by"
                ))
                .bind(&c.namespace)
                .bind(&c.name)
                .bind(&c.description)
                .bind(c.config.to_string())
                .bind(c.updated_ms)
                .bind(&c.updated_by)
                .execute(&mut **tx)
                .await?;
            }
            ConnectionChange::Delete { namespace, name } => {
                sqlx::query("DELETE FROM weir_connections WHERE namespace = $1 AND name = $2")
                    .bind(namespace)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(())
}

pub(super) async fn list(pool: &PgPool, namespace: &str, limit: u32) -> Result<Vec<Connection>, StoreError> {
    sqlx::query(&format!(
        "SELECT {CONNECTION_COLUMNS} FROM weir_connections WHERE namespace = $1 OR $1 = '' ORDER BY namespace, name \
         LIMIT $2"
    ))
    .bind(namespace)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::connection)
    .collect()
}
