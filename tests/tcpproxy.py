"""A TCP proxy on 127.0.0.1 that passes, freezes, refuses or cuts traffic.

Faults between a client and PostgreSQL, made real: the client connects to the
proxy's port, the proxy connects to the server, and one background thread copies
bytes both ways. `freeze()` stops copying while every socket stays open (a dead
path, a hung peer: nothing arrives, nothing is refused, TCP keeps ACKing the
client's bytes into the proxy's buffers); `cut()` resets every open connection;
`refuse()` turns new connections away at once; `passthrough()` heals all of it.
Nothing here knows the protocol, so it sits as well under a listener, a pool or a
cancel request.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["TcpProxy", "server_address", "tcp_proxy"]

PASS: Final = "pass"
FREEZE: Final = "freeze"
REFUSE: Final = "refuse"

_CHUNK: Final = 65536
# SO_LINGER on, timeout 0: close() sends RST instead of FIN, as a dropped path does.
_RESET: Final = struct.pack("ii", 1, 0)


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target`; faults on demand (thread-safe).

    `target` is a (host, port) pair, or the path of a unix socket (an embedded
    server listens on one only).
    """

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._mode = PASS
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        # socket -> its peer socket (both directions of each connection).
        self._peers: dict[socket.socket, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self.accepted = 0
        """How many client connections the proxy took (refused ones not counted)."""
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(
            target=self._loop, name="tcp-proxy", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def passthrough(self) -> None:
        """Copy traffic again (what was buffered while frozen is delivered)."""
        self._set(PASS)

    def freeze(self) -> None:
        """Stop copying bytes either way; connections stay open and silent."""
        self._set(FREEZE)

    def refuse(self) -> None:
        """Reset new connections at once; open ones carry on as they are."""
        self._set(REFUSE)

    def cut(self) -> None:
        """Reset every open connection (both sides). The mode is unchanged."""
        with self._lock:
            self._cut_all()
        self._wake()

    def close(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(timeout=10)
        with self._lock:
            self._cut_all()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the loop ------------------------------------------------------------

    def _set(self, mode: str) -> None:
        with self._lock:
            self._mode = mode
        self._wake()

    def _wake(self) -> None:
        with suppress(OSError):
            self._wake_w.send(b"\0")

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(timeout=1.0):
                with self._lock:
                    if key.data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.data == "accept":
                        self._accept()
                    else:
                        self._copy(key.fileobj)  # type: ignore[arg-type]
                    self._rearm()

    def _rearm(self) -> None:
        # While frozen nothing is read, so the kernel buffers fill and stop: the
        # peers see a silent path, not an error.
        want = 0 if self._mode == FREEZE else selectors.EVENT_READ
        for sock in list(self._peers):
            try:
                key = self._selector.get_key(sock)
            except KeyError:
                if want:
                    self._selector.register(sock, want, "data")
                continue
            if not want:
                self._selector.unregister(sock)
            elif key.events != want:
                self._selector.modify(sock, want, "data")

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._mode == REFUSE:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            client.close()
            return
        try:
            upstream = _connect(self.target)
        except OSError:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            client.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for sock in (client, upstream):
            sock.setblocking(False)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self.accepted += 1

    def _copy(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None or self._mode == FREEZE:
            return
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock, reset=False)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock, reset=True)

    def _drop(self, sock: socket.socket, *, reset: bool) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            with suppress(KeyError, ValueError):
                self._selector.unregister(s)
            if reset:
                with suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            s.close()

    def _cut_all(self) -> None:
        for sock in list(self._peers):
            if sock in self._peers:
                self._drop(sock, reset=True)

    def connections(self) -> int:
        """How many client connections are open through the proxy now."""
        with self._lock:
            return len(self._peers) // 2

    def url(self, url: str) -> str:
        """`url` (a PostgreSQL URL or conninfo) pointed at this proxy."""
        params = conninfo_to_dict(url)
        params["host"] = "127.0.0.1"
        params["port"] = str(self.port)
        params.pop("hostaddr", None)
        return make_conninfo("", **params)


def server_address(url: str) -> tuple[str, int] | str:
    """Where the server `url` names listens: (host, port), or a unix socket path."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "127.0.0.1")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


def _connect(target: tuple[str, int] | str) -> socket.socket:
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection(target, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextmanager
def tcp_proxy(url: str) -> Iterator[TcpProxy]:
    """A running `TcpProxy` to the server of `url`, closed afterwards."""
    proxy = TcpProxy(server_address(url))
    try:
        yield proxy
    finally:
        proxy.close()
