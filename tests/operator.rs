//! The operator (IngestionJobs and FileWatches), scenario by scenario: a real master (embedded store) with
//! real in-process managers on one side, and on the other kube's **mocked** API server
//! (tower-test) — no Kubernetes cluster can run here. The mock is kept honest: each test
//! asserts the exact requests the controller makes (method, path, content type, body, as a
//! real API server receives them) and answers them as the API server would (the object
//! after the patch).
//!
//! Also here: the committed CRDs are the ones the Rust types generate, and the example
//! objects pass their CRD's schema (checked by Python's jsonschema) and Weir's own checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Resource;
use serde_json::{json, Value};
use weir_operator::controller::{self, Context};
use weir_operator::crd::{FileWatch, FileWatchSpec, IngestionJob, IngestionJobSpec, Step, FINALIZER, WATCH_FINALIZER};
use weir_proto::v1::job_service_client::JobServiceClient;
use weir_proto::v1::{self, ListJobsRequest};
use weir_runtime::security::ClientSecurity;
use weir_tests::{free_port, python, wait_finished, Backend, InProcManagers, InProcMaster, StoreFixture};

const RESYNC: Duration = Duration::from_millis(200);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the mocked API server received.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// The master, its managers and the mocked API server.
struct Lab {
    store: StoreFixture,
    master: InProcMaster,
    managers: InProcManagers,
    ctx: Arc<Context>,
    api: Handle,
}

impl Lab {
    async fn start() -> Lab {
        let store = StoreFixture::new(Backend::Sqlite).await;
        let master = InProcMaster::start(&store.url).await;
        let managers = InProcManagers::start(&master.url);
        let (ctx, api) = context(&master.url);
        Lab { store, master, managers, ctx, api }
    }

    async fn stop(self) {
        self.managers.stop().await;
        self.master.stop().await;
        self.store.cleanup().await;
    }

    /// Runs one reconciliation of `obj`, answering the API requests it makes as the API
    /// server would; returns its result, the requests, and the object as it now stands.
    async fn reconcile(&mut self, obj: &IngestionJob) -> (Result<Action, String>, Vec<Seen>, IngestionJob) {
        reconcile_with(&mut self.api, &self.ctx, obj).await
    }

    fn jobs(&self) -> JobServiceClient<tonic::transport::Channel> {
        self.master.jobs()
    }
}

/// A controller context over the mocked API server and the master at `master_url`.
fn context(master_url: &str) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let kube = kube::Client::new(service, "default");
    let channel = weir_runtime::grpc::channel(master_url, &ClientSecurity::none()).expect("channel");
    let ctx = Context {
        kube,
        master: JobServiceClient::new(channel),
        resync: RESYNC,
        scope: None,
        watches: ("weir".into(), "weir-watches".into()),
        publishing: Default::default(),
    };
    (Arc::new(ctx), handle)
}

/// Runs `run` while answering each API request it makes with `answer`'s object (status 200).
async fn serve<T>(
    api: &mut Handle,
    run: impl std::future::Future<Output = T>,
    mut answer: impl FnMut(&Seen) -> Value,
) -> (T, Vec<Seen>) {
    let mut seen = Vec::new();
    tokio::pin!(run);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut run => return (result, seen),
            request = api.next_request() => {
                let (request, respond) = request.expect("the client is there");
                let s = read(request).await;
                let body = serde_json::to_vec(&answer(&s)).expect("json");
                respond.send_response(
                    Response::builder().status(200).header("content-type", "application/json").body(Body::from(body)).expect("response"),
                );
                seen.push(s);
            }
            _ = &mut deadline => panic!("the reconciliation did not finish in 30 s"),
        }
    }
}

async fn reconcile_with(
    api: &mut Handle,
    ctx: &Arc<Context>,
    obj: &IngestionJob,
) -> (Result<Action, String>, Vec<Seen>, IngestionJob) {
    let mut current = obj.clone();
    let run = controller::reconcile(Arc::new(obj.clone()), ctx.clone());
    let (result, seen) = serve(api, run, |s| {
        current = answer(&current, s);
        serde_json::to_value(&current).expect("json")
    })
    .await;
    (result.map_err(|e| e.to_string()), seen, current)
}

