"""User strategies: the sandbox and its runner, the backtest engine, the wire formats, the seed
queue relay and the ``task_result`` store.

The sandbox, the backtest engine and the tasks read frames with pandas and pyarrow, which
``import actors`` must not load (the dramatiq master imports it, then forks): their names
are imported from here on first use.
"""

import importlib
from typing import Any

from .relay import StrategyQueueRelay, dispatch_through
from .results import ResultStatus, TaskResultStore
from .wire import InvalidTask, StrategyFailed, parse_args

#: Names served on first use, by the module that defines them.
_LAZY = {
    "BacktestConfig": ".engine",
    "EntryRule": ".engine",
    "backtest": ".engine",
    "assumptions": ".engine",
    "trade_list": ".engine",
    "cut_dates": ".sandbox_runner",
    "plan_cuts": ".sandbox_runner",
    "check_lookahead": ".tasks",
    "Sandbox": ".sandbox",
    "SandboxLimits": ".sandbox",
    "validate_code": ".sandbox",
    "build_strategy_tasks": ".tasks",
    "instance_records": ".tasks",
    "instances_frame": ".tasks",
    "rank": ".tasks",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = [
    "BacktestConfig",
    "EntryRule",
    "InvalidTask",
    "ResultStatus",
    "Sandbox",
    "SandboxLimits",
    "StrategyFailed",
    "StrategyQueueRelay",
    "TaskResultStore",
    "assumptions",
    "backtest",
    "build_strategy_tasks",
    "check_lookahead",
    "cut_dates",
    "dispatch_through",
    "instance_records",
    "instances_frame",
    "parse_args",
    "plan_cuts",
    "rank",
    "trade_list",
    "validate_code",
]
