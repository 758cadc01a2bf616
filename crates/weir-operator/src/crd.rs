//! The custom resources (`weir.dev/v1alpha1`) and the status the operator writes back:
//! `IngestionJob`, a Weir job spec as a Kubernetes object, and `FileWatch`, a watch of the
//! file managers (`WEIR_WATCHES_FILE`) as one.
//!
//! The spec holds the fields of a `weir submit` file under the same names, so a job file's
//! body pastes in; the object's namespace is the Weir namespace, its name the job name and
//! its uid the run id. The schema types the shape Kubernetes can check; the rest (step
//! configs, retry policies, template params) is checked by the master at submission and
//! reported in the status.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The finalizer that makes a deletion cancel the job first.
pub const FINALIZER: &str = "weir.dev/cancel-job";
/// The finalizer that takes a deleted FileWatch out of the watches file first.
pub const WATCH_FINALIZER: &str = "weir.dev/unwatch";

/// What to run: a Weir job spec without namespace, name and run id, which the object's
/// metadata supplies. Submitted once: a later edit is not applied (the status says so);
/// delete the object and create a new one to run another spec.
// Each printcolumn(...) repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "IngestionJob",
    namespaced,
    status = "IngestionJobStatus",
    shortname = "ij",
    category = "weir",
    doc = "An ingestion job run by Weir: created, it is submitted to the master (the object's uid is the run id); its status follows the job; deleted, the job is cancelled.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.tasks.succeeded", priority = "1"),
    printcolumn(name = "Tasks", type_ = "integer", json_path = ".status.tasks.total"),
    printcolumn(name = "Job", type_ = "string", json_path = ".status.jobId", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct IngestionJobSpec {
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// The job's labels (ListJobs and `weir jobs --label` filter on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whole-job limit, e.g. "30m" (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The DAG of steps; or give `template`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// A built-in template: standard, secure_api, bulk_file, realtime_stream, resilient_fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template's parameters; with steps, they fill `{params.…}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub params: Option<Value>,
}

/// One step of the DAG, as in a job file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Step {
    /// Unique within the job: [a-z0-9_-], 1..64 characters.
    pub id: String,
    /// What to do, e.g. collect, fetch, convert, store, consume, noop.
    pub kind: String,
    /// Which manager runs it: api, file, batch or stream.
    pub queue: String,
    /// Steps that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The kind's settings (README, "Step kinds").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub config: Option<Value>,
    /// How failed attempts are retried (max_attempts, initial_interval, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub retry: Option<Value>,
    /// Time limits (schedule_to_start, start_to_close, heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub timeouts: Option<Value>,
    /// The step that undoes this one when the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub compensation: Option<Value>,
}

/// Where the job stands, as the operator last saw it. Every field is written on each
/// update (absent ones as null), so a merge patch of the whole status replaces it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestionJobStatus {
    /// The master's id of the job this object submitted.
    pub job_id: Option<String>,
    /// Pending, Running, Paused, Succeeded, Failed, Cancelled, Compensating, Compensated;
    /// Invalid when the master refused the spec; Lost when the master no longer has the
    /// job (purged after its retention period).
    pub state: Option<String>,
    /// The job's tasks by state.
    pub tasks: Option<TaskCounts>,
    /// Why the job failed or was refused, or what is in the way.
    pub message: Option<String>,
    /// The generation that was submitted.
    pub observed_generation: Option<i64>,
    /// Submitted, Complete and Failed, as a batch Job has them (`kubectl wait
    /// --for=condition=Complete`); SpecIgnored after an edit.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The job's tasks by state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct TaskCounts {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
}

/// A condition in Kubernetes' usual shape (metav1.Condition).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
}

/// A watch the file managers run: it lists a location every poll interval and starts one
/// job per new or changed file. The operator writes every accepted FileWatch into the
/// watches file the file managers read (a ConfigMap), as `<namespace>.<name>`.
// Each printcolumn(...) repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "FileWatch",
    namespaced,
    status = "FileWatchStatus",
    shortname = "fw",
    category = "weir",
    doc = "A file watch: the file managers list its location every poll interval and start one job per new or changed file, in the object's namespace.",
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status"),
    printcolumn(name = "Watch", type_ = "string", json_path = ".status.watch"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct FileWatchSpec {
    /// Where the files are: {uri, endpoint, region, credentials: {env|file}, …} (README,
    /// "File kinds and watches").
    #[schemars(schema_with = "any_object")]
    pub location: Value,
    /// Globs relative to the location, e.g. "*.csv", "**/*.json.gz".
    pub patterns: Vec<String>,
    /// How often to list, e.g. "1m" (default 5m, at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// The job each file starts: a trigger rule without `on` — job_name, and steps or
    /// template/params, which may use $data.path, $data.uri, $data.location, $data.size.
    /// Its namespace is the object's.
    #[schemars(schema_with = "any_object")]
    pub start: Value,
}

/// Whether the watch runs, as the operator last wrote the watches file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileWatchStatus {
    /// Its name in the watches file (and in the file inventory and `weir.files` events).
    pub watch: Option<String>,
    /// Why it was refused.
    pub message: Option<String>,
    /// The generation last written into the watches file (or refused).
    pub observed_generation: Option<i64>,
    /// Accepted: True once in the watches file, False with the reason otherwise.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Any JSON object: Kubernetes keeps its fields as given, Weir checks them.
fn free_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A required JSON object whose fields Weir checks.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The CustomResourceDefinitions as YAML documents, as committed in `deploy/base/crds.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let header = "# Generated by `weir-operator crd` from crates/weir-operator/src/crd.rs; \
                  tests/operator.rs keeps it in sync.\n";
    Ok(format!(
        "{header}{}---\n{}",
        serde_yaml_ng::to_string(&IngestionJob::crd())?,
        serde_yaml_ng::to_string(&FileWatch::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use weir_core::spec::{CompensationSpec, JobSpec, RetryPolicy, StepSpec, StepTimeouts};

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// The resource mirrors the job file's fields (Kubernetes needs their schema); this
    /// keeps the mirror whole when the job model gains a field.
    #[test]
    fn the_resource_has_every_field_of_a_job_file() {
        let step = StepSpec {
            id: "a".into(),
            kind: "noop".into(),
            queue: "api".into(),
            depends_on: vec!["b".into()],
            config: Some(serde_json::json!({})),
            retry: Some(RetryPolicy::DEFAULT),
            timeouts: Some(StepTimeouts::default()),
            compensation: Some(CompensationSpec { kind: "noop".into(), ..Default::default() }),
        };
        let job = JobSpec {
            name: "j".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            timeout: Some(std::time::Duration::from_secs(1)),
            steps: vec![step],
            template: Some("standard".into()),
            params: Some(serde_json::json!({})),
            ..Default::default()
        };
        let job = serde_json::to_value(&job).expect("json");
        let schema = serde_json::to_value(IngestionJob::crd()).expect("json");
        let spec = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut from_file = keys(&job);
        for metadata in ["namespace", "name", "run_id"] {
            from_file.remove(metadata);
        }
        assert_eq!(keys(&spec["properties"]), from_file);
        assert_eq!(keys(&spec["properties"]["steps"]["items"]["properties"]), keys(&job["steps"][0]));
    }
}
