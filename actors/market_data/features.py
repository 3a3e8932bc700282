"""Derived features of a bar series, documented in ``docs/data.md``.

Every feature uses only the bar itself and earlier bars, so a bar's features
never change when later bars arrive.
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


def add_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Return ``bars`` (one series, sorted by timestamp) with the feature columns added."""
    close = bars["close"]
    previous_close = close.shift(1)
    volume = bars["volume"].astype("float64")
    features = {
        "return_pct": (close / previous_close - 1) * 100,
        "gap_pct": (bars["open"] / previous_close - 1) * 100,
        "volume_ratio": volume / volume.shift(1).rolling(VOLUME_WINDOW).mean(),
    }
    for window in SMA_WINDOWS:
        features[f"sma_{window}"] = close.rolling(window).mean()
    for span in EMA_SPANS:
        features[f"ema_{span}"] = close.ewm(span=span, adjust=False, min_periods=span).mean()
    features[f"rsi_{WILDER_PERIOD}"] = _wilder_rsi(close, WILDER_PERIOD)
    true_range = pd.concat(
        [
            bars["high"] - bars["low"],
            (bars["high"] - previous_close).abs(),
            (bars["low"] - previous_close).abs(),
        ],
        axis=1,
    ).max(axis=1, skipna=False)
    features[f"atr_{WILDER_PERIOD}"] = _wilder_mean(true_range, WILDER_PERIOD)
    result = bars.copy()
    for name, values in features.items():
        result[name] = values.replace([np.inf, -np.inf], np.nan).astype("float64")
    return result


def _wilder_mean(values: pd.Series, period: int) -> pd.Series:
    """Wilder's smoothing (``alpha = 1/period``), null until ``period`` values exist."""
    return values.ewm(alpha=1 / period, adjust=False, min_periods=period).mean()


def _wilder_rsi(close: pd.Series, period: int) -> pd.Series:
    change = close.diff()
    average_gain = _wilder_mean(change.clip(lower=0), period)
    average_loss = _wilder_mean((-change).clip(lower=0), period)
    rsi = 100 - 100 / (1 + average_gain / average_loss)
    # No losses at all in the window: RSI is 100 by definition, not 0/0.
    return rsi.where(average_loss != 0, 100.0).where(average_gain.notna())
