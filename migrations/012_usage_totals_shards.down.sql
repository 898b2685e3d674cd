-- Back to one totals row per (tenant, UTC day), rebuilt from the rows: records
-- pruned by prune_usage are no longer counted (their rows are gone). From a run of
-- 012 that stopped between its steps 1 and 6 (dirty, then forced), 009's table is
-- still exact (012 kept it) and only the shards are dropped.
LOCK TABLE usage_records IN SHARE MODE;
LOCK TABLE usage_daily_totals IN ACCESS EXCLUSIVE MODE;

DROP FUNCTION IF EXISTS tenantstore_prune_usage(timestamptz, integer);

-- 009's trigger functions, as 009 wrote them.
CREATE OR REPLACE FUNCTION tenantstore_usage_totals_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch names only the transition tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO usage_daily_totals AS t (tenant_id, day, cost_usd, records)
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
          FROM added
         GROUP BY 1, 2
         ORDER BY 1, 2
        ON CONFLICT (tenant_id, day) DO UPDATE
           SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
               records = t.records + EXCLUDED.records;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO usage_daily_totals AS t (tenant_id, day, cost_usd, records)
        SELECT tenant_id, day, sum(cost_usd), sum(records)
          FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                       cost_usd, 1 AS records
                  FROM added
                UNION ALL
                SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
                       -cost_usd, -1
                  FROM removed) AS delta
         GROUP BY 1, 2
        -- An UPDATE that changes neither day nor cost (most do) locks nothing.
        HAVING sum(cost_usd) <> 0 OR sum(records) <> 0
         ORDER BY 1, 2
        ON CONFLICT (tenant_id, day) DO UPDATE
           SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
               records = t.records + EXCLUDED.records;
    ELSE
        PERFORM 1
           FROM usage_daily_totals AS t
          WHERE (t.tenant_id, t.day) IN (
                    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date FROM removed)
          ORDER BY t.tenant_id, t.day
            FOR UPDATE;
        UPDATE usage_daily_totals AS t
           SET cost_usd = t.cost_usd - r.cost_usd, records = t.records - r.records
          FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                       sum(cost_usd) AS cost_usd, count(*) AS records
                  FROM removed
                 GROUP BY 1, 2) AS r
         WHERE t.tenant_id = r.tenant_id AND t.day = r.day;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
    DELETE FROM usage_daily_totals;
    RETURN NULL;
END
$$;

-- CREATE OR REPLACE drops a function's settings: pinned again, as in 009.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION tenantstore_usage_totals_apply() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    EXECUTE format(
        'ALTER FUNCTION tenantstore_usage_totals_truncate() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END
$$;

DROP FUNCTION IF EXISTS tenantstore_usage_totals_shard_add(
    uuid, date, text, numeric, bigint, bigint, bigint, boolean);

DO $$
BEGIN
    IF to_regclass('usage_totals_shards') IS NOT NULL THEN
        DROP TABLE usage_totals_shards;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'usage_daily_totals'::regclass
                      AND attname = 'model' AND NOT attisdropped) THEN
        RETURN;  -- 012 stopped before its step 6: 009's table is as it was
    END IF;
    DELETE FROM usage_daily_totals;
    ALTER TABLE usage_daily_totals
        DROP CONSTRAINT usage_daily_totals_pkey,
        DROP COLUMN model,
        DROP COLUMN shard,
        DROP COLUMN input_tokens,
        DROP COLUMN output_tokens,
        ADD PRIMARY KEY (tenant_id, day);
    INSERT INTO usage_daily_totals (tenant_id, day, cost_usd, records)
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
      FROM usage_records
     GROUP BY 1, 2;
END
$$;
