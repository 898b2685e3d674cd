"""The key lifecycle against PostgreSQL: rotation, grace, revocation, expiry.

What the differential machine cannot show: concurrent writers claiming one key, the
Go service's own statements meeting the uniqueness of previous keys, and a second
OS process whose rotation and revocation reach this process's cache through the
listener.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tenantstore import (
    CachedTenantRepository,
    Conflict,
    InMemoryTenantRepository,
    KeyCipher,
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    generate_api_key,
    hash_api_key,
)
from tests.fix_backends import FakeClock
from tests.polling import wait_until
from tests.test_foreign_rows import GO_INSERT, GO_UPDATE, NORMAL, T0
from tests.test_invalidation import found, stack, warm

LIB = Path(__file__).resolve().parents[1] / "lib"


def new_tenant(repo: Any, key: str) -> Tenant:
    created: Tenant = repo.create(
        Tenant(name="acme", api_key_hash=hash_api_key(key)), api_key=key
    )
    return created


def authenticates(repo: Any, key: str) -> bool:
    try:
        repo.get_by_api_key(key)
    except TenantNotFound:
        return False
    return True


def test_grace_and_expiry_end_at_their_instant_by_the_repository_clock(
    pool: ConnectionPool,
) -> None:
    clock = FakeClock()
    cipher = KeyCipher({"k1": KeyCipher.generate_key()})
    repo = PostgresTenantRepository(pool, clock=clock, cipher=cipher)
    cache = CachedTenantRepository(repo, clock=clock)
    old, new = generate_api_key(), generate_api_key()
    tenant = new_tenant(repo, old)
    assert tenant.api_key_prefix == old[:8]
    assert cache.get_by_api_key(old).id == tenant.id  # warm

    rotated = cache.rotate_api_key(
        tenant.id, new, grace=timedelta(hours=1), expires_at=T0 + timedelta(days=90)
    )
    assert rotated.previous_api_key_hash == tenant.api_key_hash
    assert rotated.previous_api_key_expires_at == clock.now() + timedelta(hours=1)
    assert rotated.api_key_prefix == new[:8]
    assert repo.reveal_api_key(tenant.id) == new
    # A retried rotation revokes nothing.
    assert cache.rotate_api_key(tenant.id, new) == rotated
    for backend in (repo, cache):
        assert authenticates(backend, old)
        assert authenticates(backend, new)
    clock.advance(3600 - 0.000001)
    assert authenticates(cache, old)
    assert authenticates(repo, old)
    clock.advance(0.000001)  # the grace ends exactly here, also for a warm entry
    assert not authenticates(cache, old)
    assert not authenticates(repo, old)
    assert authenticates(cache, new)

    # Expiry of the current key: exact, from a warm entry too.
    expiring = cache.rotate_api_key(
        tenant.id, old, expires_at=clock.now() + timedelta(seconds=5)
    )
    assert expiring.previous_api_key_hash is None  # grace 0: revoked at once
    assert not authenticates(cache, new)
    assert authenticates(cache, old)
    clock.advance(4.999999)
    assert authenticates(cache, old)
    clock.advance(0.000001)
    assert not authenticates(cache, old)
    assert not authenticates(repo, old)


def test_a_grace_never_outlives_the_old_key_and_revocation_ends_it(
    pool: ConnectionPool,
) -> None:
    clock = FakeClock()
    repo = PostgresTenantRepository(pool, clock=clock)
    a, b, c = (generate_api_key() for _ in range(3))
    tenant = repo.create(
        Tenant(
            name="acme",
            api_key_hash=hash_api_key(a),
            api_key_expires_at=clock.now() + timedelta(minutes=5),
        )
    )
    rotated = repo.rotate_api_key(tenant.id, b, grace=timedelta(days=1))
    assert rotated.previous_api_key_expires_at == clock.now() + timedelta(minutes=5)
    # One previous key at a time: rotating again revokes `a`.
    again = repo.rotate_api_key(tenant.id, c, grace=timedelta(days=1))
    assert again.previous_api_key_hash == hash_api_key(b)
    assert not authenticates(repo, a)
    assert authenticates(repo, b)
    assert authenticates(repo, c)
    revoked = repo.revoke_previous_api_key(tenant.id)
    assert revoked.previous_api_key_hash is None
    assert revoked.previous_api_key_expires_at is None
    assert not authenticates(repo, b)
    assert authenticates(repo, c)
    assert repo.revoke_previous_api_key(tenant.id) == revoked  # nothing left to end


def test_a_hash_is_one_tenants_key_whoever_writes(
    pool: ConnectionPool, clean_db: str
) -> None:
    repo = PostgresTenantRepository(pool)
    a, b, other = (generate_api_key() for _ in range(3))
    tenant = new_tenant(repo, a)
    repo.rotate_api_key(tenant.id, b, grace=timedelta(hours=1))
    second = new_tenant(repo, other)
    # Our writes: `a` is a previous key, so nobody else's current or previous key.
    with pytest.raises(Conflict):
        repo.rotate_api_key(second.id, a)
    with pytest.raises(Conflict):
        new_tenant(repo, a)
    with pytest.raises(Conflict):
        repo.update(Tenant(id=second.id, name="x", api_key_hash=hash_api_key(a)))
    # The Go service's plain INSERT and UPDATE get a unique violation, and the
    # row stays as it was.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        values = list(NORMAL.values())
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                GO_INSERT,
                (str(uuid.uuid4()), values[0], hash_api_key(a), *values[1:], T0, T0),
            )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                GO_UPDATE, (values[0], hash_api_key(a), *values[1:], T0, second.id)
            )
    assert repo.get_by_id(second.id).api_key_hash == hash_api_key(other)
    # Once revoked, the hash is free again.
    repo.revoke_previous_api_key(tenant.id)
    assert repo.rotate_api_key(second.id, a).api_key_hash == hash_api_key(a)


def test_concurrent_rotations_onto_one_key_one_wins(clean_db: str) -> None:
    with ConnectionPool(
        clean_db, min_size=16, max_size=16, kwargs={"autocommit": True}
    ) as pool:
        repo = PostgresTenantRepository(pool)
        tenants = [new_tenant(repo, generate_api_key()) for _ in range(2)]
        key = generate_api_key()
        barrier = threading.Barrier(16)
        results: list[tuple[str, Any]] = []
        lock = threading.Lock()

        def rotate(tenant: Tenant) -> None:
            barrier.wait()
            try:
                outcome: tuple[str, Any] = ("ok", repo.rotate_api_key(tenant.id, key))
            except Conflict:
                outcome = ("conflict", tenant.id)
            with lock:
                results.append(outcome)

        threads = [
            threading.Thread(target=rotate, args=(tenants[i % 2],)) for i in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = {t.id for kind, t in results if kind == "ok"}
        assert len(winners) == 1  # exactly one tenant got the key
        (winner,) = winners
        loser = next(t.id for t in tenants if t.id != winner)
        # Every rotation of the winner returns it with the key (one changed it,
        # the others found it done); every rotation of the other is a Conflict.
        assert sorted(kind for kind, _ in results) == ["conflict"] * 8 + ["ok"] * 8
        assert {value for kind, value in results if kind == "conflict"} == {loser}
        assert repo.get_by_api_key(key).id == winner
        assert repo.get_by_id(loser).api_key_hash != hash_api_key(key)


_OTHER_PROCESS = """
import sys
from datetime import timedelta
from tenantstore import PostgresTenantRepository, create_pool
url, op, tenant_id, key, grace = sys.argv[1:]
with create_pool(url, min_size=1, max_size=1) as pool:
    repo = PostgresTenantRepository(pool)
    if op == "rotate":
        repo.rotate_api_key(tenant_id, key, grace=timedelta(seconds=float(grace)))
    else:
        repo.revoke_previous_api_key(tenant_id)
