//! One input into all of a step's sinks, or into none.
//!
//! [`Sinks`] opens a step's sinks before any work (a bad credential or backend fails the
//! step at once), reads their schemas for the pipeline to reconcile with
//! ([`Sinks::states`]), and lands each converted input ([`Sinks::land`]):
//!
//! 1. **prepare** every sink: object-store datasets claim the input and upload their
//!    files; PostgreSQL tables load it in a transaction left open (schema changes
//!    included). Any refusal here leaves every sink as it was.
//! 2. **commit**: local datasets (under their lock), then object-store manifests, then
//!    the PostgreSQL transactions. Parquet commits can be undone until finalized, so a
//!    PostgreSQL commit that fails — its outcome asked back by the load's nonce when
//!    the connection died during it — takes them back.
//! 3. **finalize**: the input's previous Parquet files go.
//!
//! What no protocol without two-phase commit can close: a crash between the Parquet
//! commits and PostgreSQL's, or a second PostgreSQL database failing after the first
//! committed, leaves sinks apart until the task's retry lands the input again — each
//! sink replaces an input's rows, so the retry converges.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::Mutex;
use weir_core::dataset::schema::{History, Origin};
use weir_core::dataset::{DataStep, SinkSpec};

use super::kafka::KafkaTopic;
use super::local::{LocalCommit, LocalDataset};
use super::object::{self, ObjectCommit, ObjectDataset, Staged};
use super::postgres::{self, sink_err, Load, PgTable};
use super::{Pending, SinkState, WriteFence};
use crate::{DataError, FileReport};

/// PostgreSQL pools of the sinks, one per `url_env`, made on first use, each with its
/// database's bookkeeping tables made.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, PgPool>>,
}

impl Pools {
    /// The pool for the URL in environment variable `url_env`.
    pub async fn get(&self, url_env: &str) -> Result<PgPool, DataError> {
        let mut pools = self.pools.lock().await;
        if let Some(p) = pools.get(url_env) {
            return Ok(p.clone());
        }
        let url = std::env::var(url_env).map_err(|_| {
            DataError::Config(format!("postgres sink: environment variable {url_env} is not set on the batch manager"))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            // The URL may carry a password: name the variable, never its value.
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => {
                    DataError::Config(format!("postgres sink ({url_env}): the URL is not a valid PostgreSQL URL"))
                }
                other => DataError::Sink(format!("postgres sink ({url_env}): cannot connect: {other}")),
            })?;
        let mut conn = pool.acquire().await.map_err(sink_err)?;
        postgres::bookkeeping(&mut conn).await?;
        drop(conn);
        pools.insert(url_env.to_string(), pool.clone());
        Ok(pool)
    }
}

/// One opened sink.
enum Sink {
    Local(LocalDataset),
    Object(ObjectDataset),
    Postgres { table: PgTable, url_env: String, pool: PgPool },
    Kafka(std::sync::Arc<KafkaTopic>),
}

/// A step's sinks, opened.
pub struct Sinks {
    sinks: Vec<Sink>,
}

/// A sink's identity in the dataset catalogue and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkId {
    /// `file:///lake/trades`, `s3://lake/trades`, `postgres://host:5432/db/public.trades`.
    pub dataset: String,
    /// `parquet` or `postgres`.
    pub kind: &'static str,
}

impl Sinks {
    /// Opens every sink of `step`: object stores checked for conditional writes,
    /// PostgreSQL pools connected.
    pub async fn open(step: &DataStep, pools: &Pools) -> Result<Sinks, DataError> {
        let mut sinks = Vec::with_capacity(step.sinks.len());
        for s in &step.sinks {
            // A key that cannot be read fails the step before any work.
            if let SinkSpec::Parquet { encryption: Some(e), .. } = s {
                super::encryption::properties(e)?;
            }
            sinks.push(match s {
                SinkSpec::Parquet { path, location: None, .. } => Sink::Local(LocalDataset::new(Path::new(path))),
                SinkSpec::Parquet { path, location: Some(spec), .. } => {
                    Sink::Object(ObjectDataset::new(object::open(spec)?, path))
                }
                SinkSpec::Postgres { url_env, table, create, key, .. } => Sink::Postgres {
                    table: PgTable { table: table.clone(), create: *create, key: key.clone() },
                    url_env: url_env.clone(),
                    pool: pools.get(url_env).await?,
                },
                SinkSpec::Kafka { .. } => Sink::Kafka(std::sync::Arc::new(KafkaTopic::open(s).await?)),
            });
        }
        Ok(Sinks { sinks })
    }

