"""Backtest and screening tasks: the work behind the ``strategy`` actors.

Each task reads bars of one interval, runs the user's function in the sandbox
(:mod:`actors.strategies.sandbox`), checks a backtest's signals for look-ahead, and turns
the instances into a backtest (:mod:`actors.strategies.engine`) or a ranking.  Progress
and outcome go to the seed-compatible ``task_result:{id}`` key
(:mod:`actors.strategies.results`); the
actor's return value goes to the Dramatiq results backend as well.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import pandas as pd
import redis
from dramatiq.logging import get_logger

from actors.broker import redis_client
from actors.market_data.bars import DAILY, MarketDataMissing, load_bars
from actors.middleware import worker_id
from actors.settings import Settings

from .engine import BacktestConfig, EntryRule, assumptions, backtest, trade_list
from .results import TaskResultStore
from .sandbox import Sandbox, SandboxLimits
from .wire import BacktestArgs, InvalidTask, ScreeningArgs, StrategyFailed, parse_args

#: Score of an instance that gives none: its signal's strength.
SIGNAL_SCORE = {True: 1.0, False: 0.0}

#: ``(symbols, start, end, *, interval) -> bars``.
BarsLoader = Callable[..., pd.DataFrame]


class StrategyTasks:
    """Runs backtest and screening tasks and records them under ``task_result:{id}``.

    Parameters:
      results(TaskResultStore): Where status and outcome are written.
      sandbox(Sandbox): Runs the user's code.
      load_bars(callable): ``(symbols, start, end, *, interval) -> bars``; ``None``
        bounds mean all.
      config(BacktestConfig): Holding period and entry rule when a task names none.
      screen_lookback_bars(int): Most recent bars of each symbol a screening reads.
      lookahead_cuts(int): How many times in all a backtest runs the strategy again on a
        symbol's bars up to one of its true-signal dates (up to 3 dates a symbol, symbols
        spread evenly; 0: no look-ahead check).  Defaults to 24.
    """

    def __init__(
        self,
        *,
        results: TaskResultStore,
        sandbox: Sandbox,
        load_bars: BarsLoader,
        config: BacktestConfig | None = None,
        screen_lookback_bars: int = 120,
        lookahead_cuts: int = 24,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.results = results
        self.sandbox = sandbox
        self.load_bars = load_bars
        self.config = config or BacktestConfig()
        self.screen_lookback_bars = screen_lookback_bars
        self.lookahead_cuts = lookahead_cuts

    def backtest(self, task_id: str, args: dict) -> dict:
        return self._run(
            task_id, "backtest", lambda: self._backtest(parse_args("backtest", args, task_id=task_id))
        )

    def screening(self, task_id: str, args: dict) -> dict:
        return self._run(
            task_id, "screening", lambda: self._screening(parse_args("screening", args, task_id=task_id))
        )

    def _run(self, task_id: str, task_type: str, work: Callable[[], dict]) -> dict:
        started = time.perf_counter()
        self.results.running(
            task_id, {"task_type": task_type, "worker_id": worker_id(), "started_at": _now()}
        )
        try:
            data = work()
        except (StrategyFailed, InvalidTask, MarketDataMissing) as exc:
            self.logger.info("Strategy task %s failed: %s", task_id, exc)
            self._error(task_id, task_type, str(exc))
            raise StrategyFailed(str(exc)) from None
        except Exception as exc:
            # Ours, not the user's: say so, and let Dramatiq retry (a retry overwrites this).
            self._error(task_id, task_type, f"Internal error: {type(exc).__name__}: {exc}")
            raise
        elapsed = time.perf_counter() - started
        data.update(
            task_id=task_id,
            task_type=task_type,
            execution_time_ms=round(elapsed * 1000, 3),
            execution_time_seconds=round(elapsed, 6),
            worker_id=worker_id(),
            completed_at=_now(),
        )
        self.results.completed(task_id, data)
        return data

    def _error(self, task_id: str, task_type: str, reason: str) -> None:
        self.results.error(task_id, reason, task_type=task_type, worker_id=worker_id(), completed_at=_now())

    def _backtest(self, args: BacktestArgs) -> dict:
        started = time.perf_counter()
        bars = self._bars(args.symbols, args.start_date, args.end_date, args.interval)
        load_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        by_ticker, cuts = self.sandbox.run_with_cuts(
            code=args.strategy_code, bars=bars, function_name=args.function_name, cuts=self.lookahead_cuts
        )
        sandbox_ms = (time.perf_counter() - started) * 1000
        records = instance_records(by_ticker)
        daily = args.interval == DAILY
        instances = instances_frame(records, require_date=True, daily=daily)
        check_lookahead(instances, cuts, daily=daily)
        config = BacktestConfig(
            holding_period=args.holding_period or self.config.holding_period,
            entry=EntryRule(args.entry) if args.entry else self.config.entry,
            commission_bps=args.commission_bps,
            commission_per_share=args.commission_per_share,
            slippage_bps=args.slippage_bps,
            max_weight=args.max_weight,
        )
        started = time.perf_counter()
        outcome = backtest(bars, instances, config)
        engine_ms = (time.perf_counter() - started) * 1000
        metrics = {
            **outcome.metrics,
            "per_symbol": outcome.per_symbol,
            "holding_period": config.holding_period,
            "entry": config.entry.value,
        }
        listed = trade_list(outcome.trades)
        return {
            "instances": records,
            "summary": {
                "total_instances": len(instances),
                "positive_signals": int(instances["signal"].sum()),
                "date_range": {"start": _day(bars["date"].min()), "end": _day(bars["date"].max())},
                "symbols_processed": int(bars["ticker"].nunique()),
                "symbols_missing": sorted(set(args.symbols) - set(bars["ticker"])),
                "data_shape": list(bars.shape),
                "interval": args.interval,
            },
            "performance_metrics": metrics,
            "trades": listed,
            "trades_total": len(outcome.trades),
            "trades_listed": len(listed),
            "assumptions": {
                **assumptions(config, interval=args.interval),
                "lookahead_cuts": self.lookahead_cuts,
                "trades_listed": f"the first {len(listed)} of {len(outcome.trades)} trades by signal date",
            },
            "load_time_ms": round(load_ms, 3),
            "sandbox_time_ms": round(sandbox_ms, 3),
            "engine_time_ms": round(engine_ms, 3),
        }

    def _screening(self, args: ScreeningArgs) -> dict:
        bars = self._bars(args.universe, None, None, args.interval)
        bars = bars.groupby("ticker", sort=False).tail(self.screen_lookback_bars).reset_index(drop=True)
        by_ticker = self.sandbox.run(code=args.strategy_code, bars=bars, function_name=args.function_name)
        instances = instances_frame(
            instance_records(by_ticker), require_date=False, daily=args.interval == DAILY
        )
        ranked = rank(instances, limit=args.limit, include_false=args.include_false_signals)
        return {
            "ranked_results": ranked,
            "universe_size": len(args.universe),
            "results_returned": len(ranked),
            "symbols_missing": sorted(set(args.universe) - set(bars["ticker"])),
            "interval": args.interval,
            "include_false_signals": args.include_false_signals,
        }

    def _bars(self, symbols: list[str], start: date | None, end: date | None, interval: str) -> pd.DataFrame:
        bars = self.load_bars(list(dict.fromkeys(symbols)), start, end, interval=interval)
        if bars.empty:
            span = f" between {start} and {end}" if start else ""
            kind = "" if interval == DAILY else f" ({interval} bars)"
            raise MarketDataMissing(f"no market data{kind} for {', '.join(symbols[:10])}{span}")
        return bars


def instance_records(by_ticker: dict[str, list[dict]]) -> list[dict]:
    """The instances as the strategy returned them, each with its ``ticker`` filled in."""
    return [{"ticker": ticker, **instance} for ticker, items in by_ticker.items() for instance in items]


def instances_frame(records: list[dict], *, require_date: bool, daily: bool = True) -> pd.DataFrame:
    """The instances as a checked frame: ticker, date (the day when ``daily``), signal, score, message."""
    frame = pd.DataFrame.from_records(records, columns=_columns(records))
    frame["ticker"] = frame["ticker"].astype(str)
    if require_date and frame["date"].isna().any():
        _reject(frame, frame["date"].isna(), "has no 'date'")
    dates = pd.to_datetime(frame["date"], errors="coerce", format="mixed")
    if dates.dt.tz is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    _reject(frame, dates.isna() & frame["date"].notna(), "has a 'date' that is not a date")
    frame["date"] = dates.dt.normalize() if daily else dates
    frame["signal"] = frame["signal"].where(frame["signal"].notna(), True)
    _reject(frame, ~frame["signal"].map(type).isin([bool]), "has a 'signal' that is not true or false")
    frame["signal"] = frame["signal"].astype(bool)
    scores = pd.to_numeric(frame["score"], errors="coerce")
    _reject(frame, scores.isna() & frame["score"].notna(), "has a 'score' that is not a number")
    frame["score"] = scores.fillna(frame["signal"].map(SIGNAL_SCORE)).astype(float)
    frame["message"] = frame["message"].where(frame["message"].notna(), "").astype(str)
    return frame


def _columns(records: list[dict]) -> list[str]:
    names = dict.fromkeys(["ticker", "date", "signal", "score", "message"])
    for record in records:
        names.update(dict.fromkeys(record))
    return list(names)


def _reject(frame: pd.DataFrame, bad: pd.Series, problem: str) -> None:
    if bad.any():
        index = int(bad.to_numpy().argmax())
        ticker = frame["ticker"].iloc[index]
        position = int((frame["ticker"].iloc[: index + 1] == ticker).sum())
        raise StrategyFailed(f"Strategy error: instance {position} of {ticker} {problem}")


def check_lookahead(instances: pd.DataFrame, cuts: dict[str, list[dict]], *, daily: bool = True) -> None:
    """Raise :class:`StrategyFailed` naming the first date whose signal changed when the bars
    after a cut were removed (``cuts`` as :meth:`Sandbox.run_with_cuts` returns them)."""
    signalled = instances.loc[instances["signal"]].groupby("ticker")["date"].agg(set).to_dict()
    first = None
    for ticker, runs in cuts.items():
        with_future = signalled.get(ticker, set())
        for run in runs:
            cut = pd.Timestamp(run["cut"])
            frame = instances_frame(
                instance_records({ticker: run["instances"]}), require_date=True, daily=daily
            )
            without = {d for d in frame.loc[frame["signal"], "date"] if d <= cut}
            changed = without ^ {d for d in with_future if d <= cut}
            if changed and (first is None or min(changed) < first[0]):
                first = (min(changed), ticker, cut, min(changed) in with_future)
    if first is None:
        return
    day, ticker, cut, true_with_future = first
    was, now = ("true", "false") if true_with_future else ("false", "true")
    raise StrategyFailed(
        f"Strategy error: look-ahead detected: the signal of {ticker} on {_stamp(day)} is {was} with the "
        f"bars after {_stamp(cut)} and {now} without them; a strategy may use only the bar itself and "
        "earlier bars (docs/strategy.md, Look-ahead)"
    )


def rank(instances: pd.DataFrame, *, limit: int, include_false: bool = False) -> list[dict]:
    """Each ticker's latest instance, best score first, at most ``limit``; tickers whose latest
    signal is false are left out unless ``include_false``."""
    if instances.empty:
        return []
    latest = instances.assign(order=range(len(instances)))
    latest = latest.sort_values(["date", "order"], na_position="first", kind="stable")
    latest = latest.groupby("ticker", sort=False).tail(1)
    if not include_false:
        latest = latest[latest["signal"]]
    best = latest.sort_values(["score", "ticker"], ascending=[False, True], kind="stable").head(limit)
    best = best.assign(date=best["date"].map(_stamp), rank=range(1, len(best) + 1))
    return best[["rank", "ticker", "score", "signal", "message", "date"]].to_dict("records")


def _stamp(value) -> str | None:
    """A day as ``YYYY-MM-DD``, a time of day in ISO 8601."""
    if pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


def _day(value) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).date().isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def build_strategy_tasks(settings: Settings, *, client: redis.Redis | None = None) -> StrategyTasks:
    """Strategy tasks configured from ``settings``: Redis results, sandbox limits, Delta bars."""
    limits = SandboxLimits(
        cpu_seconds=settings.strategy_cpu_seconds,
        memory_mb=settings.strategy_memory_mb,
        wall_seconds=settings.strategy_wall_seconds,
        output_bytes=settings.strategy_output_mb << 20,
        seccomp=settings.strategy_seccomp,
    )
    results = TaskResultStore(
        client=client or redis_client(settings.effective_redis_url),
        prefix=settings.strategy_result_prefix,
        ttl_seconds=settings.strategy_result_ttl_s,
    )
    return StrategyTasks(
        results=results,
        sandbox=Sandbox(limits=limits),
        load_bars=functools.partial(load_bars, settings.delta_root),
        config=BacktestConfig(
            holding_period=settings.strategy_holding_period, entry=EntryRule(settings.strategy_entry)
        ),
        screen_lookback_bars=settings.strategy_screen_lookback_bars,
        lookahead_cuts=settings.strategy_lookahead_cuts,
    )
