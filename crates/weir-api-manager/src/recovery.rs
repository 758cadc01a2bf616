//! The api steps of `resilient_fetch` ([`weir_core::api::recovery`]), each configured with
//! the resource, its key and the failed job as the master saw it:
//!
//! - `analyze_failure` says what the failed job fetched and stored, and what is missing:
//!   its collection's newest checkpoint (in this manager's staging, where the failed
//!   attempt left it) gives the pages and records fetched and the next request; a
//!   collection that finished left its records staged, only their storing failed.
//! - `plan_recovery` asks each API source in turn, primary first, for the first missing
//!   page (one request, through its circuit) and picks the first that answers; with none,
//!   the resource's files fallback; with nothing missing, the staged records.
//! - `recover` fetches what is missing from the chosen API source: it adopts the failed
//!   collection's staged files and goes on from its next request, so no page fetched
//!   before the failure is requested again. With another strategy it passes the staged
//!   records on (`staged`) or leaves the work to `recover_files` (`files`).
//!
//! What it cannot recover: a failed collection whose checkpoint is on another replica's
//! disk (no shared `WEIR_DATA_DIR`) starts the resource over — the reconstruction's
//! `dedupe` still keeps one row per key; records the API no longer serves and no fallback
//! holds; an incremental resource (its job run again collects exactly what is missing);
//! a child resource (recover its parent's job).

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Arc;
use weir_core::api::recovery::RecoveryStep;
use weir_core::api::template::Values;
use weir_core::catalog::RECOVERY_KINDS;
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::checkpoint::{self, Saved};
use crate::client::{self, Effort, Stats};
use crate::collect::{first_request, rebase, Adopt, Collect};

/// Runs the recovery kinds with the collector's APIs, limits and circuits.
pub struct Recovery {
    pub collect: Arc<Collect>,
}

impl Recovery {
    /// The failed collection's newest checkpoint, if this manager's staging holds it.
    fn checkpoint(&self, step: &RecoveryStep) -> Option<Saved> {
        let f = step.failed.as_ref()?;
        checkpoint::newest(&self.collect.staging().dir_of(&f.job_id, &f.collect_step))
    }

    async fn analyze(&self, step: &RecoveryStep) -> Result<Value, StepError> {
        let Some(failed) = &step.failed else {
            return Ok(json!({"kind": "analyze_failure", "mode": "window", "collected": {"state": "none"},
                             "missing": "the whole resource (a time range: what its parameters select)"}));
        };
        let failed_steps: Vec<Value> = failed
            .steps
            .iter()
            .filter(|s| s.state == "failed")
            .map(|s| json!({"step": s.step, "kind": s.kind, "error": s.error}))
            .collect();
        let collect = failed.step(&failed.collect_step);
        let collect_state = collect.map_or("unknown", |s| s.state.as_str());
        let store = failed.steps.iter().find(|s| s.kind == "store");
        let stored = json!({
            "state": store.map_or("none", |s| s.state.as_str()),
            "rows_written": store.and_then(|s| s.output.as_ref()).and_then(|o| o.get("rows_written")).cloned(),
        });
        let (collected, missing, resume) = if collect_state == "succeeded" {
            let out = collect.and_then(|s| s.output.clone()).unwrap_or(Value::Null);
            (
                json!({"state": "succeeded", "pages": out.get("pages"), "records": out.get("records")}),
                "nothing to fetch: the collection finished and its records are staged; storing them failed".to_string(),
                Value::Null,
            )
        } else {
            match self.checkpoint(step) {
                Some(s) => {
                    let records: u64 = s.parts.iter().map(|(p, _)| p.records).sum();
                    (
                        json!({"state": collect_state, "pages": s.tally.pages(), "records": records,
                               "files": s.parts.len(), "from": "checkpoint"}),
                        format!(
                            "the pages from {} on ({} pages and {records} records were fetched before the failure)",
                            client::shown(
                                &url::Url::parse(&s.next)
                                    .map_err(|e| StepError::permanent("bad_input", e.to_string()))?,
                                &[]
                            ),
                            s.tally.pages()
                        ),
                        json!({"next": s.next, "source": s.source}),
                    )
                }
                None => (
                    json!({"state": collect_state, "pages": 0, "records": 0}),
                    "the whole resource (no checkpoint of the failed collection here)".to_string(),
                    Value::Null,
                ),
            }
        };
        Ok(json!({
            "kind": "analyze_failure",
            "failed_job": failed.job_id,
            "job_name": failed.name,
            "failed_steps": failed_steps,
            "collected": collected,
            "stored": stored,
            "missing": missing,
            "resume_from": resume,
        }))
    }

