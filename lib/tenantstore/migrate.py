"""The schema migration runner: ordered SQL files, recorded as golang-migrate does.

Files named ``NNN_name.up.sql`` / ``NNN_name.down.sql`` ship in the package (the
repository's top-level ``migrations/`` in a source checkout) and are applied in
version order under the advisory lock golang-migrate takes. A file runs in one
transaction together with its version update, unless its first line is the marker
``-- tenantstore: no-transaction``: then it is sent as it is, outside any transaction,
exactly as golang-migrate's postgres driver sends every file (one simple-protocol
Exec). Such a file holds one statement (a ``CREATE INDEX CONCURRENTLY``, or a ``DO``
block that commits between batches) and must be safe to run again.

Progress is kept exactly as golang-migrate keeps it: one row in
``schema_migrations (version bigint, dirty boolean)``, set dirty and committed before
a file runs, made clean once it has run. So either tool can take over a database from
the other, and a failed file leaves the version marked dirty until an operator calls
`force`. A database the Go service created with ``psql -f 001_initial.up.sql`` (the
001 schema, no ``schema_migrations``) is recognised and recorded at version 1 before
anything runs, as Flyway's baseline does; any other unversioned schema is refused
untouched, with the differences named.

Migrations run beside live writers: every statement waits at most `lock_timeout` for
a lock, and a file whose lock was not granted (or that lost a deadlock) is retried
with backoff, `lock_retries` times, then given up (a file in a transaction leaves the
version clean, a file outside one leaves it dirty). NOTICEs a file raises are logged
on the ``tenantstore.migrate`` logger and handed to an optional callback. This module
runs no repository code and never creates a pool.
"""

from __future__ import annotations

import logging
import random
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, Final, TypeAlias

import psycopg
from psycopg import sql
from psycopg.errors import Diagnostic

from . import _oneshot, _pooler
from .errors import (
    DirtyDatabase,
    InvalidInput,
    MigrationError,
    StoreUnavailable,
    TenantStoreError,
)

__all__ = [
    "DEFAULT_LOCK_RETRIES",
    "DEFAULT_LOCK_TIMEOUT",
    "MIGRATIONS_TABLE",
    "NO_TRANSACTION_MARKER",
    "DirtyDatabase",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "Notice",
    "Source",
    "advisory_lock_id",
    "available",
    "down",
    "force",
    "status",
    "up",
]

log = logging.getLogger(__name__)

MIGRATIONS_TABLE: Final = "schema_migrations"
"""golang-migrate's default table, in the connection's current schema."""

# golang-migrate database/util.go: advisoryLockIDSalt.
_LOCK_SALT: Final = 1486364155
# golang-migrate's "no version": the row it writes while rolling back the first file.
_NIL_VERSION: Final = -1
_DEFAULT_CONNECT_TIMEOUT: Final = 10
_FILE_RE: Final = re.compile(r"([0-9]+)_(.+)\.(up|down)\.sql")
NO_TRANSACTION_MARKER: Final = "-- tenantstore: no-transaction"
"""The first line of a file the runner sends outside a transaction."""
DEFAULT_LOCK_TIMEOUT: Final = 2.0
"""Seconds a migration statement waits for a lock before its file is retried."""
DEFAULT_LOCK_RETRIES: Final = 10
"""How many times a file whose lock was not granted is run again."""
_RETRY_FIRST_DELAY: Final = 0.2
_RETRY_MAX_DELAY: Final = 10.0
# Errors that mean "try again later": a lock not granted within lock_timeout, a
# deadlock lost to a writer. Nothing of the file's transaction is left; a
# no-transaction file is written to be run again.
_RETRYABLE: Final = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)
# An index a failed CREATE INDEX CONCURRENTLY left behind, invalid: dropped before the
# file runs again, else its IF NOT EXISTS would keep the invalid index.
_CONCURRENT_INDEX_RE: Final = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"([A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)
# The tables of the Go service's schema (001): their presence without a version means
# a database that service created.
_BASELINE_TABLES: Final = ("tenants", "usage_records", "admin_users")

