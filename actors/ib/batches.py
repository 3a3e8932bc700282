"""Position-update batches: claim queued requests, fetch every position once, write Delta rows.

How the ``ib_positions`` queue uses them (due flags, chaining, retries) is told in
:mod:`actors.ib_positions`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import dramatiq
from sqlalchemy import Engine

from storage import utc_now
from storage.ib_models import PositionBatch
from storage.ib_positions import (
    ClaimedRequest,
    Enqueued,
    NewRequest,
    claim_requests,
    enqueue_requests,
    finish_requests,
    record_batch,
    release_requests,
)
from storage.position_updates import Holding, PositionUpdate, append_position_updates

from .session import GatewayUnavailable, IBSession

#: Queue of the position actors.
QUEUE = "ib_positions"

#: Redis key (after the namespace) that exists while a batch message is due.
BATCH_DUE_KEY = "ib:batch-due"

#: Redis counter handing out clientIds to worker processes.
CLIENT_ID_KEY = "ib:client-ids"

#: Distinct clientIds handed out before the counter wraps.
CLIENT_ID_SPAN = 10_000

#: Shortest delay before a batch that met a gateway failure runs again, in seconds.
MIN_RETRY_DELAY_S = 0.1

#: Seconds a due flag outlives its interval, so a lost message cannot block scheduling for long.
DUE_FLAG_GRACE_S = 30


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    size: int
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    rows_written: int = 0
    error: str | None = None
    retry_in: float | None = None


async def fetch_holdings(ib) -> list[Holding]:
    """Every position of every account (one ``reqPositions``), marked from the portfolio cache."""
    positions = await ib.reqPositionsAsync()
    marks = {(item.account, item.contract.conId): item for item in ib.portfolio()}
    holdings = []
    for p in positions:
        item = marks.get((p.account, p.contract.conId))
        holdings.append(
            Holding(
                account=p.account,
                conid=p.contract.conId,
                symbol=p.contract.symbol,
                sec_type=p.contract.secType,
                currency=p.contract.currency,
                position=p.position,
                avg_cost=p.avgCost,
                market_price=item.marketPrice if item else None,
                market_value=item.marketValue if item else None,
            )
        )
    return holdings


def match_requests(
    claimed: list[ClaimedRequest], holdings: list[Holding]
) -> tuple[list[tuple[ClaimedRequest, Holding]], dict[int, str]]:
    """Pair each request with its holdings (an empty account means every account).

    Returns the pairs and, per unfulfilled request id, why it failed.
    """
    by_conid: dict[int, list[Holding]] = defaultdict(list)
    for holding in holdings:
        by_conid[holding.conid].append(holding)
    pairs, failures = [], {}
    for request in claimed:
        held = [h for h in by_conid.get(request.conid, []) if request.account in ("", h.account)]
        if not held:
            where = f"account {request.account}" if request.account else "any account"
            failures[request.request_id] = f"conid {request.conid} not held in {where}"
        pairs.extend((request, h) for h in held)
    return pairs, failures


class PositionBatcher:
    """Runs one batch: claim, fetch, write Delta rows, finish each request, record the batch.

    Parameters:
      engine: Database of the request queue.
      delta_root: Root of the Delta tables (``position_updates`` lives below it).
      session: The process's gateway connection.
      batch_size: Requests per batch (default 50).
      lease: A claim older than this is considered abandoned, in seconds (default 60).
      max_attempts: Batches a request may be tried in before it fails for good (default 10).
      worker: Name recorded on claims and batches (default host:pid).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        delta_root: Path,
        session: IBSession,
        batch_size: int = 50,
        lease: float = 60.0,
        max_attempts: int = 10,
        worker: str | None = None,
    ) -> None:
        self.engine = engine
        self.delta_root = Path(delta_root)
        self.session = session
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease)
        self.max_attempts = max_attempts
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.logger = logging.getLogger(type(self).__name__)

    def run_batch(self) -> BatchResult:
        batch_id = uuid.uuid4().hex
        started = utc_now()
        claimed = claim_requests(
            self.engine, batch_id=batch_id, worker=self.worker, limit=self.batch_size, lease=self.lease
        )
        if not claimed:
            return BatchResult(batch_id=batch_id, size=0)
        try:
            holdings = self.session.call(fetch_holdings)
            result = self._write(batch_id, claimed, holdings)
        except GatewayUnavailable as exc:
            result = self._give_back(batch_id, claimed, exc.reason, retry_in=exc.retry_in)
        except Exception as exc:
            # e.g. the Delta write failed: nothing was marked, the requests go back
            self.logger.exception("batch %s failed", batch_id)
            result = self._give_back(batch_id, claimed, f"{type(exc).__name__}: {exc}", retry_in=1.0)
        self._record(result, started)
        return result

    def _write(self, batch_id: str, claimed: list[ClaimedRequest], holdings: list[Holding]) -> BatchResult:
        fetched_at = utc_now()
        pairs, failures = match_requests(claimed, holdings)
        updates = [
            PositionUpdate(
                request_id=request.request_id,
                batch_id=batch_id,
                fetched_at=fetched_at,
                **asdict(holding),
            )
            for request, holding in pairs
        ]
        # rows first, then the marks: a crash in between re-runs the request (at least once)
        append_position_updates(self.delta_root, updates)
        outcomes: dict[int, str | None] = {r.request_id: failures.get(r.request_id) for r in claimed}
        finish_requests(self.engine, batch_id=batch_id, outcomes=outcomes)
        return BatchResult(
            batch_id=batch_id,
            size=len(claimed),
            succeeded=len(claimed) - len(failures),
            failed=len(failures),
            rows_written=len(updates),
        )

    def _give_back(self, batch_id: str, claimed: list, reason: str, *, retry_in: float) -> BatchResult:
        released, failed = release_requests(
            self.engine, batch_id=batch_id, reason=reason, max_attempts=self.max_attempts
        )
        return BatchResult(
            batch_id=batch_id,
            size=len(claimed),
            failed=failed,
            released=released,
            error=reason,
            retry_in=retry_in,
        )

    def _record(self, result: BatchResult, started) -> None:
        record_batch(
            self.engine,
            PositionBatch(
                batch_id=result.batch_id,
                worker=self.worker,
                started_at=started,
                finished_at=utc_now(),
                size=result.size,
                succeeded=result.succeeded,
                failed=result.failed,
                released=result.released,
                rows_written=result.rows_written,
                error=result.error,
            ),
        )


