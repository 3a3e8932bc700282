"""The portfolio queue: snapshots with P&L from the simulator, risk limits, alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dramatiq
import pytest
import redis
from conftest import REPO_ROOT, settings_env

from actors.accounts import PortfolioService, RiskLimits
from actors.ib import GatewaySimulator, IBSession, Scenario, SimExecution, SimPosition
from actors.runtime import build_broker
from storage import create_db_engine
from storage.portfolio import list_breaches, list_snapshots

pytestmark = pytest.mark.timeout(60)


def _held(account, conid, symbol, position, avg_cost, mark, daily=0.0) -> SimPosition:
    return SimPosition(
        account=account, conid=conid, symbol=symbol, position=position, avg_cost=avg_cost, market_price=mark,
        daily_pnl=daily,
    )  # fmt: skip


def portfolio_scenario() -> Scenario:
    return Scenario(
        accounts=["DU1", "DU2"],
        positions=[
            _held("DU1", 101, "AAPL", 100, 150.0, 190.0, daily=-2500.0),
            _held("DU1", 202, "MSFT", -10, 400.0, 410.0, daily=-500.0),
            _held("DU2", 303, "SPY", 1, 500.0, 505.0),
        ],
        account_values={
            "DU1": {
                "NetLiquidation": 50000,
                "TotalCashValue": 35000,
                # 5,000 were withdrawn today: the equity fell 8,000, trading lost 3,000.
                "PreviousDayEquityWithLoanValue": 58000,
            },
            "DU2": {"NetLiquidation": 10000, "TotalCashValue": 9495},
        },
        executions=[
            SimExecution(exec_id="e1", account="DU1", conid=101, symbol="AAPL", side="SLD", shares=50,
                         price=195.0, time="20261123 14:30:00", realized_pnl=2250.0, commission=1.0),
            SimExecution(exec_id="e2", account="DU1", conid=202, symbol="MSFT", side="SLD", shares=10,
                         price=412.0, time="20261123 15:00:00", realized_pnl=-120.0, commission=1.0),
            SimExecution(exec_id="e3", account="DU2", conid=303, symbol="SPY", side="BOT", shares=1,
                         price=500.0, time="20261123 15:00:00", realized_pnl=0.0, commission=1.0),
        ],
    )  # fmt: skip


@pytest.fixture
def engine(migrated_url):
    engine = create_db_engine(migrated_url)
    yield engine
    engine.dispose()


def _service(engine, port, limits=None, alerts=None) -> PortfolioService:
    ids = iter(range(700, 800))
    session = IBSession(host="127.0.0.1", port=port, next_client_id=lambda: next(ids), timeout=5)
    return PortfolioService(engine=engine, session=session, limits=limits or RiskLimits(), alerts=alerts)


def test_sync_stores_a_snapshot_with_pnl(engine):
    with GatewaySimulator(scenario=portfolio_scenario()) as gateway:
        service = _service(engine, gateway.port)
        snapshot = service.sync("DU1")
        service.session.close()
    assert (snapshot.net_liquidation, snapshot.total_cash) == (50000, 35000)
    # AAPL 100 x (190 - 150) = 4000; MSFT -10 x (410 - 400) = -100
    assert snapshot.unrealized_pnl == pytest.approx(3900.0)
    assert snapshot.realized_pnl == pytest.approx(2130.0)  # DU1's executions only
    # IB's daily P&L (reqPnL): the positions' -2500 and -500, not the withdrawal.
    assert snapshot.daily_pnl == pytest.approx(-3000.0)
    assert snapshot.equity_change == pytest.approx(50000 - 58000)
    assert snapshot.gross_exposure == pytest.approx(19000 + 4100)
    rows = {p["symbol"]: p for p in snapshot.positions}
    assert rows["MSFT"] == {"conid": 202, "symbol": "MSFT", "position": -10.0, "avg_cost": 400.0,
                            "market_price": 410.0, "market_value": -4100.0, "unrealized_pnl": -100.0,
                            "exposure": -4100.0, "daily_pnl": -500.0}  # fmt: skip
    assert rows["AAPL"]["daily_pnl"] == -2500.0
    (stored,) = list_snapshots(engine, account="DU1")
    assert stored.id == snapshot.id and stored.positions == snapshot.positions
    assert stored.summary["PreviousDayEquityWithLoanValue"] == "58000"
    assert (stored.daily_pnl, stored.equity_change) == (-3000.0, -8000.0)


def test_unknown_account_is_refused(engine):
    with GatewaySimulator(scenario=portfolio_scenario()) as gateway:
        service = _service(engine, gateway.port)
        with pytest.raises(ValueError, match=r"unknown account 'DU9'; the gateway manages \['DU1', 'DU2'\]"):
            service.sync("DU9")
        with pytest.raises(ValueError, match="no snapshot of account 'DU2' yet"):
            service.check("DU2")
        service.session.close()


def test_risk_limits_breaches_are_stored_and_alerted(engine):
    alerts = []
    limits = RiskLimits(max_position_value=15000, max_concentration_pct=30, max_gross_exposure=50000,
                        max_daily_loss=2500)  # fmt: skip
    with GatewaySimulator(scenario=portfolio_scenario()) as gateway:
        service = _service(engine, gateway.port, limits=limits, alerts=alerts.append)
        service.sync("DU1")
        breaches = service.check("DU1")
        service.sync("DU2")
        assert service.check("DU2") == []
        service.session.close()
    found = sorted((b.limit_name, b.conid, round(b.actual_value, 2)) for b in breaches)
    assert found == [
        ("max_concentration_pct", 101, 38.0),  # 19000 of 50000
        ("max_daily_loss", None, 3000.0),
        ("max_position_value", 101, 19000.0),
    ]
    assert [b.limit_name for b in alerts] == [b.limit_name for b in breaches]
    assert len(list_breaches(engine, account="DU1")) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_position_value": 0}, "max_position_value must be positive"),
     ({"max_concentration_pct": 150}, "max_concentration_pct must be at most 100")],
)  # fmt: skip
def test_bad_limits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RiskLimits(**kwargs)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_monitor_risk_in_worker_processes_raises_alerts(settings, request):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")
    with GatewaySimulator(scenario=portfolio_scenario()) as gateway:
        settings = settings.model_copy(update={"ib_port": gateway.port, "risk_max_daily_loss": 1000.0})
        broker = build_broker(settings)
        workers = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "portfolio"],
            env=settings_env(settings),
            cwd=REPO_ROOT,
        )
        engine = create_db_engine(settings.database_url)
        try:
            message = dramatiq.Message(queue_name="portfolio", actor_name="monitor_risk", args=(), kwargs={},
                                       options={})  # fmt: skip
            broker.enqueue(message)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                list_breaches(engine) and len(list_snapshots(engine)) == 2
            ):
                time.sleep(0.2)
        finally:
            workers.terminate()
            workers.wait(timeout=20)
    assert {s.account for s in list_snapshots(engine)} == {"DU1", "DU2"}
    (breach,) = list_breaches(engine)
    assert (breach.account, breach.limit_name, breach.actual_value) == ("DU1", "max_daily_loss", 3000.0)
    entries = redis.Redis.from_url(settings.effective_redis_url).xrange(f"{settings.namespace}:alerts")
    (alert,) = [json.loads(fields[b"breach"]) for _, fields in entries]
    assert (alert["account"], alert["limit_name"], alert["limit_value"]) == ("DU1", "max_daily_loss", 1000.0)


def test_limits_know_whether_any_is_set():
    assert not RiskLimits().configured
    assert RiskLimits(max_daily_loss=500).configured


def test_the_migration_keeps_old_figures_under_their_true_name(database_url):
    from sqlalchemy import text

    from storage import upgrade

    engine = create_db_engine(database_url)
    try:
        upgrade(engine, "ib_0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO portfolio_snapshots (account, taken_at, gross_exposure, unrealized_pnl,"
                    " realized_pnl, daily_pnl, positions, summary)"
                    " VALUES ('DU1', '2026-12-01 20:00:00', 0, 0, 0, -8000, '[]', '{}')"
                )
            )
        upgrade(engine)
        (snapshot,) = list_snapshots(engine, account="DU1")
        # Stored as "daily P&L" by the old code, it was NetLiquidation - previous day's equity.
        assert (snapshot.daily_pnl, snapshot.equity_change) == (None, -8000.0)
    finally:
        engine.dispose()
