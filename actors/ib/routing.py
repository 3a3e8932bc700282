"""Routing of position updates: streaming for contracts active strategies trade, batches for the rest.

A streaming subscription takes one of IB's market-data lines, so they are rationed: a Redis
set holds the conids that have a line, and one Lua script checks the budget and adds to the
set atomically, so no number of concurrent routers can exceed ``ib_stream_slots``.  A request
for an active contract that gets (or already has) a line is served by the stream; every other
request goes to the ``ib_positions`` batch queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine

from storage.ib_contracts import active_conids
from storage.ib_positions import NewRequest

from .batches import request_position_updates

#: Queue of the stream actors (declared in :mod:`actors.ib_positions`).  Streams live in the
#: process that opened them; any number of processes may consume this queue, only the lease
#: owner (``stream_owner``) acts on it.
STREAM_QUEUE = "ib_streams"

#: Redis set (after the namespace) of the conids holding a streaming line.
SLOTS_KEY = "ib:stream-slots"

#: Redis key (after the namespace) of the stream-owner lease.
OWNER_KEY = "ib:stream-owner"

#: Milliseconds before a stream message that reached a non-owner process is sent again.
NOT_OWNER_RESEND_MS = 1_000

#: Take a line for ARGV[1] if it has none and fewer than ARGV[2] are taken; 1 if it holds one.
ACQUIRE_SCRIPT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class Route(StrEnum):
    STREAM = "stream"
    BATCH = "batch"


class StreamSlots:
    """The shared budget of streaming market-data lines.

    Parameters:
      client: Redis client.
      namespace: Redis key prefix.
      budget: Lines that may be held at once (default 100).
    """

    def __init__(self, *, client, namespace: str, budget: int = 100) -> None:
        self.client = client
        self.key = f"{namespace}:{SLOTS_KEY}"
        self.budget = budget
        self._acquire = client.register_script(ACQUIRE_SCRIPT)

    def acquire(self, conid: int) -> bool:
        """Take a line for ``conid`` (True also if it already has one); False when none is free."""
        return bool(self._acquire(keys=[self.key], args=[conid, self.budget]))

    def release(self, conid: int) -> bool:
        return bool(self.client.srem(self.key, conid))

    def held(self) -> set[int]:
        return {int(conid) for conid in self.client.smembers(self.key)}


@dataclass(frozen=True)
class Routed:
    request: NewRequest
    route: Route


class PositionRouter:
    """Sends each request to the stream or to the batch queue.

    Parameters:
      engine: Database of the request queue and the active-contract registry.
      slots: The streaming line budget.
      scheduler: Batch scheduler of the ``ib_positions`` queue.
      subscribe: ``callable(conid)`` opening the stream of a contract that just got a line.
    """

    def __init__(self, *, engine: Engine, slots: StreamSlots, scheduler, subscribe) -> None:
        self.engine, self.slots, self.scheduler, self.subscribe = engine, slots, scheduler, subscribe
        self.logger = logging.getLogger(type(self).__name__)

    def route(self, requests: list[NewRequest]) -> list[Routed]:
        active = active_conids(self.engine)
        streaming = self.slots.held()
        routed = []
        for request in requests:
            streamed = request.conid in active and self.slots.acquire(request.conid)
            if streamed and request.conid not in streaming:
                streaming.add(request.conid)
                self.subscribe(request.conid)
            routed.append(Routed(request, Route.STREAM if streamed else Route.BATCH))
        batched = [r.request for r in routed if r.route is Route.BATCH]
        if batched:
            request_position_updates(self.engine, self.scheduler, batched)
        return routed


def stream_changes(*, held: set[int], active: set[int], open_here: set[int]) -> tuple[set[int], set[int]]:
    """What the stream process must do: (conids to open, conids to close).

    A line held for an active contract but not open in this process (it restarted) is opened
    again; a line held for a contract no strategy trades any more is closed.
    """
    return (held & active) - open_here, held - active
