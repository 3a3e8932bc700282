"""Reading bars for strategies from the Delta Lake ``market_bars`` table.

The data fetcher writes the table, one series per ``(symbol, interval)``;
strategies see the bars of ONE interval (daily unless asked), one frame per
symbol with the columns of :data:`BAR_COLUMNS`.  Derived columns missing from
the table are computed here, on read, the way the data fetcher defines them.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd

#: Columns every frame handed to a strategy has, in this order.
BAR_COLUMNS = ("ticker", "date", "open", "high", "low", "close", "volume", "gap_pct", "volume_ratio")

#: Name of the table under the Delta root.
TABLE = "market_bars"

#: Bars in the moving average ``volume_ratio`` divides by.
VOLUME_WINDOW = 20

#: The interval of daily bars, the default of every read.
DAILY = "1d"

#: Alternative spellings of our column names a writer may use.
_RENAMES = {"symbol": "ticker", "timestamp": "date"}


class MarketDataMissing(Exception):
    """The table does not exist or holds no bars for the request."""


def load_bars(
    delta_root: Path,
    symbols: list[str],
    start: date | None = None,
    end: date | None = None,
    *,
    interval: str = DAILY,
) -> pd.DataFrame:
    """Bars of ``symbols`` of one ``interval`` between the days ``start`` and ``end`` (inclusive),
    sorted by ticker and date.  A table without an ``interval`` column holds daily bars."""
    import pyarrow.dataset
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = Path(delta_root) / TABLE
    try:
        table = DeltaTable(str(path))
    except TableNotFoundError:
        raise MarketDataMissing(f"no market data: the Delta table {path} does not exist") from None
    names = table.schema().to_arrow().names
    ticker = "ticker" if "ticker" in names else "symbol"
    wanted = pyarrow.dataset.field(ticker).isin(symbols)
    if "interval" in names:
        # Other intervals of the same symbols share the table: never mix them into one series.
        wanted &= pyarrow.dataset.field("interval") == interval
    elif interval != DAILY:
        raise MarketDataMissing(
            f"no {interval} bars: the Delta table {path} has no interval column (daily only)"
        )
    # Prune files first (by partition or statistics): listing every file of a
    # large table costs more than reading ours.
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[(ticker, "in", symbols)])
    rows = dataset.to_table(filter=wanted, use_threads=False)
    return normalise_bars(rows.to_pandas(), start=start, end=end, interval=interval)


def normalise_bars(
    frame: pd.DataFrame,
    *,
    start: date | None = None,
    end: date | None = None,
    interval: str = DAILY,
) -> pd.DataFrame:
    """``frame`` with our column names, naive UTC dates (days for daily bars), derived columns,
    in range and sorted."""
    frame = frame.rename(columns={k: v for k, v in _RENAMES.items() if k in frame and v not in frame})
    missing = [c for c in BAR_COLUMNS[:7] if c not in frame]
    if missing:
        raise MarketDataMissing(f"the market bars lack the column(s) {', '.join(missing)}")
    dates = pd.to_datetime(frame["date"])
    if dates.dt.tz is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = frame.assign(date=dates.dt.normalize() if interval == DAILY else dates)
    if start is not None:
        frame = frame[frame["date"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["date"] < pd.Timestamp(end) + timedelta(days=1)]
    frame = frame.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    by_ticker = frame.groupby("ticker", sort=False)
    if "gap_pct" not in frame:
        frame["gap_pct"] = (frame["open"] / by_ticker["close"].shift(1) - 1.0) * 100.0
    if "volume_ratio" not in frame:
        average = by_ticker["volume"].rolling(VOLUME_WINDOW, min_periods=1).mean().droplevel(0)
        frame["volume_ratio"] = frame["volume"] / average
    extra = [c for c in frame.columns if c not in BAR_COLUMNS]
    return frame[[*BAR_COLUMNS, *extra]]