Source: TypeAlias = "Traversable | str | PathLike[str]"
_Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered migration: its `version`, `name` and the SQL of both directions."""

    version: int
    name: str
    up: str = field(repr=False)
    down: str = field(repr=False)

    def filename(self, direction: str) -> str:
        """The conventional file name, ``NNN_name.<direction>.sql``."""
        return f"{self.version:03d}_{self.name}.{direction}.sql"

    def in_transaction(self, direction: str) -> bool:
        """False when the file of `direction` starts with `NO_TRANSACTION_MARKER`."""
        text = self.up if direction == "up" else self.down
        first = text.lstrip().partition("\n")[0].strip()
        return first != NO_TRANSACTION_MARKER


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a database stands.

    `version` is the recorded version (None when nothing is applied), `dirty` whether
    a migration failed or was interrupted there, `latest` the highest available
    version (None when there are no files), `pending` the available migrations above
    `version`, in order.
    """

    version: int | None
    dirty: bool
    latest: int | None
    pending: tuple[Migration, ...]

    @property
    def up_to_date(self) -> bool:
        """True when clean and nothing is pending."""
        return not self.dirty and not self.pending


@dataclass(frozen=True, slots=True)
class Notice:
    """A NOTICE (or WARNING, INFO...) raised by a migration file while it ran."""

    version: int
    file: str
    severity: str
    message: str


def advisory_lock_id(
    database: str, schema: str = "public", table: str = MIGRATIONS_TABLE
) -> int:
    """The advisory lock id golang-migrate's postgres driver takes for this table.

    It is ``GenerateAdvisoryLockId(database, schema, table)``: CRC-32 (IEEE) of
    ``schema \\0 table \\0 database`` in UTF-8, times 1486364155, modulo 2**32.
    golang-migrate names the database by the URL's path when given a URL (so with a
    leading ``/``) and by ``current_database()`` otherwise; the runner locks both.
    """
    key = "\x00".join((schema, table, database)).encode()
    return (zlib.crc32(key) * _LOCK_SALT) & 0xFFFFFFFF


def available(source: Source | None = None) -> list[Migration]:
    """Every migration in `source`, ordered by version.

    `source` defaults to the migrations shipped in the package (the repository's
    top-level ``migrations/`` in a source checkout). Files not named
    ``NNN_name.up.sql`` / ``NNN_name.down.sql`` are ignored. Raises `MigrationError`
    when the directory is missing, a version lacks one direction, or two files claim
    the same version and direction.
    """
    root = _resolve_source(source)
    if not root.is_dir():
        raise MigrationError(f"no migrations directory at {root}")
    files: dict[int, dict[str, tuple[str, str]]] = {}
    for entry in root.iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match is None or not entry.is_file():
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        both = files.setdefault(version, {})
        if direction in both:
            raise MigrationError(
                f"two {direction} files for version {version}: "
                f"{both[direction][0]} and {entry.name}",
                version=version,
                file=entry.name,
            )
        both[direction] = (entry.name, name)
    migrations = []
    for version in sorted(files):
        both = files[version]
        if set(both) != {"up", "down"}:
            (present,) = both.values()
            raise MigrationError(
                f"{present[0]} has no matching {'down' if 'up' in both else 'up'} file",
                version=version,
                file=present[0],
            )
        (up_file, up_name), (down_file, down_name) = both["up"], both["down"]
        if up_name != down_name:
            raise MigrationError(
                f"{up_file} and {down_file} disagree on the migration's name",
                version=version,
                file=down_file,
            )
        migrations.append(
            Migration(
                version=version,
                name=up_name,
                up=(root / up_file).read_text(encoding="utf-8"),
                down=(root / down_file).read_text(encoding="utf-8"),
            )
        )
    return migrations


