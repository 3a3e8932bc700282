"""The ``data_fetcher`` queue: market data, news, earnings and fundamentals into Delta Lake.

Every fetch actor takes a list of symbols and returns a result with one entry
per symbol: the data it got, or in ``errors`` why it got none (unknown
symbol, empty range, bad file).  One bad symbol never fails the batch; a
bad batch (no symbols, unknown interval, end before start) fails at once
without retries (``ValueError``); a provider that is down (IB Gateway not
running) raises and is retried.

The heavy imports (pandas, pyarrow, deltalake) happen inside the actors:
deltalake is not fork-safe and the dramatiq master process imports this
module before forking its workers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dramatiq
from periodiq import cron

if TYPE_CHECKING:
    from actors.market_data import MarketDataProvider
    from actors.settings import Settings

#: Queue of the data actors.
QUEUE = "data_fetcher"
#: Time limit of a fetch (a large batch from IB takes minutes), in milliseconds.
FETCH_TIME_LIMIT_MS = 30 * 60_000
#: Time limit of the maintenance actors, in milliseconds.
MAINTENANCE_TIME_LIMIT_MS = 60 * 60_000
#: When the scheduler refreshes the 24-hour stats (hourly) and compacts the tables (daily, UTC).
STATS_SCHEDULE = "5 * * * *"
OPTIMIZE_SCHEDULE = "30 3 * * *"

_FETCH_OPTIONS = {
    "queue_name": QUEUE,
    "store_results": True,
    "throws": (ValueError,),
    "time_limit": FETCH_TIME_LIMIT_MS,
}


def _settings() -> Settings:
    from actors.runtime import process_settings

    return process_settings()


def provider_from_settings(settings: Settings) -> MarketDataProvider:
    """The market-data provider ``settings`` configure."""
    from actors.market_data import build_provider

    universe = frozenset(s.strip().upper() for s in settings.data_synthetic_symbols.split(",") if s.strip())
    return build_provider(
        settings.data_provider,
        seed=settings.data_synthetic_seed,
        symbols=universe or None,
        files_dir=settings.data_files_dir,
        ib_host=settings.data_ib_host,
        ib_port=settings.data_ib_port,
        ib_client_id=settings.data_ib_client_id,
    )


def _run(fetch, **arguments) -> dict:
    """Call an ingest function with the configured provider, table root and retries."""
    settings = _settings()
    provider = provider_from_settings(settings)
    try:
        result = fetch(
            provider, settings.delta_root, max_commit_retries=settings.data_max_commit_retries, **arguments
        )
    finally:
        provider.close()
    return result.as_dict()


@dramatiq.actor(**_FETCH_OPTIONS)
def fetch_market_data(symbols: list[str], start: str, end: str, interval: str = "1d") -> dict:
    """Upsert bars of ``symbols`` in ``[start, end]`` into ``market_bars``, with their features.

    ``start``/``end`` are ISO dates or datetimes (UTC when naive); a bare
    date as ``end`` includes that whole day.
    """
    from actors.market_data import ingest

    begin = ingest.parse_time(start, what="start")
    finish = ingest.parse_time(end, what="end", end=True)
    ingest.check_batch(symbols, begin, finish, interval)
    result = _run(ingest.fetch_bars, symbols=symbols, start=begin, end=finish, interval=interval)
    return {**result, "interval": interval, "start": begin.isoformat(), "end": finish.isoformat()}


@dramatiq.actor(**_FETCH_OPTIONS)
def fetch_news(symbols: list[str], start: str, end: str) -> dict:
    """Upsert news of ``symbols`` into ``news``, each item scored by VADER on the way in."""
    from actors.market_data import ingest

    begin = ingest.parse_time(start, what="start")
    finish = ingest.parse_time(end, what="end", end=True)
    if finish <= begin:
        raise ValueError(f"end ({finish.isoformat()}) must be after start ({begin.isoformat()})")
    return _run(ingest.fetch_news, symbols=symbols, start=begin, end=finish)


@dramatiq.actor(**_FETCH_OPTIONS)
def fetch_earnings(symbols: list[str]) -> dict:
    """Upsert the earnings history of ``symbols`` into ``earnings``."""
    from actors.market_data import ingest

    return _run(ingest.fetch_earnings, symbols=symbols)


@dramatiq.actor(**_FETCH_OPTIONS)
def fetch_fundamentals(symbols: list[str]) -> dict:
    """Upsert quarterly fundamentals of ``symbols`` into ``fundamentals``."""
    from actors.market_data import ingest

    return _run(ingest.fetch_fundamentals, symbols=symbols)


@dramatiq.actor(queue_name=QUEUE, store_results=True, throws=(ValueError,), time_limit=FETCH_TIME_LIMIT_MS)
def market_features(symbols: list[str], interval: str = "1d") -> dict:
    """The newest bar's features (``market_data.features.FEATURE_COLUMNS``) of each symbol."""
    import pyarrow.compute as pc

    from actors.market_data.features import FEATURE_COLUMNS
    from actors.market_data.tables import MARKET_BARS, read_table, table_version

    if isinstance(symbols, str) or not symbols:
        raise ValueError(f"symbols must be a non-empty list of tickers, got {symbols!r}")
    wanted = [symbol.upper() for symbol in symbols]
    root = _settings().delta_root
    condition = pc.field("symbol").isin(wanted) & (pc.field("interval") == interval)
    bars = read_table(root, MARKET_BARS, filter=condition).to_pandas()
    features, missing = {}, []
    for symbol in wanted:
        rows = bars[bars["symbol"] == symbol].sort_values("timestamp")
        if rows.empty:
            missing.append(symbol)
            continue
        last = rows.iloc[-1]
        # NaN (a window not yet full) is not JSON: None
        values = {name: (None if last[name] != last[name] else float(last[name])) for name in FEATURE_COLUMNS}
        stamp = last["timestamp"].isoformat()
        features[symbol] = {"timestamp": stamp, "close": float(last["close"]), **values}
    return {"features": features, "missing": missing, "market_bars_version": table_version(root, MARKET_BARS)}


