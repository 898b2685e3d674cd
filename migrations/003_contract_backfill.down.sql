-- Reverses 003_contract_backfill: the columns accept NULL again, as in 001 (002's
-- triggers still fill them until 002 is rolled back), and 002's CHECKs are back as
-- 002 left them, NOT VALID. The NULLs that were filled in stay filled in: which rows
-- held them is not recorded.
ALTER TABLE usage_records
    ALTER COLUMN input_tokens DROP NOT NULL,
    ALTER COLUMN output_tokens DROP NOT NULL,
    ALTER COLUMN cost_usd DROP NOT NULL,
    ALTER COLUMN cached DROP NOT NULL,
    ALTER COLUMN latency_ms DROP NOT NULL,
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL;

ALTER TABLE tenants
    ALTER COLUMN budget_usd DROP NOT NULL,
    ALTER COLUMN rate_limit_rpm DROP NOT NULL,
    ALTER COLUMN allowed_models DROP NOT NULL,
    ALTER COLUMN fallback_providers DROP NOT NULL,
    ALTER COLUMN enabled DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL,
    ALTER COLUMN updated_at DROP NOT NULL;

ALTER TABLE usage_records DROP CONSTRAINT usage_records_cost_usd_range;

ALTER TABLE usage_records
    ADD CONSTRAINT usage_records_cost_usd_range
        CHECK (cost_usd = round(cost_usd, 10) AND abs(cost_usd) < 10000000000) NOT VALID,
    ADD CONSTRAINT usage_records_input_tokens_not_null
        CHECK (input_tokens IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_output_tokens_not_null
        CHECK (output_tokens IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_cost_usd_not_null
        CHECK (cost_usd IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_cached_not_null
        CHECK (cached IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_latency_ms_not_null
        CHECK (latency_ms IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_status_not_null
        CHECK (status IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_created_at_not_null
        CHECK (created_at IS NOT NULL) NOT VALID;

ALTER TABLE tenants
    ADD CONSTRAINT tenants_budget_usd_not_null
        CHECK (budget_usd IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_rate_limit_rpm_not_null
        CHECK (rate_limit_rpm IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_allowed_models_not_null
        CHECK (allowed_models IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_fallback_providers_not_null
        CHECK (fallback_providers IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_enabled_not_null
        CHECK (enabled IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_created_at_not_null
        CHECK (created_at IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_updated_at_not_null
        CHECK (updated_at IS NOT NULL) NOT VALID;
