-- tenantstore: no-transaction
--
-- A request is stored once per (tenant_id, request_id), whoever records it.
--
-- The Go service retries a request with a plain INSERT (no ON CONFLICT). From now
-- on a BEFORE INSERT trigger skips a row whose (tenant_id, request_id) is already
-- stored: the statement succeeds and reports 0 rows, as our INSERT ... ON CONFLICT
-- DO NOTHING does. Two inserts of one request in flight at the same time both pass
-- the trigger, and the unique index 006 builds refuses the second.
--
-- Then the requests the Go service stored more than once before: the first of each
-- (earliest created_at, then id) stays, every other one moves to
-- usage_records_duplicates (002), in batches, each its own transaction. A batch locks
-- its tenants (FOR KEY SHARE, in id order) before its rows, the order a tenant's
-- DELETE ... CASCADE takes them, so the two cannot deadlock.
--
-- One DO statement, outside a transaction of its own (see 003); safe to run again.
DO $do$
DECLARE
    batch constant int := 1000;
    done bigint := 0;
    total bigint;
    moved bigint;
    moved_all bigint := 0;
BEGIN
    CREATE OR REPLACE FUNCTION tenantstore_usage_skip_repeat() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        IF EXISTS (SELECT 1 FROM usage_records
                    WHERE tenant_id = NEW.tenant_id AND request_id = NEW.request_id) THEN
            RETURN NULL;  -- skipped: no row, no error
        END IF;
        RETURN NEW;
    END
    $fn$;
    -- Pinned search_path, as in 002.
    EXECUTE format(
        'ALTER FUNCTION tenantstore_usage_skip_repeat() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    -- Dropped and created again (in one transaction) when this file runs again.
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tenantstore_usage_skip_repeat'
                AND tgrelid = 'usage_records'::regclass) THEN
        DROP TRIGGER tenantstore_usage_skip_repeat ON usage_records;
    END IF;
    CREATE TRIGGER tenantstore_usage_skip_repeat
        BEFORE INSERT ON usage_records
        FOR EACH ROW EXECUTE FUNCTION tenantstore_usage_skip_repeat();
    COMMIT;

    -- No duplicate can be added from here on (but for the concurrent case above), so
    -- the list of repeated requests only shrinks.
    IF to_regclass('pg_temp.tenantstore_repeats') IS NOT NULL THEN
        DROP TABLE pg_temp.tenantstore_repeats;  -- from a run of this file that failed
    END IF;
    CREATE TEMP TABLE tenantstore_repeats AS
        SELECT row_number() OVER (ORDER BY tenant_id, request_id) AS n,
               tenant_id, request_id
          FROM usage_records
         GROUP BY tenant_id, request_id
        HAVING count(*) > 1;
    CREATE INDEX ON tenantstore_repeats (n);
    SELECT count(*) INTO total FROM tenantstore_repeats;
    COMMIT;

    WHILE done < total LOOP
        PERFORM 1 FROM tenants
         WHERE id IN (SELECT tenant_id FROM tenantstore_repeats
                       WHERE n > done AND n <= done + batch)
         ORDER BY id
           FOR KEY SHARE;
        WITH ranked AS (
            SELECT u.id,
                   row_number() OVER (
                       PARTITION BY u.tenant_id, u.request_id ORDER BY u.created_at, u.id
                   ) AS position
              FROM usage_records AS u
              JOIN tenantstore_repeats AS r
                ON r.tenant_id = u.tenant_id AND r.request_id = u.request_id
             WHERE r.n > done AND r.n <= done + batch
        ),
        taken AS (
            DELETE FROM usage_records AS u
             USING ranked AS r
             WHERE u.id = r.id AND r.position > 1
            RETURNING u.id, u.tenant_id, u.request_id, u.model, u.provider,
                      u.input_tokens, u.output_tokens, u.cost_usd, u.cached,
                      u.latency_ms, u.status, u.created_at
        )
        INSERT INTO usage_records_duplicates
            (id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
             cost_usd, cached, latency_ms, status, created_at)
        SELECT id, tenant_id, request_id, model, provider, input_tokens, output_tokens,
               cost_usd, cached, latency_ms, status, created_at
          FROM taken;
        GET DIAGNOSTICS moved = ROW_COUNT;
        moved_all := moved_all + moved;
        done := done + batch;
        COMMIT;
    END LOOP;
    DROP TABLE pg_temp.tenantstore_repeats;
    RAISE NOTICE 'moved % duplicate usage_records row(s) (same tenant_id and request_id) to usage_records_duplicates', moved_all;
END
$do$;
