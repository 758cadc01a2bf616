//! The master's side of the engine's memory budget (see `weir_core::engine`, "parked"
//! jobs): what the store reads when the engine starts, and when the engine has room for
//! parked jobs again or must look at one (a caller steers it, or its deadline passed).
//!
//! The scheduler reads only while no commit is on its way, so what the store says about
//! a pending job is what the engine last handed over; it waits for the read, which is why
//! a page is small.

use uuid::Uuid;
use weir_core::engine::{Engine, EngineConfig, JobRank};
use weir_core::model::{JobRecord, JobState};
use weir_core::Millis;
use weir_store::{Store, StoreError};

use crate::now_ms;

/// Most tasks read back in one page.
pub const PAGE_TASKS: usize = 5_000;

/// Most overdue parked jobs read back at a time.
const OVERDUE_BATCH: u32 = 100;

/// How often the store is asked for parked jobs past their deadline.
pub(crate) const OVERDUE_EVERY_MS: Millis = 1_000;

/// The engine of a master that just took the lead: every started job, then pending ones
/// best-ranked first while they fit in the budget.
pub async fn load(store: &dyn Store, cfg: EngineConfig) -> Result<Engine, StoreError> {
    let budget = cfg.resident_tasks;
    let mut engine = Engine::new(cfg, Box::new(Uuid::now_v7));
    let (jobs, tasks) = store.load_started().await?;
    engine.load(jobs, tasks, now_ms());
    // Every job has a task, so no more jobs than tasks fit.
    let room = budget.map_or(usize::MAX, |b| b.saturating_sub(engine.tasks_in_memory()));
    let page = store.load_pending(None, room, room).await?;
    engine.page_in(page.jobs, page.tasks, page.next, now_ms());
    Ok(engine)
}

/// Reads one page of parked jobs back if the engine has room for them.
pub(crate) async fn page(engine: &mut Engine, store: &dyn Store) -> Result<bool, StoreError> {
    let Some((from, room)) = engine.page_wanted() else { return Ok(false) };
    let room = room.min(PAGE_TASKS);
    let page = store.load_pending(Some(from), room, room).await?;
    engine.page_in(page.jobs, page.tasks, page.next, now_ms());
    crate::metrics::MASTER.pages_read.inc();
    Ok(true)
}

/// Parked jobs past their deadline (they time out once read back); `parked` is the
/// engine's best parked rank.
pub(crate) async fn overdue(parked: Option<JobRank>, store: &dyn Store, now: Millis) -> Result<Vec<Uuid>, StoreError> {
    match parked {
        Some(from) => store.overdue_pending(from, now, OVERDUE_BATCH).await,
        None => Ok(Vec::new()),
    }
}

/// Reads the given jobs back into the engine if they are parked: pending in the store and
/// not in memory. Others are left alone (the engine answers for them as it would).
pub(crate) async fn fetch(engine: &mut Engine, store: &dyn Store, ids: &[Uuid]) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = ids.iter().copied().filter(|id| engine.job(*id).is_none()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let (jobs, tasks) = store.load_jobs(&ids).await?;
    let parked: Vec<JobRecord> = jobs.into_iter().filter(|j| j.state == JobState::Pending).collect();
    engine.load(parked, tasks, now_ms());
    Ok(())
}
