DROP TRIGGER IF EXISTS usage_records_daily_totals_truncate ON usage_records;
DROP TRIGGER IF EXISTS usage_records_daily_totals ON usage_records;
DROP FUNCTION IF EXISTS tenantstore_usage_daily_totals();
DROP TABLE IF EXISTS usage_daily_totals;
