"""The tests' one TCP proxy: a real server (Redis, PostgreSQL, a Redis primary's replication
link) a test can make go away, fail half way, or drop its traffic.

* :meth:`TcpProxy.cut` / :meth:`TcpProxy.restore`: every connection dropped and new ones
  refused (the server is down), then taken again (it came back).
* :meth:`TcpProxy.drop_reply_once`: one request reaches the server, its reply is lost with
  the connection.
* :meth:`TcpProxy.cut_after`: the next connection breaks after so many bytes from the client;
  the server sees a clean end of input.
* :meth:`TcpProxy.partition`: the connections marked by what their client sent lose every byte
  in flight, both ways, but stay open (a broken network, not a closed socket).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Link:
    """One proxied connection: its two sockets and what the test asked of it."""

    client: socket.socket
    upstream: socket.socket
    #: Its next reply is to be dropped with the connection (:meth:`TcpProxy.drop_reply_once`).
    dropping: bool = False
    #: Bytes from the client after which the connection breaks (:meth:`TcpProxy.cut_after`).
    limit: int | None = None
    sent: int = 0
    #: The client was cut off at ``limit``: the server's replies are drained, not forwarded.
    severed: bool = False
    #: Its client sent the proxy's ``marker``: :meth:`TcpProxy.partition` drops its traffic.
    marked: bool = False


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
    """Forwards 127.0.0.1:<port> to ``target``, and breaks the link when the test says so.

    Parameters:
      target: (host, port) of the real server.
      marker: Bytes that mark the connection whose client sends them (``b"PSYNC"``: a replica's
        replication stream) for :meth:`partition`.  Defaults to None (no connection is marked).
    """

    def __init__(self, target: tuple[str, int], *, marker: bytes | None = None) -> None:
        self.target = target
        self.marker = marker
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._partitioned = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._trigger: Callable[[bytes], bool] | None = None
        self._cut_after: tuple[int, bool] | None = None
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """The server goes away: every connection is dropped, new ones are refused."""
        self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        """The server is back: new connections go through again."""
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def drop_reply_once(self, predicate: Callable[[bytes], bool]) -> threading.Event:
        """The next request ``predicate`` accepts reaches the server, but its connection is cut
        before the reply comes back; other connections go on.  The event is set once it happened."""
        self.dropped.clear()
        self._trigger = predicate
        return self.dropped

    def cut_after(self, size: int, *, stay_down: bool = False) -> None:
        """The next connection breaks once its client sent ``size`` bytes: the server gets the
        bytes up to there and then a clean end of input (it runs every command it received
        whole: an abortive close could make it drop them); the client sees its connection
        break and gets no reply after that.  With ``stay_down`` no later connection is taken
        (the server is still away, as after :meth:`cut`) until :meth:`restore`."""
        self._cut_after = (size, stay_down)

    def partition(self) -> None:
        """From now on the marked connections (see ``marker``) lose every byte in flight, both
        ways; their sockets stay open.  Other connections go on."""
        self._partitioned.set()

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
            link = _Link(client, upstream)
            if self._cut_after is not None:
                (link.limit, stay_down), self._cut_after = self._cut_after, None
                if stay_down:
                    self._open.clear()
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        """Client to server, until either end closes or the client is cut off at ``link.limit``."""
        client, upstream = link.client, link.upstream
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                self._check_trigger(link, data)
                if self.marker is not None and self.marker in data:
                    link.marked = True
                if link.limit is not None and link.sent + len(data) > link.limit:
                    link.severed = True  # before the last bytes go: their replies are not the client's
                    upstream.sendall(data[: link.limit - link.sent])
                    break
                link.sent += len(data)
                self._send(link, upstream, data)
        if link.severed:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)  # a clean end of input; _replies drains and closes
            _close(client)
        else:
            _close(client)
            _close(upstream)

    def _replies(self, link: _Link) -> None:
        """Server to client, until either end closes; the reply :meth:`drop_reply_once` picked is lost
        with the connection, and a severed client's replies are drained (the server sees no reset)."""
        client, upstream = link.client, link.upstream
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if link.dropping:
                    self.dropped.set()
                    break
                if link.severed:
                    continue
                try:
                    self._send(link, client, data)
                except OSError:
                    if not link.severed:
                        raise
        _close(upstream)
        _close(client)

    def _send(self, link: _Link, sink: socket.socket, data: bytes) -> None:
        if link.marked and self._partitioned.is_set():
            return  # lost on the way, as over a broken network
        sink.sendall(data)

    def _check_trigger(self, link: _Link, data: bytes) -> None:
        trigger = self._trigger
        if trigger is None or not trigger(data):
            return
        with self._lock:
            if self._trigger is trigger:  # one connection only
                self._trigger = None
                link.dropping = True  # set before the request goes on, so its reply is caught


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def proxied_redis(redis_url: str) -> tuple[TcpProxy, str]:
    """A proxy in front of the Redis of ``redis_url`` (``redis://host:port/db``), and its URL."""
    address, db = redis_url.split("//")[1].rsplit("/", 1)
    host, port = address.split(":")
    link = TcpProxy((host, int(port)))
    return link, f"redis://127.0.0.1:{link.port}/{db}"
