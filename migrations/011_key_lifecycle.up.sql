-- Key lifecycle: expiry, rotation with a grace period, a display prefix.
--
-- Four nullable columns the Go service never names: its explicit column lists keep
-- working, and its INSERTs leave them NULL (no expiry, no previous key, no prefix).
--   api_key_expires_at           the current key authenticates while now < it (NULL: never expires)
--   previous_api_key_hash        the key a rotation replaced, while in grace
--   previous_api_key_expires_at  ... which authenticates while now < it
--   api_key_prefix               the first 8 characters of the key, for display
-- "now" is the caller's clock, passed as a parameter: no rule here reads now().
--
-- A hash is the current or previous key of at most one tenant. The UNIQUE
-- constraint of 001 covers current keys only, and no constraint of one row can see
-- another row's previous key, so tenant_key_hashes holds every hash in use, current
-- or previous, under a primary key, kept by a trigger in the writing transaction
-- whoever the writer is. Two writers claiming one hash (even concurrently, even the
-- Go service's plain INSERT or UPDATE) meet on that primary key: the second gets a
-- unique violation (23505) on tenant_key_hashes_pkey once the first commits. A
-- previous key keeps its hash reserved after it expired, until the tenant's next
-- rotation or revocation clears it. The trigger function runs as its owner
-- (SECURITY DEFINER, search_path pinned), so a writer needs rights on tenants only;
-- readers never read this table (015 indexes previous keys in tenants itself).
--
-- The table and its trigger come first and take SHARE ROW EXCLUSIVE on tenants
-- (writers wait, readers do not) while the backfill copies the current hashes; the
-- columns come last, so the ACCESS EXCLUSIVE lock of ADD COLUMN (metadata only, no
-- rewrite) is held for the rest of this short transaction only.

CREATE TABLE tenant_key_hashes (
    api_key_hash varchar(64) PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX tenant_key_hashes_tenant_id_idx ON tenant_key_hashes (tenant_id);

CREATE FUNCTION tenantstore_tenant_key_hashes() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    live varchar(64)[] := array_remove(
        ARRAY[NEW.api_key_hash, NEW.previous_api_key_hash]::varchar(64)[], NULL);
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- OLD.id too: an UPDATE of the id cascades to this table.
        DELETE FROM tenant_key_hashes
         WHERE tenant_id IN (OLD.id, NEW.id) AND NOT (api_key_hash = ANY (live));
    END IF;
    -- The tenant's own rows (a key that stays, or moves from current to previous)
    -- are kept; anyone else's row with one of these hashes is a unique violation.
    INSERT INTO tenant_key_hashes (api_key_hash, tenant_id)
    SELECT DISTINCT h, NEW.id FROM unnest(live) AS h
     WHERE NOT EXISTS (
        SELECT 1 FROM tenant_key_hashes k
         WHERE k.api_key_hash = h AND k.tenant_id = NEW.id);
    RETURN NULL;
END
$$;

-- Pinned search_path, as in 002: pg_catalog, this schema, pg_temp last.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION tenantstore_tenant_key_hashes() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END
$$;

-- The trigger first, then the backfill: CREATE TRIGGER's lock on tenants is held
-- until commit, so no write can slip between the copy and the trigger.
CREATE TRIGGER tenantstore_tenant_key_hashes_insert
    AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenantstore_tenant_key_hashes();

INSERT INTO tenant_key_hashes (api_key_hash, tenant_id)
SELECT api_key_hash, id FROM tenants;

ALTER TABLE tenants
    ADD COLUMN api_key_expires_at timestamptz,
    ADD COLUMN previous_api_key_hash varchar(64),
    ADD COLUMN previous_api_key_expires_at timestamptz,
    ADD COLUMN api_key_prefix varchar(8);

-- Only when a hash or the id changes (the Go service's UPDATE always sets the hash,
-- usually to itself: nothing to do then).
CREATE TRIGGER tenantstore_tenant_key_hashes_update
    AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (
        OLD.api_key_hash IS DISTINCT FROM NEW.api_key_hash
        OR OLD.previous_api_key_hash IS DISTINCT FROM NEW.previous_api_key_hash
        OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION tenantstore_tenant_key_hashes();

-- The notification of 008 names the previous key hashes too, so that a rotation or
-- a revocation evicts every key it ends in every process:
--   {"op", "id", "old", "new", "old_previous", "new_previous"}
CREATE OR REPLACE FUNCTION tenantstore_notify_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Branch on TG_OP: OLD is NULL for INSERT and NEW is NULL for DELETE.
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', NEW.id, 'old', NULL, 'new', NEW.api_key_hash,
            'old_previous', NULL, 'new_previous', NEW.previous_api_key_hash)::text);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', NEW.id, 'old', OLD.api_key_hash,
            'new', NEW.api_key_hash, 'old_previous', OLD.previous_api_key_hash,
            'new_previous', NEW.previous_api_key_hash)::text);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', OLD.id, 'old', OLD.api_key_hash, 'new', NULL,
            'old_previous', OLD.previous_api_key_hash, 'new_previous', NULL)::text);
    ELSE
        PERFORM pg_notify('tenantstore_tenants', json_build_object('op', TG_OP)::text);
    END IF;
    RETURN NULL;
END
$$;

ALTER FUNCTION tenantstore_notify_tenant_change() SET search_path = pg_catalog, pg_temp;
