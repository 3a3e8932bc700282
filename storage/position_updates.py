"""The Delta Lake ``position_updates`` table: one row per fulfilled request and position.

deltalake is imported inside the functions: it is not fork-safe, so a process that forks
workers (the dramatiq master) must never load it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow

#: Folder of the table under ``Settings.delta_root``.
TABLE_NAME = "position_updates"

#: Commit retries inside delta-rs; concurrent writers from several processes need many.
MAX_COMMIT_RETRIES = 100

#: Our own retries of a whole append after ``CommitFailedError``.
APPEND_ATTEMPTS = 5

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holding:
    """One position as the gateway reported it, with its mark where the portfolio has one."""

    account: str
    conid: int
    symbol: str
    sec_type: str
    currency: str
    position: float
    avg_cost: float
    market_price: float | None
    market_value: float | None


@dataclass(frozen=True)
class PositionUpdate(Holding):
    """A holding as one batch fetched it for one request: a row of the table."""

    request_id: int
    batch_id: str
    fetched_at: datetime

    @property
    def date(self) -> str:
        return self.fetched_at.strftime("%Y-%m-%d")


def _schema() -> pyarrow.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.int64()),
            ("batch_id", pa.string()),
            ("conid", pa.int64()),
            ("account", pa.string()),
            ("symbol", pa.string()),
            ("sec_type", pa.string()),
            ("currency", pa.string()),
            ("position", pa.float64()),
            ("avg_cost", pa.float64()),
            ("market_price", pa.float64()),
            ("market_value", pa.float64()),
            ("fetched_at", pa.timestamp("us", tz="UTC")),
            ("date", pa.string()),
        ]
    )


def table_path(delta_root: Path) -> Path:
    return Path(delta_root) / TABLE_NAME


def append_position_updates(delta_root: Path, updates: list[PositionUpdate]) -> None:
    """Append ``updates`` in one commit (partitioned by date)."""
    if not updates:
        return
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    schema = _schema()
    columns = {name: [getattr(u, name) for u in updates] for name in schema.names}
    data = pa.Table.from_pydict(columns, schema=schema)
    path = table_path(delta_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            write_deltalake(
                str(path),
                data,
                mode="append",
                partition_by=["date"],
                commit_properties=CommitProperties(max_commit_retries=MAX_COMMIT_RETRIES),
            )
            return
        except CommitFailedError:
            if attempt == APPEND_ATTEMPTS:
                raise
            logger.warning("delta commit conflict on %s, retry %d", path, attempt)
            time.sleep(0.05 * attempt)


def read_position_updates(delta_root: Path) -> pyarrow.Table:
    """Every row of the table (empty table if it does not exist yet)."""
    from deltalake import DeltaTable

    path = table_path(delta_root)
    if not (path / "_delta_log").is_dir():
        return _schema().empty_table()
    # a threaded scan can abort the process at exit (delta-rs #2184)
    return DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False)
