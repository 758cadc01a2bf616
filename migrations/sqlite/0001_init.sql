-- Weir's durable state in the embedded (SQLite) store: the same tables as PostgreSQL,
-- with ids and JSON as TEXT. Times are epoch milliseconds.

CREATE TABLE weir_leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    holder      TEXT NOT NULL,
    acquired_ms INTEGER NOT NULL
);
INSERT INTO weir_leader (id, epoch, holder, acquired_ms) VALUES (1, 0, '', 0);

CREATE TABLE weir_jobs (
    id              TEXT PRIMARY KEY,
    namespace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    labels          TEXT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    error           TEXT,
    ending          TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    finished_ms     INTEGER,
    deadline_ms     INTEGER,
    last_seq        INTEGER NOT NULL,
    tasks_total     INTEGER NOT NULL,
    tasks_succeeded INTEGER NOT NULL,
    tasks_failed    INTEGER NOT NULL,
    tasks_running   INTEGER NOT NULL,
    UNIQUE (namespace, name, run_id)
);
CREATE INDEX weir_jobs_state ON weir_jobs (state);
CREATE INDEX weir_jobs_newest ON weir_jobs (created_ms DESC, id DESC);

CREATE TABLE weir_tasks (
    id               TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES weir_jobs (id) ON DELETE CASCADE,
    step_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    depends_on       TEXT NOT NULL,
    compensates      TEXT,
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    fence            INTEGER NOT NULL,
    worker           TEXT,
    lease_expires_ms INTEGER,
    ready_ms         INTEGER,
    retry_at_ms      INTEGER,
    started_ms       INTEGER,
    finished_ms      INTEGER,
    error_kind       TEXT,
    error_message    TEXT,
    output           TEXT,
    cancel_requested INTEGER NOT NULL
);
CREATE INDEX weir_tasks_job ON weir_tasks (job_id);

CREATE TABLE weir_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    task_id    TEXT,
    step_id    TEXT,
    job_state  TEXT NOT NULL,
    task_state TEXT,
    message    TEXT,
    UNIQUE (job_id, seq)
);
