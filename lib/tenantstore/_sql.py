"""Every SQL statement tenantstore runs, composed once with PyPika at import.

Values are never formatted into SQL: each statement takes named psycopg placeholders
(``%(name)s``) and is executed prepared. Nothing here is built per call (building a
query with PyPika costs about as much as a database round trip). PyPika's partial
typing stays inside this module: everything it exports is a plain `str`.
"""

from __future__ import annotations

from typing import Any, Final

from pypika import (
    Case,
    CustomFunction,
    Interval,
    Order,
    Parameter,
    PostgreSQLQuery,
    Table,
)
from pypika import functions as fn
from pypika.terms import LiteralValue, NullValue

__all__ = [
    "ADMIN_COLUMNS",
    "AUDIT_COLUMNS",
    "TENANT_COLUMNS",
    "USAGE_COLUMNS",
    "tenant_select",
]

tenants: Any = Table("tenants")
usage: Any = Table("usage_records")
daily: Any = Table("usage_daily_totals")
admins: Any = Table("admin_users")
audit: Any = Table("audit_log")
_fn: Any = fn
Query: Any = PostgreSQLQuery


def _p(name: str) -> Any:
    return Parameter(f"%({name})s")


_greatest = CustomFunction("GREATEST", ["a", "b"])
_array_remove = CustomFunction("array_remove", ["array", "element"])
_array_ndims = CustomFunction("array_ndims", ["array"])
_EMPTY_ARRAY = LiteralValue("'{}'")

# Every write to an audited table (tenants, admin_users) states who acts and when,
# for the audit trigger (migration 013) to record: transaction-local settings made
# by the statement itself, so it stays one statement (one round trip, and right
# behind a transaction-pooling proxy). UPDATE and DELETE make them in their WHERE
# clause, evaluated on the row before it changes; the row triggers that read them
# fire at the end of the statement. Parameters: `audit.audit_params`.
_AUDIT_SETTINGS = (
    "set_config('tenantstore.actor', %(audit_actor)s, true)"
    " || set_config('tenantstore.at', %(audit_at)s, true)"
)
AUDIT_CONTEXT: Final = LiteralValue(f"({_AUDIT_SETTINGS}) IS NOT NULL")
# INSERT ... SELECT <values> FROM this: the same settings, made before the row is.
AUDIT_CONTEXT_ROW: Final = Query.select(LiteralValue(f"{_AUDIT_SETTINGS} AS ctx"))

# Order and meaning of the columns _rows.tenant_from_row reads.
TENANT_COLUMNS: Final = (
    "id",
    "name",
    "api_key_hash",
    "budget_usd",
    "rate_limit_rpm",
    "allowed_models",
    "default_provider",
    "fallback_providers",
    "enabled",
    "created_at",
    "updated_at",
    "api_key_expires_at",
    "previous_api_key_hash",
    "previous_api_key_expires_at",
    "api_key_prefix",
)


def tenant_select(table: Any) -> list[Any]:
    """The select list of a tenant row, in `TENANT_COLUMNS` order, over `table`.

    Every column comes out well-typed, whatever a writer around our validation (the
    Go service, psql, a database before migration 002) left in the row: a NULL
    becomes the column's default, except `enabled`, where NULL is "not enabled" as
    the Go service reads it (its lookup asks for `enabled = true`); NULL elements
    of the text arrays are dropped (migration 002's backfill makes the same of
    them), and an array of more than one dimension (psql can store one in a text[]
    column; the Go service cannot read it either) reads as empty rather than
    failing every statement that returns its row, `list` and `set_enabled`
    included. Values of the right type outside our rules (rpm -1, a blank name) are
    returned as stored. Done here, not in _rows: the row conversion is on the hot
    path, and these cost the server about 2 us per row (measured against the bare
    columns: 14 us against 12 us of execution; a flattening subquery would cost 18).
    """

    def text_array(column: str) -> Any:
        array = table.field(column)
        one_dimension = (
            Case()
            .when(_array_ndims(array) > 1, _EMPTY_ARRAY)
            .else_(_array_remove(array, NullValue()))
        )
        return _fn.Coalesce(one_dimension, _EMPTY_ARRAY)

    return [
        _fn.Cast(table.id, "text"),
        table.name,
        table.api_key_hash,
        _fn.Coalesce(table.budget_usd, LiteralValue("0.00")),
        _fn.Coalesce(table.rate_limit_rpm, 60),
        text_array("allowed_models"),
        table.default_provider,
        text_array("fallback_providers"),
        _fn.Coalesce(table.enabled, False),
        table.created_at,
        table.updated_at,
        table.api_key_expires_at,
        table.previous_api_key_hash,
        table.previous_api_key_expires_at,
        table.api_key_prefix,
    ]