async fn read(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("body");
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        content_type: parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
        body: if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") },
    }
}

/// The object after the request, as the API server would return it: finalizer patches
/// (JSON patch) and status patches (merge patch) are the only writes the operator makes.
fn answer(obj: &IngestionJob, s: &Seen) -> IngestionJob {
    let mut next = obj.clone();
    match s.content_type.as_str() {
        "application/json-patch+json" => {
            for op in s.body.as_array().expect("a JSON patch is a list") {
                match (op["op"].as_str(), op["path"].as_str()) {
                    (Some("add"), Some("/metadata/finalizers")) => {
                        next.metadata.finalizers = serde_json::from_value(op["value"].clone()).ok();
                    }
                    (Some("remove"), Some(path)) if path.starts_with("/metadata/finalizers/") => {
                        let i: usize = path.rsplit('/').next().and_then(|i| i.parse().ok()).expect("an index");
                        next.metadata.finalizers.as_mut().expect("finalizers").remove(i);
                    }
                    (Some("test"), _) => {}
                    other => panic!("an unexpected patch operation {other:?}"),
                }
            }
        }
        "application/merge-patch+json" => {
            next.status = Some(serde_json::from_value(s.body["status"].clone()).expect("a whole status"));
        }
        other => panic!("an unexpected write ({other}): {s:?}"),
    }
    next
}

fn object(name: &str, spec: IngestionJobSpec) -> IngestionJob {
    let mut obj = IngestionJob::new(name, spec);
    obj.metadata.namespace = Some("finance".into());
    obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    obj.metadata.generation = Some(1);
    obj.metadata.resource_version = Some("1".into());
    obj
}

fn with_finalizer(mut obj: IngestionJob) -> IngestionJob {
    obj.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    obj
}

fn step(id: &str, kind: &str, deps: &[&str], config: Option<Value>) -> Step {
    Step {
        id: id.into(),
        kind: kind.into(),
        queue: "batch".into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        config,
        ..Default::default()
    }
}

fn state(obj: &IngestionJob) -> Option<&str> {
    obj.status.as_ref().and_then(|s| s.state.as_deref())
}

fn condition<'a>(obj: &'a IngestionJob, type_: &str) -> (&'a str, &'a str) {
    let c = obj
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", obj.status));
    (c.status.as_str(), c.reason.as_str())
}

async fn jobs_named(lab: &Lab, name: &str) -> Vec<v1::Job> {
    let request = ListJobsRequest { namespace: "finance".into(), name: name.into(), ..Default::default() };
    lab.jobs().list_jobs(request).await.expect("list").into_inner().jobs
}

const STATUS_PATH: &str =
    "/apis/weir.dev/v1alpha1/namespaces/finance/ingestionjobs/orders/status?&fieldManager=weir-operator";

