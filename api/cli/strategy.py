"""``tradeflow backtest``, ``tradeflow screen`` and ``tradeflow strategy-relay``."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from actors.settings import Settings

strategy_app = typer.Typer()

console = Console()
err_console = Console(stderr=True)

#: Seconds between two reads of the result key while waiting.
POLL_INTERVAL = 0.2

#: Rows of the per-symbol table printed after a backtest.
SYMBOL_ROWS = 20

#: Trades printed after a backtest (``--json`` has the result's whole list).
TRADE_ROWS = 10

#: Bar sizes a task may read.
INTERVALS = ("1d", "1h", "30m", "15m", "5m", "1m")


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", highlight=False, soft_wrap=True, markup=False)
    return typer.Exit(1)


def _read_code(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None


def _symbols(text: str, option: str) -> list[str]:
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise _fail(f"{option} needs at least one symbol, e.g. {option} AAPL,MSFT")
    return symbols


def _submit_and_wait(task_type: str, args: dict, *, timeout: float) -> dict:
    """Send the task through the broker, show progress, return the result's data."""
    import actors
    from actors.strategies import InvalidTask, ResultStatus, TaskResultStore, parse_args
    from actors.strategy import ACTORS

    try:
        parse_args(task_type, args)
    except InvalidTask as exc:
        raise _fail(str(exc)) from None
    settings = actors.current_settings
    store = TaskResultStore(
        client=actors.current_broker.client,
        prefix=settings.strategy_result_prefix,
        ttl_seconds=settings.strategy_result_ttl_s,
    )
    task_id = f"cli-{uuid.uuid4().hex}"
    ACTORS[task_type].send(task_id, args)
    started = time.monotonic()
    with console.status(f"{task_type} {task_id}: queued") as status:
        while (result := store.get(task_id)) is None or result.status is ResultStatus.RUNNING:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise _fail(f"no result after {timeout:.0f}s; is a worker running (`tradeflow worker`)?")
            state = "queued" if result is None else f"running on {result.data.get('worker_id')}"
            status.update(f"{task_type} {task_id}: {state} ({elapsed:.1f}s)")
            time.sleep(POLL_INTERVAL)
    if result.status is ResultStatus.ERROR:
        raise _fail(result.data.get("error", "unknown error"))
    return result.data


