-- Reverses 011_key_lifecycle: 008's notification, no key lifecycle columns, no
-- table of key hashes (the UNIQUE constraint of 001 still covers current keys).
CREATE OR REPLACE FUNCTION tenantstore_notify_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', NEW.id, 'old', NULL, 'new', NEW.api_key_hash)::text);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', NEW.id, 'old', OLD.api_key_hash,
            'new', NEW.api_key_hash)::text);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantstore_tenants', json_build_object(
            'op', TG_OP, 'id', OLD.id, 'old', OLD.api_key_hash, 'new', NULL)::text);
    ELSE
        PERFORM pg_notify('tenantstore_tenants', json_build_object('op', TG_OP)::text);
    END IF;
    RETURN NULL;
END
$$;

ALTER FUNCTION tenantstore_notify_tenant_change() SET search_path = pg_catalog, pg_temp;

DROP TRIGGER tenantstore_tenant_key_hashes_update ON tenants;
DROP TRIGGER tenantstore_tenant_key_hashes_insert ON tenants;
ALTER TABLE tenants
    DROP COLUMN api_key_prefix,
    DROP COLUMN previous_api_key_expires_at,
    DROP COLUMN previous_api_key_hash,
    DROP COLUMN api_key_expires_at;
DROP FUNCTION tenantstore_tenant_key_hashes();
DROP TABLE tenant_key_hashes;