def status(conninfo: str, *, source: Source | None = None) -> MigrationStatus:
    """Where the database at `conninfo` stands against the available migrations.

    Reads only: takes no lock and creates nothing. Raises `StoreUnavailable` when the
    database cannot be reached, `InvalidInput` for a malformed `conninfo`.
    """
    migrations = available(source)
    with _connect(conninfo) as conn, _translated():
        _, schema = _names(conn)
        version, dirty = _read_version(conn, sql.Identifier(schema, MIGRATIONS_TABLE))
    return MigrationStatus(
        version=version,
        dirty=dirty,
        latest=migrations[-1].version if migrations else None,
        pending=tuple(m for m in migrations if version is None or m.version > version),
    )


def up(
    conninfo: str,
    target: int | None = None,
    *,
    source: Source | None = None,
    on_notice: Callable[[Notice], None] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    lock_retries: int = DEFAULT_LOCK_RETRIES,
) -> list[int]:
    """Apply every pending migration up to `target` (default: the latest), in order.

    Returns the versions applied, ``[]`` when already there; a database adopted at
    version 1 (the Go service's schema without ``schema_migrations``) does not list 1.
    Holds golang-migrate's advisory lock for the whole run, so concurrent runners
    (either tool) apply each file once. Each statement waits at most `lock_timeout`
    seconds for a lock; a file that could not get one is retried up to
    `lock_retries` times with backoff. Raises `DirtyDatabase` without running
    anything when the database is dirty; `MigrationError` when the recorded version
    is unknown here, an unversioned schema is not exactly the first migration's, the
    locks stayed busy through every retry, or a file fails
    (the version left dirty, the driver's error as ``__cause__``); `InvalidInput`
    for a `target` that is not an available version or lies below the current one,
    a bad `lock_timeout`/`lock_retries`, or a `conninfo` that goes through a
    connection pooler such as PgBouncer (the lock needs one session: give the
    database's direct URL; nothing is done); `StoreUnavailable` when the database
    is unreachable.
    """
    retry = _Retry.checked(lock_timeout, lock_retries)
    migrations = available(source)
    known = {m.version: m for m in migrations}
    if target is not None and target not in known:
        raise InvalidInput("target", f"no migration has version {target}")
    applied: list[int] = []
    with _locked(conninfo, retry) as session:
        current = session.clean_version(known)
        if current is None and migrations:
            current = session.adopt(migrations[0])
        if target is not None and current is not None and target < current:
            raise InvalidInput(
                "target", f"is below the current version {current}: use down"
            )
        for migration in migrations:
            if current is not None and migration.version <= current:
                continue
            if target is not None and migration.version > target:
                break
            session.run(migration, "up", migration.version, current, on_notice)
            current = migration.version
            applied.append(migration.version)
    return applied


def down(
    conninfo: str,
    steps: int | None = 1,
    *,
    source: Source | None = None,
    on_notice: Callable[[Notice], None] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    lock_retries: int = DEFAULT_LOCK_RETRIES,
) -> list[int]:
    """Roll back the last `steps` applied migrations (all of them when None).

    Returns the versions rolled back, newest first; fewer than `steps` when fewer are
    applied, ``[]`` when none is. Each down file runs as `up` runs files (in one
    transaction with the version update unless marked), under the same lock, lock
    timeout and retries, with the same errors; what a down file cannot restore
    (backfilled NULLs, for one) its comments say.
    """
    if steps is not None and steps < 1:
        raise InvalidInput("steps", "must be at least 1 (or None for all)")
    retry = _Retry.checked(lock_timeout, lock_retries)
    migrations = available(source)
    known = {m.version: m for m in migrations}
    rolled_back: list[int] = []
    with _locked(conninfo, retry) as session:
        current = session.clean_version(known)
        if current is None:
            return rolled_back
        applied = [m for m in migrations if m.version <= current]
        chosen = applied if steps is None else applied[-steps:]
        for migration in reversed(chosen):
            index = applied.index(migration)
            previous = applied[index - 1].version if index else None
            session.run(migration, "down", previous, migration.version, on_notice)
            rolled_back.append(migration.version)
    return rolled_back


