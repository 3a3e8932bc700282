"""Derived features of bar series, documented in ``docs/data.md``.

Every feature uses only the bar itself and earlier bars of its series, so a
bar's features never change when later bars arrive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Bars in the average that ``volume_ratio`` divides by.
VOLUME_WINDOW = 20
#: Windows of the simple moving averages.
SMA_WINDOWS = (20, 50)
#: Spans of the exponential moving averages.
EMA_SPANS = (12, 26)
#: Bars in Wilder's RSI and ATR.
WILDER_PERIOD = 14

#: The feature columns, in table order.
FEATURE_COLUMNS = (
    "return_pct",
    "gap_pct",
    "volume_ratio",
    *(f"sma_{window}" for window in SMA_WINDOWS),
    *(f"ema_{span}" for span in EMA_SPANS),
    f"rsi_{WILDER_PERIOD}",
    f"atr_{WILDER_PERIOD}",
)


class _Series:
    """Window operations within each series of a frame (one series when there is no key)."""

    def __init__(self, keys: pd.Series | None):
        self.keys = keys

    def _grouped(self, values: pd.Series):
        return values.groupby(self.keys, sort=False) if self.keys is not None else None

    def shift(self, values: pd.Series) -> pd.Series:
        grouped = self._grouped(values)
        return grouped.shift(1) if grouped is not None else values.shift(1)

    def rolling_mean(self, values: pd.Series, window: int) -> pd.Series:
        grouped = self._grouped(values)
        if grouped is None:
            return values.rolling(window).mean()
        return grouped.rolling(window).mean().droplevel(0)

    def position(self, values: pd.Series) -> np.ndarray:
        """Each row's position in its series (0 for the first bar)."""
        grouped = self._grouped(values)
        return grouped.cumcount().to_numpy() if grouped is not None else np.arange(len(values))

    def wilder(self, values: pd.Series, period: int) -> pd.Series:
        """Wilder's smoothing of ``values`` whose first row is undefined (a change, a true range):
        the mean of rows 1..period at row ``period``, then ``(previous * (period - 1) + value) /
        period``; null before row ``period``."""
        position = self.position(values)
        seed = self.rolling_mean(values, period).reindex(values.index)
        # Rows before the seed are null, so the recursion starts from the simple mean.
        seeded = values.where(position > period, seed.where(position == period))
        return self.ewm_mean(seeded, alpha=1 / period).reindex(values.index)

    def ewm_mean(self, values: pd.Series, **options) -> pd.Series:
        grouped = self._grouped(values)
        if grouped is None:
            return values.ewm(adjust=False, **options).mean()
        return grouped.ewm(adjust=False, **options).mean().droplevel(0)


def add_features(bars: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """Return ``bars`` with the feature columns added.

    ``bars`` is one series sorted by timestamp, or, with ``by``, several
    series (e.g. ``by="symbol"``) each sorted by timestamp.
    """
    series = _Series(bars[by] if by else None)
    close = bars["close"]
    previous_close = series.shift(close)
    volume = bars["volume"].astype("float64")
    features = {
        "return_pct": (close / previous_close - 1) * 100,
        "gap_pct": (bars["open"] / previous_close - 1) * 100,
        "volume_ratio": volume / series.rolling_mean(series.shift(volume), VOLUME_WINDOW),
    }
    for window in SMA_WINDOWS:
        features[f"sma_{window}"] = series.rolling_mean(close, window)
    for span in EMA_SPANS:
        features[f"ema_{span}"] = series.ewm_mean(close, span=span, min_periods=span)
    change = close - previous_close
    average_gain = series.wilder(change.clip(lower=0), WILDER_PERIOD)
    average_loss = series.wilder((-change).clip(lower=0), WILDER_PERIOD)
    rsi = 100 - 100 / (1 + average_gain / average_loss)
    # No losses: RSI is 100; no change at all (a flat series): 50, neither up nor down.
    rsi = rsi.where(average_loss != 0, (average_gain > 0).map({True: 100.0, False: 50.0}))
    features[f"rsi_{WILDER_PERIOD}"] = rsi.where(average_gain.notna())
    true_range = pd.concat(
        [
            bars["high"] - bars["low"],
            (bars["high"] - previous_close).abs(),
            (bars["low"] - previous_close).abs(),
        ],
        axis=1,
    ).max(axis=1, skipna=False)
    features[f"atr_{WILDER_PERIOD}"] = series.wilder(true_range, WILDER_PERIOD)
    result = bars.copy()
    for name, values in features.items():
        result[name] = values.replace([np.inf, -np.inf], np.nan).astype("float64")
    return result
