"""One ib_async connection per worker process, shared by its actor threads.

ib_async is asyncio code; dramatiq actors are threads.  The session runs an event loop in a
thread of its own and hands it coroutines.  It connects lazily, with a fresh clientId each
time (so a half-closed old connection never blocks the new one), and after a failure waits an
exponentially growing delay before it dials again: callers get :class:`GatewayUnavailable`
with ``retry_in`` instead of hammering a gateway that is down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: First reconnect delay after a failure, in seconds; it doubles up to ``reconnect_max``.
RECONNECT_MIN_S = 0.5

#: ib_async logs every position and portfolio row at INFO; a batch of 500 would flood worker logs.
IB_ASYNC_LOG_LEVEL = logging.WARNING

#: What a connection fetches at startup: positions always, portfolio of ``account`` if set.
STARTUP_FETCH = "ACCOUNT_UPDATES"


class GatewayUnavailable(Exception):
    """The gateway could not answer; nothing was fetched.

    Parameters:
      reason: What went wrong, for the request's record.
      retry_in: Seconds until the session will dial again.
    """

    def __init__(self, reason: str, *, retry_in: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class IBSession:
    """A lazily connected, self-healing ib_async client driven from a private loop thread.

    Parameters:
      host / port: Gateway address.
      next_client_id: Called for each connect; must return a clientId no other live
        connection uses (e.g. from a Redis counter).
      account: Account whose portfolio updates (market prices) the connection subscribes to;
        empty: none (ib_async subscribes by itself when there is one account).
      timeout: Seconds allowed for connecting and for each call.
      reconnect_max: Upper bound of the reconnect backoff, in seconds.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        next_client_id: Callable[[], int],
        account: str = "",
        timeout: float = 10.0,
        reconnect_max: float = 30.0,
    ) -> None:
        self.host, self.port, self.account = host, port, account
        self.next_client_id = next_client_id
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        self.logger = logging.getLogger(type(self).__name__)
        logging.getLogger("ib_async").setLevel(IB_ASYNC_LOG_LEVEL)
        self.connects = 0
        self._ib = None
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error = ""
        self._loop = asyncio.new_event_loop()
        self._lock: asyncio.Lock | None = None
        self._thread = threading.Thread(target=self._run_loop, name="ib-session", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, work: Callable[..., Awaitable[T]]) -> T:
        """Run ``work(ib)`` on a connected client; raise :class:`GatewayUnavailable` if it cannot."""
        future = asyncio.run_coroutine_threadsafe(self._call(work), self._loop)
        return future.result()  # bounded: connect and work each have ``timeout``

    def close(self) -> None:
        """Disconnect and stop the loop thread."""

        def stop() -> None:
            if self._ib is not None:
                self._ib.disconnect()
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(stop)
            self._thread.join(timeout=5)

    async def _call(self, work: Callable[..., Awaitable[T]]) -> T:
        # one call at a time: ib_async keys some requests by name (positions, account updates),
        # so two concurrent ones on a connection would steal each other's answer
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            return await self._call_connected(work)

    async def _call_connected(self, work: Callable[..., Awaitable[T]]) -> T:
        ib = await self._connected()
        try:
            return await asyncio.wait_for(work(ib), self.timeout)
        except (ConnectionError, TimeoutError) as exc:
            reason = f"gateway timed out after {self.timeout:g}s" if isinstance(exc, TimeoutError) else None
            ib.disconnect()  # a half-answered connection has stale request state
            raise self._failed(reason or f"gateway connection lost: {exc or type(exc).__name__}") from exc

    async def _connected(self):
        if self._ib is not None and self._ib.isConnected():
            return self._ib
        loop = asyncio.get_running_loop()
        wait = self._next_attempt - loop.time()
        if wait > 0:
            raise GatewayUnavailable(f"{self._last_error} (next attempt in {wait:.1f}s)", retry_in=wait)
        import ib_async

        ib = ib_async.IB()
        client_id = self.next_client_id()
        try:
            await ib.connectAsync(
                self.host,
                self.port,
                clientId=client_id,
                timeout=self.timeout,
                readonly=True,
                account=self.account,
                fetchFields=ib_async.StartupFetch[STARTUP_FETCH],
            )
        except (OSError, TimeoutError) as exc:
            ib.disconnect()
            reason = str(exc) or type(exc).__name__
            raise self._failed(f"cannot connect to IB gateway at {self.host}:{self.port}: {reason}") from exc
        self.logger.info("connected to %s:%d as clientId %d", self.host, self.port, client_id)
        self.connects += 1
        self._failures = 0
        self._ib = ib
        return ib

    def _failed(self, reason: str) -> GatewayUnavailable:
        self._failures += 1
        delay = min(RECONNECT_MIN_S * 2 ** (self._failures - 1), self.reconnect_max)
        self._next_attempt = self._loop.time() + delay
        self._last_error = reason
        self.logger.warning("%s; reconnecting in %.1fs", reason, delay)
        return GatewayUnavailable(reason, retry_in=delay)
