-- tenantstore: no-transaction
--
-- The second half of 002: old rows. Fills the NULLs the Go service left (the same
-- values 002's triggers give new rows: enabled NULL becomes false, fail closed), proves
-- the CHECKs 002 added, and turns them into NOT NULL, while both services keep
-- serving:
--   * the backfill walks each table by primary key in batches, each batch its own
--     transaction (row locks on one batch at a time, never a table lock);
--   * VALIDATE CONSTRAINT scans under SHARE UPDATE EXCLUSIVE, which blocks no reader
--     or writer;
--   * SET NOT NULL then needs ACCESS EXCLUSIVE only for a moment: PostgreSQL skips its
--     scan because the validated CHECKs prove there is no NULL.
-- Not in a transaction of its own (the marker above tells tenantstore's runner;
-- golang-migrate runs every file that way): one DO statement that commits between
-- steps. Every step checks what is left to do, so a run that failed half way can
-- simply run again.
DO $$
DECLARE
    lo uuid;
    hi uuid;
    fixed bigint;
    tenants_fixed bigint := 0;
    usage_fixed bigint := 0;
    tenant_batch constant int := 1000;
    usage_batch constant int := 10000;
    item record;
BEGIN
    hi := NULL;
    LOOP
        -- The next batch of ids: [lo, hi]. (uuid has no min/max aggregate.)
        IF hi IS NULL THEN
            lo := (SELECT id FROM tenants ORDER BY id LIMIT 1);
        ELSE
            lo := (SELECT id FROM tenants WHERE id > hi ORDER BY id LIMIT 1);
        END IF;
        EXIT WHEN lo IS NULL;
        hi := coalesce(
            (SELECT id FROM tenants WHERE id >= lo ORDER BY id OFFSET tenant_batch - 1 LIMIT 1),
            (SELECT id FROM tenants ORDER BY id DESC LIMIT 1));
        UPDATE tenants
           SET budget_usd = coalesce(budget_usd, 0),
               rate_limit_rpm = coalesce(rate_limit_rpm, 60),
               allowed_models = tenantstore_text_list(allowed_models),
               fallback_providers = tenantstore_text_list(fallback_providers),
               enabled = coalesce(enabled, false),
               created_at = coalesce(created_at, now()),
               -- A repaired row changed: 002's trigger moves updated_at forward,
               -- so an optimistic update that read it before fails and reads again.
               updated_at = coalesce(updated_at, created_at, now())
         WHERE id BETWEEN lo AND hi
           AND (budget_usd IS NULL OR rate_limit_rpm IS NULL
                OR allowed_models IS DISTINCT FROM tenantstore_text_list(allowed_models)
                OR fallback_providers IS DISTINCT FROM tenantstore_text_list(fallback_providers)
                OR enabled IS NULL OR created_at IS NULL OR updated_at IS NULL);
        GET DIAGNOSTICS fixed = ROW_COUNT;
        tenants_fixed := tenants_fixed + fixed;
        COMMIT;
    END LOOP;

    hi := NULL;
    LOOP
        -- The next batch of ids: [lo, hi]. (uuid has no min/max aggregate.)
        IF hi IS NULL THEN
            lo := (SELECT id FROM usage_records ORDER BY id LIMIT 1);
        ELSE
            lo := (SELECT id FROM usage_records WHERE id > hi ORDER BY id LIMIT 1);
        END IF;
        EXIT WHEN lo IS NULL;
        hi := coalesce(
            (SELECT id FROM usage_records WHERE id >= lo ORDER BY id OFFSET usage_batch - 1 LIMIT 1),
            (SELECT id FROM usage_records ORDER BY id DESC LIMIT 1));
        UPDATE usage_records
           SET input_tokens = coalesce(input_tokens, 0),
               output_tokens = coalesce(output_tokens, 0),
               cost_usd = coalesce(cost_usd, 0),
               cached = coalesce(cached, false),
               latency_ms = coalesce(latency_ms, 0),
               status = coalesce(status, 'success'),
               created_at = coalesce(created_at, now())
         WHERE id BETWEEN lo AND hi
           AND (input_tokens IS NULL OR output_tokens IS NULL OR cost_usd IS NULL
                OR cached IS NULL OR latency_ms IS NULL OR status IS NULL
                OR created_at IS NULL);
        GET DIAGNOSTICS fixed = ROW_COUNT;
        usage_fixed := usage_fixed + fixed;
        COMMIT;
    END LOOP;
    RAISE NOTICE 'backfilled NULLs in % tenants row(s) and % usage_records row(s)',
        tenants_fixed, usage_fixed;

    -- Prove every CHECK 002 added, one at a time, each in its own transaction.
    FOR item IN
        SELECT c.conrelid::regclass AS tab, c.conname
          FROM pg_constraint AS c
         WHERE c.conrelid IN ('tenants'::regclass, 'usage_records'::regclass)
           AND c.contype = 'c' AND NOT c.convalidated
           AND (c.conname LIKE '%\_not\_null' OR c.conname = 'usage_records_cost_usd_range')
         ORDER BY c.conname
    LOOP
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', item.tab, item.conname);
        COMMIT;
    END LOOP;

    -- NOT NULL, proven by the CHECKs (no scan), then the CHECKs go: NOT NULL says it.
    -- Two statements: in one ALTER TABLE, PostgreSQL drops the constraints before
    -- it sets NOT NULL, and then scans the whole table under ACCESS EXCLUSIVE.
    ALTER TABLE usage_records
        ALTER COLUMN input_tokens SET NOT NULL,
        ALTER COLUMN output_tokens SET NOT NULL,
        ALTER COLUMN cost_usd SET NOT NULL,
        ALTER COLUMN cached SET NOT NULL,
        ALTER COLUMN latency_ms SET NOT NULL,
        ALTER COLUMN status SET NOT NULL,
        ALTER COLUMN created_at SET NOT NULL;
    ALTER TABLE usage_records
        DROP CONSTRAINT IF EXISTS usage_records_input_tokens_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_output_tokens_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_cost_usd_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_cached_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_latency_ms_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_status_not_null,
        DROP CONSTRAINT IF EXISTS usage_records_created_at_not_null;
    COMMIT;
    ALTER TABLE tenants
        ALTER COLUMN budget_usd SET NOT NULL,
        ALTER COLUMN rate_limit_rpm SET NOT NULL,
        ALTER COLUMN allowed_models SET NOT NULL,
        ALTER COLUMN fallback_providers SET NOT NULL,
        ALTER COLUMN enabled SET NOT NULL,
        ALTER COLUMN created_at SET NOT NULL,
        ALTER COLUMN updated_at SET NOT NULL;
    ALTER TABLE tenants
        DROP CONSTRAINT IF EXISTS tenants_budget_usd_not_null,
        DROP CONSTRAINT IF EXISTS tenants_rate_limit_rpm_not_null,
        DROP CONSTRAINT IF EXISTS tenants_allowed_models_not_null,
        DROP CONSTRAINT IF EXISTS tenants_fallback_providers_not_null,
        DROP CONSTRAINT IF EXISTS tenants_enabled_not_null,
        DROP CONSTRAINT IF EXISTS tenants_created_at_not_null,
        DROP CONSTRAINT IF EXISTS tenants_updated_at_not_null;
END
$$;
