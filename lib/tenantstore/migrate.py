"""The schema migration runner: ordered SQL files, recorded as golang-migrate does.

Files named ``NNN_name.up.sql`` / ``NNN_name.down.sql`` ship in the package (the
repository's top-level ``migrations/`` in a source checkout) and are applied in
version order, each in one transaction together with its version update, under the
advisory lock golang-migrate takes. Progress is kept exactly as golang-migrate keeps
it: one row in ``schema_migrations (version bigint, dirty boolean)``, set dirty and
committed before a file runs, made clean in the file's own transaction. So either tool
can take over a database from the other, and a failed file leaves its own changes
rolled back but the version marked dirty until an operator calls `force`. NOTICEs a
file raises are logged on the ``tenantstore.migrate`` logger and handed to an optional
callback. This module runs no repository code and never creates a pool.
"""

from __future__ import annotations

import logging
import re
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
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.errors import Diagnostic

from .errors import InvalidInput, StoreUnavailable, TenantStoreError

__all__ = [
    "MIGRATIONS_TABLE",
    "DirtyDatabase",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "Notice",
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

Source: TypeAlias = "Traversable | str | PathLike[str]"
_Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"


class MigrationError(TenantStoreError):
    """Migrations cannot proceed: a file failed, or files and database disagree.

    `version` and `file` name the migration concerned when there is one. When a
    file's SQL failed, the driver's exception is ``__cause__``, the file's changes
    were rolled back, and ``schema_migrations`` is left dirty: the message says which
    version to `force` once the cause is fixed.
    """

    def __init__(
        self, message: str, *, version: int | None = None, file: str | None = None
    ) -> None:
        super().__init__(message)
        self.version = version
        self.file = file


class DirtyDatabase(MigrationError):
    """``schema_migrations`` is marked dirty: a migration failed or was interrupted.

    Nothing runs until an operator checks the schema, repairs it if needed, and
    records the version it is really at with `force` (or golang-migrate's
    ``migrate force``). `version` is the dirty version (None for golang-migrate's -1).
    """

    def __init__(self, version: int | None) -> None:
        shown = "-1 (no version)" if version is None else str(version)
        super().__init__(
            f"schema_migrations is marked dirty at version {shown}: a migration "
            "failed or was interrupted, so the schema may be between two versions. "
            "Check it by hand and repair it if needed, then record the version it is "
            "really at with `tenantstore migrate force VERSION` "
            "(or golang-migrate's `migrate force VERSION`), and migrate again.",
            version=version,
        )


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
) -> list[int]:
    """Apply every pending migration up to `target` (default: the latest), in order.

    Returns the versions applied, ``[]`` when already there. Holds golang-migrate's
    advisory lock for the whole run, so concurrent runners (either tool) apply each
    file once. Raises `DirtyDatabase` without running anything when the database is
    dirty; `MigrationError` when the recorded version is unknown here or a file fails
    (that file's changes rolled back, the version left dirty, the driver's error as
    ``__cause__``); `InvalidInput` for a `target` that is not an available version or
    lies below the current one; `StoreUnavailable` when the database is unreachable.
    """
    migrations = available(source)
    known = {m.version: m for m in migrations}
    if target is not None and target not in known:
        raise InvalidInput("target", f"no migration has version {target}")
    applied: list[int] = []
    with _locked(conninfo) as session:
        current = session.clean_version(known)
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
) -> list[int]:
    """Roll back the last `steps` applied migrations (all of them when None).

    Returns the versions rolled back, newest first; fewer than `steps` when fewer are
    applied, ``[]`` when none is. Each down file runs in one transaction with the
    version update, under the same lock and with the same errors as `up`; what a down
    file cannot restore (backfilled NULLs, for one) its comments say.
    """
    if steps is not None and steps < 1:
        raise InvalidInput("steps", "must be at least 1 (or None for all)")
    migrations = available(source)
    known = {m.version: m for m in migrations}
    rolled_back: list[int] = []
    with _locked(conninfo) as session:
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
    operator has checked what the schema really is. The version is not checked
    against the available files. Raises `InvalidInput` for a negative version.
    """
    if version is not None and version < 0:
        raise InvalidInput("version", "must be 0 or more, or None for no version")
    with _locked(conninfo) as session, _translated(), session.conn.transaction():
        _set_version(session.conn, session.table, version, dirty=False)
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
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        # The driver's message may quote the string, password included: keep it out.
        raise InvalidInput(
            "conninfo", "is not a PostgreSQL connection string or URL"
        ) from exc
    if "connect_timeout" not in params:
        # libpq waits forever by default; an operator's command should not.
        conninfo = make_conninfo(conninfo, connect_timeout=_DEFAULT_CONNECT_TIMEOUT)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL: {_first_line(exc)}"
        ) from exc
    with conn:
        yield conn


@contextmanager
def _translated() -> Iterator[None]:
    """Driver errors outside a migration's own SQL become ours."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"lost the connection to PostgreSQL: {_first_line(exc)}"
        ) from exc
    except psycopg.Error as exc:
        raise TenantStoreError(
            f"unexpected database error while migrating: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


class _Session:
    """One locked connection: reads and writes the version, runs files."""

    def __init__(self, conn: _Conn, table: sql.Composable) -> None:
        self.conn = conn
        self.table = table
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
        log.info("migrating: %s", file)
        with _translated(), self.conn.transaction():
            # Committed before the file runs, as golang-migrate does: if the process
            # dies inside the file, the next runner sees dirty and stops.
            _set_version(self.conn, self.table, target, dirty=True)
        self._running, self._on_notice = (migration.version, file), on_notice
        try:
            with self.conn.transaction():
                if text.strip():
                    # Migration files are trusted code shipped with the package; sent
                    # without parameters, so as one simple-protocol multi-statement.
                    self.conn.execute(text)
                _set_version(self.conn, self.table, target, dirty=False)
        except psycopg.Error as exc:
            raise _failure(migration, file, text, target, current, exc) from exc
        finally:
            self._running, self._on_notice = None, None
        log.info("migrated: %s", file)

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


def _failure(
    migration: Migration,
    file: str,
    text: str,
    target: int | None,
    current: int | None,
    exc: psycopg.Error,
) -> MigrationError:
    where = ""
    position = exc.diag.statement_position
    if position and position.isdigit():
        where = f" (line {text[: int(position)].count(chr(10)) + 1})"
    at = "-1" if current is None else str(current)
    shown = "none (-1)" if current is None else at
    dirty_at = "-1" if target is None else str(target)
    return MigrationError(
        f"migration {file} failed{where}: {_first_line(exc)}. Its changes were "
        f"rolled back, so the schema is still at version {shown}, but "
        f"schema_migrations says {dirty_at}, dirty. Fix the cause, then run "
        f"`tenantstore migrate force {at}` and migrate again.",
        version=migration.version,
        file=file,
    )


@contextmanager
def _locked(conninfo: str) -> Iterator[_Session]:
    with _connect(conninfo) as conn:
        with _translated():
            database, schema = _names(conn)
            lock_ids = sorted(
                {
                    advisory_lock_id(database, schema),
                    advisory_lock_id("/" + database, schema),
                }
            )
            # Both ids golang-migrate may use (see advisory_lock_id), in ascending
            # order so that two runners of ours cannot deadlock on them; held by this
            # session until the end of the run, or until it dies.
            for lock_id in lock_ids:
                conn.execute("SELECT pg_advisory_lock(%s::bigint)", (lock_id,))
            table = sql.Identifier(schema, MIGRATIONS_TABLE)
            _ensure_table(conn, schema, table)
        try:
            yield _Session(conn, table)
        finally:
            if not conn.broken:
                with suppress(psycopg.Error):
                    for lock_id in reversed(lock_ids):
                        conn.execute(
                            "SELECT pg_advisory_unlock(%s::bigint)", (lock_id,)
                        )
