"""Strategy queue benchmark: the vectorised engine against a per-row loop, the sandbox's cost, end to end.

    .venv/bin/python bench/strategy.py [--symbols 100] [--days 504] [--screen-symbols 500] [--no-e2e]
                                       [--smoke]

Prints, on the same synthetic bars (2 years x 100 symbols by default):
- engine rows/s of ``actors.strategies.engine`` and of the obvious per-row loop
  (``tests/strategy_fixtures.reference_backtest``), their ratio, and that both agree;
- the sandbox's fixed cost (a strategy that returns nothing, on 1 row) and its
  cost on the whole data set with the seed's gap-up strategy, without and with the
  backtest's look-ahead check (24 cut runs, the default);
- screening of 500 symbols: sandbox and ranking time;
- end to end through Redis and a real worker process: enqueue -> ``task_result`` completed.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: This run's own Redis namespace and Delta root, set before ``actors`` reads the environment.
NAMESPACE = f"bench-{uuid.uuid4().hex[:8]}"
WORKDIR = tempfile.TemporaryDirectory()
os.environ |= {
    "TRADEFLOW_NAMESPACE": NAMESPACE,
    "TRADEFLOW_AUDIT_ENABLED": "false",
    "TRADEFLOW_DELTA_ROOT": f"{WORKDIR.name}/delta",
    "TRADEFLOW_STRATEGY_RESULT_PREFIX": f"{NAMESPACE}-task_result:",
    "PYTHONPATH": str(ROOT),
}

import pandas as pd  # noqa: E402
from strategy_fixtures import GAP_UP, reference_backtest, synthetic_bars, write_market_bars  # noqa: E402

from actors.strategies import (  # noqa: E402
    BacktestConfig,
    EntryRule,
    Sandbox,
    backtest,
    instance_records,
    instances_frame,
    rank,
)
from bench import harness  # noqa: E402

SCORED = GAP_UP.replace('"signal": True,', '"signal": True, "score": float(row.gap_pct),')


def timed(function, *, repeat: int) -> tuple[float, object]:
    """Median wall seconds of ``repeat`` calls, and the last result."""
    return timed_cpu(function, repeat=repeat)[::2]


def timed_cpu(function, *, repeat: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of this process over ``repeat`` calls, and the last result.

    CPU time is what other load on a shared machine does not inflate.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def bench_engine(bars: pd.DataFrame, signals: pd.DataFrame, *, repeat: int = 7) -> None:
    config = BacktestConfig(holding_period=5, entry=EntryRule.NEXT_OPEN)
    fast, fast_cpu, outcome = timed_cpu(lambda: backtest(bars, signals, config), repeat=repeat)
    slow, slow_cpu, expected = timed_cpu(
        lambda: reference_backtest(bars, signals, holding_period=5, entry="next_open"),
        repeat=max(1, repeat // 3),
    )
    agree = all(
        (outcome.metrics[k] is None and v is None) or abs(outcome.metrics[k] - v) < 1e-9
        for k, v in expected.items()
    )
    rows = len(bars)
    for label, wall, cpu in (("vectorised", fast, fast_cpu), ("per-row", slow, slow_cpu)):
        speed = f"{rows / wall:11,.0f} rows/s"
        print(f"engine   {label:10}: {wall * 1000:8.1f} ms wall {speed}, {cpu * 1000:8.1f} ms CPU")
        harness.figure(f"engine.{harness.slug(label)}.rows_per_s", rows / wall, "rows/s")
    ratios = f"{slow / fast:.1f}x wall, {slow_cpu / fast_cpu:.1f}x CPU"
    print(f"engine   speed-up  : {ratios}; metrics agree: {agree}")
    print(f"         ({len(signals)} signals, holding 5 bars, next-open entry)")
    if not agree:
        raise SystemExit("the vectorised engine and the per-row loop disagree")


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_sandbox(bars: pd.DataFrame, *, repeat: int = 5, pause: float = 1.5) -> None:
    """Wall time and the child's CPU time (which other load on the machine does not inflate).

    ``cold`` starts a child per run; ``warm`` takes the child started ahead
    (the default), so the run does not wait for the interpreter and imports; ``pause``
    seconds before each run let the spare get ready, as between two tasks.
    """
    tiny = bars.head(1)
    some = max(1, repeat * 3 // 5)
    for name, label, prestart, code, frame, runs, cuts in (
        ("cold_empty", "cold start, empty strategy", False, "def s(df):\n    return []", tiny, repeat, 0),
        ("warm_empty", "warm start, empty strategy", True, "def s(df):\n    return []", tiny, repeat, 0),
        ("warm_gap_up", f"warm, gap-up on {len(bars):,} rows", True, GAP_UP, bars, some, 0),
        ("warm_look_ahead", "warm, the same + look-ahead check", True, GAP_UP, bars, some, 24),
    ):
        sandbox = Sandbox(prestart=prestart)
        try:
            sandbox.run(code=code, bars=tiny)  # the first run starts the first spare
            walls, cpu = [], child_cpu_seconds()
            for _ in range(runs):
                time.sleep(pause if prestart else 0)
                wall = time.perf_counter()
                results, _ = sandbox.run_with_cuts(code=code, bars=frame, cuts=cuts)
                walls.append(time.perf_counter() - wall)
        finally:
            sandbox.close()
        cpu = (child_cpu_seconds() - cpu) / runs
        found = sum(len(v) for v in results.values())
        wall = statistics.median(walls) * 1000
        print(f"sandbox  {label:30}: {wall:8.1f} ms wall, {cpu * 1000:7.1f} ms child CPU ({found} instances)")
        harness.figure(f"sandbox.{name}.wall_ms", wall, "ms")
        harness.figure(f"sandbox.{name}.child_cpu_ms", cpu * 1000, "ms")


def bench_screening(symbols: int, *, repeat: int = 3) -> None:
    universe = [f"U{i:04d}" for i in range(symbols)]
    bars = synthetic_bars(universe, days=120, seed=5)
    sandbox = Sandbox()
    try:
        run, results = timed(lambda: sandbox.run(code=SCORED, bars=bars), repeat=repeat)
    finally:
        sandbox.close()
    ranking, ranked = timed(
        lambda: rank(instances_frame(instance_records(results), require_date=False), limit=20),
        repeat=repeat * 2 + 1,
    )
    kept = len(ranked)
    print(
        f"screen   {symbols} symbols: sandbox {run * 1000:.1f} ms, rank {ranking * 1000:.1f} ms, {kept} kept"
    )
    harness.figure("screen.sandbox_ms", run * 1000, "ms")
    harness.figure("screen.rank_ms", ranking * 1000, "ms")


def bench_end_to_end(bars: pd.DataFrame, screen_symbols: int) -> None:
    import actors
    from actors.strategy import run_backtest, run_screening

    screen_bars = synthetic_bars([f"U{i:04d}" for i in range(screen_symbols)], days=120, seed=5)
    write_market_bars(actors.current_settings.delta_root, pd.concat([bars, screen_bars], ignore_index=True))
    worker = harness.start(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "1", "-Q", "strategy"],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    client = actors.current_broker.client
    try:
        symbols = sorted(bars["ticker"].unique())
        start, end = str(bars["date"].min().date()), str(bars["date"].max().date())
        backtest_args = {"strategy_code": GAP_UP, "symbols": symbols, "start_date": start, "end_date": end}
        screen_args = {
            "strategy_code": SCORED,
            "universe": sorted(screen_bars["ticker"].unique()),
            "limit": 20,
        }
        _round_trip(client, run_backtest, backtest_args)  # warm-up: imports, Delta log
        for label, actor, args in (
            ("backtest", run_backtest, backtest_args),
            ("screening", run_screening, screen_args),
        ):
            seconds, data = _round_trip(client, actor, args)
            parts = [
                f"{k} {data[k + '_time_ms']:.0f} ms"
                for k in ("load", "sandbox", "engine")
                if k + "_time_ms" in data
            ]
            engine = ", ".join(parts) + ", " if parts else ""
            print(
                f"e2e      {label:9}: {seconds * 1000:8.1f} ms enqueue -> completed "
                f"({engine}task {data['execution_time_ms']:.1f} ms)"
            )
            harness.figure(f"e2e.{label}.round_trip_ms", seconds * 1000, "ms")
            harness.figure(f"e2e.{label}.task_ms", data["execution_time_ms"], "ms")
    finally:
        harness.finish(worker)
        keys = list(client.scan_iter(match=f"{NAMESPACE}*"))
        if keys:
            client.delete(*keys)


def _round_trip(client, actor, args: dict, *, timeout: float = 300) -> tuple[float, dict]:
    task_id = f"bench-{uuid.uuid4().hex}"
    key = f"{NAMESPACE}-task_result:{task_id}"
    started = time.perf_counter()
    actor.send(task_id, args)
    while time.perf_counter() - started < timeout:
        raw = client.get(key)
        if raw and (document := json.loads(raw))["status"] != "running":
            break
        time.sleep(0.005)
    else:
        raise SystemExit(f"no result within {timeout}s: is Redis up?")
    seconds = time.perf_counter() - started
    if document["status"] != "completed":
        raise SystemExit(f"bench task failed: {document['data']}")
    return seconds, document["data"]


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=504)
    parser.add_argument("--screen-symbols", type=int, default=500)
    parser.add_argument("--no-e2e", action="store_true", help="skip the run through Redis and a worker")
    options = harness.parse(parser)
    repeat, pause = 5, 1.5
    if options.smoke:
        options.symbols, options.days, options.screen_symbols = 3, 60, 5
        repeat, pause = 1, 0.5
    bars = synthetic_bars([f"S{i:03d}" for i in range(options.symbols)], days=options.days)
    signals = bars.loc[(bars["gap_pct"] > 3) & (bars["volume_ratio"] > 1.5), ["ticker", "date"]].assign(
        signal=True
    )
    print(f"data: {options.symbols} symbols x {options.days} days = {len(bars):,} rows")
    with harness.supervised():
        bench_engine(bars, signals, repeat=7 if repeat > 1 else 1)
        bench_sandbox(bars, repeat=repeat, pause=pause)
        bench_screening(options.screen_symbols, repeat=3 if repeat > 1 else 1)
        if not options.no_e2e:
            bench_end_to_end(bars, options.screen_symbols)


if __name__ == "__main__":
    main()
