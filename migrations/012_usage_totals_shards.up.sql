-- tenantstore: no-transaction
--
-- No hot row: usage_daily_totals by (tenant, UTC day, model), in shards.
--
-- Before this, every insert upserted the one totals row of its tenant and day and
-- held its lock until commit, so every writer of one tenant waited for the commit
-- of the one before (a commit on a networked disk takes milliseconds: one busy
-- tenant was capped at a few hundred records per second, whatever the number of
-- gateway processes). Now each (tenant_id, day, model) has up to 64 shard rows,
-- summed on read. A writing transaction adds its amounts to the first shard no
-- other transaction holds (FOR UPDATE SKIP LOCKED: it never waits for a row
-- lock, and the row it holds already is its own), and adds a shard when all are
-- held, at a slot chosen by its backend's pid; so concurrent writers for one
-- tenant take a row each and commit in parallel, and there are never more
-- shards than writers at once. Totals keep the number of records and the input
-- and output tokens as well as the cost, which get_tenant_usage_summary reads
-- without summing rows.
--
-- The statement-level triggers of 009 keep the totals right for every writer
-- (this library, the Go service, psql, COPY): their function is replaced here,
-- with the same name, so the triggers stay as they are. Each statement's rows
-- are folded by (tenant, day, model) and applied in that key order. An insert
-- (the common case) updates a free shard in one statement, inline; the shard
-- function is called only when there is none to take.
--
-- prune_usage deletes old rows through tenantstore_prune_usage, which marks its
-- transaction (the setting tenantstore.pruning) so that the delete trigger leaves
-- the totals alone: budgets and summaries keep counting pruned records.
--
-- Online, while the gateway (this library's previous release, the Go service)
-- writes: not in a transaction of its own (the marker above), one DO statement
-- that commits between steps, each step safe to run again (a run that failed, or
-- was retried after its lock_timeout, starts over and finds what is done):
--   1. switch: under a SHARE ROW EXCLUSIVE lock of usage_records for a moment
--      (it waits for the writers in progress, up to lock_timeout, and holds the
--      next ones back until it commits), create the sharded table under a name
--      of its own, usage_totals_shards, and make the trigger function write both
--      it and 009's usage_daily_totals (which the serving code still reads, so
--      budgets stay exact throughout). From then on every write adds its delta to
--      the shards; every write before has committed.
--   2. list the (tenant, day, model) groups of the rows, and of the shards;
--   3. give each group a shard row (zeros), in batches: a removal finds a shard
--      to subtract from only when its group has one, and drops its delta
--      otherwise (it never creates a row: a tenant being deleted gets none back);
--   4. wait until every transaction that began before step 3 ended had ended
--      (each may have dropped a removal's delta before its group had a row,
--      and seen only later in step 5's snapshot): from here on none is dropped;
--   5. in batches, for each group, add (sum over its rows) - (sum over its
--      shards), both read by one statement, so in one snapshot, to its shard 0.
--      Exact, with writers running: in that snapshot the rows are the rows of
--      before step 1 plus the changes committed since, and the shards hold the
--      deltas of exactly those changes, so the difference is what the rows of
--      before step 1 (and any delta dropped before step 4) left out; a change
--      not in the snapshot adds its own delta, and additions commute. Run again,
--      it adds zero. Writers never wait for a batch (they skip a held shard);
--      a removal whose group has its only shard held waits for the batch.
--   6. in one short transaction, under the same lock as step 1: drop 009's
--      table, give the shards its name, and replace the trigger function by the
--      one that writes the shards only.
DO $migration$
DECLARE
    batch constant int := 500;
    schema_name constant text := quote_ident(current_schema());
    done bigint;
    total bigint;
    started timestamptz;
    patience interval;
    -- The shard function; @totals@ is the sharded table's name.
    shard_add_sql constant text := $sql$
CREATE OR REPLACE FUNCTION tenantstore_usage_totals_shard_add(
    p_tenant uuid, p_day date, p_model text, p_cost numeric, p_records bigint,
    p_input bigint, p_output bigint, may_add_shard boolean
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
-- Add (or, with negative amounts, subtract) one group's amounts to a shard.
-- `may_add_shard` false (removals): never create a row, so a tenant being
-- deleted (its totals cascade away) gets none back; wait for a held shard instead.
DECLARE
    slot smallint;
    tries integer;
BEGIN
    -- One statement: the first shard no other transaction holds, updated.
    UPDATE @totals@ AS t
       SET cost_usd = t.cost_usd + p_cost, records = t.records + p_records,
           input_tokens = t.input_tokens + p_input,
           output_tokens = t.output_tokens + p_output
     WHERE (t.tenant_id, t.day, t.model, t.shard) = (
           SELECT tenant_id, day, model, shard FROM @totals@
            WHERE tenant_id = p_tenant AND day = p_day AND model = p_model
            ORDER BY shard
            LIMIT 1
              FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        RETURN;
    END IF;
    IF NOT may_add_shard THEN
        -- Every shard is held by another writer (or there is none): wait for
        -- the first one.
        UPDATE @totals@ AS t
           SET cost_usd = t.cost_usd + p_cost, records = t.records + p_records,
               input_tokens = t.input_tokens + p_input,
               output_tokens = t.output_tokens + p_output
         WHERE (t.tenant_id, t.day, t.model, t.shard) = (
               SELECT tenant_id, day, model, shard FROM @totals@
                WHERE tenant_id = p_tenant AND day = p_day AND model = p_model
                ORDER BY shard LIMIT 1);
        RETURN;
    END IF;
    -- A new shard, at a slot of this backend's own (its pid's), or the next
    -- one free: writers that begin a group together (a tenant's first
    -- records of a day or model) each add their own instead of waiting.
    slot := (pg_backend_pid() % 64)::smallint;
    FOR tries IN 1..64 LOOP
        EXIT WHEN NOT EXISTS (
            SELECT 1 FROM @totals@
             WHERE tenant_id = p_tenant AND day = p_day AND model = p_model
               AND shard = slot);
        slot := ((slot + 1) % 64)::smallint;
    END LOOP;
    -- (All 64 taken: past 64 writers at once on one group, they share.)
    -- Another writer may be adding the same slot (not yet visible): the
    -- conflict makes this one wait for it, once, and then add to it.
    INSERT INTO @totals@ AS t
           (tenant_id, day, model, shard, cost_usd, records, input_tokens,
            output_tokens)
    VALUES (p_tenant, p_day, p_model, slot, p_cost, p_records, p_input, p_output)
    ON CONFLICT (tenant_id, day, model, shard) DO UPDATE
       SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
           records = t.records + EXCLUDED.records,
           input_tokens = t.input_tokens + EXCLUDED.input_tokens,
           output_tokens = t.output_tokens + EXCLUDED.output_tokens;
END
$fn$
$sql$;
    -- 009's trigger function, now by (tenant, day, model) and through the shards:
    -- each statement's added and removed rows are folded into one delta per key
    -- and applied in key order (an UPDATE that moves rows between days locks both
    -- in that order, whichever way it moves them). A positive delta may add a
    -- shard; a negative one (rows removed) never creates a row. @009 ...@ is
    -- where, between steps 1 and 6, 009's own statements keep its table.
    apply_sql constant text := $sql$
CREATE OR REPLACE FUNCTION tenantstore_usage_totals_apply() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    g record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- prune_usage's deletes: the totals go on counting what it removes.
        IF current_setting('tenantstore.pruning', true) IS NOT DISTINCT FROM 'on' THEN
            RETURN NULL;
        END IF;
        @009 delete@
        FOR g IN
            SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model,
                   -sum(cost_usd) AS cost_usd, -count(*) AS records,
                   -sum(input_tokens)::bigint AS input_tokens,
                   -sum(output_tokens)::bigint AS output_tokens
              FROM removed
             GROUP BY 1, 2, 3
             ORDER BY 1, 2, 3
        LOOP
            PERFORM tenantstore_usage_totals_shard_add(
                g.tenant_id, g.day, g.model, g.cost_usd, g.records, g.input_tokens,
                g.output_tokens, false);
        END LOOP;
    ELSIF TG_OP = 'INSERT' THEN
        @009 insert@
        FOR g IN
            SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model,
                   sum(cost_usd) AS cost_usd, count(*) AS records,
                   sum(input_tokens)::bigint AS input_tokens,
                   sum(output_tokens)::bigint AS output_tokens
              FROM added
             GROUP BY 1, 2, 3
             ORDER BY 1, 2, 3
        LOOP
            -- The common case inline (a call per group costs as much again): the
            -- first shard that no other transaction holds, updated.
            UPDATE @totals@ AS t
               SET cost_usd = t.cost_usd + g.cost_usd,
                   records = t.records + g.records,
                   input_tokens = t.input_tokens + g.input_tokens,
                   output_tokens = t.output_tokens + g.output_tokens
             WHERE (t.tenant_id, t.day, t.model, t.shard) = (
                   SELECT tenant_id, day, model, shard FROM @totals@
                    WHERE tenant_id = g.tenant_id AND day = g.day
                      AND model = g.model
                    ORDER BY shard
                    LIMIT 1
                      FOR UPDATE SKIP LOCKED);
            IF NOT FOUND THEN  -- none, or all held: add one
                PERFORM tenantstore_usage_totals_shard_add(
                    g.tenant_id, g.day, g.model, g.cost_usd, g.records,
                    g.input_tokens, g.output_tokens, true);
            END IF;
        END LOOP;
    ELSE
        @009 update@
        FOR g IN
            SELECT tenant_id, day, model, sum(cost_usd) AS cost_usd,
                   sum(records) AS records, sum(input_tokens) AS input_tokens,
                   sum(output_tokens) AS output_tokens
              FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                           model, cost_usd, 1::bigint AS records,
                           input_tokens::bigint, output_tokens::bigint
                      FROM added
                    UNION ALL
                    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model,
                           -cost_usd, -1, -input_tokens::bigint, -output_tokens::bigint
                      FROM removed) AS delta
             GROUP BY 1, 2, 3
            -- An UPDATE that changes no amount, day or model (most do) locks nothing.
            HAVING sum(cost_usd) <> 0 OR sum(records) <> 0
                OR sum(input_tokens) <> 0 OR sum(output_tokens) <> 0
             ORDER BY 1, 2, 3
        LOOP
            PERFORM tenantstore_usage_totals_shard_add(
                g.tenant_id, g.day, g.model, g.cost_usd, g.records::bigint,
                g.input_tokens::bigint, g.output_tokens::bigint, g.records >= 0);
        END LOOP;
    END IF;
    RETURN NULL;
END
$fn$
$sql$;
    -- 009's statements (its table: usage_daily_totals), kept between steps 1 and 6.
    old_insert constant text := $sql$
        INSERT INTO usage_daily_totals AS o (tenant_id, day, cost_usd, records)
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd), count(*)
          FROM added
         GROUP BY 1, 2
         ORDER BY 1, 2
        ON CONFLICT (tenant_id, day) DO UPDATE
           SET cost_usd = o.cost_usd + EXCLUDED.cost_usd,
               records = o.records + EXCLUDED.records;
