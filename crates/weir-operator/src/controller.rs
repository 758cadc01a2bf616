//! The controllers. IngestionJobs: ask the master what `reconcile` plans, write the status
//! back, cancel a deleted object's job before its finalizer goes. FileWatches: write every
//! accepted one into the watches file's ConfigMap (server-side apply), then each status.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tonic::Code;
use weir_proto::v1::job_service_client::JobServiceClient;
use weir_proto::v1::{self, CancelJobRequest, GetJobRequest, ListJobsRequest, SubmitJobRequest};
use weir_runtime::grpc::AuthedChannel;

use crate::crd::{FileWatch, IngestionJob, FINALIZER, WATCH_FINALIZER};
use crate::metrics::OPERATOR;
use crate::reconcile::{self, Cleanup, MasterView, Plan};
use crate::OperatorError;

/// The field manager the operator's writes are recorded under.
pub const FIELD_MANAGER: &str = "weir-operator";

/// What every reconciliation needs.
pub struct Context {
    /// The Kubernetes API.
    pub kube: kube::Client,
    /// The master's job service.
    pub master: JobServiceClient<AuthedChannel>,
    /// How often an unfinished job is looked at again.
    pub resync: Duration,
    /// The namespace whose objects are served; `None`: every namespace's.
    pub scope: Option<String>,
    /// The ConfigMap (namespace, name) the file managers read their watches from.
    pub watches: (String, String),
    /// One list-and-write of the watches file at a time: two overlapping ones could
    /// finish in the wrong order and write a stale list last.
    pub publishing: tokio::sync::Mutex<()>,
}

impl Context {
    /// The ConfigMap holding the watches file, as `namespace/name`.
    pub fn watches_map(&self) -> String {
        format!("{}/{}", self.watches.0, self.watches.1)
    }
}

/// One reconciliation of `obj` behind the finalizer `name` (added before the first
/// apply, removed after a successful cleanup), counted by outcome.
async fn finalized<K, Fut>(
    api: &Api<K>,
    name: &str,
    obj: Arc<K>,
    reconcile: impl FnOnce(Event<K>) -> Fut,
) -> Result<Action, OperatorError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    Fut: std::future::Future<Output = Result<Action, OperatorError>>,
{
    let result = finalizer(api, name, obj, reconcile).await.map_err(|e| OperatorError::Finalizer(Box::new(e)));
    OPERATOR.reconciled(if result.is_ok() { "ok" } else { "error" });
    result
}

/// Brings one object's status up to date with its job, submitting or cancelling as
/// needed. Errors are the Kubernetes API's; the master's answers land in the status.
pub async fn reconcile(obj: Arc<IngestionJob>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let api: Api<IngestionJob> =
        Api::namespaced(ctx.kube.clone(), &obj.namespace().unwrap_or_else(|| "default".into()));
    finalized(&api, FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => apply(&api, &obj, &ctx).await,
            Event::Cleanup(obj) => cleanup(&obj, &ctx).await,
        }
    })
    .await
}

/// After a failed reconciliation (the Kubernetes API refused a write, or a cancel could
/// not reach the master): try again shortly.
pub fn error_policy(obj: Arc<IngestionJob>, error: &OperatorError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %obj.name_any(), namespace = ?obj.namespace(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn apply(api: &Api<IngestionJob>, obj: &IngestionJob, ctx: &Context) -> Result<Action, OperatorError> {
    let mut master = ctx.master.clone();
    let view = match reconcile::plan(obj) {
        Plan::Refuse(message) => MasterView::Refused(Code::InvalidArgument, message),
        Plan::Submit(spec) => {
            let request = SubmitJobRequest { spec: Some(weir_proto::convert::spec_to_wire(&spec)) };
            let answer = master.submit_job(request).await.map(|r| r.into_inner().job);
            view_of(answer)
        }
        Plan::Follow(job_id) => view_of(master.get_job(GetJobRequest { job_id }).await.map(|r| r.into_inner().job)),
    };
    if let MasterView::Job(job) = &view {
        tracing::debug!(object = %obj.name_any(), job_id = %job.id, state = job.state, "job seen");
    }
    let now = jiff::Timestamp::now().to_string();
    let next = reconcile::status(obj, &view, &now);
    if obj.status.as_ref() != Some(&next) {
        let patch = Patch::Merge(serde_json::json!({ "status": next }));
        api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER), &patch).await?;
    }
    Ok(reconcile::requeue(&next, ctx.resync).map_or_else(Action::await_change, Action::requeue))
}

/// The master's answer as a view: refusals it means (a bad spec, a missing permission)
/// are final for this attempt; anything else is worth another try.
fn view_of(answer: Result<Option<v1::Job>, tonic::Status>) -> MasterView {
    match answer {
        Ok(Some(job)) => MasterView::Job(Box::new(job)),
        Ok(None) => MasterView::Unreachable("the master answered without a job".into()),
        Err(s)
            if matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::NotFound
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::ResourceExhausted
                    | Code::FailedPrecondition
            ) =>
        {
            MasterView::Refused(s.code(), s.message().to_string())
        }
        Err(s) => MasterView::Unreachable(format!("{}: {}", s.code(), s.message())),
    }
}

