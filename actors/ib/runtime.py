"""This worker process's IB state: settings, engine, batch scheduler, gateway session, streams.

Each is built on first use (never in the forking master: deltalake and sockets are not
fork-safe) from the settings the process was started with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import dramatiq
from sqlalchemy import Engine

from actors.runtime import process_settings
from actors.settings import Settings
from storage import create_db_engine, utc_now
from storage.ib_positions import claimable_count, oldest_claim

from .batches import (
    CLIENT_ID_KEY,
    CLIENT_ID_SPAN,
    MIN_RETRY_DELAY_S,
    BatchResult,
    BatchScheduler,
    PositionBatcher,
)
from .routing import OWNER_KEY, StreamSlots
from .session import IBSession
from .stream_owner import StreamOwner


@dataclass(frozen=True)
class _Runtime:
    engine: Engine
    settings: Settings
    scheduler: BatchScheduler


@functools.cache
def runtime() -> _Runtime:
    """This process's settings, database engine and batch scheduler (built on first use)."""
    settings = process_settings()
    scheduler = BatchScheduler(
        broker=dramatiq.get_broker(),
        namespace=settings.namespace,
        interval=settings.ib_batch_interval_ms / 1000,
        batch_size=settings.ib_batch_size,
    )
    return _Runtime(engine=create_db_engine(settings.database_url), settings=settings, scheduler=scheduler)


@functools.cache
def shared_session() -> IBSession:
    """This process's gateway connection (built on first use, never in the forking master)."""
    settings = runtime().settings
    client = dramatiq.get_broker().client
    counter = f"{settings.namespace}:{CLIENT_ID_KEY}"
    return IBSession(
        host=settings.ib_host,
        port=settings.ib_port,
        next_client_id=lambda: settings.ib_client_id_base + client.incr(counter) % CLIENT_ID_SPAN,
        account=settings.ib_account,
        timeout=settings.ib_timeout_ms / 1000,
        reconnect_max=settings.ib_reconnect_max_ms / 1000,
    )


@functools.cache
def batcher() -> PositionBatcher:
    state = runtime()
    settings = state.settings
    return PositionBatcher(
        engine=state.engine,
        delta_root=settings.delta_root,
        session=shared_session(),
        batch_size=settings.ib_batch_size,
        lease=settings.ib_lease_ms / 1000,
        max_attempts=settings.ib_max_attempts,
    )


def run_position_batch() -> BatchResult:
    """Run one batch; chain the next at once while a backlog remains, or after a gateway backoff.

    A batch that finds nothing to claim while claims are in progress elsewhere comes back when
    the oldest of them expires, so a worker killed mid-batch delays its requests by one lease.
    """
    state = runtime()
    state.scheduler.batch_started()
    result = batcher().run_batch()
    lease = batcher().lease
    if result.retry_in is not None:
        state.scheduler.send_batch(max(result.retry_in, MIN_RETRY_DELAY_S))
    elif result.size and claimable_count(state.engine, lease=lease):
        state.scheduler.send_batch()
    elif not result.size and (claimed_at := oldest_claim(state.engine)) is not None:
        # claimed elsewhere: come back when that claim expires, in case its worker died
        expires_in = (claimed_at + lease - utc_now()).total_seconds()
        state.scheduler.send_batch(max(expires_in, MIN_RETRY_DELAY_S))
    return result


#: Tickers of the streams this worker process holds, by conid.
tickers: dict[int, object] = {}


def stream_slots() -> StreamSlots:
    """The shared budget of streaming lines, from this process's settings."""
    settings = runtime().settings
    return StreamSlots(
        client=dramatiq.get_broker().client, namespace=settings.namespace, budget=settings.ib_stream_slots
    )


@functools.cache
def stream_owner() -> StreamOwner:
    """The stream-owner lease this process competes for."""
    settings = runtime().settings
    return StreamOwner(client=dramatiq.get_broker().client, key=f"{settings.namespace}:{OWNER_KEY}")
