"""Fork safety: a forked child does not trust a cache its parent's listener kept.

Under `gunicorn --preload` (or any `os.fork()` after the cache and its listener
started) the child inherits the cache's entries and a listener object whose thread
and connections exist only in the parent. These tests fork for real: the child
reports over a pipe what its cache did while its parent's listener went on
invalidating only the parent's copy, and then what it did once it had a listener
of its own; the parent checks that its own listener was left untouched (a child
closing the inherited socket would end the parent's session).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import traceback
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncPostgresTenantRepository,
    AsyncTenantCacheListener,
    CachedTenantRepository,
    PostgresTenantRepository,
    Tenant,
    TenantCacheListener,
    TenantNotFound,
    create_async_pool,
    create_pool,
    generate_api_key,
    hash_api_key,
)
from tests.polling import DEADLINE, wait_until

SET_ENABLED = "UPDATE tenants SET enabled = %s WHERE id = %s"


def set_enabled(url: str, tenant_id: str, enabled: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SET_ENABLED, (enabled, tenant_id))


def in_child(work: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Fork; the child runs `work` and sends back its report (or its error)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read)
        try:
            report = work()
        except BaseException:
            report = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            json.dump(report, out)
        os._exit(0)
    os.close(write)
    return pid, _report(pid, read)


def _report(pid: int, read: int) -> dict[str, Any]:
    # A child that hangs (waiting for a parent's thread, say) fails the test
    # within the deadline instead of hanging it.
    ready, _, _ = select.select([read], [], [], DEADLINE)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        pytest.fail(f"the child did not report within {DEADLINE} s")
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report: dict[str, Any] = json.loads(text)
    assert "error" not in report, report.get("error")
    return report


def found(cache: CachedTenantRepository, key: str) -> bool:
    try:
        cache.get_by_api_key(key)
    except TenantNotFound:
        return False
    return True


def test_a_forked_child_fails_closed_until_it_has_its_own_listener(
    clean_db: str,
) -> None:
    key = generate_api_key()
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        tenant = repo.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
        cache = CachedTenantRepository(repo, ttl=300)
        with TenantCacheListener(clean_db, cache, heartbeat=(0.2, 1.0)) as listener:
            assert listener.wait_connected(DEADLINE)
            hits = cache.stats().hits
            wait_until(
                lambda: found(cache, key) and cache.stats().hits > hits,
                "the parent serves the key from memory",
            )
            parent_pid = listener.backend_pid
            # The parent's listener will see this, the child's copy never could.
            set_enabled(clean_db, tenant.id, False)
            wait_until(lambda: not found(cache, key), "the parent refuses it")
            set_enabled(clean_db, tenant.id, True)
            wait_until(lambda: found(cache, key), "the parent accepts it again")

            def child() -> dict[str, Any]:
                report: dict[str, Any] = {"connected": listener.connected}
                # The parent's pool is the parent's: a process of its own needs
                # its own connections, as a gunicorn worker does after the fork.
                with create_pool(clean_db, min_size=1, max_size=1) as own:
                    cache.inner = PostgresTenantRepository(own)
                    before = cache.stats()
                    cache.get_by_api_key(key)
                    cache.get_by_api_key(key)
                    after = cache.stats()
                    report["hits"] = after.hits - before.hits
                    report["fills"] = after.fills - before.fills
                    try:
                        listener.start()
                    except RuntimeError:
                        report["restart_refused"] = True
                    listener.close()  # must not touch the parent's connection
                    with TenantCacheListener(clean_db, cache) as mine:
                        report["own_connected"] = mine.wait_connected(DEADLINE)
                        cache.get_by_api_key(key)
                        before = cache.stats()
                        cache.get_by_api_key(key)
                        report["own_hits"] = cache.stats().hits - before.hits
                return report

            _, report = in_child(child)
            assert report["connected"] is False
            # Nothing from memory: both lookups asked the store.
            assert (report["hits"], report["fills"]) == (0, 2)
            assert report["restart_refused"] is True
            assert report["own_connected"] is True
            assert report["own_hits"] == 1
            # The parent's listener is as it was: same session, still notified.
            assert listener.connected
            assert listener.backend_pid == parent_pid
            assert listener.reconnects == 0
            set_enabled(clean_db, tenant.id, False)
            wait_until(lambda: not found(cache, key), "the parent still hears")


def test_a_forked_child_does_not_wait_for_a_parent_fill(clean_db: str) -> None:
    # A lookup in flight in a parent thread at the fork never finishes in the
    # child: a child lookup of that key must not wait for it.
    import threading

    key = generate_api_key()
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        repo.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
        held = threading.Event()
        release = threading.Event()

        class Holding:
            def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
                held.set()
                release.wait(DEADLINE)
                return repo.get_by_api_key_hash(api_key_hash)

            def __getattr__(self, name: str) -> Any:
                return getattr(repo, name)

        cache = CachedTenantRepository(Holding())
        lookup = threading.Thread(target=cache.get_by_api_key, args=(key,))
        lookup.start()
        assert held.wait(DEADLINE)

        def child() -> dict[str, Any]:
            with create_pool(clean_db, min_size=1, max_size=1) as own:
                cache.inner = PostgresTenantRepository(own)
                return {"id": cache.get_by_api_key(key).id}

        try:
            _, report = in_child(child)
        finally:
            release.set()
            lookup.join()
        assert report["id"] == cache.get_by_api_key(key).id


def test_an_async_cache_forked_fails_closed(
    clean_db: str, runner: asyncio.Runner
) -> None:
    key = generate_api_key()

    async def setup() -> tuple[Any, AsyncCachedTenantRepository, Any, str]:
        pool = await create_async_pool(clean_db, min_size=1, max_size=2)
        repo = AsyncPostgresTenantRepository(pool)
        tenant = await repo.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
        cache = AsyncCachedTenantRepository(repo, ttl=300)
        listener = AsyncTenantCacheListener(clean_db, cache, heartbeat=(0.2, 1.0))
        await listener.start()
        assert await listener.wait_connected(DEADLINE)
        for _ in range(2):
            await cache.get_by_api_key(key)
        assert cache.stats().hits >= 1
        return pool, cache, listener, tenant.id

    pool, cache, listener, tenant_id = runner.run(setup())
    try:

        def child() -> dict[str, Any]:
            async def check() -> dict[str, Any]:
                own = await create_async_pool(clean_db, min_size=1, max_size=1)
                async with own:
                    cache.inner = AsyncPostgresTenantRepository(own)
                    before = cache.stats()
                    await cache.get_by_api_key(key)
                    await cache.get_by_api_key(key)
                    after = cache.stats()
                    await listener.close()  # inert here
                    return {
                        "connected": listener.connected,
                        "hits": after.hits - before.hits,
                        "fills": after.fills - before.fills,
                    }

            return asyncio.run(check())

        _, report = in_child(child)
        assert report == {"connected": False, "hits": 0, "fills": 2}

        async def parent_still_listens() -> None:
            assert listener.connected
            assert listener.reconnects == 0
            set_enabled(clean_db, tenant_id, False)
            for _ in range(int(DEADLINE * 100)):
                try:
                    await cache.get_by_api_key(key)
                except TenantNotFound:
                    return
                await asyncio.sleep(0.01)
            pytest.fail("the parent's listener no longer invalidates")

        runner.run(parent_still_listens())
    finally:

        async def teardown() -> None:
            await listener.close()
            await pool.close()

        runner.run(teardown())
