-- tenantstore: no-transaction
--
-- A plain index on (tenant_id, request_id), built without blocking writers, for 005:
-- its trigger looks a request up on every insert, and its batches find the requests
-- stored twice. It cannot be the unique index yet (the Go service stored duplicates);
-- 006 builds that one and 007 drops this one.
-- CREATE INDEX CONCURRENTLY cannot run in a transaction, hence the marker (see the
-- README: golang-migrate runs every file as one statement outside a transaction of
-- its own). A failed build leaves an invalid index behind: tenantstore's runner drops
-- it before it runs this file again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_records_tenant_request_idx
    ON usage_records (tenant_id, request_id);
