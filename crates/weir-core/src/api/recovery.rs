//! What `resilient_fetch` works from: the resource to recover, the key that tells its
//! records apart, and the failed job as the master saw it when the recovery was submitted.
//!
//! [`bind_failed_job`] runs at submission (the master holds the failed job): it takes the
//! failed job's `collect` config and its `store` sinks into the template's parameters, so
//! the recovery collects the same resource into the same sinks, and records which steps
//! failed and what they reported. The kinds that use it ([`RecoveryStep`]):
//! `analyze_failure`, `plan_recovery` and `recover` on the api queue, `recover_files` on
//! the file queue.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CollectStep, FallbackSpec};

/// The config of the recovery kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryStep {
    /// The resource: the failed job's `collect` config (with any fallbacks the recovery
    /// adds), or the one given for a time range.
    pub resource: CollectStep,
    /// The columns that identify a record: what landed already is not written again.
    pub key: Vec<String>,
    /// The failed job; none when a time range is recovered.
    #[serde(default)]
    pub failed: Option<FailedJob>,
}

/// A failed job as the master saw it at submission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailedJob {
    pub job_id: String,
    pub name: String,
    pub state: String,
    /// Its `collect` step, whose staging holds what it fetched before it failed.
    pub collect_step: String,
    pub steps: Vec<FailedStep>,
}

/// One step of the failed job: how it ended and what it reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailedStep {
    pub step: String,
    pub kind: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step's report (small: large ones are references to staging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

impl FailedJob {
    /// The step called `id`.
    pub fn step(&self, id: &str) -> Option<&FailedStep> {
        self.steps.iter().find(|s| s.step == id)
    }
}

impl RecoveryStep {
    /// Reads and checks a recovery kind's config; the error names the field.
    pub fn parse(config: Option<&Value>) -> Result<RecoveryStep, String> {
        let v = config.ok_or("recovery config: give resource and key (the resilient_fetch template does)")?;
        let step: RecoveryStep = serde_json::from_value(v.clone()).map_err(|e| format!("recovery config: {e}"))?;
        CollectStep::parse(Some(&serde_json::to_value(&step.resource).map_err(|e| e.to_string())?))
            .map_err(|e| format!("recovery config: resource: {e}"))?;
        if step.key.is_empty() || step.key.iter().any(String::is_empty) {
            return Err("recovery config: key must name the columns that identify a record".into());
        }
        if step.resource.incremental.is_some() {
            return Err(INCREMENTAL.into());
        }
        if step.resource.parent.is_some() {
            return Err("recovery config: a child resource is recovered by recovering its parent's job".into());
        }
        Ok(step)
    }

    /// What the step reaches: its resource's (`resource.*`, see [`CollectStep::reach`]),
    /// its files fallback included (`recover_files` reads that).
    pub fn reach(&self) -> crate::sandbox::Reach {
        let mut r = crate::sandbox::Reach::default();
        r.merge("resource", self.resource.reach());
        r
    }
}

const INCREMENTAL: &str = "an incremental resource needs no resilient_fetch: its mark moves only when a job succeeds, \
     so running its job again (weir retry) collects exactly what the failed run did not store";

/// One task of the failed job, as the master holds it.
pub struct FailedTask<'a> {
    pub step: &'a str,
    pub kind: &'a str,
    pub state: &'a str,
    pub error: Option<&'a str>,
    pub output: Option<&'a str>,
}