def force(conninfo: str, version: int | None) -> None:
    """Record `version` (None: nothing applied) as clean, running no migration.

    This is golang-migrate's ``force``: the way out of `DirtyDatabase` once an
    operator has checked what the schema really is, and the way to record the
    version of a schema that has none. The version is not checked against the
    available files. Raises `InvalidInput` for a negative version.
    """
    if version is not None and version < 0:
        raise InvalidInput("version", "must be 0 or more, or None for no version")
    retry = _Retry.checked(DEFAULT_LOCK_TIMEOUT, 0)
    with (
        _locked(conninfo, retry) as session,
        _translated(),
        session.conn.transaction(),
    ):
        session.write_version(version, dirty=False)
    log.info("schema_migrations forced to version %s (clean)", version)


def _resolve_source(source: Source | None) -> Traversable:
    if source is None:
        packaged = resources.files("tenantstore") / "migrations"
        if packaged.is_dir():
            return packaged
        # Editable installs and source checkouts: the repository's own directory.
        return Path(__file__).resolve().parents[2] / "migrations"
    if isinstance(source, str | PathLike):
        return Path(source)
    return source


@contextmanager
def _connect(conninfo: str) -> Iterator[_Conn]:
    with _oneshot.connect(
        conninfo, field="conninfo", connect_timeout=_DEFAULT_CONNECT_TIMEOUT
    ) as conn:
        yield conn


