-- tenantstore: no-transaction
-- Reverses 004_usage_request_index.
DROP INDEX CONCURRENTLY IF EXISTS usage_records_tenant_request_idx;
