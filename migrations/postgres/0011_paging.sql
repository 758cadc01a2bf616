-- The master's memory budget (weir_core::engine, "parked" jobs): pending jobs are read
-- back best-ranked first (priority, then age, then id) from where the last page ended,
-- and parked jobs past their deadline are found without reading the whole backlog.
CREATE INDEX weir_jobs_pending_rank ON weir_jobs ((-priority), created_ms, id) WHERE state = 'pending';
CREATE INDEX weir_jobs_pending_deadline ON weir_jobs (deadline_ms) WHERE state = 'pending' AND deadline_ms IS NOT NULL;
