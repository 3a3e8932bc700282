"""Historical bars from Interactive Brokers (TWS or IB Gateway) through ib_async.

Only bars: IB's news and fundamentals need subscriptions this platform does
not assume, so those calls raise :class:`NotProvidedError` per symbol.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from .providers import BarRequest, NoDataError, NotProvidedError, SymbolDataError, UnknownSymbolError

#: IB's ``barSizeSetting`` of each interval.
BAR_SIZES = {"1m": "1 min", "5m": "5 mins", "15m": "15 mins", "30m": "30 mins", "1h": "1 hour", "1d": "1 day"}
#: IB error codes: no such contract, and a query that returned no data.
UNKNOWN_CONTRACT_CODES = frozenset({200})
NO_DATA_CODES = frozenset({162, 366})
#: Seconds to wait for the connection and for one historical request.
CONNECT_TIMEOUT = 10
REQUEST_TIMEOUT = 60


def duration_of(start: datetime, end: datetime) -> str:
    """IB's ``durationStr`` covering ``[start, end)``: days up to a year, then whole years."""
    days = max(1, math.ceil((end - start) / timedelta(days=1)))
    return f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"


class IBProvider:
    """Bars of US stocks (``Stock(symbol, "SMART", "USD")``, trades, regular hours) from IB.

    Connects on first use and keeps the connection until :meth:`close`.

    Parameters:
      host(str): Host of TWS / IB Gateway.
      port(int): Its API port.
      client_id(int): The API client id; must not be in use by another client.
    """

    name = "ib"

    def __init__(self, *, host: str, port: int, client_id: int):
        self.logger = logging.getLogger(type(self).__name__)
        self.host, self.port, self.client_id = host, port, client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ib = None

    def fetch_bars(self, request: BarRequest) -> pd.DataFrame:
        return self._run(self._fetch_bars(request))

    def fetch_news(self, symbol: str, *, start: datetime, end: datetime) -> pd.DataFrame:
        raise NotProvidedError(
            f"{symbol}: the ib provider serves bars only (use synthetic or files for news)"
        )

    def fetch_earnings(self, symbol: str) -> pd.DataFrame:
        raise NotProvidedError(
            f"{symbol}: the ib provider serves bars only (use synthetic or files for earnings)"
        )

    def fetch_fundamentals(self, symbol: str) -> pd.DataFrame:
        raise NotProvidedError(
            f"{symbol}: the ib provider serves bars only (use synthetic or files for fundamentals)"
        )

    def close(self) -> None:
        if self._ib is not None:
            self._ib.disconnect()
            self._ib = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _run(self, coroutine):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    async def _connected(self):
        from ib_async import IB

        if self._ib is None or not self._ib.isConnected():
            ib = IB()
            ib.RaiseRequestErrors = True
            try:
                await ib.connectAsync(
                    self.host, self.port, clientId=self.client_id, timeout=CONNECT_TIMEOUT, readonly=True
                )
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(
                    f"cannot reach IB at {self.host}:{self.port} (client id {self.client_id}): {exc!r}; "
                    "start TWS / IB Gateway or set TRADEFLOW_DATA_IB_HOST / TRADEFLOW_DATA_IB_PORT"
                ) from exc
            self._ib = ib
        return self._ib

    async def _fetch_bars(self, request: BarRequest) -> pd.DataFrame:
        from ib_async import RequestError, Stock

        ib = await self._connected()
        try:
            bars = await ib.reqHistoricalDataAsync(
                Stock(request.symbol, "SMART", "USD"),
                endDateTime=request.end,
                durationStr=duration_of(request.start, request.end),
                barSizeSetting=BAR_SIZES[request.interval],
                whatToShow="TRADES",
                useRTH=True,
                formatDate=2,
                timeout=REQUEST_TIMEOUT,
            )
        except RequestError as exc:
            raise _symbol_error(request.symbol, exc.code, exc.message) from None
        if not bars:
            raise NoDataError(
                f"{request.symbol}: IB returned no {request.interval} bars before {request.end}"
            )
        frame = pd.DataFrame(
            {
                "timestamp": [_utc(bar.date) for bar in bars],
                "open": [bar.open for bar in bars],
                "high": [bar.high for bar in bars],
                "low": [bar.low for bar in bars],
                "close": [bar.close for bar in bars],
                "volume": [bar.volume for bar in bars],
            }
        )
        return frame[(frame["timestamp"] >= request.start) & (frame["timestamp"] < request.end)]


def _utc(value: datetime | date) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _symbol_error(symbol: str, code: int, message: str) -> SymbolDataError:
    if code in UNKNOWN_CONTRACT_CODES:
        return UnknownSymbolError(f"{symbol}: IB does not know it (error {code}: {message})")
    if code in NO_DATA_CODES:
        return NoDataError(f"{symbol}: IB has no data for the range (error {code}: {message})")
    return SymbolDataError(f"{symbol}: IB refused the request (error {code}: {message})")
