-- Budget checks without summing a month of rows on every request.
--
-- usage_daily_totals keeps, per tenant and UTC day, the exact sum of cost_usd and
-- the number of records. Statement-level triggers on usage_records maintain it in
-- the writing transaction, whoever the writer is (this library, the Go service,
-- psql), so get_tenant_total_cost reads at most one partial day of rows plus one
-- row per later day: O(days), not O(records). Sums of numeric are exact, so the
-- result is the same to the last digit as summing the rows.
--
-- The triggers see each statement's rows as transition tables and fold them by
-- (tenant, day): a bulk INSERT or COPY of a million rows touches each totals row
-- once, not a million times. Every writer locks the totals rows it changes in one
-- order, (tenant_id, day) ascending, and takes no totals lock after another totals
-- lock out of that order, so concurrent writers cannot deadlock on them:
--   * INSERT and UPDATE fold removed and added rows into one delta per key and apply
--     it with one INSERT ... ORDER BY key ... ON CONFLICT DO UPDATE, which locks (or
--     creates) the rows one after the other in that order. An UPDATE that moves rows
--     between two days locks both days in key order, whichever way it moves them (a
--     trigger for the old rows and another for the new ones would lock one day each,
--     in opposite orders for opposite moves, and deadlock);
--   * DELETE locks the existing rows in key order (SELECT ... ORDER BY ... FOR
--     UPDATE) and then subtracts. It never creates a row: a DELETE ... CASCADE from
--     tenants removes the tenant's totals rows too, and must not put them back.
-- The rows recorded before this migration are added up by 010.

CREATE TABLE usage_daily_totals (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day date NOT NULL,
    cost_usd numeric NOT NULL DEFAULT 0,
    records bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);

CREATE FUNCTION tenantstore_usage_totals_apply() RETURNS trigger
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

CREATE FUNCTION tenantstore_usage_totals_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
    DELETE FROM usage_daily_totals;
    RETURN NULL;
END
$$;

-- Pinned search_path, as in 002.
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

CREATE TRIGGER usage_records_totals_insert
AFTER INSERT ON usage_records REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_apply();

CREATE TRIGGER usage_records_totals_update
AFTER UPDATE ON usage_records REFERENCING OLD TABLE AS removed NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_apply();

CREATE TRIGGER usage_records_totals_delete
AFTER DELETE ON usage_records REFERENCING OLD TABLE AS removed
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_apply();

CREATE TRIGGER usage_records_totals_truncate
AFTER TRUNCATE ON usage_records
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_truncate();
