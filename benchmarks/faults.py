"""Fault injection for the reliability benchmark and its tests.

:class:`TcpProxy` is a small threaded TCP forwarder on a loopback port in front of a real
server (PostgreSQL, an MLflow server): the service is pointed at the proxy, and the
caller cuts the link at will — :meth:`TcpProxy.cut` resets every open connection and
refuses new ones (accepted, then reset at once), :meth:`TcpProxy.restore` forwards
again. The server itself keeps running, as in a network partition.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


def _reset(sock: socket.socket) -> None:
    """End a connection now. ``shutdown`` first: a bare ``close`` does not wake a thread
    blocked in ``recv`` on the socket, and the connection would live on in the kernel."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` until cut.

    Parameters
    ----------
    target_host, target_port
        The real server.

    Use as a context manager; :attr:`port` is the port to connect to.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self.connections = 0
        self.refused = 0
        self.cuts = 0
        self._marker: bytes | None = None
        self._frozen: set[tuple[socket.socket, socket.socket]] = set()
        self._thawed = threading.Event()
        self._thawed.set()

    # ------------------------------------------------------------------ control
    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def cut(self) -> None:
        """Reset every forwarded connection and refuse new ones."""
        self._up.clear()
        self.cuts += 1
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for client, server in pairs:
            _reset(client)
            _reset(server)

    def restore(self) -> None:
        """Forward new connections again."""
        self._up.set()

    def freeze_on(self, marker: bytes) -> None:
        """Forward until a client sends ``marker``, then hold that connection's traffic,
        both ways, until :meth:`thaw`: a server that stopped answering in the middle of a
        statement (it never raises, and no server-side timeout reaches it)."""
        self._thawed.clear()
        self._marker = marker

    def thaw(self) -> None:
        """Let the held connections go on; freeze no more."""
        self._marker = None
        self._thawed.set()

    @property
    def frozen(self) -> int:
        """Connections held by :meth:`freeze_on`."""
        return len(self._frozen)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Cut for the duration of the block."""
        self.cut()
        try:
            yield
        finally:
            self.restore()

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    # ------------------------------------------------------------------ threads
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, server)
            with self._lock:
                if not self._up.is_set():  # cut while connecting
                    _reset(client)
                    _reset(server)
                    continue
                self._pairs.add(pair)
            self.connections += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                marker = self._marker
                if marker is not None and src is pair[0] and marker in data:
                    self._frozen.add(pair)
                if pair in self._frozen:
                    self._thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            owned = pair in self._pairs
            self._pairs.discard(pair)
        if owned:  # the other direction's thread (or cut) closes nothing twice
            _reset(src)
            _reset(dst)