async fn cleanup(obj: &IngestionJob, ctx: &Context) -> Result<Action, OperatorError> {
    let mut master = ctx.master.clone();
    let job_id = match reconcile::cleanup(obj) {
        Cleanup::Nothing => return Ok(Action::await_change()),
        Cleanup::Cancel(job_id) => job_id,
        Cleanup::FindAndCancel { namespace, name, run_id } => {
            match find_job(&mut master, namespace, name, &run_id).await? {
                Some(job_id) => job_id,
                None => return Ok(Action::await_change()),
            }
        }
    };
    let reason = format!("IngestionJob {}/{} deleted", obj.namespace().unwrap_or_default(), obj.name_any());
    match master.cancel_job(CancelJobRequest { job_id: job_id.clone(), reason }).await {
        Ok(_) => tracing::info!(object = %obj.name_any(), %job_id, "job cancelled: its IngestionJob was deleted"),
        // Finished meanwhile, or gone: nothing left to undo.
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {}
        Err(s) => return Err(OperatorError::master(s)),
    }
    Ok(Action::await_change())
}

/// Writes the watches file of every FileWatch into its ConfigMap, then this object's
/// status; a deleted object is taken out of the file before its finalizer goes.
pub async fn reconcile_watch(obj: Arc<FileWatch>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let api: Api<FileWatch> = Api::namespaced(ctx.kube.clone(), &obj.namespace().unwrap_or_else(|| "default".into()));
    finalized(&api, WATCH_FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => apply_watch(&api, &obj, &ctx).await,
            Event::Cleanup(obj) => {
                publish_watches(&ctx, obj.uid().as_deref()).await?;
                tracing::info!(watch = %crate::watches::watch_name(&obj), "FileWatch deleted: out of the watches file");
                Ok(Action::await_change())
            }
        }
    })
    .await
}

async fn apply_watch(api: &Api<FileWatch>, obj: &FileWatch, ctx: &Context) -> Result<Action, OperatorError> {
    let verdicts = publish_watches(ctx, None).await?;
    let key = (obj.namespace().unwrap_or_else(|| "default".into()), obj.name_any());
    // Not in the list it just read (created a moment ago): the next event brings it.
    let Some(verdict) = verdicts.get(&key) else { return Ok(Action::requeue(Duration::from_secs(1))) };
    // Written again now and then whatever happens, so a file changed by hand, or a write
    // lost while leadership moved, is repaired.
    let now = jiff::Timestamp::now().to_string();
    let next = crate::watches::status(obj, verdict, &ctx.watches_map(), &now);
    if obj.status.as_ref() != Some(&next) {
        let patch = Patch::Merge(serde_json::json!({ "status": next }));
        api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER), &patch).await?;
    }
    Ok(Action::requeue(WATCHES_RESYNC))
}

/// How often an accepted FileWatch writes the watches file again.
pub const WATCHES_RESYNC: Duration = Duration::from_secs(300);

/// Lists every FileWatch in scope (but `leaving`), writes their watches file into the
/// ConfigMap, and returns each object's verdict.
async fn publish_watches(
    ctx: &Context,
    leaving: Option<&str>,
) -> Result<std::collections::BTreeMap<crate::watches::Key, Result<String, String>>, OperatorError> {
    let _one_at_a_time = ctx.publishing.lock().await;
    let all: Api<FileWatch> = match &ctx.scope {
        Some(ns) => Api::namespaced(ctx.kube.clone(), ns),
        None => Api::all(ctx.kube.clone()),
    };
    let objs: Vec<FileWatch> = all
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| leaving.is_none() || o.uid().as_deref() != leaving)
        .collect();
    let (file, verdicts) = crate::watches::render(&objs);
    let (map_namespace, map_name) = &ctx.watches;
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": map_name,
            "labels": {"app.kubernetes.io/part-of": "weir", "app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "data": { crate::watches::FILE_KEY: file },
    });
    let maps: Api<ConfigMap> = Api::namespaced(ctx.kube.clone(), map_namespace);
    maps.patch(map_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&map)).await?;
    Ok(verdicts)
}

/// The job of `namespace`/`name` with this run id, page after page. A caller that may
/// not read the namespace could not have submitted there either: nothing to cancel.
async fn find_job(
    master: &mut JobServiceClient<AuthedChannel>,
    namespace: String,
    name: String,
    run_id: &str,
) -> Result<Option<String>, OperatorError> {
    let mut page_token = String::new();
    loop {
        let request = ListJobsRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = match master.list_jobs(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                tracing::warn!(%namespace, %name, error = %s.message(), "cannot read the namespace's jobs; nothing to cancel");
                return Ok(None);
            }
            Err(s) => return Err(OperatorError::master(s)),
        };
        if let Some(job) = page.jobs.into_iter().find(|j| j.spec.as_ref().is_some_and(|s| s.run_id == run_id)) {
            return Ok(Some(job.id));
        }
        if page.next_page_token.is_empty() {
            return Ok(None);
        }
        page_token = page.next_page_token;
    }
}

/// Runs the controllers over `jobs`' IngestionJobs and `watches`' FileWatches until `stop`
/// is cancelled, letting reconciliations under way finish.
pub async fn run(
    jobs: Api<IngestionJob>,
    watches: Api<FileWatch>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    let jobs = Controller::new(jobs, watcher::Config::default())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(logged);
    let watches = Controller::new(watches, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_watch, watch_error_policy, ctx)
        .for_each(logged);
    tokio::join!(jobs, watches);
}

/// A controller's result, at debug (failures are logged by the error policies).
async fn logged<T: std::fmt::Display, E: std::fmt::Display>(result: Result<(T, Action), E>) {
    match result {
        Ok((object, _)) => tracing::debug!(%object, "reconciled"),
        Err(error) => tracing::debug!(%error, "reconcile did not complete"),
    }
}

/// After a failed FileWatch reconciliation: try again shortly.
pub fn watch_error_policy(obj: Arc<FileWatch>, error: &OperatorError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(watch = %crate::watches::watch_name(&obj), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
