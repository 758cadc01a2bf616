-- The event bus: weir_events is the transactional outbox (each event is written in the
-- transaction of the change it reports); a relay publishes it in id order and keeps its
-- position here, so a restart resumes where the last acknowledged batch ended.
CREATE TABLE weir_relay (
    name    TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL
);

-- W3C traceparent of the call that submitted the job; every event about it carries it.
ALTER TABLE weir_jobs ADD COLUMN trace_parent TEXT;
