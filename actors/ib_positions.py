"""The ``ib_positions`` queue: position-update requests fulfilled in batches.

Requests wait in SQL (``storage.ib_positions``).  Adding one makes sure a
``process_position_batch`` message is due within ``ib_batch_interval_ms`` (a Redis flag
with ``SET NX`` keeps it to one message per interval, so a trickle costs one batch per
interval and an idle queue costs nothing).  A batch claims up to ``ib_batch_size`` requests,
asks the gateway for every position with ONE ``reqPositionsAsync()`` (no market-data lines),
appends a row per fulfilled request to the Delta table ``position_updates`` in one commit,
marks each request SUCCESS or FAILED (with the reason) and, while a backlog remains, sends
the next batch at once.  A gateway that is down or drops mid-batch fails nothing: the batch
gives its requests back and retries after the session's reconnect backoff, until a request
has been tried ``ib_max_attempts`` times.

``route_position_updates`` serves requests for contracts that active strategies trade from
streaming market-data lines instead (``actors.ib.routing``): the ``ib_streams`` actors open and
close those lines in the one process that owns the streams.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

import dramatiq
from periodiq import cron
from sqlalchemy import Engine

from actors.ib import (
    NOT_OWNER_RESEND_MS,
    QUEUE,
    STREAM_QUEUE,
    PositionRouter,
    StreamSlots,
    request_position_updates,
    run_position_batch,
    runtime,
    shared_session,
    stream_changes,
    stream_owner,
    stream_slots,
    tickers,
)
from storage.ib_contracts import active_conids, unregister_active_contract
from storage.ib_positions import NewRequest, claimable_count


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=120_000, store_results=True)
def request_position_update(conid: int, account: str = "", priority: int = 0, requested_by: str = "") -> dict:
    """Queue one request from anywhere a message can be sent; returns its id and whether it merged."""
    request = NewRequest(conid=conid, account=account, priority=priority, requested_by=requested_by or None)
    state = runtime()
    (enqueued,) = request_position_updates(state.engine, state.scheduler, [request])
    return asdict(enqueued)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=300_000, store_results=True)
def process_position_batch() -> dict:
    """Run one batch; the next is chained while a backlog remains (see ``run_position_batch``)."""
    return asdict(run_position_batch())


@dramatiq.actor(
    queue_name=QUEUE, max_retries=0, time_limit=60_000, store_results=True, periodic=cron("* * * * *")
)
def sweep_position_requests() -> int:
    """Safety net (each minute): schedule a batch if requests wait, e.g. claims of a killed worker."""
    state = runtime()
    lease = timedelta(milliseconds=state.settings.ib_lease_ms)
    waiting = claimable_count(state.engine, lease=lease)
    if waiting:
        state.scheduler.requests_added(state.settings.ib_batch_size)
    return waiting


def _owned(actor, conid: int) -> bool:
    """True if this process owns the streams; otherwise the message goes round again."""
    if stream_owner().claim():
        return True
    actor.send_with_options(args=(conid,), delay=NOT_OWNER_RESEND_MS)
    return False


def router() -> PositionRouter:
    """The router of this process, from the settings."""
    state = runtime()
    return PositionRouter(
        engine=state.engine, slots=stream_slots(), scheduler=state.scheduler, subscribe=open_stream.send
    )


def deactivate_contract(engine: Engine, slots: StreamSlots, *, conid: int, strategy: str) -> bool:
    """``strategy`` stops trading ``conid``; once no strategy does, its stream is closed.  True if closed."""
    unregister_active_contract(engine, conid=conid, strategy=strategy)
    if conid in active_conids(engine) or conid not in slots.held():
        return False
    close_stream.send(conid)
    return True


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=60_000, store_results=True)
def route_position_updates(requests: list[dict]) -> list[str]:
    """Route requests (``{"conid", "account", "priority", "requested_by"}``); returns each route."""
    return [r.route.value for r in router().route([NewRequest(**request) for request in requests])]


@dramatiq.actor(queue_name=STREAM_QUEUE, max_retries=3, time_limit=60_000, store_results=True)
def open_stream(conid: int) -> float | None:
    """Subscribe market data of ``conid`` in the stream-owner process; returns the first mark.

    Reaching another process, the message is sent again until the owner gets it (``None``).
    """
    if not _owned(open_stream, conid):
        return None
    if conid in tickers:
        return tickers[conid].marketPrice()

    async def subscribe(ib):
        import ib_async

        ticker = ib.reqMktData(ib_async.Contract(conId=conid, exchange="SMART"))
        await ticker.updateEvent
        return ticker

    ticker = shared_session().call(subscribe)
    tickers[conid] = ticker
    return ticker.marketPrice()


@dramatiq.actor(queue_name=STREAM_QUEUE, max_retries=0, time_limit=60_000)
def close_stream(conid: int) -> None:
    """Give the line of ``conid`` back (the contract is no longer active), in the owner process."""
    if not _owned(close_stream, conid):
        return
    ticker = tickers.pop(conid, None)
    if ticker is not None:

        async def cancel(ib):
            ib.cancelMktData(ticker.contract)

        shared_session().call(cancel)
    stream_slots().release(conid)


@dramatiq.actor(
    queue_name=STREAM_QUEUE, max_retries=0, time_limit=120_000, store_results=True, periodic=cron("* * * * *")
)
def reconcile_streams() -> dict:
    """Each minute, in the stream owner: reopen streams lost with a dead owner, close inactive ones."""
    if not stream_owner().claim():
        return {"owner": False}
    slots = stream_slots()
    held = slots.held()
    to_open, to_close = stream_changes(
        held=held, active=active_conids(runtime().engine), open_here=set(tickers)
    )
    for conid in to_open:
        open_stream.fn(conid)
    for conid in to_close:
        close_stream.fn(conid)
    return {"opened": sorted(to_open), "closed": sorted(to_close)}