#[tokio::test]
async fn an_ingestion_job_is_submitted_once_followed_and_finished() {
    let mut lab = Lab::start().await;
    let spec = IngestionJobSpec {
        priority: 3,
        labels: [("team".to_string(), "finance".to_string())].into(),
        steps: vec![step("extract", "noop", &[], None), step("load", "noop", &["extract"], None)],
        ..Default::default()
    };
    let obj = object("orders", spec);

    // A new object first gets the finalizer, and nothing is submitted yet.
    let (result, seen, obj) = lab.reconcile(&obj).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].path, "/apis/weir.dev/v1alpha1/namespaces/finance/ingestionjobs/orders?");
    assert_eq!(seen[0].content_type, "application/json-patch+json");
    assert_eq!(
        seen[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    assert!(jobs_named(&lab, "orders").await.is_empty());

    // With the finalizer: submitted, and the status says so.
    let (result, seen, mut obj) = lab.reconcile(&obj).await;
    assert_eq!(result, Ok(Action::requeue(RESYNC)));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("PATCH", STATUS_PATH));
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    let status = &seen[0].body["status"];
    let job_id = status["jobId"].as_str().expect("the job id in the status").to_string();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&obj, "Submitted"), ("True", "Accepted"));
    let jobs = jobs_named(&lab, "orders").await;
    assert_eq!(jobs.len(), 1);
    let submitted = jobs[0].spec.clone().expect("spec");
    assert_eq!(jobs[0].id, job_id);
    assert_eq!(submitted.run_id, obj.meta().uid.clone().expect("uid"), "the object's uid is the run id");
    assert_eq!((submitted.priority, submitted.labels.get("team").map(String::as_str)), (3, Some("finance")));

    // Followed until it succeeds; every read reports, none submits again.
    let started = Instant::now();
    while state(&obj) != Some("Succeeded") {
        assert!(started.elapsed() < Duration::from_secs(30), "not finished: {:?}", obj.status);
        tokio::time::sleep(RESYNC).await;
        let (result, seen, next) = lab.reconcile(&obj).await;
        assert!(seen.iter().all(|s| s.path == STATUS_PATH), "{seen:?}");
        obj = next;
        let expected = if state(&obj) == Some("Succeeded") { Action::await_change() } else { Action::requeue(RESYNC) };
        assert_eq!(result, Ok(expected));
    }
    let status = obj.status.clone().expect("status");
    assert_eq!(status.tasks.map(|t| (t.total, t.succeeded)), Some((2, 2)));
    assert_eq!(condition(&obj, "Complete"), ("True", "Succeeded"));
    assert_eq!(condition(&obj, "Failed"), ("False", "Succeeded"));

    // Settled: a further reconciliation writes nothing and the master still has one job.
    let (result, seen, _) = lab.reconcile(&obj).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert!(seen.is_empty(), "an unchanged status is not written again: {seen:?}");
    assert_eq!(jobs_named(&lab, "orders").await.len(), 1);

    // The same object seen without its status (a status write lost): the same job again.
    let mut lost = obj.clone();
    lost.status = None;
    let (_, seen, again) = lab.reconcile(&lost).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(again.status.and_then(|s| s.job_id), Some(job_id));
    assert_eq!(jobs_named(&lab, "orders").await.len(), 1, "submission is idempotent by uid");
    lab.stop().await;
}

#[tokio::test]
async fn a_spec_the_master_refuses_is_reported_and_not_retried() {
    let mut lab = Lab::start().await;
    let obj = with_finalizer(object(
        "orders",
        IngestionJobSpec { steps: vec![step("extract", "teleport", &[], None)], ..Default::default() },
    ));
    let (result, seen, obj) = lab.reconcile(&obj).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(seen.len(), 1);
    assert_eq!(state(&obj), Some("Invalid"));
    assert_eq!(condition(&obj, "Submitted"), ("False", "Invalid"));
    let message = obj.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
    assert!(message.contains("teleport"), "the refusal names the problem: {message}");
    assert!(jobs_named(&lab, "orders").await.is_empty());

    // Looked at again: refused again without asking the master, nothing written.
    let (result, seen, _) = lab.reconcile(&obj).await;
    assert_eq!((result, seen.len()), (Ok(Action::await_change()), 0));

    // A spec Kubernetes accepts but the job model does not: refused by the operator.
    let mut bad = with_finalizer(object("orders", IngestionJobSpec::default()));
    bad.spec.timeout = Some("whenever".into());
    bad.spec.steps = vec![step("extract", "noop", &[], None)];
    let (_, _, bad) = lab.reconcile(&bad).await;
    assert_eq!(state(&bad), Some("Invalid"));
    assert!(bad.status.and_then(|s| s.message).is_some_and(|m| m.contains("whenever")));
    lab.stop().await;
}

