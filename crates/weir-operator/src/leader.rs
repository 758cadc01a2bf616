//! One replica at a time runs the controller: the holder of a Kubernetes Lease, kept by
//! kube-lease-manager. A replica that loses the Lease stops its controller (letting
//! reconciliations under way finish) and waits to lead again. Two controllers at once,
//! while leadership moves, submit nothing twice (submission is idempotent by run id) and
//! cancel nothing twice; the watches file they might write out of order is written again
//! every few minutes (`controller::WATCHES_RESYNC`).

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Context};
use crate::crd::{FileWatch, IngestionJob};
use crate::metrics::OPERATOR;
use crate::OperatorError;

/// The Lease: where it lives, who this replica is, and how long a lease lasts.
#[derive(Debug, Clone)]
pub struct Election {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    /// A holder that has not renewed within this is replaced.
    pub duration: Duration,
    /// How long before expiry the holder renews (the clock skew tolerated).
    pub grace: Duration,
}

/// Runs the controllers over `jobs` and `watches` whenever this replica holds the Lease,
/// until `cancel`; then hands the Lease back.
pub async fn run(
    election: Election,
    jobs: Api<IngestionJob>,
    watches: Api<FileWatch>,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) -> Result<(), OperatorError> {
    let manager = LeaseManagerBuilder::new(ctx.kube.clone(), &election.lease_name)
        .with_namespace(&election.lease_namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration.as_secs().max(2))
        .with_grace(election.grace.as_secs().max(1))
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %election.lease_name, identity = %election.identity, "waiting to lead");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        tracing::info!(identity = %election.identity, "leading: the controller runs");
        OPERATOR.leader.set(1);
        let stop = CancellationToken::new();
        let stopper = {
            let (mut leading, cancel, stop) = (leading.clone(), cancel.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = leading.wait_for(|l| !*l) => {}
                }
                stop.cancel();
            })
        };
        controller::run(jobs.clone(), watches.clone(), ctx.clone(), stop).await;
        stopper.abort();
        OPERATOR.leader.set(0);
        if cancel.is_cancelled() {
            break;
        }
        tracing::warn!(identity = %election.identity, "lost the lease: the controller stopped");
    }
    // Dropping the receiver makes the lease task release the Lease and end.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(OperatorError::Task(e.to_string())),
    }
}