@contextmanager
def _translated() -> Iterator[None]:
    """Driver errors outside a migration's own SQL become ours."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"lost the connection to PostgreSQL: {_oneshot.first_line(exc)}"
        ) from exc
    except psycopg.Error as exc:
        raise TenantStoreError(
            f"unexpected database error while migrating: {_oneshot.first_line(exc)}"
        ) from exc


def _names(conn: _Conn) -> tuple[str, str]:
    row = conn.execute("SELECT current_database(), current_schema()").fetchone()
    if row is None or row[1] is None:
        raise TenantStoreError(
            "the connection has no current schema (no schema of search_path exists)"
        )
    return str(row[0]), str(row[1])


def _ensure_table(conn: _Conn, schema: str, table: sql.Composable) -> None:
    # Checked first, as golang-migrate does, so that a role without CREATE can still
    # migrate a database whose table exists.
    exists = conn.execute(
        "SELECT 1 FROM information_schema.tables"
        " WHERE table_schema = %s AND table_name = %s",
        (schema, MIGRATIONS_TABLE),
    ).fetchone()
    if exists is None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}"
                " (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
            ).format(table)
        )


def _read_version(conn: _Conn, table: sql.Composable) -> tuple[int | None, bool]:
    try:
        row = conn.execute(
            sql.SQL("SELECT version, dirty FROM {} LIMIT 1").format(table)
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None, False
    if row is None:
        return None, False
    version, dirty = row
    return (None if version < 0 else int(version)), bool(dirty)


def _set_version(
    conn: _Conn, table: sql.Composable, version: int | None, *, dirty: bool
) -> None:
    # golang-migrate's SetVersion, to be called in a transaction: empty the table,
    # then one row; "no version" and clean is an empty table, "no version" and dirty
    # is (-1, true).
    conn.execute(sql.SQL("TRUNCATE {}").format(table))
    if version is not None or dirty:
        conn.execute(
            sql.SQL("INSERT INTO {} (version, dirty) VALUES (%s, %s)").format(table),
            (_NIL_VERSION if version is None else version, dirty),
        )


@dataclass(frozen=True, slots=True)
class _Retry:
    """How long a statement waits for a lock, and how often a file is retried."""

    timeout: float
    retries: int

    @classmethod
    def checked(cls, timeout: float, retries: int) -> _Retry:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < 86_400
        ):
            raise InvalidInput(
                "lock_timeout", "must be a number of seconds above 0 (and below a day)"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInput("lock_retries", "must be a whole number, 0 or more")
        return cls(float(timeout), retries)

    @property
    def setting(self) -> str:
        """`lock_timeout` as PostgreSQL's setting (whole milliseconds, at least 1)."""
        return f"{max(1, round(self.timeout * 1000))}ms"

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed `attempt` (1, 2, ...): doubling, jittered."""
        base = min(_RETRY_MAX_DELAY, _RETRY_FIRST_DELAY * 2.0 ** (attempt - 1))
        # Jitter, so that two runners (or a runner and a cron job) do not collide
        # in step.
        return base * (0.5 + random.random() / 2)


class _Session:
    """One locked connection: reads and writes the version, runs files."""

    def __init__(
        self, conn: _Conn, schema: str, table: sql.Composable, retry: _Retry
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.table = table
        self.retry = retry
        self._table_ready = False
        self._running: tuple[int, str] | None = None
        self._on_notice: Callable[[Notice], None] | None = None
        conn.add_notice_handler(self._notice)

    def clean_version(self, known: dict[int, Migration]) -> int | None:
        with _translated():
            version, dirty = _read_version(self.conn, self.table)
        if dirty:
            raise DirtyDatabase(version)
        if version is not None and version not in known:
            latest = max(known, default=None)
            raise MigrationError(
                f"the database is at version {version}, which no migration file "
                f"here has (latest here: {latest}): it was migrated by a newer "
                "tenantstore or by another tool",
                version=version,
            )
        return version

    def write_version(self, version: int | None, *, dirty: bool) -> None:
        """Record `version`; creates ``schema_migrations`` on first use. In a tx."""
        if not self._table_ready:
            _ensure_table(self.conn, self.schema, self.table)
            self._table_ready = True
        _set_version(self.conn, self.table, version, dirty=dirty)

    def adopt(self, first: Migration) -> int | None:
        """Baseline an unversioned database: `first`'s version if its schema is
        exactly `first`'s, None if it holds none of it; else `MigrationError`.

        Reads only, until the version is recorded: a refused database is left as it
        was (not even ``schema_migrations`` is created).
        """
        with _translated():
            live = _describe(self.conn, self.schema, None)
            if not live:
                return None
            reference = _describe(self.conn, self.schema, first)
        differences = _differences(live, reference)
        if differences:
            shown = differences[:12]
            if len(differences) > len(shown):
                shown.append(f"and {len(differences) - len(shown)} more")
            first_file = first.filename("up")
            raise MigrationError(
                f"schema_migrations records no version, but schema {self.schema!r} "
                f"already holds tables that are not exactly those of {first_file}, "
                f"so nothing was changed. Differences: {'; '.join(shown)}. If the "
                "schema is at a later version of these migrations, record it with "
                "`tenantstore migrate force VERSION`, then run `migrate up` again; "
                f"otherwise make it match {first_file} (the differences above) and "
                "run `migrate up` again.",
                version=first.version,
                file=first_file,
            )
        with _translated(), self.conn.transaction():
            self.write_version(first.version, dirty=False)
        log.info(
            "schema %r is the schema of %s without a recorded version (created "
            "with psql, as the Go service does): recorded as version %d",
            self.schema,
            first.filename("up"),
            first.version,
        )
        return first.version

    def run(
        self,
        migration: Migration,
        direction: str,
        target: int | None,
        current: int | None,
        on_notice: Callable[[Notice], None] | None,
    ) -> None:
        """Run one file: `target` is the version recorded, `current` where we are."""
        file = migration.filename(direction)
        text = migration.up if direction == "up" else migration.down
        transactional = migration.in_transaction(direction)
        log.info("migrating: %s", file)
        with _translated(), self.conn.transaction():
            # Committed before the file runs, as golang-migrate does: if the process
            # dies inside the file, the next runner sees dirty and stops.
            self.write_version(target, dirty=True)
        self._running, self._on_notice = (migration.version, file), on_notice
        try:
            attempt = 1
            while True:
                try:
                    self._attempt(text, target, transactional)
                    break
                except _RETRYABLE as exc:
                    if attempt > self.retry.retries:
                        if transactional:
                            # Nothing of the file is left: back to where we were.
                            with _translated(), self.conn.transaction():
                                self.write_version(current, dirty=False)
                        # A marked file may have committed part of its work: it
                        # stays dirty, as golang-migrate leaves it, until forced.
                        raise _busy(
                            migration, file, target, current, attempt, transactional,
                            self.retry,
                        ) from exc  # fmt: skip
                    delay = self.retry.delay(attempt)
                    log.warning(
                        "%s: %s (lock_timeout %s); retrying in %.1f s (retry %d of %d)",
                        file,
                        _oneshot.first_line(exc),
                        self.retry.setting,
                        delay,
                        attempt,
                        self.retry.retries,
                    )
                    time.sleep(delay)
                    attempt += 1
        except psycopg.Error as exc:
            raise _failure(
                migration, file, text, target, current, exc, transactional
            ) from exc
        finally:
            self._running, self._on_notice = None, None
        log.info("migrated: %s", file)

    def _attempt(self, text: str, target: int | None, transactional: bool) -> None:
        # Migration files are trusted code shipped with the package; sent without
        # parameters, so as one simple-protocol query, as golang-migrate sends them.
        if transactional:
            with self.conn.transaction():
                if text.strip():
                    self.conn.execute(text)
                self.write_version(target, dirty=False)
            return
        self._drop_invalid_indexes(text)
        if text.strip():
            self.conn.execute(text)
        with self.conn.transaction():
            self.write_version(target, dirty=False)

    def _drop_invalid_indexes(self, text: str) -> None:
        for name in _CONCURRENT_INDEX_RE.findall(text):
            invalid = self.conn.execute(
                "SELECT 1 FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid"
                " WHERE i.relname = %s AND i.relnamespace = %s::regnamespace"
                " AND NOT x.indisvalid",
                (name, sql.Identifier(self.schema).as_string(self.conn)),
            ).fetchone()
            if invalid is not None:
                log.warning(
                    "dropping index %s, left invalid by a failed build, to build it "
                    "again",
                    name,
                )
                self.conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(self.schema, name)
                    )
                )

    def _notice(self, diag: Diagnostic) -> None:
        if self._running is None:
            return
        version, file = self._running
        severity = diag.severity_nonlocalized or diag.severity or "NOTICE"
        notice = Notice(version, file, severity, diag.message_primary or "")
        level = logging.WARNING if severity == "WARNING" else logging.INFO
        log.log(level, "%s: %s: %s", file, severity, notice.message)
        if self._on_notice is not None:
            self._on_notice(notice)


# What adoption compares: per table of 001 (and the tables later migrations add, to
# name them when present), every column with its type, NOT NULL, default and comment,
# every constraint, index and trigger; and the functions later migrations add.
_DESCRIBE: Final = """
SELECT c.relname::text, 'table', c.relkind::text
  FROM pg_class AS c
 WHERE c.relnamespace = %(ns)s AND c.relname = ANY(%(tables)s)
