"""Upkeep of the Delta tables: 24-hour statistics, retention and compaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .tables import (
    DEFAULT_MAX_COMMIT_RETRIES,
    MARKET_BARS,
    NEWS,
    STATS_24H,
    TABLES,
    open_table,
    read_table,
    upsert,
)

#: Window of :func:`update_24h_stats`.
STATS_WINDOW = timedelta(hours=24)
#: The time column each table is cleaned up by.
RETENTION_COLUMNS = {MARKET_BARS.name: "timestamp", NEWS.name: "published_at"}
#: delta-rs refuses a vacuum retention under this many hours unless told the writers allow it.
DELTA_MIN_RETENTION_HOURS = 168


def update_24h_stats(root: Path, *, max_commit_retries: int = DEFAULT_MAX_COMMIT_RETRIES) -> dict:
    """Per symbol and interval: last price, change, range, volume and VWAP over the 24 h to its last bar.

    The window ends at each series' newest bar (not at the wall clock), so
    stats exist for historical data too; the change is against the last bar
    at or before the window's start.  Stored in ``stats_24h`` (upsert).
    """
    bars = read_table(root, MARKET_BARS).select(
        ["symbol", "interval", "timestamp", "high", "low", "close", "volume"]
    )
    if bars.num_rows == 0:
        return {"series": 0, "stats": {}, "version": None}
    rows = [_series_stats(symbol, interval, series) for (symbol, interval), series in _series(bars)]
    written = upsert(
        root,
        STATS_24H,
        pa.Table.from_pylist(rows, schema=STATS_24H.schema),
        max_commit_retries=max_commit_retries,
    )
    stats = {f"{row['symbol']}/{row['interval']}": {**row, "as_of": row["as_of"].isoformat()} for row in rows}
    return {"series": len(rows), "stats": stats, "version": written.version_after}


def _series(bars: pa.Table):
    frame = bars.to_pandas().sort_values(["symbol", "interval", "timestamp"])
    return frame.groupby(["symbol", "interval"], sort=True)


def _series_stats(symbol: str, interval: str, series: pd.DataFrame) -> dict:
    as_of = series["timestamp"].iat[-1]
    window = series[series["timestamp"] > as_of - STATS_WINDOW]
    before = series[series["timestamp"] <= as_of - STATS_WINDOW]
    last = float(window["close"].iat[-1])
    reference = float(before["close"].iat[-1]) if not before.empty else None
    volume = int(window["volume"].sum())
    return {
        "symbol": symbol,
        "interval": interval,
        "as_of": as_of.to_pydatetime(),
        "last": last,
        "change_pct": (last / reference - 1) * 100 if reference else None,
        "high": float(window["high"].max()),
        "low": float(window["low"].min()),
        "volume": volume,
        "vwap": float((window["close"] * window["volume"]).sum() / volume) if volume else None,
        "bars": len(window),
    }


def cleanup_data(
    root: Path, *, older_than: datetime, max_commit_retries: int = DEFAULT_MAX_COMMIT_RETRIES
) -> dict[str, int | None]:
    """Delete bars and news older than ``older_than`` (tz-aware); returns rows deleted per table.

    A count is ``None`` when delta-rs could not tell it without scanning.
    """
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties

    deleted = {}
    for name, column in RETENTION_COLUMNS.items():
        spec = TABLES[name]
        path = Path(root) / spec.name
        if not DeltaTable.is_deltatable(str(path)):
            continue
        metrics = DeltaTable(str(path)).delete(
            f"`{column}` < '{older_than.isoformat()}'",
            commit_properties=CommitProperties(max_commit_retries=max_commit_retries),
        )
        # delta-rs omits the count when it cannot tell without a scan (whole files dropped).
        deleted[name] = metrics.get("num_deleted_rows")
    return deleted


def optimize_tables(root: Path, *, retention_hours: int) -> dict[str, dict]:
    """Compact small files of every table, then delete files unreferenced for ``retention_hours``."""
    from deltalake import DeltaTable

    report = {}
    for spec in TABLES.values():
        if not DeltaTable.is_deltatable(str(Path(root) / spec.name)):
            continue
        table = open_table(root, spec)
        compacted = table.optimize.compact()
        removed = table.vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=retention_hours >= DELTA_MIN_RETENTION_HOURS,
        )
        report[spec.name] = {
            "files_added": compacted.get("numFilesAdded", 0),
            "files_removed": compacted.get("numFilesRemoved", 0),
            "files_vacuumed": len(removed),
            "version": table.version(),
        }
    return report