_tenant_select: Final = tenant_select(tenants)
assert len(_tenant_select) == len(TENANT_COLUMNS)

# A key lookup at the caller's instant %(now)s (migration 011): the current key
# while it has not expired, else a previous key in grace. UNION ALL under LIMIT 1
# stops at the first branch that finds a row, so a current key costs one probe of
# the api_key_hash index, as before; only a key that is not current (in grace, or
# nobody's) goes on to the second branch: one probe of the partial index of previous
# keys (migration 015), which holds only the tenants in a grace period.
_current_key = (
    Query.from_(tenants)
    .select(*_tenant_select)
    .where(tenants.api_key_hash == _p("hash"))
    .where(tenants.enabled == True)  # noqa: E712  (PyPika builds SQL from ==)
    .where(
        tenants.api_key_expires_at.isnull() | (tenants.api_key_expires_at > _p("now"))
    )
)
_previous_key = (
    Query.from_(tenants)
    .select(*_tenant_select)
    .where(tenants.previous_api_key_hash == _p("hash"))
    .where(tenants.enabled == True)  # noqa: E712
    .where(tenants.previous_api_key_expires_at > _p("now"))
)
SELECT_ENABLED_BY_HASH: Final[str] = str(
    _current_key.union_all(_previous_key).limit(1).get_sql()
)

SELECT_BY_ID: Final[str] = (
    Query.from_(tenants).select(*_tenant_select).where(tenants.id == _p("id")).get_sql()
)

SELECT_ALL: Final[str] = (
    Query.from_(tenants)
    .select(*_tenant_select)
    .orderby(tenants.created_at, order=Order.desc)
    .orderby(tenants.id, order=Order.asc)
    .get_sql()
)

INSERT_TENANT: Final[str] = (
    Query.into(tenants)
    .columns(*(tenants.field(c) for c in (*TENANT_COLUMNS, "api_key_encrypted")))
    .from_(AUDIT_CONTEXT_ROW)
    .select(*(_p(c) for c in (*TENANT_COLUMNS, "api_key_encrypted")))
    .returning(*_tenant_select)
    .get_sql()
)

_MUTABLE = TENANT_COLUMNS[1:9]  # name .. enabled


def _update(encrypted: Any, prefix: Any, *, versioned: bool) -> str:
    query = Query.update(tenants)
    for column in _MUTABLE:
        query = query.set(tenants.field(column), _p(column))
    query = (
        query.set(
            tenants.updated_at,
            _greatest(_p("now"), tenants.updated_at + Interval(microseconds=1)),
        )
        .set(tenants.api_key_encrypted, encrypted)
        .set(tenants.api_key_expires_at, _p("api_key_expires_at"))
        .set(tenants.api_key_prefix, prefix)
        .where(tenants.id == _p("id"))
        .where(AUDIT_CONTEXT)
    )
    if versioned:
        query = query.where(tenants.updated_at == _p("expected"))
    return str(query.returning(*_tenant_select).get_sql())


# Each UPDATE comes plain and "versioned": applied only while updated_at still has
# the value the caller read (optimistic concurrency, see `update`).
# With the plaintext key: store its new encryption (or NULL without a cipher).
_SET_KEY = _p("api_key_encrypted")
_SET_PREFIX = _p("api_key_prefix")
UPDATE_TENANT_SET_KEY: Final[str] = _update(_SET_KEY, _SET_PREFIX, versioned=False)
UPDATE_TENANT_SET_KEY_VERSIONED: Final[str] = _update(
    _SET_KEY, _SET_PREFIX, versioned=True
)
# Without it: keep the stored encryption (and prefix) while the key is unchanged,
# else drop them.
_KEEP_KEY = Case().when(
    tenants.api_key_hash == _p("same_hash"), tenants.api_key_encrypted
)
_KEEP_PREFIX = Case().when(
    tenants.api_key_hash == _p("same_hash"), tenants.api_key_prefix
)
UPDATE_TENANT_KEEP_KEY: Final[str] = _update(_KEEP_KEY, _KEEP_PREFIX, versioned=False)
UPDATE_TENANT_KEEP_KEY_VERSIONED: Final[str] = _update(
    _KEEP_KEY, _KEEP_PREFIX, versioned=True
)
# (SET key?, versioned?) -> statement
UPDATE_TENANT: Final[dict[tuple[bool, bool], str]] = {
    (True, False): UPDATE_TENANT_SET_KEY,
    (True, True): UPDATE_TENANT_SET_KEY_VERSIONED,
    (False, False): UPDATE_TENANT_KEEP_KEY,
    (False, True): UPDATE_TENANT_KEEP_KEY_VERSIONED,
}

