"""The ``portfolio`` queue: account snapshots with P&L, and risk limits raised as alerts.

``sync_portfolio(account)`` reads positions, the account's portfolio (marks) and account
summary, and today's executions through the process's shared ib_async connection, and stores
a snapshot: unrealized P&L from average cost and marks, realized P&L from the executions'
commission reports, daily P&L as net liquidation minus the previous day's equity with loan
value.  ``evaluate_risk_limits(account)`` checks the latest snapshot against the configured
limits, stores each breach and raises it as an alert on the Redis stream ``<namespace>:alerts``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass

import dramatiq
from periodiq import cron
from sqlalchemy import Engine

from storage import utc_now
from storage.ib_models import PortfolioSnapshot, RiskBreach
from storage.portfolio import latest_snapshot, save_breaches, save_snapshot

from . import ib_positions
from .ib_session import IBSession
from .risk_limits import RiskLimits, evaluate

#: Queue of the portfolio actors.
QUEUE = "portfolio"

#: Redis stream (after the namespace) that risk alerts are added to.
ALERTS_STREAM = "alerts"

#: Longest the alert stream grows (approximately), in entries.
ALERTS_MAXLEN = 10_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountState:
    """What the gateway says about one account."""

    positions: list[dict]
    summary: dict[str, str]
    realized_pnl: float


async def fetch_account(ib, account: str) -> AccountState:
    """Positions with marks, account summary and realized P&L of ``account``."""
    import ib_async

    positions = [p for p in await ib.reqPositionsAsync() if p.account == account]
    await ib.reqAccountUpdatesAsync(account)
    marks = {item.contract.conId: item for item in ib.portfolio(account)}
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync(account)}
    await ib.reqExecutionsAsync(ib_async.ExecutionFilter(acctCode=account))
    realized = sum(f.commissionReport.realizedPNL for f in ib.fills() if f.execution.acctNumber == account)
    return AccountState(
        positions=[_position_row(p, marks.get(p.contract.conId)) for p in positions],
        summary=summary,
        realized_pnl=realized,
    )


def _position_row(position, item) -> dict:
    cost = position.position * position.avgCost
    marked = item is not None
    return {
        "conid": position.contract.conId,
        "symbol": position.contract.symbol,
        "position": position.position,
        "avg_cost": position.avgCost,
        "market_price": item.marketPrice if marked else None,
        "market_value": item.marketValue if marked else None,
        "unrealized_pnl": item.marketValue - cost if marked else None,
        "exposure": item.marketValue if marked else cost,
    }


def _number(summary: dict[str, str], tag: str) -> float | None:
    try:
        return float(summary[tag])
    except (KeyError, ValueError):
        return None


def build_snapshot(account: str, state: AccountState) -> PortfolioSnapshot:
    net_liquidation = _number(state.summary, "NetLiquidation")
    previous = _number(state.summary, "PreviousDayEquityWithLoanValue")
    return PortfolioSnapshot(
        account=account,
        taken_at=utc_now(),
        net_liquidation=net_liquidation,
        total_cash=_number(state.summary, "TotalCashValue"),
        gross_exposure=sum(abs(p["exposure"]) for p in state.positions),
        unrealized_pnl=sum(p["unrealized_pnl"] or 0 for p in state.positions),
        realized_pnl=state.realized_pnl,
        daily_pnl=net_liquidation - previous
        if net_liquidation is not None and previous is not None
        else None,
        positions=state.positions,
        summary=state.summary,
    )


class PortfolioService:
    """Snapshots accounts and checks risk limits.

    Parameters:
      engine: Database of snapshots and breaches.
      session: The process's gateway connection.
      limits: Risk limits applied to every account.
      alerts: ``callable(breach)`` raising an alert (default: none).
    """

    def __init__(self, *, engine: Engine, session: IBSession, limits: RiskLimits, alerts=None) -> None:
        self.engine, self.session, self.limits = engine, session, limits
        self.alerts = alerts
        self.logger = logging.getLogger(type(self).__name__)

    def sync(self, account: str) -> PortfolioSnapshot:
        if account not in self.accounts():
            raise ValueError(f"unknown account {account!r}; the gateway manages {self.accounts()}")
        state = self.session.call(lambda ib: fetch_account(ib, account))
        return save_snapshot(self.engine, build_snapshot(account, state))

    def accounts(self) -> list[str]:
        async def managed(ib) -> list[str]:
            return ib.managedAccounts()

        return self.session.call(managed)

    def check(self, account: str) -> list[RiskBreach]:
        snapshot = latest_snapshot(self.engine, account)
        if snapshot is None:
            raise ValueError(f"no snapshot of account {account!r} yet: run sync_portfolio first")
        breaches = evaluate(self.limits, snapshot)
        if breaches:
            save_breaches(self.engine, breaches)
        for breach in breaches:
            self.logger.warning("risk limit breached on %s: %s", breach.account, breach.detail)
            if self.alerts is not None:
                self.alerts(breach)
        return breaches


def redis_alerts(client, namespace: str):
    """An alert sink adding each breach to the stream ``<namespace>:alerts``."""
    key = f"{namespace}:{ALERTS_STREAM}"

    def raise_alert(breach: RiskBreach) -> None:
        fields = breach.model_dump(mode="json", exclude={"id"})
        client.xadd(key, {"kind": "risk_breach", "breach": json.dumps(fields)}, maxlen=ALERTS_MAXLEN)

    return raise_alert


@functools.cache
def _service() -> PortfolioService:
    runtime = ib_positions.runtime()
    settings = runtime.settings
    limits = RiskLimits(
        max_position_value=settings.risk_max_position_value,
        max_concentration_pct=settings.risk_max_concentration_pct,
        max_gross_exposure=settings.risk_max_gross_exposure,
        max_daily_loss=settings.risk_max_daily_loss,
    )
    return PortfolioService(
        engine=runtime.engine,
        session=ib_positions.shared_session(),
        limits=limits,
        alerts=redis_alerts(dramatiq.get_broker().client, settings.namespace),
    )


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=120_000, store_results=True)
def sync_portfolio(account: str) -> dict:
    """Snapshot one account; returns its P&L figures."""
    snapshot = _service().sync(account)
    return snapshot.model_dump(mode="json", exclude={"positions", "summary"})


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=120_000, store_results=True)
def sync_all_portfolios(evaluate_limits: bool = False) -> list[str]:
    """Snapshot every managed account (and check its limits afterwards if asked)."""
    accounts = _service().accounts()
    for account in accounts:
        if not evaluate_limits:
            sync_portfolio.send(account)
            continue
        check = evaluate_risk_limits.message_with_options(args=(account,), pipe_ignore=True)
        (sync_portfolio.message(account) | check).run()
    return accounts


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=60_000, store_results=True)
def evaluate_risk_limits(account: str) -> list[dict]:
    """Check the latest snapshot of ``account``; each breach is stored and raised as an alert."""
    return [b.model_dump(mode="json") for b in _service().check(account)]


@dramatiq.actor(
    queue_name=QUEUE, max_retries=0, time_limit=60_000, store_results=True, periodic=cron("* * * * *")
)
def monitor_risk() -> list[str]:
    """Each minute: snapshot every account, then check its limits (idle while no limit is set,
    so deployments without a gateway are not bothered)."""
    if not _service().limits.configured:
        return []
    return sync_all_portfolios.fn(evaluate_limits=True)
