-- Weir's durable state on PostgreSQL. Times are epoch milliseconds (BIGINT), the engine's
-- one time unit; use to_timestamp(x / 1000.0) to read them as timestamps.

-- Which master may write: the holder of the advisory lock bumps `epoch`, and every commit
-- checks it under FOR SHARE, so a deposed master's late commit is refused.
CREATE TABLE weir_leader (
    id          INT PRIMARY KEY CHECK (id = 1),
    epoch       BIGINT NOT NULL,
    holder      TEXT NOT NULL,
    acquired_ms BIGINT NOT NULL
);
INSERT INTO weir_leader (id, epoch, holder, acquired_ms) VALUES (1, 0, '', 0);

CREATE TABLE weir_jobs (
    id              UUID PRIMARY KEY,
    namespace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    labels          JSONB NOT NULL,
    spec            JSONB NOT NULL,
    state           TEXT NOT NULL,
    error           TEXT,
    ending          TEXT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    finished_ms     BIGINT,
    deadline_ms     BIGINT,
    last_seq        BIGINT NOT NULL,
    tasks_total     BIGINT NOT NULL,
    tasks_succeeded BIGINT NOT NULL,
    tasks_failed    BIGINT NOT NULL,
    tasks_running   BIGINT NOT NULL,
    UNIQUE (namespace, name, run_id)
);
CREATE INDEX weir_jobs_unfinished ON weir_jobs (state)
    WHERE state IN ('pending', 'running', 'paused', 'compensating');
CREATE INDEX weir_jobs_newest ON weir_jobs (created_ms DESC, id DESC);
CREATE INDEX weir_jobs_ns_newest ON weir_jobs (namespace, created_ms DESC, id DESC);
CREATE INDEX weir_jobs_labels ON weir_jobs USING GIN (labels jsonb_path_ops);

CREATE TABLE weir_tasks (
    id               UUID PRIMARY KEY,
    job_id           UUID NOT NULL REFERENCES weir_jobs (id) ON DELETE CASCADE,
    step_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    depends_on       JSONB NOT NULL,
    compensates      TEXT,
    state            TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    fence            BIGINT NOT NULL,
    worker           TEXT,
    lease_expires_ms BIGINT,
    ready_ms         BIGINT,
    retry_at_ms      BIGINT,
    started_ms       BIGINT,
    finished_ms      BIGINT,
    error_kind       TEXT,
    error_message    TEXT,
    output           TEXT,
    cancel_requested BOOLEAN NOT NULL
);
CREATE INDEX weir_tasks_job ON weir_tasks (job_id);

-- Append-only history per job. `id` orders all events for the outbox relay.
CREATE TABLE weir_events (
    id         BIGSERIAL PRIMARY KEY,
    job_id     UUID NOT NULL,
    seq        BIGINT NOT NULL,
    type       TEXT NOT NULL,
    time_ms    BIGINT NOT NULL,
    task_id    UUID,
    step_id    TEXT,
    job_state  TEXT NOT NULL,
    task_state TEXT,
    message    TEXT,
    UNIQUE (job_id, seq)
);
