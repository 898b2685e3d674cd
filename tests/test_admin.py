"""Admin users on every backend, and bcrypt hashes shared with the Go service.

The `admins` fixture runs each test on memory and PostgreSQL, sync and async (with
bcrypt at cost 4 there: cost 10 takes ~50 ms a hash). The interop tests use the
real cost and a vector from Go's own x/crypto/bcrypt test suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import bcrypt
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AdminUser,
    AdminUserNotFound,
    AsyncInMemoryAdminUserRepository,
    AsyncPostgresAdminUserRepository,
    Conflict,
    InMemoryAdminUserRepository,
    InvalidCredentials,
    InvalidInput,
    PostgresAdminUserRepository,
    has_permission,
    hash_password,
    verify_password,
)
from tenantstore import _passwords as passwords_module
from tests.fix_backends import FakeClock, Synced
from tests.strategies import HOSTILE_TEXT

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# From golang.org/x/crypto/bcrypt's bcrypt_test.go (TestBcryptingIsCorrect): what
# Go's bcrypt makes of "allmine" with the salt "XajjQvNhvvRt5GSeFk1xFe", cost 10.
GO_PASSWORD = "allmine"
GO_SALT = b"$2a$10$XajjQvNhvvRt5GSeFk1xFe"
GO_HASH = "$2a$10$XajjQvNhvvRt5GSeFk1xFeyqRrsxkhBkUiQeg0dt.wU1qD4aFDcga"
# What Go's bcrypt.CompareHashAndPassword parses (newFromHash): "$2" plus an
# optional minor letter, "$", a two-digit cost within [4, 31], "$", 22 + 31
# characters of bcrypt's base64.
GO_ACCEPTS = re.compile(r"\$2[a-z]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# The Go service's statements (internal/auth/rbac.go), verbatim.
GO_INSERT = (
    "INSERT INTO admin_users (id, username, password_hash, role, enabled, "
    "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
GO_SELECT = (
    "SELECT id, username, password_hash, role, enabled, created_at, updated_at "
    "FROM admin_users WHERE username = %s"
)


@pytest.fixture
def fast_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords_module, "_cost", 4)


@dataclasses.dataclass
class Admins:
    repo: Any
    clock: FakeClock
    url: str | None


@pytest.fixture(params=["memory", "memory-async", "postgres", "postgres-async"])
def admins(request: pytest.FixtureRequest, fast_bcrypt: None) -> Iterator[Admins]:
    clock = FakeClock(T0)
    kind = request.param
    if kind == "memory":
        yield Admins(InMemoryAdminUserRepository(clock=clock), clock, None)
    elif kind == "memory-async":
        runner: asyncio.Runner = request.getfixturevalue("runner")
        repo = AsyncInMemoryAdminUserRepository(clock=clock)
        yield Admins(Synced(repo, runner), clock, None)
    elif kind == "postgres":
        pool: ConnectionPool = request.getfixturevalue("pool")
        yield Admins(
            PostgresAdminUserRepository(pool, clock=clock),
            clock,
            request.getfixturevalue("clean_db"),
        )
    else:
        runner = request.getfixturevalue("runner")
        apool: AsyncConnectionPool = request.getfixturevalue("apool")
        yield Admins(
            Synced(AsyncPostgresAdminUserRepository(apool, clock=clock), runner),
            clock,
            request.getfixturevalue("clean_db"),
        )


class CountingCheckpw:
    """Counts bcrypt verifications (the work a refusal costs), passing through."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return self.real(password, hashed)


# -- the contract -------------------------------------------------------------------


def test_create_then_read_back(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "correct horse", role="admin")
    assert isinstance(alice, AdminUser)
    assert (alice.username, alice.role, alice.enabled) == ("alice", "admin", True)
    assert alice.created_at == alice.updated_at == T0
    assert str(uuid.UUID(alice.id)) == alice.id
    admins.clock.advance(1)
    bob = repo.create("bob", "battery staple")
    assert bob.role == "viewer"  # the Go schema's default
    assert repo.get_by_id(alice.id) == alice
    assert repo.get_by_username("bob") == bob
    assert repo.list() == [bob, alice]  # newest first


def test_authenticate_accepts_the_password_only(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "correct horse")
    assert repo.authenticate("alice", "correct horse") == alice
    for username, password in [
        ("alice", "correct hors"),
        ("alice", "Correct horse"),
        ("alice", ""),
        ("nobody", "correct horse"),
        ("ALICE", "correct horse"),
    ]:
        with pytest.raises(InvalidCredentials):
            repo.authenticate(username, password)