$sql$;
    old_update constant text := $sql$
        INSERT INTO usage_daily_totals AS o (tenant_id, day, cost_usd, records)
        SELECT tenant_id, day, sum(cost_usd), sum(records)
          FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                       cost_usd, 1 AS records
                  FROM added
                UNION ALL
                SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date,
                       -cost_usd, -1
                  FROM removed) AS delta
         GROUP BY 1, 2
        HAVING sum(cost_usd) <> 0 OR sum(records) <> 0
         ORDER BY 1, 2
        ON CONFLICT (tenant_id, day) DO UPDATE
           SET cost_usd = o.cost_usd + EXCLUDED.cost_usd,
               records = o.records + EXCLUDED.records;
$sql$;
    old_delete constant text := $sql$
        PERFORM 1
           FROM usage_daily_totals AS o
          WHERE (o.tenant_id, o.day) IN (
                    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date FROM removed)
          ORDER BY o.tenant_id, o.day
            FOR UPDATE;
        UPDATE usage_daily_totals AS o
           SET cost_usd = o.cost_usd - r.cost_usd, records = o.records - r.records
          FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                       sum(cost_usd) AS cost_usd, count(*) AS records
                  FROM removed
                 GROUP BY 1, 2) AS r
         WHERE o.tenant_id = r.tenant_id AND o.day = r.day;