DELETE_TENANT: Final[str] = (
    Query.from_(tenants)
    .delete()
    .where(tenants.id == _p("id"))
    .where(AUDIT_CONTEXT)
    .get_sql()
)

# The stored copy and the hash it must still match (see `reveal_api_key`).
SELECT_ENCRYPTED_KEY: Final[str] = (
    Query.from_(tenants)
    .select(tenants.api_key_encrypted, tenants.api_key_hash)
    .where(tenants.id == _p("id"))
    .get_sql()
)

# `enabled` (and the version) only: no other column is read, checked or written,
# so a row that holds values our validation rejects can still be disabled.
SET_ENABLED: Final[str] = (
    Query.update(tenants)
    .set(tenants.enabled, _p("enabled"))
    .set(
        tenants.updated_at,
        _greatest(_p("now"), tenants.updated_at + Interval(microseconds=1)),
    )
    .where(tenants.id == _p("id"))
    .where(AUDIT_CONTEXT)
    .returning(*_tenant_select)
    .get_sql()
)

_least = CustomFunction("LEAST", ["a", "b"])
_moved_updated_at = _greatest(_p("now"), tenants.updated_at + Interval(microseconds=1))
# The old key stays, as the previous one, while it would still authenticate at
# %(now)s and the grace %(grace_until)s is later than now; never past its own
# expiry (LEAST ignores a NULL). Right-hand sides read the row before the update.
_keeps_old = (_p("grace_until") > _p("now")) & (
    tenants.api_key_expires_at.isnull() | (tenants.api_key_expires_at > _p("now"))
)

# A rotation to %(hash)s; no row when the tenant is unknown or already has this key
# (a retried rotation changes nothing: the caller then reads the tenant as it is).
ROTATE_API_KEY: Final[str] = (
    Query.update(tenants)
    .set(tenants.api_key_hash, _p("hash"))
    .set(
        tenants.previous_api_key_hash,
        Case().when(_keeps_old, tenants.api_key_hash).else_(NullValue()),
    )
    .set(
        tenants.previous_api_key_expires_at,
        Case()
        .when(_keeps_old, _least(_p("grace_until"), tenants.api_key_expires_at))
        .else_(NullValue()),
    )
    .set(tenants.api_key_expires_at, _p("expires_at"))
    .set(tenants.api_key_prefix, _p("prefix"))
    .set(tenants.api_key_encrypted, _p("api_key_encrypted"))
    .set(tenants.updated_at, _moved_updated_at)
    .where(tenants.id == _p("id"))
    .where(tenants.api_key_hash != _p("hash"))
    .where(AUDIT_CONTEXT)
    .returning(*_tenant_select)
    .get_sql()
)

# The grace period ends: no row when the tenant is unknown or has no previous key.
REVOKE_PREVIOUS_API_KEY: Final[str] = (
    Query.update(tenants)
    .set(tenants.previous_api_key_hash, NullValue())
    .set(tenants.previous_api_key_expires_at, NullValue())
    .set(tenants.updated_at, _moved_updated_at)
    .where(tenants.id == _p("id"))
    .where(tenants.previous_api_key_hash.notnull())
    .where(AUDIT_CONTEXT)
    .returning(*_tenant_select)
    .get_sql()
)

USAGE_COLUMNS: Final = (
    "request_id",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cached",
    "latency_ms",
    "status",
    "created_at",
)

INSERT_USAGE: Final[str] = (
    Query.into(usage)
    .columns(usage.tenant_id, *(usage.field(c) for c in USAGE_COLUMNS))
    .insert(_p("tenant_id"), *(_p(c) for c in USAGE_COLUMNS))
    .on_conflict(usage.tenant_id, usage.request_id)
    .do_nothing()
    .get_sql()
)

