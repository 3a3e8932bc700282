"""Yahoo Finance bars through ``yfinance``.  NEEDS THE INTERNET; not used by the tests.

Install it with ``pip install 'tradeflow[online]'`` and set
``TRADEFLOW_DATA_PROVIDER=yfinance``.  Bars only.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from .providers import BarRequest, NoDataError, NotProvidedError

#: yfinance's interval names.
YF_INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "60m", "1d": "1d"}


class YFinanceProvider:
    """Bars from Yahoo Finance (requires internet access and the ``yfinance`` package)."""

    name = "yfinance"

    def __init__(self) -> None:
        try:
            import yfinance
        except ImportError:
            raise RuntimeError(
                "the yfinance provider needs the yfinance package: pip install 'tradeflow[online]'"
            ) from None
        self._yfinance = yfinance

    def fetch_bars(self, request: BarRequest) -> pd.DataFrame:
        history = self._yfinance.Ticker(request.symbol).history(
            start=request.start, end=request.end, interval=YF_INTERVALS[request.interval], auto_adjust=False
        )
        if history.empty:
            raise NoDataError(
                f"{request.symbol}: Yahoo Finance returned no bars (unknown symbol or empty range)"
            )
        history = history.rename(columns=str.lower).rename_axis("timestamp").reset_index()
        return history

    def fetch_news(self, symbol: str, *, start: datetime, end: datetime) -> pd.DataFrame:
        raise NotProvidedError(f"{symbol}: the yfinance provider serves bars only")

    def fetch_earnings(self, symbol: str) -> pd.DataFrame:
        raise NotProvidedError(f"{symbol}: the yfinance provider serves bars only")

    def fetch_fundamentals(self, symbol: str) -> pd.DataFrame:
        raise NotProvidedError(f"{symbol}: the yfinance provider serves bars only")

    def close(self) -> None:
        pass
