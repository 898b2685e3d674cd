-- tenantstore: no-transaction
--
-- Finds a tenant by its previous key (011): a partial index, so only the tenants in
-- a grace period are in it, and a lookup by a key that is not current probes it in
-- tenants itself (a reader needs SELECT on tenants only, as before 011; the table
-- tenant_key_hashes stays the trigger's). Built without blocking writers; after 011
-- every previous_api_key_hash is still NULL, so the build is a scan and nothing more.
-- A failed build leaves an invalid index behind: tenantstore's runner drops it before
-- it runs this file again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tenants_previous_api_key_hash_idx
    ON tenants (previous_api_key_hash) WHERE previous_api_key_hash IS NOT NULL;
