"""The Delta Lake tables of market data and the idempotent upsert into them.

deltalake is imported inside the functions: it is not fork-safe, and this
module is imported by the dramatiq master process before it forks workers.
Reads go through ``to_pyarrow_dataset().to_table(use_threads=False)``:
threaded reads abort the process at exit (delta-rs #2184).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from .features import FEATURE_COLUMNS

if TYPE_CHECKING:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

#: Commit retries of one write: workers writing other symbols at the same time conflict and retry.
DEFAULT_MAX_COMMIT_RETRIES = 50
#: Attempts to open a table that another process is creating at the same moment.
CREATE_ATTEMPTS = 5
#: Times a write is read, recomputed and committed again after a concurrent writer changed the
#: partitions it read (delta-rs refuses such a commit: retrying the same commit cannot help).
RERUN_ATTEMPTS = 8
#: Upper bound of the first random pause before a rerun, in seconds; it doubles each time.
RERUN_PAUSE = 0.05

_TIMESTAMP = pa.timestamp("us", tz="UTC")

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: its folder name under the root, schema, MERGE key and partitioning."""

    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ("symbol",)

    @property
    def value_columns(self) -> tuple[str, ...]:
        return tuple(name for name in self.schema.names if name not in self.keys)


MARKET_BARS = TableSpec(
    name="market_bars",
    schema=pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("interval", pa.string(), nullable=False),
            pa.field("timestamp", _TIMESTAMP, nullable=False),
            pa.field("open", pa.float64(), nullable=False),
            pa.field("high", pa.float64(), nullable=False),
            pa.field("low", pa.float64(), nullable=False),
            pa.field("close", pa.float64(), nullable=False),
            pa.field("volume", pa.int64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            *(pa.field(name, pa.float64()) for name in FEATURE_COLUMNS),
        ]
    ),
    keys=("symbol", "interval", "timestamp"),
)

NEWS = TableSpec(
    name="news",
    schema=pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("id", pa.string(), nullable=False),
            pa.field("published_at", _TIMESTAMP, nullable=False),
            pa.field("headline", pa.string(), nullable=False),
            pa.field("summary", pa.string()),
            pa.field("source", pa.string()),
            pa.field("url", pa.string()),
            pa.field("sentiment_compound", pa.float64(), nullable=False),
            pa.field("sentiment_positive", pa.float64(), nullable=False),
            pa.field("sentiment_negative", pa.float64(), nullable=False),
            pa.field("sentiment_neutral", pa.float64(), nullable=False),
            pa.field("provider", pa.string(), nullable=False),
        ]
    ),
    keys=("symbol", "id"),
)

EARNINGS = TableSpec(
    name="earnings",
    schema=pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("fiscal_period", pa.string(), nullable=False),
            pa.field("report_date", pa.date32(), nullable=False),
            pa.field("eps_estimate", pa.float64()),
            pa.field("eps_actual", pa.float64()),
            pa.field("revenue_estimate", pa.float64()),
            pa.field("revenue_actual", pa.float64()),
            pa.field("eps_surprise_pct", pa.float64()),
            pa.field("provider", pa.string(), nullable=False),
        ]
    ),
    keys=("symbol", "fiscal_period"),
)

FUNDAMENTALS = TableSpec(
    name="fundamentals",
    schema=pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("as_of", pa.date32(), nullable=False),
            pa.field("sector", pa.string()),
            pa.field("market_cap", pa.float64()),
            pa.field("pe_ratio", pa.float64()),
            pa.field("eps", pa.float64()),
            pa.field("revenue", pa.float64()),
            pa.field("debt_to_equity", pa.float64()),
            pa.field("dividend_yield", pa.float64()),
            pa.field("provider", pa.string(), nullable=False),
        ]
    ),
    keys=("symbol", "as_of"),
)

STATS_24H = TableSpec(
    name="stats_24h",
    schema=pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("interval", pa.string(), nullable=False),
            pa.field("as_of", _TIMESTAMP, nullable=False),
            pa.field("last", pa.float64(), nullable=False),
            pa.field("change_pct", pa.float64()),
            pa.field("high", pa.float64(), nullable=False),
            pa.field("low", pa.float64(), nullable=False),
            pa.field("volume", pa.int64(), nullable=False),
            pa.field("vwap", pa.float64()),
            pa.field("bars", pa.int64(), nullable=False),
        ]
    ),
    keys=("symbol", "interval"),
    partition_by=(),
)

#: Every table, by name.
TABLES = {spec.name: spec for spec in (MARKET_BARS, NEWS, EARNINGS, FUNDAMENTALS, STATS_24H)}


@dataclass
class UpsertResult:
    """What one MERGE did.  ``version_after == version_before`` means nothing changed."""

    table: str
    version_before: int
    version_after: int
    inserted: int = 0
    updated: int = 0

    @property
    def changed(self) -> bool:
        return self.version_after != self.version_before


def table_path(root: Path, spec: TableSpec) -> Path:
    return Path(root) / spec.name


