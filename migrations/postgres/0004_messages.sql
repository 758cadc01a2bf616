-- Events that are not part of a job's history (worker status now; the managers' domain
-- events later), written in the same commit as what they report and relayed like
-- weir_events, under their own relay position.
CREATE TABLE weir_messages (
    id      BIGSERIAL PRIMARY KEY,
    topic   TEXT NOT NULL,
    key     TEXT NOT NULL,
    type    TEXT NOT NULL,
    subject TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    data    TEXT NOT NULL
);
