-- tenantstore's contract on top of the original schema, for every writer: this
-- library, the Go service (which keeps sending the statements it always sent), psql.
--
-- The contract: tenantstore never reads a NULL, a request is stored once per
-- (tenant_id, request_id), costs keep 10 decimal places, and updated_at moves on every
-- change. The Go service still writes NULL arrays, NULL-free but retried usage rows and
-- its own clock's updated_at, so the rules live in BEFORE triggers that turn what it
-- sends into what the contract allows, instead of constraints that would refuse it:
--   * a NULL written into a column this migration makes NOT NULL becomes the column's
--     default; NULL array elements are dropped; except `enabled`: NULL becomes false,
--     because the Go service authenticates only `enabled = true` and a tenant it
--     refused must stay refused (fail closed);
--   * an UPDATE that changes a tenant but does not move updated_at forward (the Go
--     service sends its own clock, psql usually nothing) gets
--     greatest(now(), old + 1 microsecond), so an optimistic update that read the old
--     updated_at fails whoever changed the row;
--   * cost_usd is rounded to 10 places (half away from zero, as numeric(20,10) did).
--
-- This file only installs rules and takes each lock for milliseconds: the runner
-- sets lock_timeout and retries it whole if a lock is not granted in time. The work
-- proportional to the data (backfilling old NULLs, proving NOT NULL, the unique
-- index) comes in the next files, in batches and concurrently, while both services
-- keep serving.
--
-- cost_usd widens from decimal(10,6) to unconstrained numeric, which PostgreSQL does
-- without rewriting the table (a change of scale, e.g. to numeric(20,10), rewrites it
-- under ACCESS EXCLUSIVE); the trigger and the CHECK below keep it what
-- numeric(20,10) was: 10 places, below 10^10 in magnitude.

-- A text[] as the contract reads it: NULL is empty, NULL elements go, and an array of
-- more than one dimension (psql can store one; array_remove and array_position fail
-- on it) is flattened in row-major order.
CREATE FUNCTION tenantstore_text_list(items text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN items IS NULL THEN '{}'::text[]
        WHEN array_ndims(items) > 1 THEN ARRAY(
            SELECT item FROM unnest(items) WITH ORDINALITY AS u (item, n)
             WHERE item IS NOT NULL ORDER BY n)
        ELSE array_remove(items, NULL)
    END
$$;

CREATE FUNCTION tenantstore_tenants_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.budget_usd := coalesce(NEW.budget_usd, 0);
    NEW.rate_limit_rpm := coalesce(NEW.rate_limit_rpm, 60);
    NEW.allowed_models := tenantstore_text_list(NEW.allowed_models);
    NEW.fallback_providers := tenantstore_text_list(NEW.fallback_providers);
    NEW.enabled := coalesce(NEW.enabled, false);
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := coalesce(NEW.created_at, now());
        NEW.updated_at := coalesce(NEW.updated_at, NEW.created_at);
    ELSE
        NEW.created_at := coalesce(NEW.created_at, OLD.created_at, now());
        IF NEW IS DISTINCT FROM OLD
           AND (NEW.updated_at IS NULL OR NEW.updated_at <= OLD.updated_at) THEN
            NEW.updated_at := greatest(now(), OLD.updated_at + interval '1 microsecond');
        END IF;
        NEW.updated_at := coalesce(NEW.updated_at, now());
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION tenantstore_usage_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.input_tokens := coalesce(NEW.input_tokens, 0);
    NEW.output_tokens := coalesce(NEW.output_tokens, 0);
    NEW.cost_usd := round(coalesce(NEW.cost_usd, 0), 10);
    NEW.cached := coalesce(NEW.cached, false);
    NEW.latency_ms := coalesce(NEW.latency_ms, 0);
    NEW.status := coalesce(NEW.status, 'success');
    NEW.created_at := coalesce(NEW.created_at, now());
    RETURN NEW;
END
$$;

-- Pinned search_path: a trigger runs with the search_path of whoever writes, which
-- may name another schema (or a temporary table) first. pg_catalog, then the schema
-- these tables live in (the migrating session's current schema), then pg_temp last.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION tenantstore_tenants_before_write() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    EXECUTE format(
        'ALTER FUNCTION tenantstore_usage_before_write() SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    EXECUTE format(
        'ALTER FUNCTION tenantstore_text_list(text[]) SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END
$$;

-- usage_records first, then tenants: the order the Go service's usage inserts lock
-- them (the foreign key), so waiting on each other cannot deadlock.
CREATE TRIGGER tenantstore_usage_before_write
    BEFORE INSERT OR UPDATE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION tenantstore_usage_before_write();

CREATE TRIGGER tenantstore_tenants_before_write
    BEFORE INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenantstore_tenants_before_write();

-- No rewrite (unconstrained numeric keeps every stored value as it is).
ALTER TABLE usage_records ALTER COLUMN cost_usd TYPE numeric;

-- NOT VALID: checked for new rows from now on, proven for old rows by 003 without
-- holding a lock that blocks writers. 003 then turns them into NOT NULL.
ALTER TABLE usage_records
    ADD CONSTRAINT usage_records_cost_usd_range
        CHECK (cost_usd = round(cost_usd, 10) AND abs(cost_usd) < 10000000000) NOT VALID,
    ADD CONSTRAINT usage_records_input_tokens_not_null
        CHECK (input_tokens IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_output_tokens_not_null
        CHECK (output_tokens IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_cost_usd_not_null
        CHECK (cost_usd IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_cached_not_null
        CHECK (cached IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_latency_ms_not_null
        CHECK (latency_ms IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_status_not_null
        CHECK (status IS NOT NULL) NOT VALID,
    ADD CONSTRAINT usage_records_created_at_not_null
        CHECK (created_at IS NOT NULL) NOT VALID;

ALTER TABLE tenants
    ADD CONSTRAINT tenants_budget_usd_not_null
        CHECK (budget_usd IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_rate_limit_rpm_not_null
        CHECK (rate_limit_rpm IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_allowed_models_not_null
        CHECK (allowed_models IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_fallback_providers_not_null
        CHECK (fallback_providers IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_enabled_not_null
        CHECK (enabled IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_created_at_not_null
        CHECK (created_at IS NOT NULL) NOT VALID,
    ADD CONSTRAINT tenants_updated_at_not_null
        CHECK (updated_at IS NOT NULL) NOT VALID;

-- Requests recorded more than once before this migration: 005 keeps the first of
-- each (tenant_id, request_id) and moves every other one here, kept for inspection.
-- Deleting a tenant removes its duplicates too, as it removes its usage.
CREATE TABLE usage_records_duplicates (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    request_id varchar(255) NOT NULL,
    model varchar(255) NOT NULL,
    provider varchar(50) NOT NULL,
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cost_usd numeric NOT NULL,
    cached boolean NOT NULL,
    latency_ms integer NOT NULL,
    status varchar(20) NOT NULL,
    created_at timestamptz NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_records_duplicates_tenant_request_idx
    ON usage_records_duplicates (tenant_id, request_id);
