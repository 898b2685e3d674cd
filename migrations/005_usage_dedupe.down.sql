-- Reverses 005_usage_dedupe: repeated inserts are stored again, and the duplicates
-- move back into usage_records (in one transaction: nothing is lost either way).
DROP TRIGGER tenantstore_usage_skip_repeat ON usage_records;
DROP FUNCTION tenantstore_usage_skip_repeat();

DO $$
DECLARE
    restored bigint;
BEGIN
    WITH taken AS (
        DELETE FROM usage_records_duplicates
        RETURNING id, tenant_id, request_id, model, provider, input_tokens,
                  output_tokens, cost_usd, cached, latency_ms, status, created_at
    )
    INSERT INTO usage_records
        (id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
         cost_usd, cached, latency_ms, status, created_at)
    SELECT id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
           cost_usd, cached, latency_ms, status, created_at
      FROM taken;
    GET DIAGNOSTICS restored = ROW_COUNT;
    RAISE NOTICE 'moved % row(s) from usage_records_duplicates back to usage_records', restored;
END
$$;
