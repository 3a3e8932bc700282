"""``tradeflow data``: fetch market data in-process, read the Delta tables, list analyses.

Sending to the queue is ``tradeflow send fetch_market_data --args '[["AAPL"], "2024-01-01", "2024-12-31"]'``;
``data fetch`` runs the same code in this process, for a machine without workers.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .common import CliError, JsonOption, console, load_settings, print_rows

data_app = typer.Typer(help="Market data (Delta Lake) and analyses.", no_args_is_help=True)

#: Columns ``data bars`` shows.
BAR_COLUMNS = ("timestamp", "open", "close", "volume", "gap_pct", "volume_ratio", "rsi_14")


@data_app.command("fetch")
def fetch(
    symbols: Annotated[list[str], typer.Argument(help="Tickers, e.g. AAPL MSFT.")],
    start: Annotated[str, typer.Option(help="ISO date or datetime (UTC).")],
    end: Annotated[str, typer.Option(help="ISO date (inclusive) or datetime (exclusive).")],
    interval: Annotated[str, typer.Option(help="1m, 5m, 15m, 30m, 1h or 1d.")] = "1d",
) -> None:
    """Fetch bars with the configured provider into market_bars, here (no worker); prints the result."""
    from actors.market_data import ingest

    settings = load_settings()
    try:
        begin = ingest.parse_time(start, what="--start")
        finish = ingest.parse_time(end, what="--end", end=True)
        ingest.check_batch(symbols, begin, finish, interval)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from actors.data_fetcher import provider_from_settings

    provider = provider_from_settings(settings)
    try:
        result = ingest.fetch_bars(
            provider,
            settings.delta_root,
            symbols=symbols,
            start=begin,
            end=finish,
            interval=interval,
            max_commit_retries=settings.data_max_commit_retries,
        )
    finally:
        provider.close()
    console.print_json(json.dumps(result.as_dict()))


@data_app.command("bars")
def bars(
    symbol: Annotated[str, typer.Argument(help="Ticker.")],
    interval: Annotated[str, typer.Option(help="Bar size.")] = "1d",
    last: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the newest bars.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The newest bars of SYMBOL in market_bars, with some of their features."""
    import pyarrow.compute as pc

    from actors.market_data.tables import MARKET_BARS, read_table

    settings = load_settings()
    table = read_table(
        settings.delta_root,
        MARKET_BARS,
        filter=(pc.field("symbol") == symbol.upper()) & (pc.field("interval") == interval),
    )
    if table.num_rows == 0:
        raise CliError(
            f"no {interval} bars of {symbol.upper()} under {settings.delta_root}: "
            "fetch them first (tradeflow data fetch, or the fetch_market_data actor)"
        )
    frame = table.to_pandas().sort_values("timestamp").tail(last)
    if as_json:
        print_rows(frame.to_dict("records"), fields=BAR_COLUMNS, as_json=True)
        return
    view = Table(title=f"{symbol.upper()} {interval} ({table.num_rows} bars stored)")
    for column in BAR_COLUMNS:
        view.add_column(column, no_wrap=True)
    for row in frame.itertuples(index=False):
        view.add_row(*(_cell(getattr(row, column)) for column in BAR_COLUMNS))
    console.print(view)


@data_app.command("analyses")
def analyses(
    kind: Annotated[
        str | None, typer.Option(help="morning_prep, evening_review, recommendations, ...")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """The newest stored analyses: kind, analyzer, fallback reason, summary."""
    from storage import create_db_engine, list_analyses

    rows = list_analyses(create_db_engine(load_settings().database_url), kind=kind, limit=limit)
    if as_json:
        dumped = [row.model_dump() for row in rows]
        print_rows(dumped, fields=tuple(dumped[0]) if dumped else (), as_json=True)
        return
    if not rows:
        console.print("no analyses stored" + (f" of kind {kind}" if kind else ""))
    for row in rows:
        console.print(
            f"{row.created_at:%Y-%m-%d %H:%M:%S}  {row.kind:<16} {row.analyzer:<24} {row.id}", highlight=False
        )
        console.print(f"    {row.report.get('summary', '')}", highlight=False, soft_wrap=True)
        if row.fallback_reason:
            console.print(f"    fallback: {row.fallback_reason}", highlight=False, soft_wrap=True)


def _cell(value) -> str:
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d" if value.hour == value.minute == 0 else "%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return "" if value != value else f"{value:,.2f}"
    return str(value)
