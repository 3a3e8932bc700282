"""Routing of position updates: streaming for contracts active strategies trade, batches for the rest.

A streaming subscription takes one of IB's market-data lines, so they are rationed: a Redis
set holds the conids that have a line, and one Lua script checks the budget and adds to the
set atomically, so no number of concurrent routers can exceed ``ib_stream_slots``.  A request
for an active contract that gets (or already has) a line is served by the stream; every other
request goes to the ``ib_positions`` batch queue.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from enum import StrEnum

import dramatiq
from periodiq import cron
from sqlalchemy import Engine

from storage.ib_contracts import active_conids, unregister_active_contract
from storage.ib_positions import NewRequest

from . import ib_positions
from .stream_owner import StreamOwner

#: Queue of the stream actors.  Streams live in the process that opened them; any number of
#: processes may consume this queue, only the lease owner (``stream_owner``) acts on it.
QUEUE = "ib_streams"

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
            ib_positions.request_position_updates(self.engine, self.scheduler, batched)
        return routed


#: Tickers of the streams this worker process holds, by conid.
_tickers: dict[int, object] = {}


def _slots() -> StreamSlots:
    settings = ib_positions.runtime().settings
    return StreamSlots(client=dramatiq.get_broker().client, namespace=settings.namespace,
                       budget=settings.ib_stream_slots)  # fmt: skip


@functools.cache
def _owner() -> StreamOwner:
    settings = ib_positions.runtime().settings
    return StreamOwner(client=dramatiq.get_broker().client, key=f"{settings.namespace}:{OWNER_KEY}")


def _owned(actor, conid: int) -> bool:
    """True if this process owns the streams; otherwise the message goes round again."""
    if _owner().claim():
        return True
    actor.send_with_options(args=(conid,), delay=NOT_OWNER_RESEND_MS)
    return False


def router() -> PositionRouter:
    """The router of this process, from the settings."""
    state = ib_positions.runtime()
    return PositionRouter(
        engine=state.engine, slots=_slots(), scheduler=state.scheduler, subscribe=open_stream.send
    )


def deactivate_contract(engine: Engine, slots: StreamSlots, *, conid: int, strategy: str) -> bool:
    """``strategy`` stops trading ``conid``; once no strategy does, its stream is closed.  True if closed."""
    unregister_active_contract(engine, conid=conid, strategy=strategy)
    if conid in active_conids(engine) or conid not in slots.held():
        return False
    close_stream.send(conid)
    return True


@dramatiq.actor(queue_name=ib_positions.QUEUE, max_retries=0, time_limit=60_000, store_results=True)
def route_position_updates(requests: list[dict]) -> list[str]:
    """Route requests (``{"conid", "account", "priority", "requested_by"}``); returns each route."""
    return [r.route.value for r in router().route([NewRequest(**request) for request in requests])]


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=60_000, store_results=True)
def open_stream(conid: int) -> float | None:
    """Subscribe market data of ``conid`` in the stream-owner process; returns the first mark.

    Reaching another process, the message is sent again until the owner gets it (``None``).
    """
    if not _owned(open_stream, conid):
        return None
    if conid in _tickers:
        return _tickers[conid].marketPrice()

    async def subscribe(ib):
        import ib_async

        ticker = ib.reqMktData(ib_async.Contract(conId=conid, exchange="SMART"))
        await ticker.updateEvent
        return ticker

    ticker = ib_positions.shared_session().call(subscribe)
    _tickers[conid] = ticker
    return ticker.marketPrice()


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=60_000)
def close_stream(conid: int) -> None:
    """Give the line of ``conid`` back (the contract is no longer active), in the owner process."""
    if not _owned(close_stream, conid):
        return
    ticker = _tickers.pop(conid, None)
    if ticker is not None:

        async def cancel(ib):
            ib.cancelMktData(ticker.contract)

        ib_positions.shared_session().call(cancel)
    _slots().release(conid)


def stream_changes(*, held: set[int], active: set[int], open_here: set[int]) -> tuple[set[int], set[int]]:
    """What the stream process must do: (conids to open, conids to close).

    A line held for an active contract but not open in this process (it restarted) is opened
    again; a line held for a contract no strategy trades any more is closed.
    """
    return (held & active) - open_here, held - active


@dramatiq.actor(
    queue_name=QUEUE, max_retries=0, time_limit=120_000, store_results=True, periodic=cron("* * * * *")
)
def reconcile_streams() -> dict:
    """Each minute, in the stream owner: reopen streams lost with a dead owner, close inactive ones."""
    if not _owner().claim():
        return {"owner": False}
    slots = _slots()
    held = slots.held()
    to_open, to_close = stream_changes(
        held=held, active=active_conids(ib_positions.runtime().engine), open_here=set(_tickers)
    )
    for conid in to_open:
        open_stream.fn(conid)
    for conid in to_close:
        close_stream.fn(conid)
    return {"opened": sorted(to_open), "closed": sorted(to_close)}