"""


def other_process(
    url: str, op: str, tenant_id: str, key: str = "", grace: float = 0.0
) -> None:
    subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, url, op, tenant_id, key, str(grace)],
        check=True,
        env={"PYTHONPATH": str(LIB)},
        timeout=60,
    )


def test_rotation_and_revocation_in_another_process_reach_this_cache(
    clean_db: str,
) -> None:
    a, b, c = (generate_api_key() for _ in range(3))
    with stack(clean_db) as here:
        tenant = new_tenant(here.repo, a)
        warm(here.cache, a)
        # Rotated with grace 0 by another process: `a` ends once the notification
        # has arrived, and is never answered again.
        other_process(clean_db, "rotate", tenant.id, b)
        wait_until(lambda: found(here.cache, a) is None, "the old key is refused")
        warm(here.cache, b)
        assert found(here.cache, a) is None
        # Rotated with a day of grace: both keys work, from memory.
        other_process(clean_db, "rotate", tenant.id, c, grace=86400.0)
        warm(here.cache, c)
        warm(here.cache, b)
        # Revoked early by the other process: `b` ends here too.
        other_process(clean_db, "revoke", tenant.id)
        wait_until(lambda: found(here.cache, b) is None, "the previous key ends")
        assert found(here.cache, a) is None
        assert found(here.cache, c) is not None


def test_enabling_a_tenant_in_grace_revives_its_previous_key_in_the_cache() -> None:
    clock = FakeClock()
    cache = CachedTenantRepository(InMemoryTenantRepository(clock=clock), clock=clock)
    old, new = generate_api_key(), generate_api_key()
    tenant = new_tenant(cache, old)
    cache.rotate_api_key(tenant.id, new, grace=timedelta(hours=1))
    disabled = cache.update(
        dataclasses.replace(cache.get_by_id(tenant.id), enabled=False)
    )
    assert not authenticates(cache, old)  # now remembered as unknown
    # Built afresh (no previous key in it): the store keeps the previous key.
    cache.update(Tenant(id=disabled.id, name="acme", api_key_hash=hash_api_key(new)))
    assert authenticates(cache, old)  # the negative entry of the previous key went
    assert authenticates(cache, new)