def _metric(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


@strategy_app.command()
def backtest(
    file: Annotated[
        Path, typer.Argument(help="Python file defining `def name(df)` that returns a list of dicts.")
    ],
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols.")],
    start: Annotated[str, typer.Option(help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last date, YYYY-MM-DD.")],
    holding_period: Annotated[int | None, typer.Option(min=1, help="Bars a position is held.")] = None,
    entry: Annotated[
        str | None, typer.Option(help="next_open (default) or close (of the signal bar itself).")
    ] = None,
    interval: Annotated[str, typer.Option(help=f"Bar size: {', '.join(INTERVALS)}.")] = "1d",
    commission_bps: Annotated[float, typer.Option(min=0, help="Commission per fill, bps of value.")] = 0.0,
    commission_per_share: Annotated[float, typer.Option(min=0, help="Commission per share and fill.")] = 0.0,
    slippage_bps: Annotated[
        float, typer.Option(min=0, help="Slippage per fill, bps against the trade.")
    ] = 0.0,
    max_weight: Annotated[
        float | None, typer.Option(min=0, max=1, help="Largest share of the equity one symbol may hold.")
    ] = None,
    function: Annotated[
        str | None, typer.Option(help="Entry function when the file defines several.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Backtest a strategy file on the strategy queue and print its metrics."""
    args = {"strategy_code": _read_code(file), "symbols": _symbols(symbols, "--symbols")}
    args |= {"start_date": start, "end_date": end, "function_name": function}
    args |= {k: v for k, v in (("holding_period", holding_period), ("entry", entry)) if v is not None}
    args |= {"interval": interval, "commission_bps": commission_bps, "slippage_bps": slippage_bps}
    args |= {"commission_per_share": commission_per_share, "max_weight": max_weight}
    data = _submit_and_wait("backtest", args, timeout=timeout)
    if as_json:
        console.print_json(json.dumps(data))
        return
    summary, metrics = data["summary"], data["performance_metrics"]
    table = Table("metric", "value", title=f"backtest ({data['execution_time_seconds']:.2f}s)")
    for name in ("total_instances", "positive_signals", "symbols_processed"):
        table.add_row(name, str(summary[name]))
    table.add_row("date_range", f"{summary['date_range']['start']} .. {summary['date_range']['end']}")
    for name, value in metrics.items():
        if name != "per_symbol":
            table.add_row(name, _metric(value))
    console.print(table)
    per_symbol = Table("symbol", "trades", "win rate", "avg return", "total return", title="per symbol")
    for symbol, row in list(metrics["per_symbol"].items())[:SYMBOL_ROWS]:
        per_symbol.add_row(
            symbol, *(_metric(row[k]) for k in ("trades", "win_rate", "avg_return", "total_return"))
        )
    console.print(per_symbol)
    title = f"trades (first {min(TRADE_ROWS, data['trades_listed'])} of {data['trades_total']})"
    trades = Table("symbol", "signal", "entry", "price", "exit", "price", "return", "bars", title=title)
    for trade in data["trades"][:TRADE_ROWS]:
        trades.add_row(
            trade["symbol"],
            trade["signal_date"],
            trade["entry_date"],
            _metric(trade["entry_price"]),
            trade["exit_date"],
            _metric(trade["exit_price"]),
            _metric(trade["return"]),
            str(trade["holding_bars"]),
        )
    console.print(trades)
    assumptions = data["assumptions"]
    console.print(
        f"entry: {assumptions['entry_fill']}; costs: {assumptions['commission_bps']} bps + "
        f"{assumptions['commission_per_share']}/share commission, {assumptions['slippage_bps']} bps "
        f"slippage; sizing: {assumptions['sizing']} (--json has every assumption)",
        highlight=False,
        markup=False,
    )


@strategy_app.command()
def screen(
    file: Annotated[
        Path, typer.Argument(help="Python file defining `def name(df)` that returns a list of dicts.")
    ],
    universe: Annotated[str, typer.Option(help="Comma-separated symbols to screen.")],
    limit: Annotated[int, typer.Option(min=1, help="Most results to return.")] = 10,
    interval: Annotated[str, typer.Option(help=f"Bar size: {', '.join(INTERVALS)}.")] = "1d",
    include_false_signals: Annotated[
        bool, typer.Option(help="Rank symbols whose latest signal is false too.")
    ] = False,
    function: Annotated[
        str | None, typer.Option(help="Entry function when the file defines several.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 300.0,
) -> None:
    """Screen a universe with a strategy file and print the ranking."""
    args = {"strategy_code": _read_code(file), "universe": _symbols(universe, "--universe"), "limit": limit}
    args |= {"interval": interval, "include_false_signals": include_false_signals}
    data = _submit_and_wait("screening", {**args, "function_name": function}, timeout=timeout)
    returned, size, seconds = data["results_returned"], data["universe_size"], data["execution_time_seconds"]
    title = f"screening: {returned} of {size} ({seconds:.2f}s)"
    table = Table("#", "ticker", "score", "signal", "date", "message", title=title)
    for row in data["ranked_results"]:
        table.add_row(
            str(row["rank"]),
            row["ticker"],
            f"{row['score']:.4f}",
            str(row["signal"]),
            row["date"] or "",
            row["message"],
        )
    console.print(table)


@strategy_app.command("strategy-relay")
def strategy_relay() -> None:
    """Relay tasks that other languages LPUSH to the legacy list onto the strategy queue."""
    import actors
    from actors.strategies import StrategyQueueRelay, TaskResultStore, dispatch_through

    settings: Settings = actors.current_settings
    client = actors.current_broker.client
    relay = StrategyQueueRelay(
        client=client,
        source=settings.strategy_legacy_queue,
        results=TaskResultStore(
            client=client, prefix=settings.strategy_result_prefix, ttl_seconds=settings.strategy_result_ttl_s
        ),
        dispatch=dispatch_through(actors.current_broker),
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    console.print(f"relaying {settings.strategy_legacy_queue} -> strategy queue; Ctrl-C stops")
    relay.run(stop)
