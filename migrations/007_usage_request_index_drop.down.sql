-- tenantstore: no-transaction
-- Reverses 007_usage_request_index_drop: 004's index again, for 005 and 006's downs.
CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_records_tenant_request_idx
    ON usage_records (tenant_id, request_id);
