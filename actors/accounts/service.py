"""Account snapshots with P&L, and risk limits raised as alerts: the ``portfolio`` queue's work.

:class:`PortfolioService` reads an account through the shared gateway session, stores its
snapshot and checks it against :class:`~actors.accounts.RiskLimits` (figures defined in
:mod:`actors.portfolio`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from actors.ib import IBSession
from storage import utc_now
from storage.ib_models import PortfolioSnapshot, RiskBreach
from storage.portfolio import latest_snapshot, save_breaches, save_snapshot

from .risk_limits import RiskLimits, evaluate

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
