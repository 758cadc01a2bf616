-- Schedules (see weir_core::schedule): a cron expression in a time zone and the job each
-- slot runs (spec), and what the master keeps between slots (state: the last slot handled,
-- slots waiting behind a run, the runs it started). Written in the commit of the jobs a
-- slot starts, so a slot is handled exactly once across restarts and failovers.
CREATE TABLE weir_schedules (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
