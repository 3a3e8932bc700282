"""Accounts: portfolio snapshots with P&L from the gateway, and risk limits raised as alerts."""

from .risk_limits import RiskLimits, evaluate
from .service import (
    ALERTS_MAXLEN,
    ALERTS_STREAM,
    AccountState,
    PortfolioService,
    build_snapshot,
    redis_alerts,
)

__all__ = [
    "ALERTS_MAXLEN",
    "ALERTS_STREAM",
    "AccountState",
    "PortfolioService",
    "RiskLimits",
    "build_snapshot",
    "evaluate",
    "redis_alerts",
]
