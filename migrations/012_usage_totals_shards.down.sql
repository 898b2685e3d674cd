-- Back to one totals row per (tenant, UTC day), rebuilt from the rows: records
-- pruned by prune_usage are no longer counted (their rows are gone).
LOCK TABLE usage_records IN SHARE MODE;
LOCK TABLE usage_daily_totals IN ACCESS EXCLUSIVE MODE;

DROP FUNCTION IF EXISTS tenantstore_prune_usage(timestamptz, integer);

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_add() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
BEGIN
    INSERT INTO usage_daily_totals AS t (tenant_id, day, cost_usd, records)
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
      FROM added
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (tenant_id, day) DO UPDATE
       SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
           records = t.records + EXCLUDED.records;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_remove() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
BEGIN
    UPDATE usage_daily_totals AS t
       SET cost_usd = t.cost_usd - r.cost_usd, records = t.records - r.records
      FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                   sum(cost_usd) AS cost_usd, count(*) AS records
              FROM removed
             GROUP BY 1, 2) AS r
     WHERE t.tenant_id = r.tenant_id AND t.day = r.day;
    RETURN NULL;
END
$$;

DROP FUNCTION IF EXISTS tenantstore_usage_totals_apply(
    uuid, date, text, numeric, bigint, bigint, bigint, boolean);

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