SELECT_USAGE_SINCE: Final[str] = (
    Query.from_(usage)
    .select(*(usage.field(c) for c in USAGE_COLUMNS))
    .where(usage.tenant_id == _p("tenant_id"))
    .where(usage.created_at >= _p("since"))
    .orderby(usage.created_at, order=Order.desc)
    # Code-point order, as in memory, whatever the database's collation.
    .orderby(LiteralValue('"request_id" COLLATE "C"'), order=Order.asc)
    .get_sql()
)

SELECT_TOTAL_COST_SINCE: Final[str] = (
    Query.from_(usage)
    .select(_fn.Coalesce(_fn.Sum(usage.cost_usd), 0))
    .where(usage.tenant_id == _p("tenant_id"))
    .where(usage.created_at >= _p("since"))
    .get_sql()
)

# The same total from the daily totals (migrations 009-010, 012): the rows of the
# partial first day, [since, boundary), plus whole UTC days from boundary_day on
# (every model and shard of each day).
_partial_day = (
    Query.from_(usage)
    .select(_fn.Sum(usage.cost_usd))
    .where(usage.tenant_id == _p("tenant_id"))
    .where(usage.created_at >= _p("since"))
    .where(usage.created_at < _p("boundary"))
)
_whole_days = (
    Query.from_(daily)
    .select(_fn.Sum(daily.cost_usd))
    .where(daily.tenant_id == _p("tenant_id"))
    .where(daily.day >= _p("boundary_day"))
)
SELECT_TOTAL_COST_BY_DAYS: Final[str] = Query.select(
    _fn.Coalesce(_partial_day, 0) + _fn.Coalesce(_whole_days, 0)
).get_sql()

# -- the cache listener (listener.py) --------------------------------------------

_any = CustomFunction("ANY", ["array"])

# Revalidation after a reconnect: the full rows of every cached key hash, enabled or
# not, in one statement (the listener keeps what is unchanged and drops the rest).
# A hash may be a previous key (migration 011), found by 015's partial index.
SELECT_BY_HASHES: Final[str] = (
    Query.from_(tenants)
    .select(*_tenant_select)
    .where(
        (tenants.api_key_hash == _any(_p("hashes")))
        | (tenants.previous_api_key_hash == _any(_p("hashes")))
    )
    .get_sql()
)

# The triggers of migrations/008 that notify the listener's channel.
NOTIFY_TRIGGERS: Final = (
    "tenantstore_tenants_notify_insert_delete",
    "tenantstore_tenants_notify_update",
    "tenantstore_tenants_notify_truncate",
)
_pg_trigger: Any = Table("pg_trigger")
_notify = CustomFunction("pg_notify", ["channel", "payload"])
_to_regclass = CustomFunction("to_regclass", ["name"])

# The listener's heartbeat: NOTIFY channel $1 with payload $2, only while every
# trigger is in place and enabled (one row), else no row and no notification, so a
# database without migration 008 (or with its triggers disabled) fails the
# heartbeat like a dead path does. Numbered placeholders: it is sent with libpq's
# non-blocking send_query_params, not through a cursor.
HEARTBEAT: Final[str] = (
    Query.from_(_pg_trigger)
    .select(_notify(Parameter("$1"), Parameter("$2")))
    .where(_pg_trigger.tgrelid == _to_regclass("tenants"))
    .where(_pg_trigger.tgname.isin(list(NOTIFY_TRIGGERS)))
    .where(_pg_trigger.tgenabled != "D")
    .having(_fn.Count("*") == len(NOTIFY_TRIGGERS))
    .get_sql()
)

# -- admin users (the Go service's admin_users) -------------------------------------

# Order and meaning of the columns _rows.admin_from_row reads; the password hash is
# read only by SELECT_ADMIN_LOGIN, after them.
ADMIN_COLUMNS: Final = ("id", "username", "role", "enabled", "created_at", "updated_at")
# Another writer may leave enabled NULL (the Go schema allows it): not enabled, as
# for tenants.
_admin_select: Final = [
    _fn.Cast(admins.id, "text"),
    admins.username,
    admins.role,
    _fn.Coalesce(admins.enabled, False),
    admins.created_at,
    admins.updated_at,
]
_ADMIN_WRITE: Final = ("id", "username", "password_hash", "role", "enabled")