def open_table(root: Path, spec: TableSpec) -> DeltaTable:
    """The table, created empty with its schema if it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    path = table_path(root, spec)
    for attempt in range(CREATE_ATTEMPTS):
        if DeltaTable.is_deltatable(str(path)):
            return DeltaTable(str(path))
        path.mkdir(parents=True, exist_ok=True)
        try:
            return DeltaTable.create(
                str(path), schema=spec.schema, partition_by=list(spec.partition_by) or None, mode="ignore"
            )
        except DeltaError:  # another process committed version 0 first
            logger.debug("Creating %s raced another writer (attempt %d).", path, attempt + 1)
            time.sleep(0.05 * (attempt + 1))
    return DeltaTable(str(path))


def table_version(root: Path, spec: TableSpec) -> int | None:
    """The current version, or ``None`` when the table does not exist."""
    from deltalake import DeltaTable

    path = table_path(root, spec)
    return DeltaTable(str(path)).version() if DeltaTable.is_deltatable(str(path)) else None


def read_table(
    root: Path, spec: TableSpec, *, filter: pc.Expression | None = None, table: DeltaTable | None = None
) -> pa.Table:
    """Rows of the table (or of ``table``, a pinned version) matching ``filter``; empty if none."""
    from deltalake import DeltaTable

    path = table_path(root, spec)
    if table is None and not DeltaTable.is_deltatable(str(path)):
        return spec.schema.empty_table()
    dataset = (table or DeltaTable(str(path))).to_pyarrow_dataset()
    return dataset.to_table(filter=filter, use_threads=False)


def upsert(
    root: Path,
    spec: TableSpec,
    rows: pa.Table,
    *,
    max_commit_retries: int = DEFAULT_MAX_COMMIT_RETRIES,
    based_on: DeltaTable | None = None,
) -> UpsertResult:
    """MERGE ``rows`` into the table on its keys: insert new rows, update rows whose values differ.

    Rows equal to the stored ones are left alone, and a MERGE that changes
    nothing commits no version: writing the same rows twice is a no-op.
    ``based_on``: the table, pinned at the version ``rows`` were computed
    from; delta-rs then checks every commit since that version for conflicts
    with the partitions the MERGE reads, so a concurrent write of the same
    symbols raises ``CommitFailedError`` instead of storing rows derived from
    data that has since changed (writes of other symbols still just retry).
    """
    from deltalake.transaction import CommitProperties

    table = based_on if based_on is not None else open_table(root, spec)
    before = table.version()
    if rows.num_rows == 0:
        return UpsertResult(spec.name, before, before)
    rows = rows.select(spec.schema.names).cast(spec.schema)
    metrics = (
        table.merge(
            rows,
            predicate=_merge_predicate(spec, rows),
            source_alias="s",
            target_alias="t",
            commit_properties=CommitProperties(max_commit_retries=max_commit_retries),
        )
        .when_matched_update_all(
            predicate=" OR ".join(f"(t.`{name}` IS DISTINCT FROM s.`{name}`)" for name in spec.value_columns)
        )
        .when_not_matched_insert_all()
        .execute()
    )
    return UpsertResult(
        spec.name,
        before,
        table.version(),
        inserted=metrics["num_target_rows_inserted"],
        updated=metrics["num_target_rows_updated"],
    )


def rerun_on_conflict(write: Callable[[], T], *, attempts: int = RERUN_ATTEMPTS) -> T:
    """Call ``write``; when its commit fails because another writer committed to the data it read,
    call it again (it must read afresh) after a random pause, up to ``attempts`` times."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(1, attempts + 1):
        try:
            return write()
        except CommitFailedError as exc:
            if attempt == attempts:
                raise
            pause = random.uniform(0, RERUN_PAUSE * 2**attempt)
            logger.info("Concurrent commit (%s); rerunning in %.2fs (attempt %d).", exc, pause, attempt + 1)
            time.sleep(pause)
    raise ValueError(f"attempts must be at least 1, got {attempts}")


def append(
    root: Path, spec: TableSpec, rows: pa.Table, *, max_commit_retries: int = DEFAULT_MAX_COMMIT_RETRIES
) -> int:
    """Plain append, no deduplication (the baseline the upsert is measured against); returns the version."""
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties

    table = open_table(root, spec)
    write_deltalake(
        table,
        rows.select(spec.schema.names).cast(spec.schema),
        mode="append",
        commit_properties=CommitProperties(max_commit_retries=max_commit_retries),
    )
    return table.version()


def _merge_predicate(spec: TableSpec, rows: pa.Table) -> str:
    keys = " AND ".join(f"t.`{key}` = s.`{key}`" for key in spec.keys)
    if not spec.partition_by:
        return keys
    # Naming the partitions lets delta-rs skip the others and lets writers of
    # other symbols commit concurrently without a conflict.
    column = spec.partition_by[0]
    values = ", ".join(_sql_string(value) for value in sorted(set(rows.column(column).to_pylist())))
    return f"t.`{column}` IN ({values}) AND {keys}"


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"
