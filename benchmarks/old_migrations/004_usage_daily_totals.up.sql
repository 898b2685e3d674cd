-- Budget checks without summing a month of rows on every request.
--
-- usage_daily_totals keeps, per tenant and UTC day, the exact sum of cost_usd and
-- the number of records. Statement-level triggers on usage_records maintain it in
-- the writing transaction, whoever the writer is (this library, the Go service,
-- psql), so get_tenant_total_cost reads at most one partial day of rows plus one
-- row per later day: O(days), not O(records). Sums of numeric are exact, so the
-- result is the same to the last digit as summing the rows.
--
-- The triggers see each statement's rows as a transition table and fold them by
-- (tenant, day): a bulk INSERT or COPY of a million rows touches each totals row
-- once, not a million times. Totals rows are locked in key order, so concurrent
-- multi-row writers cannot deadlock on them.

CREATE TABLE usage_daily_totals (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day date NOT NULL,
    cost_usd numeric NOT NULL DEFAULT 0,
    records bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);

CREATE FUNCTION tenantstore_usage_totals_add() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION tenantstore_usage_totals_remove() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION tenantstore_usage_totals_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
    DELETE FROM usage_daily_totals;
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_records_totals_insert
AFTER INSERT ON usage_records REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_add();

-- An UPDATE removes the old rows' amounts, then adds the new ones'.
CREATE TRIGGER usage_records_totals_update_remove
AFTER UPDATE ON usage_records REFERENCING OLD TABLE AS removed
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_remove();

CREATE TRIGGER usage_records_totals_update_add
AFTER UPDATE ON usage_records REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_add();

CREATE TRIGGER usage_records_totals_delete
AFTER DELETE ON usage_records REFERENCING OLD TABLE AS removed
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_remove();

CREATE TRIGGER usage_records_totals_truncate
AFTER TRUNCATE ON usage_records
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_totals_truncate();

-- What the Go service (or anyone) recorded before this migration.
LOCK TABLE usage_records IN SHARE MODE;
INSERT INTO usage_daily_totals (tenant_id, day, cost_usd, records)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
  FROM usage_records
 GROUP BY 1, 2;
