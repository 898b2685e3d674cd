"""The fault proxy itself: each mode does to a real connection what it claims."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.polling import wait_until
from tests.tcpproxy import TcpProxy, tcp_proxy


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    with tcp_proxy(pg_url) as p:
        yield p


def test_passes_traffic(proxy: TcpProxy, pg_url: str) -> None:
    with psycopg.connect(proxy.url(pg_url), autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    assert proxy.accepted == 1


def test_freeze_holds_a_query_until_passthrough(proxy: TcpProxy, pg_url: str) -> None:
    with psycopg.connect(proxy.url(pg_url), autocommit=True) as conn:
        proxy.freeze()
        done = threading.Event()
        result: list[object] = []

        def query() -> None:
            result.append(conn.execute("SELECT 7").fetchone())
            done.set()

        worker = threading.Thread(target=query, daemon=True)
        worker.start()
        # Frozen: the answer cannot arrive, however long we look.
        assert not done.wait(0.5)
        proxy.passthrough()
        wait_until(done.is_set, "the query answered after passthrough")
        assert result == [(7,)]


def test_cut_breaks_open_connections(proxy: TcpProxy, pg_url: str) -> None:
    conn = psycopg.connect(proxy.url(pg_url), autocommit=True)
    with conn:
        wait_until(lambda: proxy.connections() == 1, "the proxy holds the connection")
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


def test_refuse_turns_new_connections_away(proxy: TcpProxy, pg_url: str) -> None:
    proxy.refuse()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.url(pg_url), connect_timeout=5)
    proxy.passthrough()
    with psycopg.connect(proxy.url(pg_url)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
