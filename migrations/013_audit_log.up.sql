-- The audit log: every INSERT, UPDATE and DELETE on tenants and admin_users (and any
-- TRUNCATE of them), whoever the writer is (this library, the Go service, psql),
-- written by a trigger in the writing transaction: an entry exists exactly when its
-- change committed.
--
-- Each entry records:
--   at                the writer's stated time (tenantstore repositories state the
--                     instant they stamp updated_at with, via the transaction-local
--                     setting tenantstore.at), else the statement's start time
--   recorded_at       the database server's clock when the entry was written
--   actor             who the writer says acted (the transaction-local setting
--                     tenantstore.actor: `SELECT set_config('tenantstore.actor',
--                     'alice', true)` before the write), else NULL
--   database_user     session_user: the role that logged in (SET ROLE cannot hide it)
--   application_name  the session's application_name, NULL when unset
--   table_name, action ('INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE'), entity_id
--   changes           {"column": {"old": value, "new": value}, ...} for each column
--                     whose value differs (a missing row counts as all NULL, so an
--                     INSERT lists its non-NULL columns and a DELETE what was there);
--                     a secret column (name ending in _hash or _encrypted, or holding
--                     "password") is {"redacted": true}: that it changed, never a value
--
-- The diff is over to_jsonb(OLD) / to_jsonb(NEW), so columns added later (e.g.
-- previous_api_key_hash, redacted by its name) are covered without changing this.
-- An UPDATE that changes nothing is not an entry.
--
-- The function runs as its owner (SECURITY DEFINER) so that a writer needs no
-- privilege on audit_log to be audited, and none is granted: writers cannot edit the
-- log. Its search_path is pinned (pg_temp last, so a temporary table cannot stand in
-- for audit_log), and so is its TimeZone, so timestamps in `changes` are in UTC
-- whatever the writer's session says.

CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name text NOT NULL,
    action text NOT NULL,
    entity_id uuid,
    actor text,
    database_user text NOT NULL,
    application_name text,
    changes jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_entity_idx ON audit_log (entity_id, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);

REVOKE ALL ON audit_log FROM PUBLIC;

CREATE FUNCTION tenantstore_audit() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET TimeZone = 'UTC'
AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
    row_changes jsonb := '{}';
    stated text := nullif(current_setting('tenantstore.at', true), '');
    stated_at timestamptz;
BEGIN
    IF stated IS NOT NULL THEN
        BEGIN
            stated_at := stated::timestamptz;
        EXCEPTION WHEN OTHERS THEN
            stated_at := NULL;  -- a malformed setting must not fail the write
        END;
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP <> 'INSERT' THEN
            old_row := to_jsonb(OLD);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            new_row := to_jsonb(NEW);
        END IF;
        SELECT coalesce(jsonb_object_agg(
                   c.name,
                   CASE WHEN c.name ~ '(_hash|_encrypted)$' OR c.name LIKE '%password%'
                        THEN jsonb_build_object('redacted', true)
                        ELSE jsonb_build_object('old', c.old, 'new', c.new)
                   END), '{}')
          INTO row_changes
          FROM (SELECT k AS name,
                       nullif(old_row -> k, 'null') AS old,
                       nullif(new_row -> k, 'null') AS new
                  FROM jsonb_object_keys(coalesce(new_row, old_row)) AS k) AS c
         WHERE c.old IS DISTINCT FROM c.new;
    END IF;
    INSERT INTO audit_log (at, table_name, action, entity_id, actor, database_user,
                           application_name, changes)
    VALUES (coalesce(stated_at, statement_timestamp()),
            TG_TABLE_NAME,
            TG_OP,
            (coalesce(new_row, old_row) ->> 'id')::uuid,
            nullif(current_setting('tenantstore.actor', true), ''),
            session_user,
            nullif(current_setting('application_name', true), ''),
            row_changes);
    RETURN NULL;
END
$$;

-- Pinned search_path, as the other trigger functions: pg_catalog, then the schema the
-- tables live in (the migrating session's current schema), pg_temp last.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION tenantstore_audit() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END
$$;

CREATE TRIGGER tenantstore_tenants_audit_insert_delete
    AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenantstore_audit();
CREATE TRIGGER tenantstore_tenants_audit_update
    AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION tenantstore_audit();
CREATE TRIGGER tenantstore_tenants_audit_truncate
    AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_audit();

CREATE TRIGGER tenantstore_admin_users_audit_insert_delete
    AFTER INSERT OR DELETE ON admin_users
    FOR EACH ROW EXECUTE FUNCTION tenantstore_audit();
CREATE TRIGGER tenantstore_admin_users_audit_update
    AFTER UPDATE ON admin_users
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION tenantstore_audit();
CREATE TRIGGER tenantstore_admin_users_audit_truncate
    AFTER TRUNCATE ON admin_users
    FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_audit();
