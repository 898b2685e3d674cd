-- Reverses 002_contract. Costs go back to decimal(10,6) (the original column): that
-- rounds them to 6 places and rewrites usage_records; a cost of 10000 or more cannot
-- fit, and then this file fails and changes nothing. What 002 coerced on the way in
-- (NULLs written as defaults, enabled NULL as false) stays as written.

DROP TABLE usage_records_duplicates;

ALTER TABLE tenants
    DROP CONSTRAINT tenants_budget_usd_not_null,
    DROP CONSTRAINT tenants_rate_limit_rpm_not_null,
    DROP CONSTRAINT tenants_allowed_models_not_null,
    DROP CONSTRAINT tenants_fallback_providers_not_null,
    DROP CONSTRAINT tenants_enabled_not_null,
    DROP CONSTRAINT tenants_created_at_not_null,
    DROP CONSTRAINT tenants_updated_at_not_null;

ALTER TABLE usage_records
    DROP CONSTRAINT usage_records_cost_usd_range,
    DROP CONSTRAINT usage_records_input_tokens_not_null,
    DROP CONSTRAINT usage_records_output_tokens_not_null,
    DROP CONSTRAINT usage_records_cost_usd_not_null,
    DROP CONSTRAINT usage_records_cached_not_null,
    DROP CONSTRAINT usage_records_latency_ms_not_null,
    DROP CONSTRAINT usage_records_status_not_null,
    DROP CONSTRAINT usage_records_created_at_not_null,
    ALTER COLUMN cost_usd TYPE decimal(10, 6);

DROP TRIGGER tenantstore_tenants_before_write ON tenants;
DROP TRIGGER tenantstore_usage_before_write ON usage_records;
DROP FUNCTION tenantstore_tenants_before_write();
DROP FUNCTION tenantstore_usage_before_write();
DROP FUNCTION tenantstore_text_list(text[]);
