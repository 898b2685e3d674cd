-- Reverses 009_usage_daily_totals.
DROP TRIGGER IF EXISTS usage_records_totals_truncate ON usage_records;
DROP TRIGGER IF EXISTS usage_records_totals_delete ON usage_records;
DROP TRIGGER IF EXISTS usage_records_totals_update ON usage_records;
DROP TRIGGER IF EXISTS usage_records_totals_insert ON usage_records;
DROP FUNCTION IF EXISTS tenantstore_usage_totals_truncate();
DROP FUNCTION IF EXISTS tenantstore_usage_totals_apply();
DROP TABLE IF EXISTS usage_daily_totals;
