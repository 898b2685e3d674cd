-- tenantstore: no-transaction
-- The unique index (006) answers every lookup 004's index was built for.
DROP INDEX CONCURRENTLY IF EXISTS usage_records_tenant_request_idx;