#[tokio::test]
async fn deleting_an_ingestion_job_cancels_its_job_then_lets_it_go() {
    let mut lab = Lab::start().await;
    let spec = IngestionJobSpec {
        steps: vec![step("wait", "sleep", &[], Some(json!({"duration": "10m"})))],
        ..Default::default()
    };
    let obj = with_finalizer(object("orders", spec.clone()));
    let (_, _, obj) = lab.reconcile(&obj).await;
    let job_id = obj.status.clone().and_then(|s| s.job_id).expect("submitted");

    let mut deleting = obj.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let (result, seen, after) = lab.reconcile(&deleting).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/apis/weir.dev/v1alpha1/namespaces/finance/ingestionjobs/orders?");
    assert_eq!(
        seen[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert_eq!(after.metadata.finalizers, Some(vec![]));
    let job = wait_finished(&mut lab.jobs(), &job_id, Duration::from_secs(10)).await;
    assert_eq!(job.state(), v1::JobState::Cancelled);
    assert!(job.error.contains("IngestionJob finance/orders deleted"), "{}", job.error);

    // Deleted before its status was written: the job is found by its run id and cancelled.
    let mut early = with_finalizer(object("early", spec));
    let uid = early.meta().uid.clone().expect("uid");
    let submitted = weir_operator::reconcile::job_spec(&early).expect("spec");
    assert_eq!(submitted.run_id, uid);
    let wire = weir_proto::convert::spec_to_wire(&submitted);
    let job_id = weir_tests::submit(&mut lab.jobs(), wire).await;
    early.metadata.deletion_timestamp = deleting.metadata.deletion_timestamp.clone();
    let (result, seen, _) = lab.reconcile(&early).await;
    assert_eq!((result, seen.len()), (Ok(Action::await_change()), 1));
    let job = wait_finished(&mut lab.jobs(), &job_id, Duration::from_secs(10)).await;
    assert_eq!(job.state(), v1::JobState::Cancelled);
    lab.stop().await;
}

#[tokio::test]
async fn an_unreachable_master_shows_in_the_status_and_holds_a_deletion() {
    let (ctx, mut api) = context(&format!("http://127.0.0.1:{}", free_port()));
    let obj = with_finalizer(object(
        "orders",
        IngestionJobSpec { steps: vec![step("extract", "noop", &[], None)], ..Default::default() },
    ));
    let (result, seen, obj) = reconcile_with(&mut api, &ctx, &obj).await;
    assert_eq!(result, Ok(Action::requeue(RESYNC)));
    assert_eq!(seen.len(), 1);
    assert_eq!(condition(&obj, "Submitted"), ("Unknown", "MasterUnavailable"));
    assert!(obj.status.as_ref().and_then(|s| s.message.clone()).is_some_and(|m| m.contains("unreachable")));

    // Deleting it now cannot cancel anything yet: the finalizer stays (no write).
    let mut deleting = obj.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let (result, seen, _) = reconcile_with(&mut api, &ctx, &deleting).await;
    assert!(result.is_err_and(|e| e.contains("master")), "the error names the master");
    assert!(seen.is_empty(), "the finalizer is not removed: {seen:?}");
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_committed_crd_is_the_generated_one() {
    let generated = weir_operator::crd::crd_yaml().expect("crd");
    let committed = std::fs::read_to_string(repo("deploy/base/crds.yaml")).expect("committed");
    assert!(
        committed == generated,
        "deploy/base/crds.yaml is stale: run `cargo run -p weir-operator -- crd > deploy/base/crds.yaml`"
    );
    let crd = first_crd(&generated);
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let step = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["steps"]["items"];
    assert_eq!(step["required"], json!(["id", "kind", "queue"]));
    assert_eq!(step["properties"]["config"]["x-kubernetes-preserve-unknown-fields"], true);
}

/// The IngestionJob CRD, the first document of the generated YAML.
fn first_crd(yaml: &str) -> Value {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    assert_eq!(docs.len(), 2, "IngestionJob and FileWatch");
    assert_eq!(docs[1]["metadata"]["name"], "filewatches.weir.dev");
    docs[0].clone()
}

/// Checks `object` (YAML) against its kind's CRD schema with Python's jsonschema (which
/// the test venv has for kubernetes-validate); returns its complaint, if any.
fn schema_check(object: &str) -> Option<String> {
    let kind: Value = serde_yaml_ng::from_str(object).expect("yaml");
    let crd = serde_yaml_ng::Deserializer::from_str(&weir_operator::crd::crd_yaml().expect("crd"))
        .map(|d| -> Value { serde::Deserialize::deserialize(d).expect("a YAML document") })
        .find(|c| c["spec"]["names"]["kind"] == kind["kind"])
        .expect("a CRD for the object's kind");
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let doc: Value = serde_yaml_ng::from_str(object).expect("yaml");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("schema.json"), schema.to_string()).expect("write");
    std::fs::write(dir.path().join("doc.json"), doc.to_string()).expect("write");
    let out = std::process::Command::new(python())
        .current_dir(dir.path())
        .args([
            "-c",
            "import json, jsonschema\n\
             s = json.load(open('schema.json')); d = json.load(open('doc.json'))\n\
             errors = [e.message for e in jsonschema.Draft7Validator(s).iter_errors(d)]\n\
             print('\\n'.join(errors))",
        ])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[test]
fn the_example_ingestion_job_fits_the_schema_and_is_a_valid_job() {
    let text = std::fs::read_to_string(repo("deploy/examples/ingestionjob.yaml")).expect("example");
    assert_eq!(schema_check(&text), None);
    let mut obj: IngestionJob = serde_yaml_ng::from_str(&text).expect("an IngestionJob");
    obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    let spec = weir_operator::reconcile::job_spec(&obj).expect("a job spec");
    weir_core::validate::validate(spec).expect("a valid job");

    // What the schema refuses: a step without a kind, a priority that is not a number.
    let broken = text.replacen("kind: convert", "", 1);
    assert!(schema_check(&broken).is_some_and(|e| e.contains("'kind' is a required property")));
    let broken = text.replacen("priority: 5", "priority: high", 1);
    assert!(schema_check(&broken).is_some_and(|e| e.contains("'high' is not of type 'integer'")));
}

fn file_watch(name: &str, patterns: &[&str]) -> FileWatch {
    let mut w = FileWatch::new(
        name,
        FileWatchSpec {
            location: json!({"uri": "file:///srv/landing"}),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            poll_interval: Some("30s".into()),
            start: json!({"job_name": "ingest", "steps": [{"id": "fetch", "kind": "fetch", "queue": "file",
                "config": {"location": "$data.location", "paths": ["$data.path"]}}]}),
        },
    );
    w.metadata.namespace = Some("sales".into());
    w.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    w.metadata.generation = Some(1);
    w.metadata.finalizers = Some(vec![WATCH_FINALIZER.to_string()]);
    w
}

/// What the mocked API server answers for the FileWatch controller: the cluster's
/// FileWatches for a list, the applied ConfigMap for an apply, the object for its status.
fn watch_answers<'a>(cluster: &'a [FileWatch], obj: &'a FileWatch) -> impl FnMut(&Seen) -> Value + 'a {
    move |s: &Seen| match (s.method.as_str(), s.content_type.as_str()) {
        ("GET", _) => json!({"apiVersion": "weir.dev/v1alpha1", "kind": "FileWatchList",
            "metadata": {"resourceVersion": "7"}, "items": cluster}),
        ("PATCH", "application/apply-patch+yaml") => s.body.clone(),
        ("PATCH", "application/merge-patch+json") => {
            let mut o = serde_json::to_value(obj).expect("json");
            o["status"] = s.body["status"].clone();
            o
        }
        ("PATCH", "application/json-patch+json") => serde_json::to_value(obj).expect("json"),
        other => panic!("an unexpected request {other:?}: {s:?}"),
    }
}

/// The watches file in an applied ConfigMap, read by the file manager's own reader.
fn watches_in(config_map: &Value) -> Vec<(String, Value)> {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("watches.yaml");
    std::fs::write(&path, config_map["data"]["watches.yaml"].as_str().expect("watches.yaml")).expect("write");
    let w = weir_file_manager::read_watches(&path).expect("a watches file the file manager reads");
    w.watches.into_iter().map(|w| (w.name, w.start)).collect()
}

const CONFIG_MAP_PATH: &str = "/api/v1/namespaces/weir/configmaps/weir-watches?&force=true&fieldManager=weir-operator";

#[tokio::test]
async fn file_watches_become_the_file_managers_watches_file_and_leave_it_when_deleted() {
    let (ctx, mut api) = context(&format!("http://127.0.0.1:{}", free_port()));
    let orders = file_watch("orders", &["*.csv"]);
    let broken = file_watch("broken", &[]);
    let cluster = vec![orders.clone(), broken.clone()];

    // One object reconciled: every FileWatch listed, the file applied, its status written.
    let run = controller::reconcile_watch(Arc::new(orders.clone()), ctx.clone());
    let (result, seen) = serve(&mut api, run, watch_answers(&cluster, &orders)).await;
    assert_eq!(result.map_err(|e| e.to_string()), Ok(Action::requeue(controller::WATCHES_RESYNC)));
    let calls: Vec<(&str, &str)> = seen.iter().map(|s| (s.method.as_str(), s.path.as_str())).collect();
    assert_eq!(
        calls,
        [
            ("GET", "/apis/weir.dev/v1alpha1/filewatches?"),
            ("PATCH", CONFIG_MAP_PATH),
            ("PATCH", "/apis/weir.dev/v1alpha1/namespaces/sales/filewatches/orders/status?&fieldManager=weir-operator"),
        ]
    );
    assert_eq!(seen[1].content_type, "application/apply-patch+yaml", "server-side apply");
    let watches = watches_in(&seen[1].body);
    assert_eq!(watches.len(), 1, "the broken one is left out");
    assert_eq!(watches[0].0, "sales.orders");
    assert_eq!(watches[0].1["namespace"], "sales", "jobs start in the object's namespace");
    let status = &seen[2].body["status"];
    assert_eq!(status["watch"], "sales.orders");
    assert_eq!(status["conditions"][0]["type"], "Accepted");
    assert_eq!(status["conditions"][0]["status"], "True");

    // The broken one is told why.
    let run = controller::reconcile_watch(Arc::new(broken.clone()), ctx.clone());
    let (_, seen) = serve(&mut api, run, watch_answers(&cluster, &broken)).await;
    let status = &seen[2].body["status"];
    assert_eq!(
        (&status["conditions"][0]["status"], &status["conditions"][0]["reason"]),
        (&json!("False"), &json!("Invalid"))
    );
    assert!(status["message"].as_str().is_some_and(|m| m.contains("pattern")), "{status}");

    // orders deleted: the file without it, then its finalizer goes.
    let mut deleting = orders.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let cluster = vec![deleting.clone(), broken.clone()];
    let run = controller::reconcile_watch(Arc::new(deleting.clone()), ctx.clone());
    let (result, seen) = serve(&mut api, run, watch_answers(&cluster, &deleting)).await;
    assert_eq!(result.map_err(|e| e.to_string()), Ok(Action::await_change()));
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].path, CONFIG_MAP_PATH);
    assert!(watches_in(&seen[1].body).is_empty());
    assert_eq!(
        seen[2].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": WATCH_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
}

#[test]
fn the_example_file_watch_fits_the_schema_and_the_file_managers_checks() {
    let text = std::fs::read_to_string(repo("deploy/examples/filewatch.yaml")).expect("example");
    assert_eq!(schema_check(&text), None);
    let obj: FileWatch = serde_yaml_ng::from_str(&text).expect("a FileWatch");
    let (_, verdicts) = weir_operator::watches::render(std::slice::from_ref(&obj));
    assert_eq!(verdicts[&("finance".to_string(), "trades".to_string())], Ok("finance.trades".to_string()));
    let broken = text.replacen("patterns: [\"*.csv.gz\"]", "", 1);
    assert!(schema_check(&broken).is_some_and(|e| e.contains("'patterns' is a required property")));
}
