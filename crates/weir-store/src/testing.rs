//! Test support shared by every crate's integration tests: a fresh PostgreSQL schema per
//! test, so tests run in parallel against the real server and clean up after themselves.
//!
//! The server is `WEIR_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// Server the tests use.
pub fn server_url() -> String {
    std::env::var("WEIR_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Schemas older than this are swept as left behind by a crashed test run.
const STALE_SECS: u64 = 3600;

/// A schema of its own for one test; `url` selects it through `search_path`.
pub struct TestSchema {
    pub name: String,
    pub url: String,
}

fn with_search_path(server: &str, schema: &str) -> String {
    let sep = if server.contains('?') { '&' } else { '?' };
    format!("{server}{sep}options=-c%20search_path%3D{schema}")
}

impl TestSchema {
    /// Creates a fresh schema (and sweeps stale ones from crashed runs).
    pub async fn create() -> Result<TestSchema, sqlx::Error> {
        let server = server_url();
        let mut conn = PgConnection::connect(&server).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'weir_t\\_%'")
                .fetch_all(&mut conn)
                .await?;
        for s in stale {
            let born = s.split('_').nth(2).and_then(|t| t.parse::<u64>().ok()).unwrap_or(now);
            if now.saturating_sub(born) > STALE_SECS {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE")).execute(&mut conn).await;
            }
        }
        let name = format!("weir_t_{now}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut conn).await?;
        Ok(TestSchema { url: with_search_path(&server, &name), name })
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) -> Result<(), sqlx::Error> {
        let mut conn = PgConnection::connect(&server_url()).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)).execute(&mut conn).await?;
        Ok(())
    }
}
