-- Cross-process cache invalidation: every change to tenants notifies the channel
-- tenantstore_tenants (the contract with the cache listener) from inside the writing
-- transaction, so it is delivered on commit only, whoever the writer is (this library,
-- the Go service, psql). Payload, JSON text:
--   {"op": "INSERT"|"UPDATE"|"DELETE", "id": <uuid>, "old": <hash|null>, "new": <hash|null>}
--   {"op": "TRUNCATE"}
-- "old" and "new" are api_key_hash values (never a key), so a listener can drop the
-- cache entry of a key that just stopped being valid.

CREATE FUNCTION tenantstore_notify_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Branch on TG_OP: OLD is NULL for INSERT and NEW is NULL for DELETE.
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

CREATE TRIGGER tenantstore_tenants_notify_insert_delete
    AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenantstore_notify_tenant_change();

-- An UPDATE that changes nothing invalidates nothing.
CREATE TRIGGER tenantstore_tenants_notify_update
    AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION tenantstore_notify_tenant_change();

CREATE TRIGGER tenantstore_tenants_notify_truncate
    AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_notify_tenant_change();
