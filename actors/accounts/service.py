"""Account snapshots with P&L, and risk limits raised as alerts: the ``portfolio`` queue's work.

:class:`PortfolioService` reads an account through the shared gateway session, stores its
snapshot and checks it against :class:`~actors.accounts.RiskLimits` (figures defined in
:mod:`actors.portfolio`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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

#: Seconds a sync waits for the first update of its P&L subscriptions.
PNL_TIMEOUT = 5.0

#: Seconds between two looks at a P&L subscription while waiting.
PNL_POLL = 0.01

#: Values above this are IB's "unset" (Double.MAX_VALUE), not money.
UNSET = 1e300

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountState:
    """What the gateway says about one account."""

    positions: list[dict]
    summary: dict[str, str]
    realized_pnl: float
    daily_pnl: float | None = None


async def fetch_account(ib, account: str) -> AccountState:
    """Positions with marks and daily P&L, account summary, realized and daily P&L of ``account``."""
    import ib_async

    positions = [p for p in await ib.reqPositionsAsync() if p.account == account]
    await ib.reqAccountUpdatesAsync(account)
    marks = {item.contract.conId: item for item in ib.portfolio(account)}
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync(account)}
    await ib.reqExecutionsAsync(ib_async.ExecutionFilter(acctCode=account))
    realized = sum(f.commissionReport.realizedPNL for f in ib.fills() if f.execution.acctNumber == account)
    daily, daily_by_conid = await fetch_daily_pnl(ib, account, [p.contract.conId for p in positions])
    rows = [_position_row(p, marks.get(p.contract.conId)) for p in positions]
    return AccountState(
        positions=[{**row, "daily_pnl": daily_by_conid.get(row["conid"])} for row in rows],
        summary=summary,
        realized_pnl=realized,
        daily_pnl=daily,
    )


async def fetch_daily_pnl(
    ib, account: str, conids: list[int]
) -> tuple[float | None, dict[int, float | None]]:
    """IB's daily P&L of ``account`` and of each position (``None`` where none came in time).

    Subscribes (``reqPnL``/``reqPnLSingle``), waits for the first update of each, and cancels
    the subscriptions it opened; one already open on this connection is read, not reopened.
    """
    opened_pnl = not ib.pnl(account)
    pnl = ib.reqPnL(account) if opened_pnl else ib.pnl(account)[0]
    singles, opened = {}, []
    for conid in dict.fromkeys(conids):
        existing = ib.pnlSingle(account, "", conid)
        if existing:
            singles[conid] = existing[0]
        else:
            singles[conid] = ib.reqPnLSingle(account, "", conid)
            opened.append(conid)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PNL_TIMEOUT
        waiting = [pnl, *singles.values()]
        while any(math.isnan(item.dailyPnL) for item in waiting) and loop.time() < deadline:
            await asyncio.sleep(PNL_POLL)
    finally:
        if opened_pnl:
            ib.cancelPnL(account)
        for conid in opened:
            ib.cancelPnLSingle(account, "", conid)
    return _money(pnl.dailyPnL), {conid: _money(single.dailyPnL) for conid, single in singles.items()}


def _money(value: float) -> float | None:
    return None if math.isnan(value) or abs(value) > UNSET else float(value)


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
        daily_pnl=state.daily_pnl,
        equity_change=net_liquidation - previous
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