    async fn plan(&self, task: &TaskContext, step: &RecoveryStep) -> Result<Value, StepError> {
        let analysis = weir_worker::report::upstream_of(task, self.collect.staging(), "failure_analysis").await?;
        if analysis["collected"]["state"] == "succeeded" {
            return Ok(json!({"kind": "plan_recovery", "strategy": "staged",
                             "why": "the failed collection finished: its staged records are stored again"}));
        }
        let r = &step.resource;
        let dir = self.collect.staging_dir(task);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StepError::retryable("staging", format!("creating {}: {e}", dir.display())))?;
        let (res, files) = self.collect.resource(task, r, dir.join(format!(".plan-{}", task.fence)), None).await?;
        // The first missing request: where the failed collection stopped, else the first page.
        let req0 = first_request(&res, &Values::default())?;
        let (mut url, from) = match analysis["resume_from"]["next"].as_str() {
            Some(next) => {
                let u = url::Url::parse(next).map_err(|e| StepError::permanent("bad_input", e.to_string()))?;
                (u, analysis["resume_from"]["source"].as_u64().unwrap_or(0) as usize)
            }
            None => (crate::paginate::build(&r.paginator)?.first(req0.url.clone()), 0),
        };
        url = rebase(&url, r.source_base_url(from), r.source_base_url(0))?;
        let effort = Effort { max_attempts: 2, ..res.effort.clone() };
        let mut tried = Vec::new();
        for (i, src) in res.sources.iter().enumerate() {
            let u = rebase(&url, r.source_base_url(0), &src.base_url)?;
            let req = client::Request { url: u.clone(), ..req0.clone() };
            let mut stats = Stats::default();
            match src.api.fetch(&req, &effort, &task.cancel, &mut stats).await {
                Ok(_) => {
                    return Ok(json!({"kind": "plan_recovery", "strategy": "api", "source": i, "label": src.label,
                                     "url": client::shown(&u, &[]), "tried": tried,
                                     "why": format!("{} answered the first missing request", src.label)}))
                }
                Err(e) => tried.push(json!({"source": src.label, "error": e.to_string()})),
            }
        }
        if let Some((i, f)) = files {
            return Ok(json!({"kind": "plan_recovery", "strategy": "files", "source": i, "label": f.describe(i),
                             "tried": tried, "why": "no API source answered; the resource's files hold it"}));
        }
        Err(StepError::retryable(
            "unavailable",
            format!(
                "no source of api {} answers the first missing request and it has no files fallback: {}",
                r.api,
                tried.iter().map(|t| format!("{}: {}", t["source"], t["error"])).collect::<Vec<_>>().join("; ")
            ),
        ))
    }

    async fn recover(&self, task: &TaskContext, step: &RecoveryStep) -> Result<Value, StepError> {
        let plan = weir_worker::report::upstream_of(task, self.collect.staging(), "recovery_strategy").await?;
        match plan["strategy"].as_str() {
            Some("api") => {}
            Some("staged") => {
                // The failed collection's own report names its staged files.
                let out = step
                    .failed
                    .as_ref()
                    .and_then(|f| f.step(&f.collect_step))
                    .and_then(|s| s.output.as_ref())
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                let mut report = weir_worker::report::resolve(&out, self.collect.staging()).await?;
                report["kind"] = json!("recover");
                report["strategy"] = json!("staged");
                return Ok(report);
            }
            other => {
                return Ok(json!({"kind": "recover", "strategy": other, "skipped": "another source recovers this",
                                 "files": []}))
            }
        }
        let r = &step.resource;
        let source = plan["source"].as_u64().unwrap_or(0) as usize;
        if source >= r.api_sources() {
            return Err(StepError::permanent(
                "bad_input",
                format!("recovery_strategy chose source {source}, which is not an API"),
            ));
        }
        // What the failed collection fetched, moved to the chosen source.
        let saved = self.checkpoint(step).map(|mut s| {
            if let Ok(u) = url::Url::parse(&s.next) {
                if let Ok(moved) = rebase(&u, r.source_base_url(s.source), r.source_base_url(source)) {
                    s.next = moved.to_string();
                }
            }
            s.source = source;
            s
        });
        let adopted = saved.as_ref().map_or(0, |s| s.parts.iter().map(|(p, _)| p.records).sum::<u64>());
        let mut report = self.collect.collect(task, r, Some(Adopt { saved, source })).await?;
        report["kind"] = json!("recover");
        report["strategy"] = json!("api");
        report["adopted_records"] = json!(adopted);
        Ok(report)
    }
}

#[async_trait]
impl StepHandler for Recovery {
    fn kinds(&self) -> &'static [&'static str] {
        &RECOVERY_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let step = RecoveryStep::parse(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let report = match task.kind.as_str() {
            "analyze_failure" => self.analyze(&step).await?,
            "plan_recovery" => self.plan(task, &step).await?,
            _ => self.recover(task, &step).await?,
        };
        weir_worker::report::publish(report, self.collect.staging(), task).await
    }
}
