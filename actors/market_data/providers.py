"""The interface every market-data source implements, and its errors.

A provider returns plain pandas frames; storing them is the caller's job.
Errors about one symbol (unknown, no data in range, bad file) are
:class:`SymbolDataError` so a batch can report them per symbol; anything
else (a gateway that is down) is raised as it is and fails the call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd

#: Bar sizes the platform knows, with their length.
INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}

#: Columns of a bar frame, as providers return them (``timestamp`` is tz-aware UTC).
BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
#: Columns of a news frame.
NEWS_COLUMNS = ("published_at", "headline", "summary", "source", "url")
#: Columns of an earnings frame.
EARNINGS_COLUMNS = (
    "fiscal_period",
    "report_date",
    "eps_estimate",
    "eps_actual",
    "revenue_estimate",
    "revenue_actual",
)
#: Columns of a fundamentals frame.
FUNDAMENTALS_COLUMNS = (
    "as_of",
    "sector",
    "market_cap",
    "pe_ratio",
    "eps",
    "revenue",
    "debt_to_equity",
    "dividend_yield",
)

_PRICES = ("open", "high", "low", "close")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.\-]{0,11}$")


class SymbolDataError(Exception):
    """No usable data for one symbol; the message says why and what to try."""


class UnknownSymbolError(SymbolDataError):
    """The provider does not know the symbol."""


class NoDataError(SymbolDataError):
    """The symbol is known but the range holds no data."""


class NotProvidedError(SymbolDataError):
    """The provider does not offer this kind of data."""


@dataclass(frozen=True)
class BarRequest:
    """Bars of one symbol in ``[start, end)`` (both tz-aware UTC)."""

    symbol: str
    start: datetime
    end: datetime
    interval: str


class MarketDataProvider(Protocol):
    """A source of bars, news, earnings and fundamentals.

    Each method returns a frame with the matching ``*_COLUMNS`` or raises
    :class:`SymbolDataError`.  Providers that lack a kind of data raise
    :class:`NotProvidedError`.
    """

    name: str

    def fetch_bars(self, request: BarRequest) -> pd.DataFrame: ...

    def fetch_news(self, symbol: str, *, start: datetime, end: datetime) -> pd.DataFrame: ...

    def fetch_earnings(self, symbol: str) -> pd.DataFrame: ...

    def fetch_fundamentals(self, symbol: str) -> pd.DataFrame: ...

    def close(self) -> None:
        """Release connections (a no-op for offline providers)."""


def normalize_symbol(symbol: object) -> str:
    """The upper-case ticker, or :class:`UnknownSymbolError` for something that is not one."""
    text = str(symbol).strip().upper() if isinstance(symbol, str) else ""
    if not _SYMBOL.match(text):
        raise UnknownSymbolError(
            f"{symbol!r} is not a ticker: use 1-12 letters, digits, '.' or '-', starting with a letter"
        )
    return text


def check_bars(frame: pd.DataFrame, *, what: str) -> pd.DataFrame:
    """Bars in canonical form (sorted, deduplicated, UTC), or :class:`SymbolDataError` naming the fault."""
    missing = [column for column in BAR_COLUMNS if column not in frame.columns]
    if missing:
        raise SymbolDataError(
            f"{what}: missing column(s) {', '.join(missing)} (need {', '.join(BAR_COLUMNS)})"
        )
    try:
        timestamps = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[us, UTC]")
        prices = {column: pd.to_numeric(frame[column]).to_numpy(dtype="float64") for column in _PRICES}
        volume = pd.to_numeric(frame["volume"]).to_numpy(dtype="float64")
    except (ValueError, TypeError) as exc:
        raise SymbolDataError(f"{what}: unreadable value ({exc})") from None
    _check_rows(frame, prices, volume, what=what)
    bars = pd.DataFrame(
        {"timestamp": timestamps.reset_index(drop=True), **prices, "volume": volume.round().astype("int64")}
    )
    return bars.drop_duplicates("timestamp", keep="last").sort_values("timestamp").reset_index(drop=True)


def _check_rows(frame: pd.DataFrame, prices: dict[str, np.ndarray], volume: np.ndarray, *, what: str) -> None:
    matrix = np.vstack([prices[column] for column in _PRICES])
    with np.errstate(invalid="ignore"):
        problems = {
            "a missing value": np.isnan(matrix).any(axis=0) | np.isnan(volume),
            "a price <= 0": (matrix <= 0).any(axis=0),
            "high below open/close/low": prices["high"] < matrix.max(axis=0),
            "low above open/close/high": prices["low"] > matrix.min(axis=0),
            "a negative volume": volume < 0,
        }
    for problem, bad in problems.items():
        if bad.any():
            row = int(bad.argmax())
            values = frame.iloc[row][list(BAR_COLUMNS)].to_dict()
            raise SymbolDataError(f"{what}: row {row + 1} has {problem}: {values}")
