-- Tamper evidence that survives a DBA (DESIGN §9).
--
-- events refuses UPDATE, DELETE and TRUNCATE, whoever asks. The table's
-- owner can still ALTER TABLE … DISABLE TRIGGER and a superuser SET
-- session_replication_role = replica: run the service as neither (README,
-- deployment); the seals catch what a superuser does.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

---- create above / drop below ----
DROP TRIGGER events_no_truncate ON events;
DROP TRIGGER events_append_only ON events;
DROP FUNCTION ledger_refuse_change;