def batch_message() -> dramatiq.Message:
    """A ``process_position_batch`` message (sendable through any broker, declared or not)."""
    return dramatiq.Message(
        queue_name=QUEUE, actor_name="process_position_batch", args=(), kwargs={}, options={}
    )


class BatchScheduler:
    """Keeps one batch message due while requests wait, and none when the queue is idle.

    Parameters:
      broker: Broker the batch messages go through.
      namespace: Redis key prefix (``Settings.namespace``).
      interval: Longest wait of a request for its batch, in seconds (default 5).
      batch_size: Requests that make a full batch: that many at once are sent without delay.
    """

    def __init__(self, *, broker, namespace: str, interval: float = 5.0, batch_size: int = 50) -> None:
        self.broker = broker
        self.key = f"{namespace}:{BATCH_DUE_KEY}"
        self.interval = interval
        self.batch_size = batch_size

    def requests_added(self, count: int) -> bool:
        """Schedule a batch unless one is due; a full batch's worth goes at once.  True if sent."""
        ttl_ms = int((self.interval + DUE_FLAG_GRACE_S) * 1000)
        if not self.broker.client.set(self.key, "1", nx=True, px=ttl_ms):
            return False
        self.send_batch(None if count >= self.batch_size else self.interval)
        return True

    def batch_started(self) -> None:
        """Requests arriving from now on are not covered by the running batch: let them schedule."""
        self.broker.client.delete(self.key)

    def send_batch(self, delay: float | None = None) -> None:
        """Send a batch message now or after ``delay`` seconds."""
        self.broker.enqueue(batch_message(), delay=int(delay * 1000) if delay else None)


def request_position_updates(
    engine: Engine, scheduler: BatchScheduler, requests: list[NewRequest]
) -> list[Enqueued]:
    """Queue requests (duplicates of open ones coalesce) and make sure a batch is due."""
    enqueued = enqueue_requests(engine, requests)
    scheduler.requests_added(len(requests))
    return enqueued