    /// Local Parquet sinks only, opened without a runtime (tools, tests).
    pub fn open_local(step: &DataStep) -> Result<Sinks, DataError> {
        let mut sinks = Vec::with_capacity(step.sinks.len());
        for s in &step.sinks {
            match s {
                SinkSpec::Parquet { path, location: None, .. } => {
                    sinks.push(Sink::Local(LocalDataset::new(Path::new(path))))
                }
                _ => return Err(DataError::Config("open_local takes local Parquet sinks only".into())),
            }
        }
        Ok(Sinks { sinks })
    }

    /// Each sink's schema now, for the pipeline to reconcile inputs with.
    pub async fn states(&self) -> Result<Vec<SinkState>, DataError> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for s in &self.sinks {
            out.push(match s {
                Sink::Local(d) => SinkState {
                    name: d.name().to_string(),
                    current: local_history(d).await?.current().map(|v| v.schema.clone()),
                },
                Sink::Object(d) => SinkState {
                    name: d.name().to_string(),
                    current: d.history().await?.current().map(|v| v.schema.clone()),
                },
                Sink::Postgres { table, pool, .. } => {
                    let mut conn = pool.acquire().await.map_err(sink_err)?;
                    SinkState { name: table.name(), current: postgres::table_schema(&mut conn, &table.table).await? }
                }
                // A topic holds no schema.
                Sink::Kafka(t) => SinkState { name: t.name(), current: None },
            });
        }
        Ok(out)
    }

    /// [`Sinks::states`] for local sinks, without a runtime.
    pub fn local_states(&self) -> Result<Vec<SinkState>, DataError> {
        self.sinks
            .iter()
            .map(|s| match s {
                Sink::Local(d) => Ok(SinkState {
                    name: d.name().to_string(),
                    current: d.history()?.current().map(|v| v.schema.clone()),
                }),
                _ => Err(DataError::Config("local_states takes local Parquet sinks only".into())),
            })
            .collect()
    }

    /// The inputs each sink holds committed, by input key: what a stream reads its landed
    /// positions from. A PostgreSQL table's keys are recorded in the same transaction as
    /// its rows; a dataset's are its manifests (on an object store, those committed).
    pub async fn input_keys(&self) -> Result<Vec<Option<Vec<String>>>, DataError> {
        self.inputs(false).await
    }

    /// The same inputs by the identities their writers gave (those that recorded one):
    /// what a stream whose positions do not fit a key's name reads them from.
    pub async fn input_identities(&self) -> Result<Vec<Option<Vec<String>>>, DataError> {
        self.inputs(true).await
    }

    async fn inputs(&self, identities: bool) -> Result<Vec<Option<Vec<String>>>, DataError> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for s in &self.sinks {
            out.push(match s {
                Sink::Local(d) => {
                    let d = d.clone();
                    let read = move || if identities { d.input_identities() } else { d.input_keys() };
                    Some(tokio::task::spawn_blocking(read).await.map_err(join_err)??)
                }
                Sink::Object(d) => {
                    let inputs = d.inputs().await?.into_iter();
                    Some(match identities {
                        true => inputs.filter_map(|(_, identity)| identity).collect(),
                        false => inputs.map(|(key, _)| key).collect(),
                    })
                }
                Sink::Postgres { table, pool, .. } => {
                    let mut conn = pool.acquire().await.map_err(sink_err)?;
                    Some(match identities {
                        true => postgres::input_identities(&mut conn, &table.table).await?,
                        false => postgres::input_keys(&mut conn, &table.table).await?,
                    })
                }
                Sink::Kafka(t) => {
                    let whole = t.input_identities().await?;
                    Some(match identities {
                        true => whole,
                        false => whole.iter().map(|i| super::input_key(i)).collect(),
                    })
                }
            });
        }
        Ok(out)
    }

    /// Raises the task's fence in every sink before the task writes: see
    /// [`LocalDataset::claim`], [`ObjectDataset::claim`] and [`postgres::claim`].
    pub async fn claim(&self, fence: &WriteFence) -> Result<(), DataError> {
        for s in &self.sinks {
            match s {
                Sink::Local(d) => {
                    let (d, f) = (d.clone(), fence.clone());
                    tokio::task::spawn_blocking(move || d.claim(&f)).await.map_err(join_err)??;
                }
                Sink::Object(d) => d.claim(fence).await?,
                Sink::Postgres { table, pool, .. } => {
                    let mut conn = pool.acquire().await.map_err(sink_err)?;
                    postgres::bookkeeping(&mut conn).await?;
                    postgres::claim(&mut conn, &table.table, fence).await?;
                }
                Sink::Kafka(t) => t.claim().await?,
            }
        }
        Ok(())
    }

    /// Each sink's identity and its schema history, for the dataset catalogue.
    pub async fn histories(&self) -> Result<Vec<(SinkId, History)>, DataError> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for s in &self.sinks {
            out.push(match s {
                Sink::Local(d) => (SinkId { dataset: d.uri(), kind: "parquet" }, local_history(d).await?),
                Sink::Object(d) => (SinkId { dataset: d.uri(), kind: "parquet" }, d.history().await?),
                Sink::Postgres { table, pool, .. } => {
                    let mut conn = pool.acquire().await.map_err(sink_err)?;
                    let o = pool.connect_options();
                    let dataset = format!(
                        "postgres://{}:{}/{}/{}",
                        o.get_host(),
                        o.get_port(),
                        o.get_database().unwrap_or_default(),
                        table.table
                    );
                    (SinkId { dataset, kind: "postgres" }, postgres::history(&mut conn, &table.table).await?)
                }
                // A topic keeps no schema history.
                Sink::Kafka(t) => (SinkId { dataset: t.uri(), kind: "kafka" }, History::default()),
            });
        }
        Ok(out)
    }

    /// Lands one converted input in every sink or in none (see the module's doc).
    pub async fn land(&self, report: &mut FileReport, fence: &WriteFence, origin: &Origin) -> Result<(), DataError> {
        let pending = std::mem::take(&mut report.pending);
        let key = super::input_key(&report.input);
        let mut landing = Landing::default();
        let result = self.land_inner(report, pending, &key, fence, origin, &mut landing).await;
        if let Err(e) = result {
            landing.take_back().await;
            return Err(e);
        }
        landing.finalize().await;
        Ok(())
    }

    async fn land_inner(
        &self,
        report: &mut FileReport,
        pending: Vec<Pending>,
        key: &str,
        fence: &WriteFence,
        origin: &Origin,
        landing: &mut Landing,
    ) -> Result<(), DataError> {
        let mut local = Vec::new();
        let mut objects = Vec::new();
        let mut tables = Vec::new();
        let mut topics = Vec::new();
        for p in pending {
            match (self.sinks.get(p.index), p.write) {
                (Some(Sink::Local(d)), Some(w)) => local.push((p.index, d.clone(), w, p.plan)),
                (Some(Sink::Object(d)), Some(w)) => objects.push((p.index, d.clone(), w, p.plan)),
                (Some(Sink::Postgres { table, url_env, pool }), None) => {
                    tables.push((p.index, table.clone(), url_env.clone(), pool.clone(), p.plan))
                }
                (Some(Sink::Kafka(t)), None) => topics.push(t.clone()),
                (_, w) => {
                    landing.scratch.extend(w.map(|w| w.scratch));
                    return Err(DataError::Sink(format!("sink {} has no prepared write of the right kind", p.index)));
                }
            }
        }
        // Every prepared write's scratch, removed by take_back if it never lands (a commit
        // or a stage removes its own).
        landing.scratch.extend(local.iter().map(|(_, _, w, _)| w.scratch.clone()));
        landing.scratch.extend(objects.iter().map(|(_, _, w, _)| w.scratch.clone()));

        // 1. Prepare: object stores claim and upload; PostgreSQL loads, uncommitted.
        for (i, d, w, plan) in objects {
            let staged = d.stage(w).await?;
            landing.staged.push((i, staged, plan));
        }
        if !tables.is_empty() {
            // No staged output: the input has no valid rows (its earlier rows still go).
            let staged_file = report.output.clone();
            for (i, table, url_env, pool, plan) in tables {
                let at = match landing.txs.iter().position(|t| t.url_env == url_env) {
                    Some(at) => at,
                    None => {
                        let mut tx = pool.begin().await.map_err(sink_err)?;
                        // Who this load is on the server, to end it if its commit's outcome is lost.
                        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(sink_err)?;
                        landing.txs.push(OpenTx {
                            url_env: url_env.clone(),
                            pool: pool.clone(),
                            tx: Some(tx),
                            pid,
                            loads: vec![],
                        });
                        landing.txs.len() - 1
                    }
                };
                let nonce = uuid::Uuid::new_v4().to_string();
                let open = &mut landing.txs[at];
                let Some(tx) = open.tx.as_mut() else { continue };
                let load = Load {
                    target: &table,
                    staged: staged_file.as_deref().map(Path::new),
                    key,
                    fence,
                    plan: &plan,
                    columns: &report.copy_columns,
                    origin,
                    nonce: &nonce,
                };
                let loaded = postgres::prepare(tx, &load).await?;
                report.tables.insert(table.table.clone(), loaded.rows);
                if let Some(v) = loaded.version {
                    report.schema_versions.insert(table.name(), v);
                }
                open.loads.push((i, table.table.clone(), nonce));
            }
        }

        // 2. Commit: local datasets, object stores, PostgreSQL.
        for (_, d, w, plan) in local {
            let scratch = w.scratch.clone();
            let origin = origin.clone();
            let d2 = d.clone();
            let c = tokio::task::spawn_blocking(move || d2.commit(w, &plan, &origin))
                .await
                .map_err(|e| DataError::Sink(format!("committing to {}: {e}", d.name())))??;
            landing.scratch.retain(|s| s != &scratch);
            if let Some(v) = c.version {
                report.schema_versions.insert(d.name().to_string(), v);
            }
            report.sink_files.extend(c.files().iter().map(|p| p.display().to_string()));
            landing.local.push(c);
        }
        while !landing.staged.is_empty() {
            // A failed commit gives its own claim up; the rest are given up by take_back.
            let (_, staged, plan) = landing.staged.remove(0);
            let c = staged.commit(&plan, origin).await?;
            report.sink_files.extend(c.files());
            landing.objects.push(c);
        }
        for at in 0..landing.txs.len() {
            let Some((_, table, nonce)) = landing.txs[at].loads.first().cloned() else { continue };
            let Some(tx) = landing.txs[at].tx.take() else { continue };
            if let Err(e) = tx.commit().await {
                let e = DataError::Sink(format!("committing the load into {table}: {e}"));
                // The connection may have died during the commit: ask whether it happened.
                let pid = landing.txs[at].pid;
                let happened = match landing.txs[at].pool.acquire().await {
                    Ok(mut c) => postgres::committed(&mut c, pid, &table, key, &nonce).await.ok(),
                    Err(_) => None,
                };
                match happened {
                    Some(true) => {}
                    Some(false) => return Err(e),
                    // Unknown: keep the Parquet commits; the retry lands the input again.
                    None => {
                        landing.keep_parquet = true;
                        return Err(DataError::Sink(format!(
                            "{e}; whether the load committed is unknown, so the Parquet sinks keep the input and the retry lands it again"
                        )));
                    }
                }
            }
            // Once a database has the input, the Parquet sinks keep it too.
            landing.keep_parquet = true;
        }
        // Last, what cannot be taken back: messages (a stream's only sink, so alone).
        for t in topics {
            let rows = t.land(report.output.as_deref().map(Path::new), &report.input, fence).await?;
            report.topics.insert(t.name(), rows);
        }
        Ok(())
    }
}