INSERT_ADMIN: Final[str] = (
    Query.into(admins)
    .columns(*(admins.field(c) for c in (*_ADMIN_WRITE, "created_at", "updated_at")))
    .from_(AUDIT_CONTEXT_ROW)
    .select(*(_p(c) for c in _ADMIN_WRITE), _p("now"), _p("now"))
    .returning(*_admin_select)
    .get_sql()
)
SELECT_ADMIN_BY_ID: Final[str] = (
    Query.from_(admins).select(*_admin_select).where(admins.id == _p("id")).get_sql()
)
SELECT_ADMIN_BY_USERNAME: Final[str] = (
    Query.from_(admins)
    .select(*_admin_select)
    .where(admins.username == _p("username"))
    .get_sql()
)
SELECT_ADMIN_LOGIN: Final[str] = (
    Query.from_(admins)
    .select(*_admin_select, admins.password_hash)
    .where(admins.username == _p("username"))
    .get_sql()
)
SELECT_ADMIN_ALL: Final[str] = (
    Query.from_(admins)
    .select(*_admin_select)
    .orderby(admins.created_at, order=Order.desc)
    .orderby(admins.id, order=Order.asc)
    .get_sql()
)
_admin_touch = _greatest(_p("now"), admins.updated_at + Interval(microseconds=1))
UPDATE_ADMIN: Final[str] = (
    Query.update(admins)
    .set(admins.username, _p("username"))
    .set(admins.role, _p("role"))
    .set(admins.enabled, _p("enabled"))
    .set(admins.updated_at, _admin_touch)
    .where(admins.id == _p("id"))
    .where(AUDIT_CONTEXT)
    .returning(*_admin_select)
    .get_sql()
)
SET_ADMIN_PASSWORD: Final[str] = (
    Query.update(admins)
    .set(admins.password_hash, _p("password_hash"))
    .set(admins.updated_at, _admin_touch)
    .where(admins.id == _p("id"))
    .where(AUDIT_CONTEXT)
    .returning(*_admin_select)
    .get_sql()
)
DELETE_ADMIN: Final[str] = (
    Query.from_(admins)
    .delete()
    .where(admins.id == _p("id"))
    .where(AUDIT_CONTEXT)
    .get_sql()
)

# -- the audit log (migration 013) ---------------------------------------------------

AUDIT_COLUMNS: Final = (
    "id",
    "at",
    "table_name",
    "action",
    "entity_id",
    "actor",
    "database_user",
    "application_name",
    "changes",
)


def _select_audit(since: bool, entity: bool, before: bool) -> str:
    query = Query.from_(audit).select(
        audit.id,
        audit.at,
        audit.table_name,
        audit.action,
        _fn.Cast(audit.entity_id, "text"),
        audit.actor,
        audit.database_user,
        audit.application_name,
        _fn.Cast(audit.changes, "text"),  # parsed by us: numbers stay exact
    )
    if since:
        query = query.where(audit.at >= _p("since"))
    if entity:
        query = query.where(audit.entity_id == _p("entity_id"))
    if before:
        query = query.where(audit.id < _p("before"))
    return str(
        query.orderby(audit.id, order=Order.desc)
        .limit(LiteralValue("%(limit)s"))
        .get_sql()
    )


