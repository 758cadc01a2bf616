-- The dataset catalogue: every version of every dataset's and table's schema the batch
-- managers landed data with, copied from the sinks' own histories (`_weir/schema.json`,
-- `weir_sink_schemas`) so `weir datasets` can show them. A version is recorded once,
-- with its `dev.weir.dataset.schema_changed` event in the same transaction.
CREATE TABLE weir_dataset_versions (
    dataset     TEXT NOT NULL,
    version     BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    -- JSON: the columns and the partitioning; what changed; the job, task and input.
    schema      TEXT NOT NULL,
    changes     TEXT NOT NULL,
    origin      TEXT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    PRIMARY KEY (dataset, version)
);