/// A blocking task that did not finish (it panicked or the runtime is going down).
fn join_err(e: tokio::task::JoinError) -> DataError {
    DataError::Sink(format!("a dataset task stopped: {e}"))
}

/// A local dataset's history, read on a blocking thread.
async fn local_history(d: &LocalDataset) -> Result<History, DataError> {
    let d = d.clone();
    tokio::task::spawn_blocking(move || d.history())
        .await
        .map_err(|e| DataError::Sink(format!("reading a dataset's schema: {e}")))?
}

/// A PostgreSQL transaction of one database, with the loads it holds.
struct OpenTx {
    url_env: String,
    pool: PgPool,
    tx: Option<Transaction<'static, Postgres>>,
    /// The transaction's server process.
    pid: i32,
    /// (sink index, table, nonce).
    loads: Vec<(usize, String, String)>,
}

/// What one input's landing has done so far, to finalize or take back.
#[derive(Default)]
struct Landing {
    /// Prepared local writes not committed (their scratch folders).
    scratch: Vec<PathBuf>,
    staged: Vec<(usize, Staged, weir_core::dataset::contract::SinkPlan)>,
    txs: Vec<OpenTx>,
    local: Vec<LocalCommit>,
    objects: Vec<ObjectCommit>,
    /// A PostgreSQL transaction committed (or may have): the Parquet commits stand.
    keep_parquet: bool,
}

