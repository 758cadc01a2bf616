//! The retention purge: while this master leads, at start and every
//! `WEIR_PURGE_INTERVAL`, it deletes finished jobs past their namespace's retention (with
//! their tasks and history) and outbox messages the relays have published — each a bounded
//! batch per fenced transaction, with a pause between batches, so the engine's commits never
//! queue behind a long delete — and audit records past theirs (one delete: they are few).
//! Jobs whose events a relay has not published yet, or with a task still leased, wait for a
//! later sweep. A sweep that
//! deleted anything asks the store to make the space reusable where the database would not
//! on its own (PostgreSQL with autovacuum off), so the store's size stays flat.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::retention::Retention;
use weir_store::{Purged, StoreError};

use crate::metrics::{PurgeLabels, MASTER};
use crate::Shared;

/// Rest between two batches of one sweep: the store serves the engine meanwhile.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Runs the purge until `cancel` fires. Returns an error only when the store refused this
/// master (leadership lost).
pub(crate) async fn run(
    shared: Arc<Shared>,
    retention: Retention,
    epoch: i64,
    cancel: CancellationToken,
) -> Result<(), StoreError> {
    let every = shared.config.purge_interval;
    loop {
        // A stopping master (or one losing leadership) does not wait for a sweep or a vacuum.
        let swept = tokio::select! {
            r = sweep(&shared, &retention, epoch, &cancel) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        match swept {
            Ok(()) => {}
            Err(e @ StoreError::Fenced { .. }) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "retention purge failed; trying again next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// One pass over every namespace, the outbox messages and the audit trail.
async fn sweep(
    shared: &Shared,
    retention: &Retention,
    epoch: i64,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let store = &shared.store;
    let batch = shared.config.purge_batch;
    let (events_published, messages_published) = crate::relay::published(&store.relay_positions().await?);
    let now = crate::now_ms();
    let (mut jobs, mut tasks, mut events) = (0u64, 0u64, 0u64);
    for s in retention.sweeps(now) {
        loop {
            let found = store.purgeable_jobs(&s, events_published, batch).await?;
            let more = found.len() as u64 >= u64::from(batch);
            if found.is_empty() {
                break;
            }
            // The engine claims them first: a job it holds again (a retry that came in)
            // is left alone, and no retry of a claimed one is taken while it is deleted.
            let Ok(claimed) = shared.scheduler.claim(found).await else {
                return Ok(()); // the scheduler stopped: the master is stopping
            };
            let deleted = store.purge_jobs(epoch, &s, events_published, batch, Some(&claimed)).await;
            // Forgotten whether or not the delete went through: their run ids may start
            // new jobs, and the engine's memory of recent keys must not name a purged job.
            if let Err(e) = shared.scheduler.forget(claimed).await {
                // Only when the scheduler has stopped (the master is stopping).
                tracing::warn!(error = %e, "purged jobs' keys not forgotten");
            }
            let Purged { jobs: ids, tasks: t, events: e } = deleted?;
            (jobs, tasks, events) = (jobs + ids.len() as u64, tasks + t, events + e);
            if !more || crate::relay::pause(cancel, BATCH_PAUSE).await {
                break;
            }
        }
    }
    let mut messages = 0;
    // Without a relay, messages are kept as long as the default retention keeps jobs.
    let before = retention.default_cutoff(now);
    loop {
        let n = store.purge_messages(epoch, messages_published, before, batch).await?;
        messages += n;
        if n < u64::from(batch) || crate::relay::pause(cancel, BATCH_PAUSE).await {
            break;
        }
    }
    let audit_days = shared.config.audit_retention_days;
    let audit = store.purge_audit(now - i64::from(audit_days) * 24 * 3600 * 1000).await?;
    for (kind, n) in [("jobs", jobs), ("tasks", tasks), ("events", events), ("messages", messages), ("audit", audit)] {
        MASTER.purged.get_or_create(&PurgeLabels { kind }).inc_by(n);
    }
    if jobs + messages + audit > 0 {
        let vacuumed = store.reclaim().await?;
        tracing::info!(
            vacuumed,
            jobs,
            tasks,
            events,
            messages,
            audit,
            "retention purge deleted what passed its retention"
        );
    }
    Ok(())
}

/// How often the store is asked whether its planner statistics need refreshing.
const STATISTICS_EVERY: Duration = Duration::from_secs(1);

/// While this master leads: keeps the store's planner statistics current where the
/// database does not ([`weir_store::Store::refresh_statistics`]; an `ANALYZE` only once
/// enough jobs came in since the last one).
pub(crate) async fn statistics(store: Arc<dyn weir_store::Store>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(STATISTICS_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = cancel.cancelled() => return,
        }
        match store.refresh_statistics().await {
            Ok(true) => tracing::debug!("planner statistics refreshed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot refresh the planner statistics"),
        }
    }
}
