"""A deterministic synthetic market: realistic OHLCV, news, earnings and fundamentals offline.

Every symbol gets its own random streams, seeded from ``(seed, symbol)``, and
every value is a function of its trading day, not of the requested range:
asking for a sub-range returns exactly the bars of a larger request, so
re-fetching changes nothing and overlapping ranges line up.

The daily model: the log price moves by an overnight gap (small noise plus a
rare jump) and an intraday return whose volatility follows regimes (calm,
normal, turbulent) switching every :data:`REGIME_DAYS` trading days, with a
drift that changes every :data:`TREND_DAYS`; the sum of these moves reverts
slowly (:data:`MEAN_REVERSION`) to a line growing :data:`GROWTH` a day, so
prices stay plausible over decades.  Volume follows the volatility
regime, with random spikes and spikes on gap days.  Intraday bars are a
Brownian bridge from the day's open to its close inside its high and low.
Trading days are weekdays (no holidays); the session is 14:30-21:00 UTC.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from .providers import (
    INTERVALS,
    BarRequest,
    NoDataError,
    UnknownSymbolError,
    normalize_symbol,
)

#: The first trading day of the synthetic market.
EPOCH = date(2000, 1, 3)
#: Trading days per volatility regime block.
REGIME_DAYS = 40
#: Trading days per trend (drift) block.
TREND_DAYS = 60
#: Daily log growth of the price level the moves revert to (about 5 % a year).
GROWTH = 0.0002
#: Share of its deviation from that level the price keeps each day (half-life about a year).
MEAN_REVERSION = 0.998
#: Volatility multipliers of the regimes (calm, normal, turbulent) and their odds.
REGIME_SCALES = (0.6, 1.0, 1.9)
REGIME_ODDS = (0.35, 0.45, 0.20)
#: Chance per day of an overnight jump, and its size range (fraction of price).
GAP_JUMP_CHANCE = 0.03
GAP_JUMP_SIZE = (0.02, 0.08)
#: Chance per day of a volume spike, and its multiplier range.
VOLUME_SPIKE_CHANCE = 0.04
VOLUME_SPIKE_SIZE = (2.0, 5.0)
#: Opening time of the session (UTC) and its length.
SESSION_OPEN = timedelta(hours=14, minutes=30)
SESSION_LENGTH = timedelta(hours=6, minutes=30)
#: Chance per trading day that a symbol has a news item.
NEWS_CHANCE = 0.25

_STREAM_PARAMS, _STREAM_REGIME, _STREAM_TREND, _STREAM_GAP, _STREAM_DAY = range(5)
_STREAM_INTRADAY, _STREAM_NEWS, _STREAM_EARNINGS = 100, 200, 300

_POSITIVE_NEWS = (
    "{symbol} beats expectations as demand surges",
    "{symbol} shares rally after strong guidance",
    "Analysts upgrade {symbol}, citing robust growth",
    "{symbol} wins major contract, outlook improves",
)
_NEGATIVE_NEWS = (
    "{symbol} misses estimates, shares slump",
    "{symbol} cuts outlook amid weak demand",
    "Regulators probe {symbol}; investors worried",
    "{symbol} hit by downgrade after disappointing quarter",
)
_NEUTRAL_NEWS = (
    "{symbol} to present at industry conference",
    "{symbol} announces date of quarterly report",
    "{symbol} files annual report with regulators",
)
_SECTORS = ("Technology", "Healthcare", "Financials", "Energy", "Industrials", "Consumer", "Utilities")


class SyntheticProvider:
    """Seeded synthetic data for any well-formed ticker (or only ``symbols``, when given).

    Parameters:
      seed(int): Same seed, same data.  Defaults to 7.
      symbols(frozenset[str] | None): The universe; other tickers are unknown.
        ``None`` (the default) accepts any well-formed ticker.
      today(date | None): Last day with data (no bars from the future).  Defaults to today (UTC).
    """

    name = "synthetic"

    def __init__(self, *, seed: int = 7, symbols: frozenset[str] | None = None, today: date | None = None):
        self.seed = seed
        self.symbols = symbols
        self.today = today

    def fetch_bars(self, request: BarRequest) -> pd.DataFrame:
        symbol = self._known(request.symbol)
        first, last = self._trading_days(request.start, request.end, symbol=symbol)
        daily = self._daily(symbol, last, first)
        if request.interval == "1d":
            bars = daily[(daily["timestamp"] >= request.start) & (daily["timestamp"] < request.end)]
            return bars.reset_index(drop=True)
        frames = [
            self._intraday(symbol, daily.loc[day], day, request.interval) for day in range(first, last + 1)
        ]
        bars = pd.concat(frames, ignore_index=True)
        bars = bars[(bars["timestamp"] >= request.start) & (bars["timestamp"] < request.end)]
        if bars.empty:
            raise NoDataError(f"{symbol}: no {request.interval} bars in {request.start} .. {request.end}")
        return bars.reset_index(drop=True)

    def fetch_news(self, symbol: str, *, start: datetime, end: datetime) -> pd.DataFrame:
        symbol = self._known(symbol)
        first, last = self._trading_days(start, end, symbol=symbol)
        daily = self._daily(symbol, last, first)
        rows = []
        for day in range(first, last + 1):
            rng = self._rng(symbol, _STREAM_NEWS, day)
            if rng.random() >= NEWS_CHANCE:
                continue
            move = daily.at[day, "close"] / daily.at[day, "open"] - 1
            templates = _POSITIVE_NEWS if move > 0.01 else _NEGATIVE_NEWS if move < -0.01 else _NEUTRAL_NEWS
            headline = templates[int(rng.integers(len(templates)))].format(symbol=symbol)
            published = daily.at[day, "timestamp"] + SESSION_OPEN + timedelta(minutes=int(rng.integers(390)))
            rows.append(
                {
                    "published_at": published,
                    "headline": headline,
                    "summary": f"{headline}. Shares moved {move * 100:+.1f}% on the day.",
                    "source": "synthetic-wire",
                    "url": f"https://news.invalid/{symbol}/{day}",
                }
            )
        frame = pd.DataFrame(rows, columns=["published_at", "headline", "summary", "source", "url"])
        return frame[(frame["published_at"] >= start) & (frame["published_at"] < end)].reset_index(drop=True)

    def fetch_earnings(self, symbol: str) -> pd.DataFrame:
        symbol = self._known(symbol)
        params = self._params(symbol)
        rows = []
        for quarter, quarter_end in enumerate(_quarter_ends(self._today())):
            report_date = quarter_end + timedelta(days=25)
            if report_date > self._today():
                break
            rng = self._rng(symbol, _STREAM_EARNINGS, quarter)
            eps_estimate = params["eps"] * np.exp(GROWTH * 63 * quarter) * rng.lognormal(0, 0.05)
            revenue_estimate = params["revenue"] * np.exp(GROWTH * 63 * quarter) * rng.lognormal(0, 0.03)
            rows.append(
                {
                    "fiscal_period": f"{quarter_end.year}Q{(quarter_end.month - 1) // 3 + 1}",
                    "report_date": report_date,
                    "eps_estimate": round(eps_estimate, 4),
                    "eps_actual": round(eps_estimate * (1 + rng.normal(0.02, 0.08)), 4),
                    "revenue_estimate": round(revenue_estimate, 0),
                    "revenue_actual": round(revenue_estimate * (1 + rng.normal(0.01, 0.03)), 0),
                }
            )
        return pd.DataFrame(rows)

    def fetch_fundamentals(self, symbol: str) -> pd.DataFrame:
        symbol = self._known(symbol)
        params = self._params(symbol)
        earnings = self.fetch_earnings(symbol)
        last_day = int(np.busday_count(EPOCH, self._today()))
        daily = self._daily(symbol, last_day)
        rows = []
        for quarter_end, eps, revenue in zip(
            _quarter_ends(self._today()), earnings["eps_actual"], earnings["revenue_actual"], strict=False
        ):
            price = float(daily.loc[daily["timestamp"].dt.date <= quarter_end, "close"].iat[-1])
            rows.append(
                {
                    "as_of": quarter_end,
                    "sector": params["sector"],
                    "market_cap": round(price * params["shares"], 0),
                    "pe_ratio": round(price / (4 * eps), 2) if eps > 0 else None,
                    "eps": eps,
                    "revenue": revenue,
                    "debt_to_equity": params["debt_to_equity"],
                    "dividend_yield": params["dividend_yield"],
                }
            )
        return pd.DataFrame(rows)

    def close(self) -> None:
        pass

    def _known(self, symbol: str) -> str:
        symbol = normalize_symbol(symbol)
        if self.symbols is not None and symbol not in self.symbols:
            raise UnknownSymbolError(f"{symbol}: not in the synthetic universe ({len(self.symbols)} symbols)")
        return symbol

    def _today(self) -> date:
        return self.today or datetime.now(UTC).date()

    def _trading_days(self, start: datetime, end: datetime, *, symbol: str) -> tuple[int, int]:
        """Indexes (from :data:`EPOCH`) of the first and last trading day touching ``[start, end)``."""
        first_day = max(start.astimezone(UTC).date(), EPOCH)
        last_day = min((end.astimezone(UTC) - timedelta(microseconds=1)).date(), self._today())
        first = int(np.busday_count(EPOCH, first_day))
        last = int(np.busday_count(EPOCH, last_day + timedelta(days=1))) - 1
        if last < first:
            raise NoDataError(
                f"{symbol}: no trading day in {start:%Y-%m-%d} .. {end:%Y-%m-%d} "
                f"(synthetic data covers weekdays from {EPOCH} to {self._today()})"
            )
        return first, last

    def _rng(self, symbol: str, stream: int, index: int = 0) -> np.random.Generator:
        key = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big")
        return np.random.default_rng([self.seed, key, stream, index])

    def _uniform(self, symbol: str, stream: int, rows: int, columns: int) -> np.ndarray:
        """Uniform draws, one row per day: row ``i`` is the same whatever ``rows`` is."""
        return self._rng(symbol, stream).random((rows, columns))

    def _normal(self, symbol: str, stream: int, rows: int, columns: int) -> np.ndarray:
        """Standard normal draws, one row per day, stable under a longer ``rows`` like :meth:`_uniform`."""
        return self._rng(symbol, stream).standard_normal((rows, columns))

    def _params(self, symbol: str) -> dict:
        rng = self._rng(symbol, _STREAM_PARAMS)
        price = float(np.exp(rng.uniform(np.log(8), np.log(400))))
        shares = float(np.exp(rng.uniform(np.log(5e7), np.log(5e9))))
        return {
            "price": price,
            "sigma": rng.uniform(0.012, 0.028),
            "volume": float(np.exp(rng.uniform(np.log(2e5), np.log(2e7)))),
            "shares": shares,
            "eps": price / rng.uniform(12, 35) / 4,
            "revenue": round(price * shares / rng.uniform(1, 8) / 4, 0),
            "sector": _SECTORS[int(rng.integers(len(_SECTORS)))],
            "debt_to_equity": round(float(rng.uniform(0, 2.5)), 2),
            "dividend_yield": round(float(rng.choice([0.0, rng.uniform(0.5, 4.0)])), 2),
        }

    def _daily(self, symbol: str, last: int, first: int = 0) -> pd.DataFrame:
        """Daily bars of trading days ``first .. last`` (index = trading day since :data:`EPOCH`).

        The whole path from the epoch is simulated (prices depend on it), but
        only the rows asked for become a frame.
        """
        count = last + 1
        params = self._params(symbol)
        sigma = params["sigma"]
        regime_draw = self._uniform(symbol, _STREAM_REGIME, count // REGIME_DAYS + 1, 1)[:, 0]
        regime = np.searchsorted(np.cumsum(REGIME_ODDS), regime_draw, side="right")
        scale = np.asarray(REGIME_SCALES)[regime][np.arange(count) // REGIME_DAYS]
        drift = 0.0015 * self._normal(symbol, _STREAM_TREND, count // TREND_DAYS + 1, 1)[:, 0]
        drift = drift[np.arange(count) // TREND_DAYS]

        noise = self._normal(symbol, _STREAM_DAY, count, 5)
        draw = self._uniform(symbol, _STREAM_GAP, count, 5)
        jump = np.where(draw[:, 0] < GAP_JUMP_CHANCE, 1.0, 0.0) * np.where(draw[:, 1] < 0.5, -1.0, 1.0)
        gap = 0.25 * sigma * noise[:, 0] + jump * (GAP_JUMP_SIZE[0] + np.ptp(GAP_JUMP_SIZE) * draw[:, 2])
        moves = gap + drift + sigma * scale * noise[:, 1]
        wick_up, wick_down = np.abs(0.4 * sigma * scale * noise[:, 2:4].T)
        gap[0] = moves[0] = 0.0  # day 0 opens and closes at the symbol's starting price

        # AR(1) deviation x[t] = MEAN_REVERSION * x[t-1] + moves[t], as an exponentially weighted sum.
        deviation = pd.Series(moves).ewm(alpha=1 - MEAN_REVERSION, adjust=False).mean().to_numpy()
        log_close = np.log(params["price"]) + GROWTH * np.arange(count) + deviation / (1 - MEAN_REVERSION)
        close = np.exp(log_close)
        open_ = np.exp(np.concatenate([[log_close[0]], log_close[:-1]]) + gap)
        high = np.maximum(open_, close) * np.exp(wick_up)
        low = np.minimum(open_, close) * np.exp(-wick_down)

        spike = np.where(
            draw[:, 3] < VOLUME_SPIKE_CHANCE,
            VOLUME_SPIKE_SIZE[0] + np.ptp(VOLUME_SPIKE_SIZE) * draw[:, 4],
            1.0,
        )
        volume = params["volume"] * scale**0.8 * np.exp(0.25 * noise[:, 4]) * spike * (1 + 10 * np.abs(gap))

        rows = slice(first, count)
        days = np.busday_offset(np.datetime64(EPOCH), np.arange(first, count)).astype("datetime64[us]")
        return pd.DataFrame(
            {
                "timestamp": pd.DatetimeIndex(days).tz_localize(UTC),
                "open": open_[rows].round(4),
                "high": high[rows].round(4),
                "low": low[rows].round(4),
                "close": close[rows].round(4),
                "volume": volume[rows].round().astype("int64"),
            },
            index=pd.RangeIndex(first, count),
        )

    def _intraday(self, symbol: str, day_bar: pd.Series, day: int, interval: str) -> pd.DataFrame:
        step = INTERVALS[interval]
        count = -(-SESSION_LENGTH // step)
        rng = self._rng(symbol, _STREAM_INTRADAY, day)
        walk = np.concatenate([[0.0], np.cumsum(rng.standard_normal(count))])
        fraction = np.arange(count + 1) / count
        bridge = walk - fraction * walk[-1]
        day_range = np.log(day_bar["high"] / day_bar["low"]) or 1e-4
        scaled = bridge / (np.ptp(bridge) or 1.0) * day_range * 0.8
        path = np.exp(
            np.log(day_bar["open"]) + fraction * np.log(day_bar["close"] / day_bar["open"]) + scaled
        )
        path = np.clip(path, day_bar["low"], day_bar["high"])
        opens, closes = path[:-1], path[1:]
        wick = np.abs(rng.normal(0, 0.1 * day_range, size=(2, count)))
        highs = np.minimum(np.maximum(opens, closes) * np.exp(wick[0]), day_bar["high"])
        lows = np.maximum(np.minimum(opens, closes) * np.exp(-wick[1]), day_bar["low"])
        u_shape = 1 + 2 * (np.linspace(-1, 1, count) ** 2)
        weights = u_shape * rng.lognormal(0, 0.3, size=count)
        start = day_bar["timestamp"] + SESSION_OPEN
        return pd.DataFrame(
            {
                "timestamp": [start + i * step for i in range(count)],
                "open": opens.round(4),
                "high": highs.round(4),
                "low": lows.round(4),
                "close": closes.round(4),
                "volume": (day_bar["volume"] * weights / weights.sum()).round().astype("int64"),
            }
        )


def _quarter_ends(today: date) -> list[date]:
    """Calendar quarter ends from :data:`EPOCH` up to ``today``."""
    ends = []
    year, quarter = EPOCH.year, 1
    while True:
        month = quarter * 3
        end = date(year, month, 31 if month in (3, 12) else 30)
        if end > today:
            return ends
        ends.append(end)
        year, quarter = (year + 1, 1) if quarter == 4 else (year, quarter + 1)
