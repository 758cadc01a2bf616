-- Incremental collection's high-watermarks: per namespace and key (`<job name>/<resource>`),
-- the largest cursor value stored and the fingerprints of the records at it (JSON, see
-- weir_core::watermark::Mark). Written in the transaction of the job whose success stored
-- the rows, and never moved back.
CREATE TABLE weir_watermarks (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    mark       TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);
