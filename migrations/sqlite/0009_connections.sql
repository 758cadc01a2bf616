-- Named connections (see weir_core::connection): per namespace, the step config an admin
-- defines for a location, an API or a sink, credentials by reference only. Written in the
-- commit of its audit record.
CREATE TABLE weir_connections (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
