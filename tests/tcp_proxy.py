"""A TCP proxy a test can cut and restore, to make a real server "go away"."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Link:
    """One proxied connection: its two sockets, and whether its next reply is to be dropped."""

    client: socket.socket
    upstream: socket.socket
    dropping: bool = False


def resp_command(data: bytes) -> list[bytes] | None:
    """The arguments of the one RESP command ``data`` holds, or None if it holds something else."""
    if not data.startswith(b"*"):
        return None
    try:
        head, rest = data.split(b"\r\n", 1)
        parts = []
        for _ in range(int(head[1:])):
            length, rest = rest.split(b"\r\n", 1)
            size = int(length[1:])
            parts.append(rest[:size])
            rest = rest[size + 2 :]
    except ValueError:
        return None
    return parts if not rest else None


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every connection and refuses new ones.

    ``drop_reply_once(predicate)`` loses one reply instead: the server runs the
    request, the client sees its connection break.

    Parameters:
      target: (host, port) of the real server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._trigger: Callable[[bytes], bool] | None = None
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply_once(self, predicate: Callable[[bytes], bool]) -> threading.Event:
        """The next request ``predicate`` accepts reaches the server, but its connection is cut
        before the reply comes back; other connections go on.  The event is set once it happened."""
        self.dropped.clear()
        self._trigger = predicate
        return self.dropped

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # no Nagle: small replies must not wait 40 ms for an ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
            link = _Link(client, upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(link, source, sink), daemon=True).start()

    def _pipe(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if source is link.client:
                    self._check_trigger(link, data)
                elif link.dropping:  # the reply of the triggering request: lost with the connection
                    self.dropped.set()
                    break
                self._forward(source, sink, data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _forward(self, source: socket.socket, sink: socket.socket, data: bytes) -> None:
        """Pass ``data`` read from ``source`` on to ``sink`` (subclasses may drop it)."""
        sink.sendall(data)

    def _check_trigger(self, link: _Link, data: bytes) -> None:
        trigger = self._trigger
        if trigger is None or not trigger(data):
            return
        with self._lock:
            if self._trigger is trigger:  # one connection only
                self._trigger = None
                link.dropping = True  # set before the request goes on, so its reply is caught


def proxied_redis(redis_url: str) -> tuple[TcpProxy, str]:
    """A proxy in front of the Redis of ``redis_url`` (``redis://host:port/db``), and its URL."""
    address, db = redis_url.split("//")[1].rsplit("/", 1)
    host, port = address.split(":")
    link = TcpProxy((host, int(port)))
    return link, f"redis://127.0.0.1:{link.port}/{db}"
