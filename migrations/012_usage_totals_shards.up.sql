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
-- shards than writers at once. Totals keep the
-- number of records and the input and output tokens as well as the cost, which
-- get_tenant_usage_summary reads without summing rows.
--
-- The statement-level triggers of 004 keep this table right for every writer (this
-- library, the Go service, psql, COPY): their functions are replaced here, with
-- the same names, so the triggers stay as they are. Each statement's rows are
-- folded by (tenant, day, model) and applied in that key order.
--
-- prune_usage deletes old rows through tenantstore_prune_usage, which marks its
-- transaction (the setting tenantstore.pruning) so that the delete trigger leaves
-- the totals alone: budgets and summaries keep counting pruned records.
--
-- The runner applies this file in one transaction. usage_records is locked in
-- SHARE mode (writers wait, readers do not) while the totals are rebuilt from the
-- rows, per model: exact, since no write can happen meanwhile. Locks are taken in
-- the writers' order (usage_records, then the totals), so this cannot deadlock
-- with them; under the runner's lock_timeout it fails cleanly instead of waiting
-- long behind a long transaction, and can simply be run again.

LOCK TABLE usage_records IN SHARE MODE;
LOCK TABLE usage_daily_totals IN ACCESS EXCLUSIVE MODE;

DELETE FROM usage_daily_totals;
ALTER TABLE usage_daily_totals
    DROP CONSTRAINT usage_daily_totals_pkey,
    ADD COLUMN model varchar(255) NOT NULL,
    ADD COLUMN shard smallint NOT NULL,
    ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0,
    ADD PRIMARY KEY (tenant_id, day, model, shard);

INSERT INTO usage_daily_totals
       (tenant_id, day, model, shard, cost_usd, records, input_tokens, output_tokens)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model, 0,
       sum(cost_usd), count(*), sum(input_tokens), sum(output_tokens)
  FROM usage_records
 GROUP BY 1, 2, 3;

-- Add (or, with negative amounts, subtract) one group's amounts to a shard.
-- `may_add_shard` false (removals): never create a row, so a tenant being
-- deleted (its totals cascade away) gets none back; wait for a held shard instead.
CREATE FUNCTION tenantstore_usage_totals_apply(
    p_tenant uuid, p_day date, p_model text, p_cost numeric, p_records bigint,
    p_input bigint, p_output bigint, may_add_shard boolean
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    slot smallint;
    tries integer;
BEGIN
    -- One statement: the first shard no other transaction holds, updated.
    UPDATE usage_daily_totals AS t
       SET cost_usd = t.cost_usd + p_cost, records = t.records + p_records,
           input_tokens = t.input_tokens + p_input,
           output_tokens = t.output_tokens + p_output
     WHERE (t.tenant_id, t.day, t.model, t.shard) = (
           SELECT tenant_id, day, model, shard FROM usage_daily_totals
            WHERE tenant_id = p_tenant AND day = p_day AND model = p_model
            ORDER BY shard
            LIMIT 1
              FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        IF NOT may_add_shard THEN
            -- Every shard is held by another writer (or there is none): wait for
            -- the first one.
            UPDATE usage_daily_totals AS t
               SET cost_usd = t.cost_usd + p_cost, records = t.records + p_records,
                   input_tokens = t.input_tokens + p_input,
                   output_tokens = t.output_tokens + p_output
             WHERE (t.tenant_id, t.day, t.model, t.shard) = (
                   SELECT tenant_id, day, model, shard FROM usage_daily_totals
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
                SELECT 1 FROM usage_daily_totals
                 WHERE tenant_id = p_tenant AND day = p_day AND model = p_model
                   AND shard = slot);
            slot := ((slot + 1) % 64)::smallint;
        END LOOP;
        -- (All 64 taken: past 64 writers at once on one group, they share.)
        -- Another writer may be adding the same slot (not yet visible): the
        -- conflict makes this one wait for it, once, and then add to it.
        INSERT INTO usage_daily_totals AS t
               (tenant_id, day, model, shard, cost_usd, records, input_tokens,
                output_tokens)
        VALUES (p_tenant, p_day, p_model, slot, p_cost, p_records, p_input, p_output)
        ON CONFLICT (tenant_id, day, model, shard) DO UPDATE
           SET cost_usd = t.cost_usd + EXCLUDED.cost_usd,
               records = t.records + EXCLUDED.records,
               input_tokens = t.input_tokens + EXCLUDED.input_tokens,
               output_tokens = t.output_tokens + EXCLUDED.output_tokens;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_add() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model,
               sum(cost_usd) AS cost_usd, count(*) AS records,
               sum(input_tokens)::bigint AS input_tokens,
               sum(output_tokens)::bigint AS output_tokens
          FROM added
         GROUP BY 1, 2, 3
         ORDER BY 1, 2, 3
    LOOP
        -- The common case inline (a call per group costs as much again): a
        -- shard that exists and no other transaction holds.
        UPDATE usage_daily_totals AS t
           SET cost_usd = t.cost_usd + g.cost_usd, records = t.records + g.records,
               input_tokens = t.input_tokens + g.input_tokens,
               output_tokens = t.output_tokens + g.output_tokens
         WHERE (t.tenant_id, t.day, t.model, t.shard) = (
               SELECT tenant_id, day, model, shard FROM usage_daily_totals
                WHERE tenant_id = g.tenant_id AND day = g.day AND model = g.model
                ORDER BY shard
                LIMIT 1
                  FOR UPDATE SKIP LOCKED);
        IF NOT FOUND THEN
            PERFORM tenantstore_usage_totals_apply(
                g.tenant_id, g.day, g.model, g.cost_usd, g.records, g.input_tokens,
                g.output_tokens, true);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_remove() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    g record;
BEGIN
    -- prune_usage's deletes: the totals go on counting what it removes.
    IF TG_OP = 'DELETE'
       AND current_setting('tenantstore.pruning', true) IS NOT DISTINCT FROM 'on' THEN
        RETURN NULL;
    END IF;
    FOR g IN
        SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, model,
               sum(cost_usd) AS cost_usd, count(*) AS records,
               sum(input_tokens)::bigint AS input_tokens,
               sum(output_tokens)::bigint AS output_tokens
          FROM removed
         GROUP BY 1, 2, 3
         ORDER BY 1, 2, 3
    LOOP
        PERFORM tenantstore_usage_totals_apply(
            g.tenant_id, g.day, g.model, -g.cost_usd, -g.records, -g.input_tokens,
            -g.output_tokens, false);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tenantstore_usage_totals_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
BEGIN
    -- DELETE, not TRUNCATE: the table may be in the same TRUNCATE ... CASCADE.
    DELETE FROM usage_daily_totals;
    RETURN NULL;
END
$$;

-- One batch of prune_usage: up to `batch` rows older than `before`, oldest first,
-- skipping rows another transaction holds (a prune never waits for a writer); the
-- number deleted. The totals keep counting them (see the remove trigger).
CREATE FUNCTION tenantstore_prune_usage(before timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
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
$$;
