"""One process owns the IB streams: a Redis lease it keeps renewing while it lives.

Market-data subscriptions live in the connection of the process that opened them, so opening
and closing must happen in one process, whatever number of workers consume the stream queue.
The first process to claim the lease owns the streams; a background thread renews it every
third of its time to live.  When the owner dies the lease lapses, another process takes over
and reopens the streams (IB cancelled the dead connection's subscriptions with it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

#: Renew the lease only if we still hold it (atomic check-and-extend).
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class StreamOwner:
    """The stream-owner lease of this process.

    Parameters:
      client: Redis client.
      key: The lease's key.
      ttl: Seconds the lease outlives its last renewal (default 30).
      name: This process's name (default host:pid).
    """

    def __init__(self, *, client, key: str, ttl: float = 30.0, name: str | None = None) -> None:
        self.client, self.key, self.ttl = client, key, ttl
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.logger = logging.getLogger(type(self).__name__)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def claim(self) -> bool:
        """True if this process owns the streams (taking the lease if it is free)."""
        if self.client.set(self.key, self.name, nx=True, px=int(self.ttl * 1000)):
            self.logger.info("%s now owns the IB streams", self.name)
            self._start_renewing()
            return True
        return self.holds()

    def holds(self) -> bool:
        current = self.client.get(self.key)
        return current is not None and current.decode() == self.name

    def release(self) -> None:
        """Stop renewing (the lease lapses after ``ttl``); for tests and shutdown."""
        self._stop.set()

    def _start_renewing(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_forever, name="stream-owner", daemon=True)
        self._renewer.start()

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self._renew(keys=[self.key], args=[self.name, int(self.ttl * 1000)]):
                    self.logger.warning("%s lost the IB stream lease", self.name)
                    return
            except Exception:  # Redis away for a moment: try again next round
                self.logger.exception("renewing the IB stream lease failed")
