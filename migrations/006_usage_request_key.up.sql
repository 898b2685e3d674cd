-- tenantstore: no-transaction
--
-- record() is idempotent on (tenant_id, request_id): this index is the arbiter of its
-- INSERT ... ON CONFLICT, and it refuses the second of two concurrent plain inserts
-- of one request (005's trigger skips every later one). Built without blocking
-- writers (see 004 for the marker and for what happens when the build fails).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS usage_records_tenant_request_key
    ON usage_records (tenant_id, request_id);
