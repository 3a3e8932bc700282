"""The ``strategy`` queue: backtests and screenings of user-submitted strategy code.

The work is in :mod:`actors.strategies.tasks`, imported on the first task so
that ``import actors`` stays light for processes that never run one.
"""

from __future__ import annotations

import functools

import dramatiq

from actors.strategies import StrategyFailed

#: Queue of the strategy actors.
QUEUE = "strategy"


@functools.cache
def _tasks():
    from actors.runtime import process_settings
    from actors.strategies import build_strategy_tasks

    return build_strategy_tasks(process_settings())


@dramatiq.actor(queue_name=QUEUE, store_results=True, throws=(StrategyFailed,))
def run_backtest(task_id: str, args: dict) -> dict:
    """Backtest ``args["strategy_code"]`` over ``symbols`` between ``start_date`` and ``end_date``."""
    return _tasks().backtest(task_id, args)


@dramatiq.actor(queue_name=QUEUE, store_results=True, throws=(StrategyFailed,))
def run_screening(task_id: str, args: dict) -> dict:
    """Rank the ``universe`` by the score the strategy gives each symbol's latest instance."""
    return _tasks().screening(task_id, args)


#: The actor of each seed ``task_type``.
ACTORS = {"backtest": run_backtest, "screening": run_screening}
