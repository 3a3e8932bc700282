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
def _service() -> PortfolioService:
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
