"""The JSON wire format of strategy tasks, as producers in any language send it.

``{"task_id", "task_type": "backtest", "args": {"strategy_code", "symbols", "start_date", "end_date"}}``
``{"task_id": "...", "task_type": "screening", "args": {"strategy_code", "universe", "limit"}}``

Parsing raises :class:`InvalidTask` whose message names every bad field.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

#: Most symbols one task may name.
MAX_SYMBOLS = 5_000

#: Longest strategy source accepted, in characters.
MAX_CODE_LENGTH = 100_000

Symbol = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CODE_LENGTH)]
#: Bar sizes of the ``market_bars`` table (``actors.market_data.INTERVALS``).
Interval = Literal["1d", "1h", "30m", "15m", "5m", "1m"]


class StrategyFailed(Exception):
    """A task was rejected or failed; ``str(exc)`` is the reason shown to the user."""


class InvalidTask(Exception):
    """A task that cannot run; ``task_id`` is set when the document had a usable one."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy_code: Code
    function_name: str | None = None
    interval: Interval = "1d"


class BacktestArgs(_Args):
    """Arguments of a backtest; ``holding_period`` and ``entry`` default to the settings,
    costs to 0 and ``max_weight`` (largest share of one symbol) to no cap."""

    symbols: list[Symbol] = Field(min_length=1, max_length=MAX_SYMBOLS)
    start_date: date
    end_date: date
    holding_period: int | None = Field(default=None, ge=1, le=1_000)
    entry: Literal["next_open", "close"] | None = None
    commission_bps: float = Field(default=0.0, ge=0, le=10_000)
    commission_per_share: float = Field(default=0.0, ge=0)
    slippage_bps: float = Field(default=0.0, ge=0, le=10_000)
    max_weight: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _check_range(self) -> BacktestArgs:
        if self.start_date > self.end_date:
            raise ValueError(f"start_date {self.start_date} is after end_date {self.end_date}")
        return self


class ScreeningArgs(_Args):
    """Arguments of a screening; only symbols whose latest signal is true are ranked unless
    ``include_false_signals``."""

    universe: list[Symbol] = Field(min_length=1, max_length=MAX_SYMBOLS)
    limit: int = Field(default=10, ge=1, le=MAX_SYMBOLS)
    include_false_signals: bool = False


class StrategyTask(BaseModel):
    """One task as it arrives on the legacy list."""

    task_id: TaskId
    task_type: Literal["backtest", "screening"]
    args: dict


ARGS_OF_TYPE: dict[str, type[_Args]] = {"backtest": BacktestArgs, "screening": ScreeningArgs}


def describe_errors(error: ValidationError, *, prefix: str = "") -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"])
        text = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{prefix}{where}: {text}" if where else text)
    return "; ".join(parts)


def parse_task(raw: bytes | str) -> StrategyTask:
    """A task from its JSON text; checks the arguments of its type as well."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTask(f"Invalid task: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidTask(f"Invalid task: expected a JSON object, got {type(document).__name__}")
    task_id = document.get("task_id")
    usable_id = task_id if isinstance(task_id, str) and _valid_id(task_id) else None
    try:
        task = StrategyTask.model_validate(document)
    except ValidationError as exc:
        raise InvalidTask(f"Invalid task: {describe_errors(exc)}", task_id=usable_id) from None
    parse_args(task.task_type, task.args, task_id=task.task_id)
    return task


def parse_args(task_type: str, args: object, *, task_id: str | None = None) -> _Args:
    try:
        return ARGS_OF_TYPE[task_type].model_validate(args)
    except ValidationError as exc:
        raise InvalidTask(f"Invalid task: {describe_errors(exc, prefix='args.')}", task_id=task_id) from None


def _valid_id(task_id: str) -> bool:
    try:
        StrategyTask.model_validate({"task_id": task_id, "task_type": "backtest", "args": {}})
    except ValidationError:
        return False
    return True
