"""Interactive Brokers: position batches and stream routing, the shared gateway session, the
stream-owner lease, and the IB Gateway simulator that the real ib_async client talks to.
"""

from .batches import (
    CLIENT_ID_KEY,
    MIN_RETRY_DELAY_S,
    QUEUE,
    BatchResult,
    BatchScheduler,
    PositionBatcher,
    batch_message,
    fetch_holdings,
    match_requests,
    request_position_updates,
)
from .gateway_sim import GatewaySimulator, Scenario, SimBar, SimExecution, SimPosition, demo_scenario
from .routing import (
    NOT_OWNER_RESEND_MS,
    OWNER_KEY,
    STREAM_QUEUE,
    PositionRouter,
    Route,
    StreamSlots,
    stream_changes,
)
from .runtime import batcher, run_position_batch, runtime, shared_session, stream_owner, stream_slots, tickers
from .session import GatewayUnavailable, IBSession
from .stream_owner import StreamOwner

__all__ = [
    "CLIENT_ID_KEY",
    "MIN_RETRY_DELAY_S",
    "NOT_OWNER_RESEND_MS",
    "OWNER_KEY",
    "QUEUE",
    "STREAM_QUEUE",
    "BatchResult",
    "BatchScheduler",
    "GatewaySimulator",
    "GatewayUnavailable",
    "IBSession",
    "PositionBatcher",
    "PositionRouter",
    "Route",
    "Scenario",
    "SimBar",
    "SimExecution",
    "SimPosition",
    "StreamOwner",
    "StreamSlots",
    "batch_message",
    "batcher",
    "demo_scenario",
    "fetch_holdings",
    "match_requests",
    "request_position_updates",
    "run_position_batch",
    "runtime",
    "shared_session",
    "stream_changes",
    "stream_owner",
    "stream_slots",
    "tickers",
]