def test_refusals_look_alike_and_cost_one_verification_each(
    admins: Admins, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = admins.repo
    repo.create("alice", "correct horse")
    carol = repo.create("carol", "disabled one")
    repo.update(dataclasses.replace(carol, enabled=False))
    counter = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counter)
    messages = set()
    for username, password in [
        ("alice", "wrong"),  # wrong password
        ("mallory", "wrong"),  # unknown user: verified against the dummy hash
        ("carol", "disabled one"),  # disabled, right password
        ("a" * 300, "x"),  # not even a possible username
        ("alice", "x" * 100),  # longer than bcrypt takes
    ]:
        before = counter.calls
        with pytest.raises(InvalidCredentials) as caught:
            repo.authenticate(username, password)
        messages.add(str(caught.value))
        assert counter.calls == before + 1, username
    assert messages == {"invalid username or password"}


def test_duplicate_usernames_conflict(admins: Admins) -> None:
    repo = admins.repo
    repo.create("alice", "pw-1")
    bob = repo.create("bob", "pw-2")
    with pytest.raises(Conflict, match="admin user"):
        repo.create("alice", "pw-3")
    with pytest.raises(Conflict, match="admin user"):
        repo.update(dataclasses.replace(bob, username="alice"))
    assert sorted(u.username for u in repo.list()) == ["alice", "bob"]


def test_update_changes_username_role_enabled(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "pw-alice")
    admins.clock.advance(5)
    changed = repo.update(
        dataclasses.replace(alice, username="alice2", role="editor", enabled=False)
    )
    assert (changed.username, changed.role, changed.enabled) == (
        "alice2",
        "editor",
        False,
    )
    assert changed.created_at == alice.created_at
    assert changed.updated_at is not None
    assert alice.updated_at is not None
    assert changed.updated_at > alice.updated_at
    assert repo.get_by_username("alice2") == changed
    with pytest.raises(AdminUserNotFound):
        repo.get_by_username("alice")
    with pytest.raises(AdminUserNotFound):
        repo.update(AdminUser(username="ghost"))


def test_set_password_replaces_it(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "old password")
    updated = repo.set_password(alice.id, "new password")
    assert updated.id == alice.id
    assert repo.authenticate("alice", "new password").id == alice.id
    with pytest.raises(InvalidCredentials):
        repo.authenticate("alice", "old password")
    with pytest.raises(AdminUserNotFound):
        repo.set_password(str(uuid.uuid4()), "whatever")


def test_delete(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "pw")
    repo.delete(alice.id)
    with pytest.raises(AdminUserNotFound):
        repo.get_by_id(alice.id)
    with pytest.raises(AdminUserNotFound):
        repo.delete(alice.id)
    with pytest.raises(InvalidCredentials):
        repo.authenticate("alice", "pw")
    assert repo.list() == []


@pytest.mark.parametrize("odd", [*HOSTILE_TEXT, None, 42, b"alice"])
def test_odd_lookups_are_simply_not_found(admins: Admins, odd: Any) -> None:
    repo = admins.repo
    with pytest.raises(AdminUserNotFound):
        repo.get_by_id(odd)
    with pytest.raises(AdminUserNotFound):
        repo.get_by_username(odd)
    with pytest.raises(AdminUserNotFound):
        repo.delete(odd)
    with pytest.raises(InvalidCredentials):
        repo.authenticate(odd, "pw")
    with pytest.raises(InvalidCredentials):
        repo.authenticate("alice", odd)