$sql$;
    truncate_sql constant text := $sql$
CREATE OR REPLACE FUNCTION tenantstore_usage_totals_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
    @also@
    DELETE FROM usage_daily_totals;
    RETURN NULL;
END
$fn$
$sql$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = 'usage_daily_totals'::regclass
                  AND attname = 'model' AND NOT attisdropped) THEN
        RETURN;  -- step 6 is done: so is everything
    END IF;

    -- 1. The switch (once: a run that failed after it finds the table).
    IF to_regclass('usage_totals_shards') IS NULL THEN
        LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;
        CREATE TABLE usage_totals_shards (
            tenant_id uuid NOT NULL,
            day date NOT NULL,
            cost_usd numeric NOT NULL DEFAULT 0,
            records bigint NOT NULL DEFAULT 0,
            model varchar(255) NOT NULL,
            shard smallint NOT NULL,
            input_tokens bigint NOT NULL DEFAULT 0,
            output_tokens bigint NOT NULL DEFAULT 0,
            -- 009's table's names: this table takes its place in step 6.
            CONSTRAINT usage_daily_totals_tenant_id_fkey FOREIGN KEY (tenant_id)
                REFERENCES tenants (id) ON DELETE CASCADE,
            CONSTRAINT usage_totals_shards_pkey
                PRIMARY KEY (tenant_id, day, model, shard)
        );
        EXECUTE replace(replace(shard_add_sql, '@totals@', 'usage_totals_shards'),
                        '@schema@', schema_name);
        EXECUTE replace(replace(replace(replace(replace(apply_sql,
                    '@totals@', 'usage_totals_shards'), '@schema@', schema_name),
                    '@009 insert@', old_insert), '@009 update@', old_update),
                    '@009 delete@', old_delete);
        EXECUTE replace(replace(truncate_sql, '@schema@', schema_name),
                        '@also@', 'DELETE FROM usage_totals_shards;');
        COMMIT;
    END IF;

    -- 2. The groups: of the rows, and of the shards (a group whose rows of before
    -- step 1 were all removed since may have a shard and no row).
    IF to_regclass('pg_temp.tenantstore_groups') IS NOT NULL THEN
        DROP TABLE pg_temp.tenantstore_groups;  -- from a run of this file that failed
    END IF;
    CREATE TEMP TABLE tenantstore_groups AS
        SELECT row_number() OVER (ORDER BY tenant_id, day, model) AS n,
               tenant_id, day, model
          FROM (SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model
                  FROM usage_records
                UNION
                SELECT tenant_id, day, model FROM usage_totals_shards) AS g;
    CREATE INDEX ON tenantstore_groups (n);
    SELECT count(*) INTO total FROM tenantstore_groups;
    COMMIT;

    -- 3. A shard row for each group (the batch's tenants locked first, as in 010:
    -- one deleted before is skipped, one deleted after waits for the batch).
    done := 0;
    WHILE done < total LOOP
        PERFORM 1 FROM tenants
         WHERE id IN (SELECT tenant_id FROM tenantstore_groups
                       WHERE n > done AND n <= done + batch)
         ORDER BY id
           FOR KEY SHARE;
        INSERT INTO usage_totals_shards (tenant_id, day, model, shard)
        SELECT g.tenant_id, g.day, g.model, 0
          FROM tenantstore_groups AS g
          JOIN tenants ON tenants.id = g.tenant_id
         WHERE g.n > done AND g.n <= done + batch
         ORDER BY g.tenant_id, g.day, g.model
        ON CONFLICT (tenant_id, day, model, shard) DO NOTHING;
        done := done + batch;
        COMMIT;
    END LOOP;

    -- 4. Every transaction of before that ended (as CREATE INDEX CONCURRENTLY
    -- waits for older snapshots). Past lock_timeout, the runner's retry: this
    -- file runs again, later.
    started := clock_timestamp();
    patience := coalesce(nullif(current_setting('lock_timeout'), '0'), '1000 years')::interval;
    WHILE EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE datname = current_database()
                     AND backend_type = 'client backend'
                     AND pid <> pg_backend_pid()
                     AND xact_start < started) LOOP
        IF clock_timestamp() - started > patience THEN
            RAISE EXCEPTION 'migration 012: transactions of before step 4 still open after %',
                patience
                USING ERRCODE = 'lock_not_available';
        END IF;
        PERFORM pg_sleep(0.01);
        PERFORM pg_stat_clear_snapshot();  -- else the view stays as first read
    END LOOP;

    -- 5. The amounts of the rows that no delta counts, group by group.
    done := 0;
    WHILE done < total LOOP
        PERFORM 1 FROM tenants
         WHERE id IN (SELECT tenant_id FROM tenantstore_groups
                       WHERE n > done AND n <= done + batch)
         ORDER BY id
           FOR KEY SHARE;
        INSERT INTO usage_totals_shards AS t
               (tenant_id, day, model, shard, cost_usd, records, input_tokens,
                output_tokens)
        SELECT g.tenant_id, g.day, g.model, 0, r.cost_usd - s.cost_usd,
               r.records - s.records, r.input_tokens - s.input_tokens,
               r.output_tokens - s.output_tokens
          FROM tenantstore_groups AS g
          JOIN tenants ON tenants.id = g.tenant_id
          CROSS JOIN LATERAL (
                SELECT coalesce(sum(u.cost_usd), 0) AS cost_usd, count(*) AS records,
                       coalesce(sum(u.input_tokens), 0)::bigint AS input_tokens,
                       coalesce(sum(u.output_tokens), 0)::bigint AS output_tokens
                  FROM usage_records AS u
                 WHERE u.tenant_id = g.tenant_id AND u.model = g.model
                   AND u.created_at >= g.day::timestamp AT TIME ZONE 'UTC'
                   AND u.created_at < (g.day + 1)::timestamp AT TIME ZONE 'UTC') AS r
          CROSS JOIN LATERAL (
                SELECT coalesce(sum(x.cost_usd), 0) AS cost_usd,
                       coalesce(sum(x.records), 0) AS records,
                       coalesce(sum(x.input_tokens), 0) AS input_tokens,
                       coalesce(sum(x.output_tokens), 0) AS output_tokens
                  FROM usage_totals_shards AS x
                 WHERE x.tenant_id = g.tenant_id AND x.day = g.day
                   AND x.model = g.model) AS s
         WHERE g.n > done AND g.n <= done + batch
           AND (r.cost_usd <> s.cost_usd OR r.records <> s.records
                OR r.input_tokens <> s.input_tokens
                OR r.output_tokens <> s.output_tokens)
         ORDER BY g.tenant_id, g.day, g.model
        ON CONFLICT (tenant_id, day, model, shard) DO UPDATE
           SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
               records = t.records + EXCLUDED.records,
               input_tokens = t.input_tokens + EXCLUDED.input_tokens,
               output_tokens = t.output_tokens + EXCLUDED.output_tokens;
        done := done + batch;
        COMMIT;
    END LOOP;
    DROP TABLE pg_temp.tenantstore_groups;
    COMMIT;

    -- 6. The shards take 009's table's place, in one short transaction (writers
    -- wait for it, locked out first, in their own order: usage_records, then the
    -- totals).
    LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE usage_daily_totals, usage_totals_shards IN ACCESS EXCLUSIVE MODE;
    DROP TABLE usage_daily_totals;
    ALTER TABLE usage_totals_shards RENAME TO usage_daily_totals;
    ALTER TABLE usage_daily_totals
        RENAME CONSTRAINT usage_totals_shards_pkey TO usage_daily_totals_pkey;
    EXECUTE replace(replace(shard_add_sql, '@totals@', 'usage_daily_totals'),
                    '@schema@', schema_name);
    EXECUTE replace(replace(replace(replace(replace(apply_sql,
                '@totals@', 'usage_daily_totals'), '@schema@', schema_name),
                '@009 insert@', ''), '@009 update@', ''), '@009 delete@', '');
    EXECUTE replace(replace(truncate_sql, '@schema@', schema_name), '@also@', '');

    -- One batch of prune_usage: up to `batch` rows older than `before`, oldest
    -- first, skipping rows another transaction holds (a prune never waits for a
    -- writer); the number deleted. The totals keep counting them (see the remove
    -- trigger). Created last: a prune before step 5 would leave rows uncounted.
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION tenantstore_prune_usage(before timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    deleted bigint;
BEGIN
    PERFORM set_config('tenantstore.pruning', 'on', true);
    DELETE FROM usage_records
     WHERE id IN (SELECT id FROM usage_records
                   WHERE created_at < before
                   ORDER BY created_at
                   LIMIT batch
                     FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('tenantstore.pruning', 'off', true);
    RETURN deleted;
END
$fn$
$sql$, '@schema@', schema_name);
END
$migration$;
