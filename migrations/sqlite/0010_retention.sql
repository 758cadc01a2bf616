-- Retention (see weir_core::retention): the purge finds finished jobs oldest first by
-- when they finished, and messages by age when no relay has a position.
CREATE INDEX weir_jobs_finished ON weir_jobs (finished_ms) WHERE finished_ms IS NOT NULL;
