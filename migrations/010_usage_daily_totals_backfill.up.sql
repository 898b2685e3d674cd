-- tenantstore: no-transaction
--
-- The daily totals of the rows recorded before 009, added up without stopping the
-- writers (the former way, LOCK usage_records IN SHARE MODE and one aggregation,
-- stopped every insert for as long as it took).
--
-- 009's triggers already count every row written since. For each (tenant, day) that
-- has rows now, in batches, each batch its own transaction:
--   1. lock the batch's tenants (FOR KEY SHARE, id order): a tenant deleted before is
--      skipped, one deleted after waits for the batch;
--   2. create its missing totals rows and lock all of them, one after the other in
--      key order (INSERT ... ORDER BY ... ON CONFLICT DO UPDATE), the order the
--      triggers lock in, so a writer and a batch cannot deadlock;
--   3. overwrite each with the sum over its rows, read by a new statement, so with a
--      snapshot taken after the locks.
-- Exact, with writers running: a write whose trigger ran before step 2 has committed
-- (step 2 waited for its lock), so step 3 counts its rows and drops its delta; a
-- write whose trigger runs after waits for this batch to commit and then adds its
-- delta to the exact sum, its rows not counted in step 3 (not committed then).
-- Writers wait only on the pairs of the batch in progress. One DO statement outside
-- a transaction of its own (see 003); safe to run again (step 3 overwrites).
DO $$
DECLARE
    batch constant int := 200;
    done bigint := 0;
    total bigint;
BEGIN
    IF to_regclass('pg_temp.tenantstore_days') IS NOT NULL THEN
        DROP TABLE pg_temp.tenantstore_days;  -- from a run of this file that failed
    END IF;
    CREATE TEMP TABLE tenantstore_days AS
        SELECT row_number() OVER (ORDER BY tenant_id, day) AS n, tenant_id, day
          FROM (SELECT DISTINCT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day
                  FROM usage_records) AS d;
    CREATE INDEX ON tenantstore_days (n);
    SELECT count(*) INTO total FROM tenantstore_days;
    COMMIT;

    WHILE done < total LOOP
        PERFORM 1 FROM tenants
         WHERE id IN (SELECT tenant_id FROM tenantstore_days
                       WHERE n > done AND n <= done + batch)
         ORDER BY id
           FOR KEY SHARE;
        INSERT INTO usage_daily_totals AS t (tenant_id, day)
        SELECT d.tenant_id, d.day
          FROM tenantstore_days AS d
          JOIN tenants ON tenants.id = d.tenant_id
         WHERE d.n > done AND d.n <= done + batch
         ORDER BY d.tenant_id, d.day
        ON CONFLICT (tenant_id, day) DO UPDATE SET records = t.records;
        UPDATE usage_daily_totals AS t
           SET cost_usd = s.cost_usd, records = s.records
          FROM tenantstore_days AS d
          CROSS JOIN LATERAL (
                SELECT coalesce(sum(u.cost_usd), 0) AS cost_usd, count(*) AS records
                  FROM usage_records AS u
                 WHERE u.tenant_id = d.tenant_id
                   AND u.created_at >= d.day::timestamp AT TIME ZONE 'UTC'
                   AND u.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC') AS s
         WHERE d.n > done AND d.n <= done + batch
           AND t.tenant_id = d.tenant_id AND t.day = d.day;
        done := done + batch;
        COMMIT;
    END LOOP;
    DROP TABLE pg_temp.tenantstore_days;
END
$$;
