//! The watches: event-driven collection.
//!
//! Every second the watcher looks at each watch. When the watch's poll is due it takes
//! the poll in the inventory (so one replica lists per interval), lists the location,
//! and claims the new or changed file versions (so each version is claimed once, across
//! restarts and replicas). Then, on every round and on every replica, it starts the job
//! of each claimed version not started yet: the job's run id comes from the version's
//! discovery event, so a retry after a crash names the same job and the master starts it
//! once; marking the version started writes its `dev.weir.file.discovered` event to the
//! outbox in the same transaction. The watches file (`WEIR_WATCHES_FILE`) is read again
//! every few seconds; a changed one replaces the set of watches without a restart.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weir_core::events::{rfc3339, topic};
use weir_core::files::{discovery_event, WatchSpec, FILE_DISCOVERED};
use weir_core::model::{ClaimedFile, OutboxMessage};
use weir_core::trigger::TriggerRules;
use weir_proto::v1::job_service_client::JobServiceClient;
use weir_proto::v1::SubmitJobRequest;
use weir_storage::{Location, Patterns};
use weir_store::Store;
use weir_worker::manager::{Background, BackgroundContext};

use crate::{now_ms, FileSettings};

/// How often the watcher looks for due polls and unstarted versions.
const ROUND: Duration = Duration::from_secs(1);

/// Runs the watches.
pub struct Watcher {
    settings: FileSettings,
}

struct Watch {
    spec: WatchSpec,
    rules: TriggerRules,
    location: Location,
    patterns: Patterns,
}

impl Watcher {
    pub fn new(settings: FileSettings) -> Self {
        Watcher { settings }
    }
}

/// How often the watches file is read again for changes (a mounted ConfigMap is itself
/// refreshed by the kubelet about once a minute).
const RELOAD: Duration = Duration::from_secs(5);

/// The watches that open and that the sandbox allows (their location, judged for the
/// namespace their jobs go to); one that does not is logged and left out.
fn open_all(specs: &[WatchSpec], sandbox: &weir_core::sandbox::Policy) -> Vec<Watch> {
    let mut watches = Vec::new();
    for spec in specs {
        let opened = (|| -> Result<Watch, String> {
            let namespace = spec.start.get("namespace").and_then(|n| n.as_str()).unwrap_or("default");
            sandbox.check(namespace, &spec.reach()).map_err(|r| r.to_string())?;
            Ok(Watch {
                rules: spec.rule()?,
                location: Location::open(&spec.location).map_err(|e| e.to_string())?,
                patterns: Patterns::new(&spec.patterns).map_err(|e| e.to_string())?,
                spec: spec.clone(),
            })
        })();
        match opened {
            Ok(w) => watches.push(w),
            Err(e) => tracing::error!(watch = %spec.name, error = %e, "watch not started"),
        }
    }
    watches
}

#[async_trait]
impl Background for Watcher {
    async fn run(&self, ctx: BackgroundContext) {
        let file = self.settings.watches_file.clone();
        if self.settings.watches.watches.is_empty() && file.is_none() {
            return;
        }
        let mut current = self.settings.watches.clone();
        let mut watches = open_all(&current.watches, &ctx.sandbox);
        let channel = match weir_runtime::grpc::channel(&ctx.master_url, &ctx.security) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "watches not started: bad master URL");
                return;
            }
        };
        let mut master = JobServiceClient::new(channel);
        tracing::info!(watches = watches.len(), "watching");
        // Per watch: when it may run again, and how many rounds in a row failed.
        let fresh = |n: usize| vec![(std::time::Instant::now(), 0u32); n];
        let mut backoff = fresh(watches.len());
        let mut read_at = std::time::Instant::now();
        let mut complaint = None;
        if let Some(path) = file.as_deref().filter(|p| !p.exists()) {
            tracing::warn!(file = %path.display(), "WEIR_WATCHES_FILE does not exist (yet): no watches until it does");
        }
        loop {
            if let Some(path) = file.as_deref().filter(|_| read_at.elapsed() >= RELOAD) {
                read_at = std::time::Instant::now();
                // Gone (its ConfigMap deleted): no watches, as at a start without it.
                let read = if path.exists() { crate::read_watches(path) } else { Ok(Default::default()) };
                match read {
                    Ok(w) => {
                        complaint = None;
                        if w != current {
                            watches = open_all(&w.watches, &ctx.sandbox);
                            backoff = fresh(watches.len());
                            tracing::info!(watches = watches.len(), "watches file changed: watching the new set");
                            current = w;
                        }
                    }
                    // A broken edit keeps the watches that run; said once per problem.
                    Err(e) if complaint.as_ref() != Some(&e) => {
                        tracing::warn!(error = %e, "watches file not reloaded; the watches that run go on");
                        complaint = Some(e);
                    }
                    Err(_) => {}
                }
            }
            let store = match watches.is_empty() {
                true => None,
                false => match self.settings.store.get().await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "inventory unavailable; retrying");
                        None
                    }
                },
            };
            if let Some(store) = store {
                for (w, b) in watches.iter().zip(backoff.iter_mut()) {
                    if b.0 > std::time::Instant::now() {
                        continue;
                    }
                    match round(w, &store, &mut master, &ctx.worker_id).await {
                        Ok(()) => *b = (std::time::Instant::now(), 0),
                        Err(e) => {
                            // A failing watch (its backend down, its job refused) waits
                            // twice as long each time, up to its poll interval.
                            let wait = retry_wait(b.1, w.spec.interval());
                            *b = (std::time::Instant::now() + wait, b.1.saturating_add(1));
                            tracing::warn!(watch = %w.spec.name, error = %e, retry_in = ?wait, "watch round failed");
                        }
                    }
                }
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(ROUND) => {}
            }
        }
    }
}