# record_many, the careful way: COPY the batch into a temporary table, then one
# INSERT ... SELECT, in one transaction. Measured against one statement over
# `unnest` of an array per column (the same INSERT, one round trip): 30,000
# against 22,000 rows/s for 1,000-row batches, the arrays costing more to send and
# parse than COPY's rows.
# The table is the session's (created once per connection, emptied at every
# commit), so a pool connection creates it once in its lifetime. Written as SQL,
# not composed: PyPika has no temporary tables, COPY, FOR KEY SHARE or
# data-modifying CTE.
USAGE_BATCH_SETUP: Final[str] = """
CREATE TEMPORARY TABLE IF NOT EXISTS tenantstore_usage_batch (
    position integer NOT NULL,
    tenant_id uuid NOT NULL,
    request_id text NOT NULL,
    model text NOT NULL,
    provider text NOT NULL,
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cost_usd numeric NOT NULL,
    cached boolean NOT NULL,
    latency_ms integer NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
COPY_USAGE_BATCH: Final[str] = (
    "COPY tenantstore_usage_batch (position, tenant_id, request_id, model,"
    " provider, input_tokens, output_tokens, cost_usd, cached, latency_ms, status,"
    " created_at) FROM STDIN"
)
# The fast path: the same rows straight into usage_records, when none of them is
# there already and every tenant exists (see `record_many`).
# Binary: the server parses no text (timestamps, numerics), a tenth of its time
# on these rows, and psycopg formats them for less. The rows are
# `_rows.usage_copy_rows`'s, of COPY_USAGE_DIRECT_TYPES.
COPY_USAGE_DIRECT: Final[str] = (
    "COPY usage_records (tenant_id, request_id, model, provider, input_tokens,"
    " output_tokens, cost_usd, cached, latency_ms, status, created_at)"
    " FROM STDIN (FORMAT BINARY)"
)
COPY_USAGE_DIRECT_TYPES: Final = (
    "uuid",
    "varchar",
    "varchar",
    "varchar",
    "int4",
    "int4",
    "numeric",
    "bool",
    "int4",
    "varchar",
    "timestamptz",
)
# The batch arrives free of repeated (tenant_id, request_id) pairs
# (`_rows.usage_batch_rows`). `known` locks the batch's tenants that exist, in id
# order, FOR KEY SHARE (what the foreign-key check takes anyway): a tenant deleted
# concurrently is either locked here first (its DELETE waits for this commit) or
# gone when the lock is granted (READ COMMITTED skips it), so its records are
# UNKNOWN_TENANT and the foreign key never fails the batch. The answer is one array
# of outcome codes by position (`_rows.OUTCOME_CODES`).
INSERT_USAGE_BATCH: Final[str] = """
WITH known AS (
    SELECT id FROM tenants
     WHERE id IN (SELECT tenant_id FROM tenantstore_usage_batch)
     ORDER BY id
       FOR KEY SHARE
),
added AS (
    INSERT INTO usage_records AS u
           (tenant_id, request_id, model, provider, input_tokens, output_tokens,
            cost_usd, cached, latency_ms, status, created_at)
    SELECT b.tenant_id, b.request_id, b.model, b.provider, b.input_tokens,
           b.output_tokens, b.cost_usd, b.cached, b.latency_ms, b.status,
           b.created_at
      FROM tenantstore_usage_batch AS b JOIN known AS k ON k.id = b.tenant_id
     ORDER BY b.position
    ON CONFLICT (tenant_id, request_id) DO NOTHING
    RETURNING u.tenant_id, u.request_id
)
SELECT array_agg(
           CASE WHEN k.id IS NULL THEN 2 WHEN a.request_id IS NULL THEN 1 ELSE 0 END
           ORDER BY b.position)
  FROM tenantstore_usage_batch AS b
  LEFT JOIN known AS k ON k.id = b.tenant_id
  LEFT JOIN added AS a
         ON a.tenant_id = b.tenant_id AND a.request_id = b.request_id
"""


# get_tenant_usage_summary: whole UTC days from the totals (migration 012), every
# shard of a (day, model) summed. A group whose records were all deleted keeps a
# row of zeros: it is left out, as grouping the rows would leave it out.
def _summary(bounded: bool) -> str:
    query = (
        Query.from_(daily)
        .select(
            daily.day,
            daily.model,
            _fn.Sum(daily.records),
            _fn.Sum(daily.input_tokens),
            _fn.Sum(daily.output_tokens),
            _fn.Sum(daily.cost_usd),
        )
        .where(daily.tenant_id == _p("tenant_id"))
        .where(daily.day >= _p("since"))
    )
    if bounded:
        query = query.where(daily.day < _p("until"))
    return str(
        query.groupby(daily.day, daily.model)
        .having(_fn.Sum(daily.records) != 0)
        .orderby(daily.day, order=Order.asc)
        .orderby(LiteralValue('"model" COLLATE "C"'), order=Order.asc)
        .get_sql()
    )


# (since?, entity_id?, before?) -> statement: one plan per filter, each on an index.
SELECT_AUDIT: Final[dict[tuple[bool, bool, bool], str]] = {
    (a, b, c): _select_audit(a, b, c)
    for a in (False, True)
    for b in (False, True)
    for c in (False, True)
}

SELECT_USAGE_SUMMARY: Final[str] = _summary(bounded=False)
SELECT_USAGE_SUMMARY_UNTIL: Final[str] = _summary(bounded=True)

# prune_usage: one batch per call of migration 012's function (see there).
_prune = CustomFunction("tenantstore_prune_usage", ["before", "batch"])
PRUNE_USAGE_BATCH: Final[str] = Query.select(
    _prune(_p("before"), _p("batch"))
).get_sql()
