"""Market data from CSV or Parquet files the user supplies.

Layout under the folder (the first file found wins, Parquet before CSV)::

    <folder>/<interval>/<SYMBOL>.parquet|csv   bars of that interval (e.g. 1d/AAPL.csv)
    <folder>/<SYMBOL>.parquet|csv              bars of any interval
    <folder>/news/<SYMBOL>.parquet|csv         published_at, headline, summary, source, url
    <folder>/earnings/<SYMBOL>.parquet|csv     fiscal_period, report_date, eps_*, revenue_*
    <folder>/fundamentals/<SYMBOL>.parquet|csv as_of, sector, market_cap, pe_ratio, ...

Column names are matched case-insensitively; ``date`` or ``datetime`` may
stand for ``timestamp``.  Naive times are taken as UTC.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from .providers import (
    EARNINGS_COLUMNS,
    FUNDAMENTALS_COLUMNS,
    NEWS_COLUMNS,
    BarRequest,
    NoDataError,
    SymbolDataError,
    UnknownSymbolError,
)

#: File suffixes read, in order of preference.
SUFFIXES = (".parquet", ".csv")
#: Other names accepted for a column.
ALIASES = {"date": "timestamp", "datetime": "timestamp", "time": "timestamp"}


class FileProvider:
    """Reads ``<SYMBOL>.parquet`` / ``<SYMBOL>.csv`` files from ``folder``.

    Parameters:
      folder(Path): The root of the layout above.
    """

    name = "files"

    def __init__(self, *, folder: Path):
        self.folder = Path(folder)

    def fetch_bars(self, request: BarRequest) -> pd.DataFrame:
        path = self._find(request.symbol, self.folder / request.interval, self.folder)
        bars = _read(path)
        if "timestamp" not in bars.columns:
            raise SymbolDataError(f"{path}: no timestamp column (name it timestamp, date or datetime)")
        times = pd.to_datetime(bars["timestamp"], utc=True, errors="coerce")
        if times.isna().any():
            row = int(times.isna().to_numpy().argmax()) + 1
            raise SymbolDataError(
                f"{path}: row {row} has an unreadable timestamp {bars['timestamp'].iat[row - 1]!r}"
            )
        bars = bars.assign(timestamp=times)
        bars = bars[(bars["timestamp"] >= request.start) & (bars["timestamp"] < request.end)]
        if bars.empty:
            raise NoDataError(f"{request.symbol}: {path} has no rows in {request.start} .. {request.end}")
        return bars

    def fetch_news(self, symbol: str, *, start: datetime, end: datetime) -> pd.DataFrame:
        news = self._table(symbol, "news", NEWS_COLUMNS, required=("published_at", "headline"))
        published = pd.to_datetime(news["published_at"], utc=True)
        return news[(published >= start) & (published < end)]

    def fetch_earnings(self, symbol: str) -> pd.DataFrame:
        return self._table(symbol, "earnings", EARNINGS_COLUMNS, required=("fiscal_period", "report_date"))

    def fetch_fundamentals(self, symbol: str) -> pd.DataFrame:
        return self._table(symbol, "fundamentals", FUNDAMENTALS_COLUMNS, required=("as_of",))

    def close(self) -> None:
        pass

    def _table(
        self, symbol: str, kind: str, columns: tuple[str, ...], *, required: tuple[str, ...]
    ) -> pd.DataFrame:
        path = self._find(symbol, self.folder / kind)
        frame = _read(path)
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise SymbolDataError(f"{path}: missing column(s) {', '.join(missing)}")
        return frame.reindex(columns=list(columns))

    def _find(self, symbol: str, *folders: Path) -> Path:
        for folder in folders:
            for suffix in SUFFIXES:
                path = folder / f"{symbol}{suffix}"
                if path.is_file():
                    return path
        looked = ", ".join(str(folder / f"{symbol}{{{','.join(SUFFIXES)}}}") for folder in folders)
        raise UnknownSymbolError(f"{symbol}: no file for it (looked for {looked})")


def _read(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas and pyarrow raise many kinds for a damaged file
        raise SymbolDataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    frame.columns = [
        ALIASES.get(str(name).strip().lower(), str(name).strip().lower()) for name in frame.columns
    ]
    return frame