/// Binds a `resilient_fetch`'s `params` to the failed job (`params.job_id`): `params.api`
/// becomes its `collect` config (`params.step` names it when it has several; the
/// recovery's `params.fallbacks` are added to its own), `params.sinks` its `store` step's
/// sinks unless given, and `params.failed` what the job's steps ended as.
pub fn bind_failed_job(
    params: &mut Value,
    job_id: &str,
    name: &str,
    state: &str,
    steps: &[crate::spec::StepSpec],
    tasks: &[FailedTask<'_>],
) -> Result<(), String> {
    match state {
        "succeeded" => return Err(format!("job {job_id} succeeded: nothing to recover")),
        "failed" | "cancelled" => {}
        other => return Err(format!("job {job_id} is {other}: recover it once it has failed or been cancelled")),
    }
    let Some(p) = params.as_object_mut() else { return Err("resilient_fetch: params must be an object".into()) };
    if p.contains_key("api") {
        return Err(
            "resilient_fetch: give params.job_id (its resource is taken from it) or params.api, not both".into()
        );
    }
    let collects: Vec<&crate::spec::StepSpec> = steps.iter().filter(|s| s.kind == "collect").collect();
    let collect = match p.get("step").map(|v| v.as_str()) {
        Some(Some(id)) => collects
            .iter()
            .find(|s| s.id == id)
            .copied()
            .ok_or_else(|| format!("resilient_fetch: params.step {id:?} is not a collect step of job {job_id}"))?,
        Some(None) => return Err("resilient_fetch: params.step must be a step id".into()),
        None => match collects.as_slice() {
            [one] => one,
            [] => return Err(format!("resilient_fetch: job {job_id} has no collect step to recover")),
            _ => {
                return Err(format!(
                    "resilient_fetch: job {job_id} has {} collect steps: name one in params.step",
                    collects.len()
                ))
            }
        },
    };
    let mut resource = collect.config.clone().unwrap_or(Value::Null);
    if resource.get("incremental").is_some_and(|v| !v.is_null()) {
        return Err(format!("resilient_fetch: step {}: {INCREMENTAL}", collect.id));
    }
    if let Some(extra) = p.get("fallbacks") {
        let extra: Vec<FallbackSpec> =
            serde_json::from_value(extra.clone()).map_err(|e| format!("resilient_fetch: params.fallbacks: {e}"))?;
        let mut all: Vec<Value> = resource.get("fallbacks").and_then(Value::as_array).cloned().unwrap_or_default();
        all.extend(extra.iter().map(|f| serde_json::to_value(f).unwrap_or(Value::Null)));
        resource["fallbacks"] = Value::Array(all);
    }
    if !p.contains_key("sinks") {
        let sinks = steps
            .iter()
            .filter(|s| s.kind == "store")
            .find_map(|s| s.config.as_ref().and_then(|c| c.get("sinks")).cloned())
            .ok_or_else(|| format!("resilient_fetch: job {job_id} has no store step: give params.sinks"))?;
        p.insert("sinks".into(), sinks);
    }
    let failed = FailedJob {
        job_id: job_id.to_string(),
        name: name.to_string(),
        state: state.to_string(),
        collect_step: collect.id.clone(),
        steps: tasks
            .iter()
            .map(|t| FailedStep {
                step: t.step.to_string(),
                kind: t.kind.to_string(),
                state: t.state.to_string(),
                error: t.error.map(|e| crate::text::shorten(e.to_string(), 500)),
                output: t.output.and_then(|o| serde_json::from_str(o).ok()),
            })
            .collect(),
    };
    p.insert("api".into(), resource);
    p.insert("failed".into(), serde_json::to_value(failed).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StepSpec;
    use serde_json::json;

    fn steps() -> Vec<StepSpec> {
        let s = |id: &str, kind: &str, config: Value| StepSpec {
            id: id.into(),
            kind: kind.into(),
            config: Some(config),
            ..StepSpec::default()
        };
        vec![
            s("collect", "collect", json!({"api": "shop", "base_url": "https://api.shop.test", "path": "/orders"})),
            s("store", "store", json!({"sinks": [{"type": "parquet", "path": "/lake/orders"}]})),
        ]
    }

    #[test]
    fn a_failed_jobs_resource_and_sinks_are_bound_with_what_its_steps_reported() {
        let mut p = json!({"job_id": "j1", "key": ["id"], "fallbacks": [{"base_url": "https://eu.shop.test"}]});
        let tasks = [
            FailedTask {
                step: "collect",
                kind: "collect",
                state: "failed",
                error: Some("api shop: 500"),
                output: None,
            },
            FailedTask { step: "store", kind: "store", state: "pending", error: None, output: None },
        ];
        bind_failed_job(&mut p, "j1", "orders", "failed", &steps(), &tasks).expect("bound");
        assert_eq!(p["api"]["fallbacks"][0]["base_url"], "https://eu.shop.test");
        assert_eq!(p["sinks"][0]["path"], "/lake/orders");
        assert_eq!(p["failed"]["collect_step"], "collect");
        assert_eq!(p["failed"]["steps"][0]["error"], "api shop: 500");
        let step: RecoveryStep =
            RecoveryStep::parse(Some(&json!({"resource": p["api"], "key": ["id"], "failed": p["failed"]})))
                .expect("ok");
        assert_eq!(step.failed.as_ref().and_then(|f| f.step("collect")).map(|s| s.state.as_str()), Some("failed"));
    }

    #[test]
    fn what_cannot_be_recovered_is_named() {
        let bind = |state: &str, p: Value, steps: &[StepSpec]| {
            let mut p = p;
            bind_failed_job(&mut p, "j1", "orders", state, steps, &[]).unwrap_err()
        };
        assert!(bind("succeeded", json!({}), &steps()).contains("nothing to recover"));
        assert!(bind("running", json!({}), &steps()).contains("once it has failed"));
        assert!(bind("failed", json!({"api": {}}), &steps()).contains("not both"));
        assert!(bind("failed", json!({"step": "nope"}), &steps()).contains("nope"));
        let mut inc = steps();
        inc[0].config.as_mut().expect("cfg")["incremental"] = json!({"cursor_path": "$.t", "initial": 0});
        assert!(bind("failed", json!({}), &inc).contains("weir retry"));
        assert!(bind("failed", json!({}), &steps()[1..]).contains("no collect step"));
        assert!(RecoveryStep::parse(Some(&json!({"resource": {"api": "a", "base_url": "https://x"}, "key": []})))
            .unwrap_err()
            .contains("key"));
    }
}