impl Landing {
    /// Takes back what can be: uncommitted transactions roll back, uncommitted claims
    /// are given up, Parquet commits undone unless a PostgreSQL commit stands.
    async fn take_back(self) {
        for t in self.txs {
            if let Some(tx) = t.tx {
                let _ = tx.rollback().await;
            }
        }
        for (_, s, _) in &self.staged {
            s.abort().await;
        }
        for dir in &self.scratch {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if self.keep_parquet {
            for c in self.local {
                c.finalize();
            }
            for c in self.objects {
                c.finalize().await;
            }
            return;
        }
        for c in self.objects {
            c.undo().await;
        }
        for c in self.local {
            if let Err(e) = tokio::task::spawn_blocking(move || c.undo()).await.unwrap_or(Ok(())) {
                tracing::warn!(error = %e, "could not take back a local commit; the retry replaces it");
            }
        }
    }

    async fn finalize(self) {
        for c in self.local {
            c.finalize();
        }
        for c in self.objects {
            c.finalize().await;
        }
    }
}

/// Commits an input's prepared writes to local Parquet sinks, without a runtime (tools,
/// tests and the benchmark; steps land through [`Sinks::land`]).
pub fn land_local(sinks: &Sinks, report: &mut FileReport, origin: &Origin) -> Result<(), DataError> {
    let mut done: Vec<LocalCommit> = Vec::new();
    for p in std::mem::take(&mut report.pending) {
        let (Some(Sink::Local(d)), Some(w)) = (sinks.sinks.get(p.index), p.write) else {
            return Err(DataError::Config("land_local takes local Parquet sinks only".into()));
        };
        match d.commit(w, &p.plan, origin) {
            Ok(c) => {
                if let Some(v) = c.version {
                    report.schema_versions.insert(d.name().to_string(), v);
                }
                report.sink_files.extend(c.files().iter().map(|f| f.display().to_string()));
                done.push(c);
            }
            Err(e) => {
                for c in done {
                    let _ = c.undo();
                }
                return Err(e);
            }
        }
    }
    for c in done {
        c.finalize();
    }
    Ok(())
}
