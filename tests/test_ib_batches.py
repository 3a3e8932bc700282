"""Position batches against the gateway simulator: Delta rows, outcomes, gateway failures."""

from __future__ import annotations

import socket
import time

import pytest

from actors.ib import GatewaySimulator, IBSession, PositionBatcher, Scenario, SimPosition
from storage import create_db_engine
from storage.ib_positions import NewRequest, enqueue_requests, list_requests, queue_stats
from storage.position_updates import read_position_updates

pytestmark = pytest.mark.timeout(60)


def held_scenario(**overrides) -> Scenario:
    return Scenario(
        accounts=["DU1", "DU2"],
        positions=[
            SimPosition(
                account="DU1", conid=101, symbol="AAPL", position=100, avg_cost=150.0, market_price=190.5
            ),
            SimPosition(
                account="DU2", conid=101, symbol="AAPL", position=7, avg_cost=160.0, market_price=190.5
            ),
            SimPosition(
                account="DU1", conid=202, symbol="MSFT", position=-20, avg_cost=400.0, market_price=410.0
            ),
        ],
        **overrides,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ClientIds:
    def __init__(self):
        self.last = 500

    def __call__(self):
        self.last += 1
        return self.last


@pytest.fixture
def engine(migrated_url):
    engine = create_db_engine(migrated_url)
    yield engine
    engine.dispose()


def _batcher(engine, tmp_path, port, **options) -> PositionBatcher:
    session = IBSession(host="127.0.0.1", port=port, next_client_id=_ClientIds(), account="DU1", timeout=3,
                        reconnect_max=0.2)  # fmt: skip
    return PositionBatcher(engine=engine, delta_root=tmp_path / "delta", session=session, **options)


def test_batch_writes_simulator_values_and_marks_outcomes(engine, tmp_path):
    with GatewaySimulator(scenario=held_scenario()) as gateway:
        batcher = _batcher(engine, tmp_path, gateway.port, batch_size=50)
        enqueued = enqueue_requests(
            engine,
            [
                NewRequest(conid=101, account="DU1", requested_by="strategy-a"),
                NewRequest(conid=101),  # every account holding it
                NewRequest(conid=202, account="DU2"),  # held, but not in DU2
                NewRequest(conid=999),
            ],
        )
        before = gateway.request_counts["positions"]
        result = batcher.run_batch()
        after = gateway.request_counts["positions"]
        batcher.session.close()
    # the session connects inside the batch: its startup fetch + exactly one reqPositions
    assert (before, after) == (0, 2)
    assert (result.size, result.succeeded, result.failed, result.rows_written) == (4, 2, 2, 3)
    rows = read_position_updates(tmp_path / "delta").to_pylist()
    by_request = sorted((r["request_id"], r["account"], r["conid"], r["symbol"], r["position"], r["avg_cost"],
                         r["market_price"], r["market_value"]) for r in rows)  # fmt: skip
    first, everyone = enqueued[0].request_id, enqueued[1].request_id
    assert by_request == sorted(
        [
            (first, "DU1", 101, "AAPL", 100.0, 150.0, 190.5, 19050.0),
            (everyone, "DU1", 101, "AAPL", 100.0, 150.0, 190.5, 19050.0),
            # DU2 is not the subscribed portfolio account: its mark is unknown
            (everyone, "DU2", 101, "AAPL", 7.0, 160.0, None, None),
        ]
    )
    assert {r["batch_id"] for r in rows} == {result.batch_id}
    assert {r["date"] for r in rows} == {rows[0]["fetched_at"].strftime("%Y-%m-%d")}
    status = {r.id: (r.status, r.reason) for r in list_requests(engine)}
    assert status[enqueued[0].request_id] == ("success", None)
    assert status[enqueued[2].request_id] == ("failed", "conid 202 not held in account DU2")
    assert status[enqueued[3].request_id] == ("failed", "conid 999 not held in any account")
    stats = queue_stats(engine)
    assert (stats.batches, stats.last_batch_size, stats.succeeded, stats.failed) == (1, 4, 2, 2)


def test_batches_take_at_most_batch_size(engine, tmp_path):
    with GatewaySimulator(scenario=held_scenario()) as gateway:
        batcher = _batcher(engine, tmp_path, gateway.port, batch_size=2)
        enqueue_requests(
            engine, [NewRequest(conid=101, account=a) for a in ("DU1", "DU2")] + [NewRequest(conid=202)]
        )
        sizes = [batcher.run_batch().size for _ in range(3)]
        batcher.session.close()
    assert sizes == [2, 1, 0]
    assert len(read_position_updates(tmp_path / "delta")) == 3


def test_gateway_down_keeps_requests_pending_then_succeeds(engine, tmp_path):
    port = _free_port()
    batcher = _batcher(engine, tmp_path, port, max_attempts=5)
    (request,) = enqueue_requests(engine, [NewRequest(conid=101, account="DU1")])
    result = batcher.run_batch()
    assert result.released == 1 and result.succeeded == 0 and result.retry_in > 0
    assert "cannot connect to IB gateway" in result.error
    (row,) = list_requests(engine)
    assert row.status == "pending" and row.attempts == 1 and "cannot connect" in row.reason
    assert len(read_position_updates(tmp_path / "delta")) == 0
    with GatewaySimulator(scenario=held_scenario(), port=port):
        time.sleep(result.retry_in)
        result = batcher.run_batch()
        batcher.session.close()
    assert result.succeeded == 1
    (row,) = list_requests(engine)
    assert (row.status, row.attempts) == ("success", 2)
    assert read_position_updates(tmp_path / "delta").column("request_id").to_pylist() == [request.request_id]


def test_disconnect_mid_batch_loses_nothing(engine, tmp_path):
    # the 1st reqPositions is the connection's startup fetch, the 2nd is the batch's
    with GatewaySimulator(scenario=held_scenario(disconnect_on={"positions": 2})) as gateway:
        batcher = _batcher(engine, tmp_path, gateway.port)
        enqueue_requests(engine, [NewRequest(conid=101), NewRequest(conid=202)])
        dropped = batcher.run_batch()
        assert dropped.released == 2 and "connection lost" in dropped.error
        assert queue_stats(engine).pending == 2
        time.sleep(dropped.retry_in)
        retried = batcher.run_batch()
        batcher.session.close()
    assert (retried.size, retried.succeeded) == (2, 2)
    assert batcher.session.connects == 2
    stats = queue_stats(engine)
    assert (stats.succeeded, stats.failed, stats.pending, stats.batches) == (2, 0, 0, 2)
    assert stats.last_batch_error is None
    assert len(read_position_updates(tmp_path / "delta")) == 3


def test_gateway_timeout_fails_for_good_after_max_attempts(engine, tmp_path):
    # the gateway answers reqPositions with an error only: the request times out
    scenario = held_scenario(errors={"positions": (321, "positions unavailable")})
    with GatewaySimulator(scenario=scenario) as gateway:
        session = IBSession(host="127.0.0.1", port=gateway.port, next_client_id=_ClientIds(), timeout=0.5,
                            reconnect_max=0.05)  # fmt: skip
        # the connection's startup reqPositions also times out; ib_async logs it and goes on
        batcher = PositionBatcher(engine=engine, delta_root=tmp_path / "d", session=session, max_attempts=2)
        enqueue_requests(engine, [NewRequest(conid=101)])
        first = batcher.run_batch()
        assert first.released == 1 and "timed out" in first.error
        time.sleep(first.retry_in)
        second = batcher.run_batch()
        session.close()
    assert second.failed == 1
    (row,) = list_requests(engine)
    assert row.status == "failed" and row.reason.startswith("gave up after 2 attempts: gateway timed out")


def test_concurrent_calls_on_one_session_each_get_their_answer():
    from concurrent.futures import ThreadPoolExecutor

    from actors.ib import fetch_holdings

    with GatewaySimulator(scenario=held_scenario(latency_ms=20)) as gateway:
        session = IBSession(host="127.0.0.1", port=gateway.port, next_client_id=_ClientIds(), timeout=5)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: session.call(fetch_holdings), range(8)))
        session.close()
    assert [len(holdings) for holdings in answers] == [3] * 8
    assert session.connects == 1
