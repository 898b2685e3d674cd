-- Budget checks without summing a month of rows on every request.
--
-- usage_daily_totals keeps, per tenant and UTC day, the exact sum of cost_usd and
-- the number of records. A trigger on usage_records maintains it in the writing
-- transaction, whoever the writer is (this library, the Go service, psql), so
-- get_tenant_total_cost reads at most one partial day of rows plus one row per
-- later day: O(days), not O(records). Sums of numeric are exact, so the result is
-- the same to the last digit as summing the rows.

CREATE TABLE usage_daily_totals (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day date NOT NULL,
    cost_usd numeric NOT NULL DEFAULT 0,
    records bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);

CREATE FUNCTION tenantstore_usage_daily_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
        DELETE FROM usage_daily_totals;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE usage_daily_totals
           SET cost_usd = cost_usd - OLD.cost_usd, records = records - 1
         WHERE tenant_id = OLD.tenant_id
           AND day = (OLD.created_at AT TIME ZONE 'UTC')::date;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO usage_daily_totals AS t (tenant_id, day, cost_usd, records)
        VALUES (NEW.tenant_id, (NEW.created_at AT TIME ZONE 'UTC')::date,
                NEW.cost_usd, 1)
        ON CONFLICT (tenant_id, day) DO UPDATE
           SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
               records = t.records + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_records_daily_totals
AFTER INSERT OR DELETE OR UPDATE OF tenant_id, cost_usd, created_at ON usage_records
FOR EACH ROW EXECUTE FUNCTION tenantstore_usage_daily_totals();

CREATE TRIGGER usage_records_daily_totals_truncate
AFTER TRUNCATE ON usage_records
FOR EACH STATEMENT EXECUTE FUNCTION tenantstore_usage_daily_totals();

-- What the Go service (or anyone) recorded before this migration.
LOCK TABLE usage_records IN SHARE MODE;
INSERT INTO usage_daily_totals (tenant_id, day, cost_usd, records)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
  FROM usage_records
 GROUP BY 1, 2;
