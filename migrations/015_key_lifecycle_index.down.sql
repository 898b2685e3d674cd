-- tenantstore: no-transaction
-- Reverses 015_key_lifecycle_index.
DROP INDEX CONCURRENTLY IF EXISTS tenants_previous_api_key_hash_idx;