/// How long a watch waits after `failures` failed rounds in a row: 1 s doubling, at most
/// its poll interval (and at least one round).
pub fn retry_wait(failures: u32, interval: Duration) -> Duration {
    let doubled = ROUND.saturating_mul(1u32 << failures.min(16));
    doubled.min(interval.max(ROUND))
}

/// One round of one watch: poll if due, then start what is pending.
async fn round(
    w: &Watch,
    store: &Arc<dyn Store>,
    master: &mut JobServiceClient<weir_runtime::grpc::AuthedChannel>,
    holder: &str,
) -> Result<(), String> {
    let name = &w.spec.name;
    let interval = w.spec.interval().as_millis() as i64;
    if store.claim_poll(name, holder, now_ms(), interval).await.map_err(|e| e.to_string())? {
        let listed = w.location.list(&w.patterns).await.map_err(|e| e.to_string())?;
        let claimed = store.claim_files(name, &listed, now_ms()).await.map_err(|e| e.to_string())?;
        tracing::info!(watch = %name, listed = listed.len(), new_or_changed = claimed.len(), "polled");
    }
    loop {
        let pending = store.pending_files(name, 100).await.map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok(());
        }
        for c in &pending {
            start(w, store, master, c).await?;
        }
    }
}

/// Starts the job of one claimed version and records it with its discovery event.
async fn start(
    w: &Watch,
    store: &Arc<dyn Store>,
    master: &mut JobServiceClient<weir_runtime::grpc::AuthedChannel>,
    c: &ClaimedFile,
) -> Result<(), String> {
    let now = now_ms();
    let event = discovery_event(&w.spec.name, &w.spec.location, &c.file, c.generation, &rfc3339(now));
    let spec = w.rules.job_for(&event)?;
    let wire = weir_proto::convert::spec_to_wire(&spec);
    let job = match master.submit_job(SubmitJobRequest { spec: Some(wire) }).await {
        Ok(r) => r.into_inner().job.map(|j| j.id).unwrap_or_default(),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            // The watch's job spec is wrong for this file: say so loudly; the version
            // stays pending and is tried again next round (fix the watch; a changed watches file is read again).
            return Err(format!("the master refused the job for {}: {}", c.file.path, s.message()));
        }
        Err(s) => return Err(format!("submitting the job for {}: {}", c.file.path, s.message())),
    };
    let mut data = event.data.clone().unwrap_or_default();
    if let Some(o) = data.as_object_mut() {
        o.insert("event_id".into(), event.id.clone().into());
        o.insert("job_id".into(), job.clone().into());
    }
    let message = OutboxMessage {
        topic: topic::FILES.into(),
        key: w.spec.name.clone(),
        kind: FILE_DISCOVERED.into(),
        subject: event.subject.clone().unwrap_or_default(),
        time_ms: now,
        data,
    };
    if store.mark_file_started(&w.spec.name, c, &job, &message, now).await.map_err(|e| e.to_string())? {
        tracing::info!(watch = %w.spec.name, path = %c.file.path, job_id = %job, "file discovered; job started");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_watches_back_off_up_to_their_interval() {
        let five_min = Duration::from_secs(300);
        let waits: Vec<u64> = (0..12).map(|f| retry_wait(f, five_min).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_wait(40, Duration::from_millis(10)), ROUND);
    }

    #[test]
    fn a_watch_outside_the_sandbox_is_left_out() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().display().to_string();
        let watch = |name: &str, path: &str| {
            serde_json::json!({"name": name, "location": {"uri": format!("file://{path}")}, "patterns": ["*.csv"],
                "start": {"namespace": "sales", "job_name": "j", "steps": [{"id": "a", "kind": "noop", "queue": "file"}]}})
        };
        let w = weir_core::files::Watches::from_value(serde_json::json!({
            "watches": [watch("inside", &root), watch("outside", "/etc")]
        }))
        .expect("watches");
        let policy = weir_core::sandbox::Policy::with_default(vec![root], vec![], vec![]).expect("policy");
        let opened: Vec<String> = open_all(&w.watches, &policy).into_iter().map(|w| w.spec.name).collect();
        assert_eq!(opened, ["inside"]);
        assert_eq!(open_all(&w.watches, &weir_core::sandbox::Policy::allow_all()).len(), 2);
    }
}
