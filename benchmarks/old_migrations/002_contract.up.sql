-- tenantstore's contract on top of the original schema. It must apply to a database
-- the Go service has been writing to, so it first repairs what that service allowed:
-- NULLs in nullable columns, NULL array elements, the same (tenant_id, request_id)
-- recorded twice. No row is deleted: duplicates move to usage_records_duplicates.
-- The runner executes this file in one transaction: it applies entirely or not at all.

-- Writers could add a NULL or a duplicate between the backfill and the constraints
-- below, so take the locks the ALTERs need anyway, up front. usage_records first:
-- the Go service's inserts lock usage_records and then (foreign key) tenants, and
-- taking them in the same order cannot deadlock with those inserts.
LOCK TABLE usage_records, tenants IN ACCESS EXCLUSIVE MODE;

-- tenants: backfill, then forbid NULLs.
UPDATE tenants
SET budget_usd = coalesce(budget_usd, 0),
    rate_limit_rpm = coalesce(rate_limit_rpm, 60),
    allowed_models = array_remove(coalesce(allowed_models, '{}'), NULL),
    fallback_providers = array_remove(coalesce(fallback_providers, '{}'), NULL),
    enabled = coalesce(enabled, true),
    created_at = coalesce(created_at, now()),
    updated_at = coalesce(updated_at, now())
WHERE budget_usd IS NULL
   OR rate_limit_rpm IS NULL
   OR allowed_models IS NULL
   OR array_position(allowed_models, NULL) IS NOT NULL
   OR fallback_providers IS NULL
   OR array_position(fallback_providers, NULL) IS NOT NULL
   OR enabled IS NULL
   OR created_at IS NULL
   OR updated_at IS NULL;

ALTER TABLE tenants
    ALTER COLUMN budget_usd SET NOT NULL,
    ALTER COLUMN rate_limit_rpm SET NOT NULL,
    ALTER COLUMN allowed_models SET NOT NULL,
    ALTER COLUMN fallback_providers SET NOT NULL,
    ALTER COLUMN enabled SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;

-- usage_records: backfill, then forbid NULLs and widen the cost (decimal(10,6) rounds
-- a one-token request on a cheap model to zero). One ALTER: one table rewrite.
UPDATE usage_records
SET input_tokens = coalesce(input_tokens, 0),
    output_tokens = coalesce(output_tokens, 0),
    cost_usd = coalesce(cost_usd, 0),
    cached = coalesce(cached, false),
    latency_ms = coalesce(latency_ms, 0),
    status = coalesce(status, 'success'),
    created_at = coalesce(created_at, now())
WHERE input_tokens IS NULL
   OR output_tokens IS NULL
   OR cost_usd IS NULL
   OR cached IS NULL
   OR latency_ms IS NULL
   OR status IS NULL
   OR created_at IS NULL;

ALTER TABLE usage_records
    ALTER COLUMN cost_usd TYPE numeric(20, 10),
    ALTER COLUMN input_tokens SET NOT NULL,
    ALTER COLUMN output_tokens SET NOT NULL,
    ALTER COLUMN cost_usd SET NOT NULL,
    ALTER COLUMN cached SET NOT NULL,
    ALTER COLUMN latency_ms SET NOT NULL,
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL;

-- Requests recorded more than once: the first of each (tenant_id, request_id) stays
-- (earliest created_at, then id), every other one moves here, kept for inspection.
-- Deleting a tenant removes its duplicates too, as it removes its usage.
CREATE TABLE usage_records_duplicates (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    request_id varchar(255) NOT NULL,
    model varchar(255) NOT NULL,
    provider varchar(50) NOT NULL,
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cost_usd numeric(20, 10) NOT NULL,
    cached boolean NOT NULL,
    latency_ms integer NOT NULL,
    status varchar(20) NOT NULL,
    created_at timestamptz NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_records_duplicates_tenant_request_idx
    ON usage_records_duplicates (tenant_id, request_id);

DO $$
DECLARE
    moved bigint;
BEGIN
    WITH ranked AS (
        SELECT id,
               row_number() OVER (
                   PARTITION BY tenant_id, request_id ORDER BY created_at, id
               ) AS position
        FROM usage_records
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
    RAISE NOTICE 'moved % duplicate usage_records row(s) (same tenant_id and request_id) to usage_records_duplicates', moved;
END
$$;

-- record() is idempotent on (tenant_id, request_id): this index is its arbiter.
CREATE UNIQUE INDEX usage_records_tenant_request_key
    ON usage_records (tenant_id, request_id);
