"""Accounts: portfolio snapshots with P&L from the gateway, and risk limits raised as alerts."""

from . import orders
from .orders import FillTimeout, FundReservations, Order, OrderRejected, check_order
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
    "FillTimeout",
    "FundReservations",
    "Order",
    "OrderRejected",
    "PortfolioService",
    "RiskLimits",
    "build_snapshot",
    "check_order",
    "evaluate",
    "orders",
    "redis_alerts",
]