UNION ALL
SELECT c.relname::text, 'column ' || a.attname,
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
       || coalesce(' COMMENT ' || quote_literal(col_description(c.oid, a.attnum)), '')
  FROM pg_class AS c
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE c.relnamespace = %(ns)s AND c.relname = ANY(%(base)s)
UNION ALL
SELECT c.relname::text, 'constraint ' || o.conname, pg_get_constraintdef(o.oid)
  FROM pg_constraint AS o JOIN pg_class AS c ON c.oid = o.conrelid
 WHERE c.relnamespace = %(ns)s AND c.relname = ANY(%(base)s)
UNION ALL
SELECT c.relname::text, 'index ' || i.relname, pg_get_indexdef(i.oid)
  FROM pg_index AS x
  JOIN pg_class AS c ON c.oid = x.indrelid
  JOIN pg_class AS i ON i.oid = x.indexrelid
 WHERE c.relnamespace = %(ns)s AND c.relname = ANY(%(base)s)
UNION ALL
SELECT c.relname::text, 'trigger ' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND c.relnamespace = %(ns)s AND c.relname = ANY(%(base)s)
UNION ALL
SELECT '', 'function ' || p.proname || '()', ''
  FROM pg_proc AS p
 WHERE p.pronamespace = %(ns)s AND p.proname LIKE 'tenantstore\\_%%'
