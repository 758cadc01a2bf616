-- The file manager's durable inventory: every file a watch has seen, by path, with the
-- fingerprint (size, modification time, ETag) of the version last claimed. A version is
-- claimed once, by one replica, through an upsert that only changes a row whose
-- fingerprint differs; `generation` grows on a re-drive so the same version can run again.
CREATE TABLE weir_files (
    watch         TEXT NOT NULL,
    path          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    modified_ms   BIGINT NOT NULL,
    etag          TEXT,
    fingerprint   TEXT NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 0,
    -- discovered: claimed, its job not yet started; started: its job exists.
    state         TEXT NOT NULL,
    job_id        TEXT,
    first_seen_ms BIGINT NOT NULL,
    changed_ms    BIGINT NOT NULL,
    PRIMARY KEY (watch, path)
);
CREATE INDEX weir_files_discovered ON weir_files (watch) WHERE state = 'discovered';

-- Which replica polls a watch next, and when: one listing per interval across replicas.
CREATE TABLE weir_watch_polls (
    watch        TEXT PRIMARY KEY,
    next_poll_ms BIGINT NOT NULL,
    holder       TEXT NOT NULL
);