@dramatiq.actor(
    queue_name=QUEUE, store_results=True, time_limit=MAINTENANCE_TIME_LIMIT_MS, periodic=cron(STATS_SCHEDULE)
)
def update_24h_stats() -> dict:
    """Refresh ``stats_24h`` from ``market_bars``."""
    from actors.market_data import maintenance

    settings = _settings()
    return maintenance.update_24h_stats(
        settings.delta_root, max_commit_retries=settings.data_max_commit_retries
    )


@dramatiq.actor(
    queue_name=QUEUE, store_results=True, throws=(ValueError,), time_limit=MAINTENANCE_TIME_LIMIT_MS
)
def cleanup_data(older_than: str | int) -> dict:
    """Delete bars and news older than ``older_than``: an ISO date/datetime, or a number of days."""
    from actors.market_data import ingest, maintenance

    if isinstance(older_than, int) and not isinstance(older_than, bool):
        if older_than < 0:
            raise ValueError(f"older_than={older_than} days must not be negative")
        cutoff = datetime.now(UTC) - timedelta(days=older_than)
    else:
        cutoff = ingest.parse_time(older_than, what="older_than")
    settings = _settings()
    deleted = maintenance.cleanup_data(
        settings.delta_root, older_than=cutoff, max_commit_retries=settings.data_max_commit_retries
    )
    return {"cutoff": cutoff.isoformat(), "deleted": deleted}


@dramatiq.actor(
    queue_name=QUEUE,
    store_results=True,
    max_retries=1,
    time_limit=MAINTENANCE_TIME_LIMIT_MS,
    periodic=cron(OPTIMIZE_SCHEDULE),
)
def optimize_tables() -> dict:
    """Compact every Delta table and vacuum files older than the configured retention."""
    from actors.market_data import maintenance

    settings = _settings()
    return maintenance.optimize_tables(
        settings.delta_root, retention_hours=settings.data_vacuum_retention_hours
    )