"""
_LATER_TABLES: Final = ("usage_records_duplicates", "usage_daily_totals")
# pg_get_indexdef and pg_get_triggerdef qualify the table; the reference lives in
# pg_temp, the live tables in their schema.
_QUALIFIED_RE: Final = re.compile(r' ON (ONLY )?(?:"(?:[^"]|"")+"|[A-Za-z0-9_$]+)\.')

_Description: TypeAlias = dict[tuple[str, str], str]


def _describe(conn: _Conn, schema: str, reference: Migration | None) -> _Description:
    """The live schema's tables, or (`reference` given) those its up file creates.

    The reference is built in this session's temporary schema, in a transaction
    rolled back at once, so that it is described by this very server, as the live
    one is (types, defaults and constraints print per server version).
    """
    with conn.transaction(force_rollback=True):
        if reference is None:
            conn.execute(
                "SELECT set_config('search_path', %s, true)",
                (sql.Identifier(schema).as_string(conn),),
            )
            namespace = conn.execute(
                "SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
        else:
            conn.execute("SELECT set_config('search_path', 'pg_temp', true)")
            conn.execute(reference.up)
            namespace = conn.execute("SELECT pg_my_temp_schema()").fetchone()
        assert namespace is not None
        found = conn.execute(
            _DESCRIBE,
            {
                "ns": namespace[0],
                "tables": [*_BASELINE_TABLES, *_LATER_TABLES],
                "base": list(_BASELINE_TABLES),
            },
        ).fetchall()
    return {
        (str(table), str(item)): _QUALIFIED_RE.sub(r" ON \1", str(definition))
        for table, item, definition in found
    }


def _differences(live: _Description, reference: _Description) -> list[str]:
    """What makes `live` differ from `reference`, one phrase per difference."""
    found: list[str] = []
    missing_tables = {t for t, item in reference if item == "table"} - {
        t for t, item in live if item == "table"
    }
    extra_tables = {t for t, item in live if item == "table"} - {
        t for t, item in reference if item == "table"
    }
    for table in sorted(missing_tables):
        found.append(f"table {table} is missing")
    for table in sorted(extra_tables):
        found.append(f"table {table} is not in it (made by a later migration?)")
    for key in sorted(set(live) | set(reference)):
        table, item = key
        if table in missing_tables or table in extra_tables or item == "table":
            continue
        where = f"{table}: " if table else ""
        if key not in live:
            found.append(f"{where}{item} is missing ({reference[key]})")
        elif key not in reference:
            extra = f" ({live[key]})" if live[key] else ""
            found.append(f"{where}{item} is not in it{extra}")
        elif live[key] != reference[key]:
            found.append(f"{where}{item} is {live[key]}, not {reference[key]}")
    return found


def _busy(
    migration: Migration,
    file: str,
    target: int | None,
    current: int | None,
    attempts: int,
    transactional: bool,
    retry: _Retry,
) -> MigrationError:
    at = "-1" if current is None else str(current)
    shown = "none (-1)" if current is None else at
    why = (
        f"migration {file} could not take the locks it needs within lock_timeout "
        f"({retry.setting}) in {attempts} attempts: a long transaction holds a lock "
        "on its tables or waits for one (see pg_stat_activity and pg_locks)."
    )
    if transactional:
        then = (
            f"Nothing changed and nothing is marked dirty: schema_migrations still "
            f"says {shown}, clean. Run `migrate up` again once that transaction has "
            "ended, or with a longer lock timeout or more retries (`--lock-timeout`, "
            "`--lock-retries`)."
        )
    else:
        dirty_at = "-1" if target is None else str(target)
        then = (
            "It runs outside a transaction, so what it committed before stays, and it "
            f"is written to be run again; schema_migrations says {dirty_at}, dirty. "
            f"Once that transaction has ended, run `tenantstore migrate force {at}` "
            "and migrate again."
        )
    return MigrationError(f"{why} {then}", version=migration.version, file=file)


def _failure(
    migration: Migration,
    file: str,
    text: str,
    target: int | None,
    current: int | None,
    exc: psycopg.Error,
    transactional: bool,
) -> MigrationError:
    where = ""
    position = exc.diag.statement_position
    if position and position.isdigit():
        where = f" (line {text[: int(position)].count(chr(10)) + 1})"
    at = "-1" if current is None else str(current)
    shown = "none (-1)" if current is None else at
    dirty_at = "-1" if target is None else str(target)
    if transactional:
        state = (
            f"Its changes were rolled back, so the schema is still at version "
            f"{shown}, but schema_migrations says {dirty_at}, dirty."
        )
    else:
        state = (
            "It runs outside a transaction, so what it committed before the failure "
            "stays, and it is written to be run again; schema_migrations says "
            f"{dirty_at}, dirty."
        )
    return MigrationError(
        f"migration {file} failed{where}: {_oneshot.first_line(exc)}. {state} Fix the "
        f"cause, then run `tenantstore migrate force {at}` and migrate again.",
        version=migration.version,
        file=file,
    )


def _take_advisory_locks(conn: _Conn, lock_ids: list[int]) -> None:
    """Take every lock of `lock_ids`, or none, waiting as long as it takes.

    Polled with pg_try_advisory_lock, never waited for in one statement: a session
    blocked in pg_advisory_lock keeps a snapshot open, and the other runner's
    CREATE INDEX CONCURRENTLY waits for every open snapshot to end, so the two would
    deadlock. Waiting blocks nobody else (another runner may take minutes).
    """
    delay = 0.01
    announced = False
    while True:
        taken: list[int] = []
        for lock_id in lock_ids:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s::bigint)", (lock_id,)
            ).fetchone()
            if row is None or not row[0]:
                break
            taken.append(lock_id)
        else:
            return
        # Holding one id while waiting for the other could deadlock with a runner
        # that holds the other: let go of both, then try again.
        for lock_id in reversed(taken):
            conn.execute("SELECT pg_advisory_unlock(%s::bigint)", (lock_id,))
        if not announced:
            log.info("waiting for the migration lock: another runner holds it")
            announced = True
        time.sleep(delay)
        delay = min(0.5, delay * 2)


@contextmanager
def _locked(conninfo: str, retry: _Retry) -> Iterator[_Session]:
    with _connect(conninfo) as conn:
        with _translated():
            row = conn.execute(_pooler.SERVER_PID).fetchone()
            if row is not None and _pooler.behind_pooler(conn.info.backend_pid, row[0]):
                # Its lock and lock_timeout would stay on one server connection
                # and the migrations run on others.
                raise _pooler.refused(
                    "migrations",
                    "hold an advisory lock in one session for the whole run",
                    "the migration runner (and `tenantstore migrate`)",
                )
            database, schema = _names(conn)
            lock_ids = sorted(
                {
                    advisory_lock_id(database, schema),
                    advisory_lock_id("/" + database, schema),
                }
            )
            # Both ids golang-migrate may use (see advisory_lock_id); held by this
            # session until the end of the run, or until it dies.
            _take_advisory_locks(conn, lock_ids)
            # From here on every statement waits for a lock at most this long: an
            # ALTER queued behind a long transaction would otherwise block every
            # reader and writer of the table queued behind it.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false)", (retry.setting,)
            )
            table = sql.Identifier(schema, MIGRATIONS_TABLE)
        try:
            yield _Session(conn, schema, table, retry)
        finally:
            if not conn.broken:
                with suppress(psycopg.Error):
                    conn.execute("SELECT set_config('lock_timeout', '0', false)")
                    for lock_id in reversed(lock_ids):
                        conn.execute(
                            "SELECT pg_advisory_unlock(%s::bigint)", (lock_id,)
                        )
