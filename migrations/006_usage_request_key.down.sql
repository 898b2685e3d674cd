-- tenantstore: no-transaction
-- Reverses 006_usage_request_key.
DROP INDEX CONCURRENTLY IF EXISTS usage_records_tenant_request_key;