@pytest.mark.parametrize(
    ("username", "password", "role", "field"),
    [
        ("", "pw", "viewer", "username"),
        ("   ", "pw", "viewer", "username"),
        ("a" * 256, "pw", "viewer", "username"),
        ("nul\x00", "pw", "viewer", "username"),
        ("surrogate\ud800", "pw", "viewer", "username"),
        (None, "pw", "viewer", "username"),
        ("alice", "pw", "root", "role"),
        ("alice", "pw", "Admin", "role"),
        ("alice", "pw", None, "role"),
        ("alice", "", "viewer", "password"),
        ("alice", "x" * 73, "viewer", "password"),
        ("alice", "é" * 37, "viewer", "password"),  # 74 bytes of UTF-8
        ("alice", "a\x00b", "viewer", "password"),
        ("alice", "\udc00", "viewer", "password"),
        ("alice", b"bytes", "viewer", "password"),
    ],
)
def test_invalid_input_names_the_field_and_writes_nothing(
    admins: Admins, username: Any, password: Any, role: Any, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        admins.repo.create(username, password, role=role)
    assert caught.value.field == field
    if isinstance(password, str) and password:
        assert password not in str(caught.value)
    assert admins.repo.list() == []


def test_a_password_of_72_bytes_is_the_longest(admins: Admins) -> None:
    repo = admins.repo
    longest = "é" * 36  # 72 bytes
    repo.create("alice", longest)
    assert repo.authenticate("alice", longest).username == "alice"
    with pytest.raises(InvalidCredentials):
        repo.authenticate("alice", longest[:-1] + "e")


def test_the_hash_is_in_no_repr_message_or_pickle(admins: Admins) -> None:
    repo = admins.repo
    alice = repo.create("alice", "s3cret-password")
    assert not hasattr(alice, "password_hash")
    assert "password_hash" not in {f.name for f in dataclasses.fields(AdminUser)}
    texts = [repr(alice), str(alice), repr(repo.list()), repr(pickle.dumps(alice))]
    failures: list[Callable[[], object]] = [
        lambda: repo.authenticate("alice", "wrong"),
        lambda: repo.create("alice", "s3cret-password"),
        lambda: repo.set_password(alice.id, "x" * 80),
    ]
    for failing in failures:
        try:
            failing()
        except Exception as exc:
            chained: BaseException | None = exc
            while chained is not None:
                texts.append(repr(chained))
                texts.append(str(chained))
                chained = chained.__cause__ or chained.__context__
    joined = "\n".join(texts)
    assert "$2a$" not in joined
    assert "$2b$" not in joined
    assert "s3cret-password" not in joined


# -- permissions ----------------------------------------------------------------------

# internal/auth/rbac.go's rolePermissions, transcribed.
GO_ROLE_PERMISSIONS = {
    "admin": {
        "tenant:read",
        "tenant:write",
        "tenant:delete",
        "usage:read",
        "admin:manage",
    },
    "editor": {"tenant:read", "tenant:write", "usage:read"},
    "viewer": {"tenant:read", "usage:read"},
}
ALL_PERMISSIONS = set().union(*GO_ROLE_PERMISSIONS.values())


@pytest.mark.parametrize("role", [*GO_ROLE_PERMISSIONS, "root", "", "ADMIN"])
@pytest.mark.parametrize("permission", [*sorted(ALL_PERMISSIONS), "tenant:*", ""])
def test_has_permission_is_the_go_table(role: str, permission: str) -> None:
    expected = permission in GO_ROLE_PERMISSIONS.get(role, set())
    assert has_permission(role, permission) is expected


def test_has_permission_of_odd_values_is_false() -> None:
    assert has_permission(None, "tenant:read") is False  # type: ignore[arg-type]
    assert has_permission("admin", None) is False  # type: ignore[arg-type]


# -- bcrypt interop with the Go service ---------------------------------------------


def test_a_hash_go_made_verifies() -> None:
    assert verify_password(GO_PASSWORD, GO_HASH)
    assert not verify_password("allmine!", GO_HASH)
    # The same computation Go's GenerateFromPassword does, given its salt.
    assert bcrypt.hashpw(GO_PASSWORD.encode(), GO_SALT).decode() == GO_HASH
    # $2b$ (what other bcrypts write) is the same algorithm: it verifies too.
    assert verify_password(GO_PASSWORD, "$2b$" + GO_HASH[4:])


def test_our_hashes_are_in_the_form_go_reads() -> None:
    made = hash_password("correct horse")
    assert GO_ACCEPTS.fullmatch(made), made
    assert made.startswith("$2a$10$")  # Go's own prefix and DefaultCost
    assert len(made) == 60
    assert bcrypt.checkpw(b"correct horse", made.encode())
    assert made != hash_password("correct horse")  # a new salt each time


def test_a_user_the_go_service_inserted_authenticates_here(
    pool: ConnectionPool, clean_db: str
) -> None:
    user_id = str(uuid.uuid4())
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(GO_INSERT, (user_id, "gopher", GO_HASH, "editor", True, T0, T0))
        # Go's schema lets enabled be NULL: such a user reads as disabled.
        conn.execute(
            "INSERT INTO admin_users (username, password_hash, enabled, "
            "created_at, updated_at) VALUES ('nulls', %s, NULL, NULL, NULL)",
            (GO_HASH,),
        )
    repo = PostgresAdminUserRepository(pool)
    gopher = repo.authenticate("gopher", GO_PASSWORD)
    assert (gopher.id, gopher.role, gopher.enabled) == (user_id, "editor", True)
    nulls = repo.get_by_username("nulls")
    assert (nulls.role, nulls.enabled, nulls.created_at) == ("viewer", False, None)
    with pytest.raises(InvalidCredentials):
        repo.authenticate("nulls", GO_PASSWORD)
    # A password hash another writer left malformed refuses, without an error.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE admin_users SET password_hash = 'not-bcrypt' WHERE id = %s",
            (user_id,),
        )
    with pytest.raises(InvalidCredentials):
        repo.authenticate("gopher", GO_PASSWORD)


def test_a_user_created_here_is_what_the_go_service_reads(
    pool: ConnectionPool, clean_db: str
) -> None:
    repo = PostgresAdminUserRepository(pool)
    created = repo.create("ops", "hunter2-hunter2", role="admin")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        row = conn.execute(GO_SELECT, ("ops",)).fetchone()
    assert row is not None
    user_id, username, password_hash, role, enabled, _, _ = row
    assert (str(user_id), username, role, enabled) == (created.id, "ops", "admin", True)
    assert GO_ACCEPTS.fullmatch(password_hash)
    assert password_hash.startswith("$2a$10$")
    assert bcrypt.checkpw(b"hunter2-hunter2", password_hash.encode())
