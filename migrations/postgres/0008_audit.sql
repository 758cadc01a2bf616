-- The audit trail: every mutating call and every refused one, written in the commit of
-- what it reports (see weir_core::audit). Append-only: rows are never updated, and only
-- the retention sweep deletes them (older than the retention period).
CREATE TABLE weir_audit (
    id        UUID PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    subject   TEXT NOT NULL,
    namespace TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    code      TEXT NOT NULL,
    message   TEXT NOT NULL,
    trace_id  TEXT NOT NULL,
    peer      TEXT NOT NULL
);
CREATE INDEX weir_audit_at ON weir_audit (at_ms);
CREATE INDEX weir_audit_subject ON weir_audit (subject, id);

CREATE FUNCTION weir_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'weir_audit is append-only';
END;
$$;
CREATE TRIGGER weir_audit_no_update BEFORE UPDATE ON weir_audit
    FOR EACH ROW EXECUTE FUNCTION weir_audit_append_only();
