"""The ``portfolio`` queue: account snapshots with P&L, and risk limits raised as alerts.

``sync_portfolio(account)`` reads positions, the account's portfolio (marks) and account
summary, today's executions and IB's own daily P&L (``reqPnL`` for the account, ``reqPnLSingle``
per position) through the process's shared ib_async connection, and stores a snapshot:
unrealized P&L from average cost and marks, realized P&L from the executions' commission
reports, daily P&L as IB reports it, and, under its own name, the equity change (net
liquidation minus the previous day's equity with loan value, deposits and withdrawals
included).  ``evaluate_risk_limits(account)`` checks the latest snapshot against the configured
limits, stores each breach and raises it as an alert on the Redis stream ``<namespace>:alerts``.
"""

from __future__ import annotations

import functools

import dramatiq
from periodiq import cron

from actors.accounts import PortfolioService, RiskLimits, redis_alerts
from actors.ib import runtime, shared_session

#: Queue of the portfolio actors.
QUEUE = "portfolio"


@functools.cache
def portfolio_service() -> PortfolioService:
    """This process's portfolio service (its gateway session, database and limits)."""
    state = runtime()
    settings = state.settings
    limits = RiskLimits(
        max_position_value=settings.risk_max_position_value,
        max_concentration_pct=settings.risk_max_concentration_pct,
        max_gross_exposure=settings.risk_max_gross_exposure,
        max_daily_loss=settings.risk_max_daily_loss,
    )
    return PortfolioService(
        engine=state.engine,
        session=shared_session(),
        limits=limits,
        alerts=redis_alerts(dramatiq.get_broker().client, settings.namespace),
    )


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=120_000, store_results=True)
def sync_portfolio(account: str) -> dict:
    """Snapshot one account; returns its P&L figures."""
    snapshot = portfolio_service().sync(account)
    return snapshot.model_dump(mode="json", exclude={"positions", "summary"})


def account_of(account: str | None) -> str:
    """``account``, else the configured ``ib_account``, else the gateway's first managed account."""
    return account or runtime().settings.ib_account or portfolio_service().accounts()[0]


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=120_000, store_results=True)
def fetch_portfolio(user_id: str, account: str | None = None, history_days: int = 30) -> dict:
    """A fresh snapshot of the user's account (``account``, else the configured or first managed
    one) as the next steps of ``portfolio_analysis`` read it: its ``symbols``, ``holdings``
    (``{"positions": {symbol: quantity}, "cash": ...}``), P&L figures, and the date range
    (``start``, ``end``) of the market data to fetch for it."""
    from datetime import timedelta

    snapshot = portfolio_service().sync(account_of(account))
    positions = {p["symbol"]: p["position"] for p in snapshot.positions if p.get("position")}
    end = snapshot.taken_at.date()
    return {
        "user_id": user_id,
        "account": snapshot.account,
        "snapshot_id": snapshot.id,
        "symbols": sorted(positions),
        "holdings": {"positions": positions, "cash": snapshot.total_cash or 0.0},
        "net_liquidation": snapshot.net_liquidation,
        "unrealized_pnl": snapshot.unrealized_pnl,
        "start": (end - timedelta(days=history_days)).isoformat(),
        "end": end.isoformat(),
    }


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=120_000, store_results=True)
def sync_all_portfolios(evaluate_limits: bool = False) -> list[str]:
    """Snapshot every managed account (and check its limits afterwards if asked)."""
    accounts = portfolio_service().accounts()
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
    return [b.model_dump(mode="json") for b in portfolio_service().check(account)]


@dramatiq.actor(
    queue_name=QUEUE, max_retries=0, time_limit=60_000, store_results=True, periodic=cron("* * * * *")
)
def monitor_risk() -> list[str]:
    """Each minute: snapshot every account, then check its limits (idle while no limit is set,
    so deployments without a gateway are not bothered)."""
    if not portfolio_service().limits.configured:
        return []
    return sync_all_portfolios.fn(evaluate_limits=True)
