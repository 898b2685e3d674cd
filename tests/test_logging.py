"""What operators read: each event logs once as specified, and no line holds a secret.

Real faults on real PostgreSQL: a TCP proxy (tests/tcpproxy.py) cuts the open
connections and refuses new ones. Every connection goes through a URL with a
password (the test server trusts, so it is never checked), and every test asserts
that no record holds it, the API key, or the key's hash.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from psycopg.conninfo import make_conninfo

from tenantstore import (
    CachedTenantRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    TenantCacheListener,
    UsageRecord,
    UsageWriter,
    create_pool,
    generate_api_key,
    hash_api_key,
)
from tenantstore._redact import redact_conninfo
from tests.polling import wait_until
from tests.tcpproxy import TcpProxy, tcp_proxy

PASSWORD = "s3cret-Pa55word-in-the-url"


@pytest.fixture
def proxy(clean_db: str) -> Iterator[TcpProxy]:
    with tcp_proxy(clean_db) as p:
        yield p


@pytest.fixture
def url(proxy: TcpProxy, clean_db: str) -> str:
    """The test database through the proxy, with a password in the URL."""
    return make_conninfo(proxy.url(clean_db), password=PASSWORD)


def records(
    caplog: pytest.LogCaptureFixture, logger: str, level: int, text: str
) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == logger and r.levelno == level and text in r.getMessage()
    ]


def assert_no_secret(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    assert caplog.records, "nothing was logged"
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (PASSWORD, *secrets):
        assert secret not in text


def test_redact_conninfo_keeps_where_and_drops_secrets() -> None:
    url = (
        f"postgresql://alice:{PASSWORD}@db.example:6432/app?sslpassword=zz&passfile=/p"
    )
    assert redact_conninfo(url) == "host=db.example port=6432 dbname=app user=alice"
    assert "zz" not in redact_conninfo(f"host=h password={PASSWORD} sslpassword=zz")
    assert PASSWORD not in redact_conninfo(f"postgresql://u:{PASSWORD}@h/%zz")


def test_a_retry_on_a_lost_connection_logs_a_warning(
    proxy: TcpProxy, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantstore")
    key = generate_api_key()
    with create_pool(url, min_size=1, max_size=1) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant = tenants.create(Tenant(name="t", api_key_hash=hash_api_key(key)))
        proxy.cut()  # the pool's one connection is reset; new ones pass
        assert tenants.get_by_api_key(key).id == tenant.id  # retried, and answered
    (warning,) = records(
        caplog, "tenantstore.postgres", logging.WARNING, "connection lost"
    )
    assert "retrying once" in warning.getMessage()
    assert_no_secret(caplog, key, hash_api_key(key))


def test_stale_serves_log_once_per_outage(
    proxy: TcpProxy, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantstore")
    key = generate_api_key()
    with create_pool(url, min_size=1, max_size=2, timeout=0.5) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant = tenants.create(Tenant(name="t", api_key_hash=hash_api_key(key)))
        cache = CachedTenantRepository(tenants, stale_if_error=600)
        assert cache.get_by_api_key(key).id == tenant.id
        for outage in (1, 2):
            cache.expire_all()
            proxy.refuse()
            proxy.cut()
            before = cache.stats().stale_serves
            for _ in range(3):
                assert cache.get_by_api_key(key).id == tenant.id  # served stale
            assert cache.stats().stale_serves == before + 3
            proxy.passthrough()

            def answered(outage: int = outage) -> bool:
                cache.expire_all()
                cache.get_by_api_key(key)
                return len(_ended(caplog)) == outage

            wait_until(answered, "the database answered again")
    warnings = records(caplog, "tenantstore.cache", logging.WARNING, "unreachable")
    assert len(warnings) == 2  # one per outage, not one per stale answer
    assert "600 s" in warnings[0].getMessage()
    assert len(_ended(caplog)) == 2
    assert_no_secret(caplog, key, hash_api_key(key))


def _ended(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return records(caplog, "tenantstore.cache", logging.INFO, "stale serves ended")


def test_listener_loss_warns_once_and_reconnect_says_how_long(
    proxy: TcpProxy, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantstore")
    key = generate_api_key()
    with create_pool(url, min_size=1, max_size=2) as pool:
        tenants = PostgresTenantRepository(pool)
        tenants.create(Tenant(name="t", api_key_hash=hash_api_key(key)))
        cache = CachedTenantRepository(tenants)
        with TenantCacheListener(
            url, cache, reconnect_backoff=(0.01, 0.02)
        ) as listener:
            assert listener.wait_connected(60)
            cache.get_by_api_key(key)
            proxy.refuse()
            proxy.cut()
            # Several reconnection attempts fail while the proxy refuses.
            wait_until(
                lambda: (
                    len(records(caplog, "tenantstore.listener", logging.DEBUG, "lost"))
                    >= 3
                ),
                "three failed reconnection attempts",
            )
            assert not listener.connected
            proxy.passthrough()
            assert listener.wait_connected(60)
            assert listener.stats().reconnects == 1
    (lost,) = records(caplog, "tenantstore.listener", logging.WARNING, "lost")
    assert "caches expired" in lost.getMessage()
    assert f"port={proxy.port}" in lost.getMessage()  # where, without the password
    (back,) = records(caplog, "tenantstore.listener", logging.INFO, "listening again")
    assert " s down (reconnect 1)" in back.getMessage()
    assert_no_secret(caplog, key, hash_api_key(key))


def test_writer_retries_and_backlog_crossings(
    proxy: TcpProxy, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantstore")
    key = generate_api_key()
    with create_pool(url, min_size=1, max_size=2, timeout=0.5) as pool:
        tenant = PostgresTenantRepository(pool).create(
            Tenant(name="t", api_key_hash=hash_api_key(key))
        )
        with UsageWriter(
            PostgresUsageRepository(pool), max_batch=10, max_delay=60, max_pending=100
        ) as writer:
            proxy.refuse()
            proxy.cut()
            for i in range(95):
                writer.submit(_record(tenant.id, i))
            wait_until(lambda: writer.stats().retries >= 1, "a batch was retried")
            proxy.passthrough()
            writer.flush()
            assert writer.stats().written == 95
    backlog = records(caplog, "tenantstore.writer", logging.WARNING, "backlog")
    assert [r.getMessage().rsplit("(", 1)[1] for r in backlog] == ["50%)", "90%)"]
    assert "50 of max_pending 100" in backlog[0].getMessage()
    retried = records(caplog, "tenantstore.writer", logging.WARNING, "retrying")
    assert retried, "no retry was logged"
    assert "a batch of 10 record(s)" in retried[0].getMessage()
    assert "attempt 1," in retried[0].getMessage()
    assert records(caplog, "tenantstore.writer", logging.INFO, "backlog drained")
    assert_no_secret(caplog, key, hash_api_key(key))


def _record(tenant_id: str, i: int) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant_id,
        request_id=f"{uuid.uuid4()}-{i}",
        model="gpt-4o",
        provider="openai",
        input_tokens=1,
        output_tokens=1,
        cost_usd=Decimal("0.001"),
    )
