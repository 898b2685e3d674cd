-- Reverses 002_contract as far as it can be reversed. Duplicates move back into
-- usage_records. What cannot come back: the NULLs that were backfilled and the NULL
-- array elements that were removed. Costs are rounded to 6 places again (the original
-- decimal(10,6)); a cost of 10000 or more cannot fit, and then this file fails and
-- changes nothing.

LOCK TABLE usage_records, tenants IN ACCESS EXCLUSIVE MODE;

DROP INDEX usage_records_tenant_request_key;

DO $$
DECLARE
    restored bigint;
BEGIN
    INSERT INTO usage_records
        (id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
         cost_usd, cached, latency_ms, status, created_at)
    SELECT id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
           cost_usd, cached, latency_ms, status, created_at
    FROM usage_records_duplicates;
    GET DIAGNOSTICS restored = ROW_COUNT;
    RAISE NOTICE 'moved % row(s) from usage_records_duplicates back to usage_records', restored;
END
$$;

DROP TABLE usage_records_duplicates;

ALTER TABLE usage_records
    ALTER COLUMN cost_usd TYPE decimal(10, 6),
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
