"""Fetch from a provider and upsert into Delta: one call per actor, per-symbol errors in the result."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .features import add_features
from .providers import (
    BAR_COLUMNS,
    INTERVALS,
    BarRequest,
    MarketDataProvider,
    NoDataError,
    SymbolDataError,
    check_bars,
    normalize_symbol,
)
from .tables import (
    EARNINGS,
    FUNDAMENTALS,
    MARKET_BARS,
    NEWS,
    TableSpec,
    UpsertResult,
    open_table,
    read_table,
    rerun_on_conflict,
    upsert,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """The outcome of one batch: what each symbol got and why the others got nothing."""

    table: str
    provider: str
    symbols: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    version_before: int | None = None
    version: int | None = None
    inserted: int = 0
    updated: int = 0

    @property
    def changed(self) -> bool:
        return self.version != self.version_before

    def as_dict(self) -> dict:
        return {**asdict(self), "changed": self.changed}


def parse_time(value: str | datetime | date, *, what: str, end: bool = False) -> datetime:
    """A tz-aware UTC time from an ISO string, date or datetime.

    A bare date as ``end`` means the end of that day, so ``end="2024-12-31"``
    includes the bars of December 31.
    """
    if isinstance(value, str):
        try:
            parsed: datetime | date = (
                date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
            )
        except ValueError:
            raise ValueError(f"{what}={value!r} is not an ISO date or datetime (e.g. 2024-01-31)") from None
    else:
        parsed = value
    if not isinstance(parsed, datetime):
        moment = datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
        return moment + timedelta(days=1) if end else moment
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def check_batch(symbols: object, start: datetime, end: datetime, interval: str) -> list[str]:
    """The batch's symbols as given (validated per symbol later), or ``ValueError`` for a bad batch."""
    if isinstance(symbols, str) or not isinstance(symbols, Iterable):
        raise ValueError(f"symbols must be a list of tickers, got {symbols!r}")
    symbols = list(dict.fromkeys(symbols))
    if not symbols:
        raise ValueError("symbols is empty: name at least one ticker")
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} is unknown: use one of {', '.join(INTERVALS)}")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    return symbols


def fetch_bars(
    provider: MarketDataProvider,
    root: Path,
    *,
    symbols: list[str],
    start: datetime,
    end: datetime,
    interval: str,
    max_commit_retries: int,
) -> BatchResult:
    """Fetch bars of every symbol, compute their features and MERGE them into ``market_bars`` at once."""
    result = BatchResult(table=MARKET_BARS.name, provider=provider.name)
    fetched: dict[str, pd.DataFrame] = {}
    for raw_symbol in check_batch(symbols, start, end, interval):
        try:
            symbol = normalize_symbol(raw_symbol)
            request = BarRequest(symbol, start, end, interval)
            bars = check_bars(provider.fetch_bars(request), what=f"{symbol} from {provider.name}")
            if bars.empty:
                raise NoDataError(f"{symbol}: no {interval} bars in {start.isoformat()} .. {end.isoformat()}")
            fetched[symbol] = bars
        except SymbolDataError as exc:
            result.errors[str(raw_symbol)] = str(exc)
    if not fetched:
        return result
    new_rows = pd.concat(
        [bars.assign(symbol=symbol) for symbol, bars in fetched.items()], ignore_index=True
    ).assign(source=provider.name)

    def write() -> UpsertResult:
        # Rerun whole on a conflict: the features depend on the stored bars read
        # here, so the MERGE may commit only on top of the version they came from.
        pinned = open_table(root, MARKET_BARS)
        stored = _stored_bars(root, list(fetched), interval, table=pinned)
        is_new = _is_new(new_rows, stored)
        for symbol, bars in fetched.items():
            result.symbols[symbol] = {
                "bars": len(bars),
                "new_bars": int(is_new[new_rows["symbol"] == symbol].sum()),
                "first": bars["timestamp"].iat[0].isoformat(),
                "last": bars["timestamp"].iat[-1].isoformat(),
            }
        rows = _with_features(stored, new_rows).assign(interval=interval)
        table = pa.Table.from_pandas(rows, preserve_index=False)
        return upsert(root, MARKET_BARS, table, max_commit_retries=max_commit_retries, based_on=pinned)

    return _record(result, rerun_on_conflict(write))


def _stored_bars(root: Path, symbols: list[str], interval: str, *, table: DeltaTable) -> pd.DataFrame:
    table = read_table(
        root,
        MARKET_BARS,
        filter=pc.field("symbol").isin(symbols) & (pc.field("interval") == interval),
        table=table,
    )
    return table.select(["symbol", *BAR_COLUMNS, "source"]).to_pandas()


def _is_new(rows: pd.DataFrame, stored: pd.DataFrame) -> np.ndarray:
    """Which of ``rows`` have no stored bar with the same symbol and timestamp."""
    keys = pd.MultiIndex.from_frame(rows[["symbol", "timestamp"]])
    return ~keys.isin(pd.MultiIndex.from_frame(stored[["symbol", "timestamp"]]))


def _with_features(stored: pd.DataFrame, fetched: pd.DataFrame) -> pd.DataFrame:
    """The fetched bars and the stored bars after them, with features over each whole series."""
    series = pd.concat([stored, fetched], ignore_index=True) if len(stored) else fetched
    series = series.drop_duplicates(["symbol", "timestamp"], keep="last")
    series = add_features(series.sort_values(["symbol", "timestamp"], ignore_index=True), by="symbol")
    # Earlier stored bars cannot change (features never look ahead); later ones may, after a backfill.
    first_fetched = fetched.groupby("symbol")["timestamp"].min()
    return series[series["timestamp"] >= series["symbol"].map(first_fetched)]


def _record(result: BatchResult, written: UpsertResult) -> BatchResult:
    result.version_before, result.version = written.version_before, written.version_after
    result.inserted, result.updated = written.inserted, written.updated
    logger.info(
        "%s: %d inserted, %d updated, version %d -> %d, %d symbol error(s).",
        written.table,
        written.inserted,
        written.updated,
        written.version_before,
        written.version_after,
        len(result.errors),
    )
    return result


def fetch_per_symbol(
    provider: MarketDataProvider,
    root: Path,
    spec: TableSpec,
    *,
    symbols: list[str],
    fetch: Callable[[str], pd.DataFrame],
    prepare: Callable[[str, pd.DataFrame], pd.DataFrame],
    max_commit_retries: int,
) -> BatchResult:
    """The pattern of news, earnings and fundamentals: fetch, prepare rows, one MERGE for the batch."""
    result = BatchResult(table=spec.name, provider=provider.name)
    if isinstance(symbols, str) or not symbols:
        raise ValueError(f"symbols must be a non-empty list of tickers, got {symbols!r}")
    frames = []
    for raw_symbol in dict.fromkeys(symbols):
        try:
            symbol = normalize_symbol(raw_symbol)
            frame = fetch(symbol)
            if frame.empty:
                raise NoDataError(f"{symbol}: {provider.name} has no {spec.name} for it")
            frame = prepare(symbol, frame).assign(symbol=symbol, provider=provider.name)
        except SymbolDataError as exc:
            result.errors[str(raw_symbol)] = str(exc)
            continue
        except (KeyError, ValueError, TypeError) as exc:
            result.errors[str(raw_symbol)] = (
                f"{raw_symbol}: malformed {spec.name} from {provider.name} ({exc!r})"
            )
            continue
        frames.append(frame)
        result.symbols[symbol] = {"rows": len(frame)}
    if not frames:
        return result
    combined = pd.concat(frames, ignore_index=True)
    rows = pa.Table.from_pandas(combined[list(spec.schema.names)], preserve_index=False)
    written = rerun_on_conflict(lambda: upsert(root, spec, rows, max_commit_retries=max_commit_retries))
    return _record(result, written)


@lru_cache(maxsize=1)
def _sentiment_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def score_sentiment(text: str) -> dict[str, float]:
    """VADER scores of ``text``: ``compound`` in [-1, 1] and the positive/negative/neutral shares."""
    scores = _sentiment_analyzer().polarity_scores(text)
    return {
        "sentiment_compound": scores["compound"],
        "sentiment_positive": scores["pos"],
        "sentiment_negative": scores["neg"],
        "sentiment_neutral": scores["neu"],
    }


def prepare_news(symbol: str, news: pd.DataFrame) -> pd.DataFrame:
    """News with a stable id (a re-fetch updates, never duplicates) and the sentiment of its text."""
    news = news.copy()
    news["published_at"] = pd.to_datetime(news["published_at"], utc=True).astype("datetime64[us, UTC]")
    if news["headline"].isna().any():
        raise SymbolDataError(f"{symbol}: a news item has no headline")
    news["id"] = [
        hashlib.sha256(f"{symbol}|{url or ''}|{headline}|{at.isoformat()}".encode()).hexdigest()[:32]
        for url, headline, at in zip(news["url"], news["headline"], news["published_at"], strict=True)
    ]
    for column in ("summary", "source", "url"):  # all-empty CSV columns come back as float NaN
        news[column] = news[column].astype("object").where(news[column].notna(), None)
    texts = [
        f"{headline}. {summary or ''}"
        for headline, summary in zip(news["headline"], news["summary"], strict=True)
    ]
    scores = pd.DataFrame([score_sentiment(text) for text in texts], index=news.index)
    return pd.concat([news, scores], axis=1)


def _numeric(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """``frame`` with ``columns`` as floats; a value that is not a number is a ``ValueError`` naming it."""
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    return frame


def prepare_earnings(symbol: str, earnings: pd.DataFrame) -> pd.DataFrame:
    earnings = _numeric(earnings, ("eps_estimate", "eps_actual", "revenue_estimate", "revenue_actual"))
    earnings["fiscal_period"] = earnings["fiscal_period"].astype(str)
    earnings["report_date"] = pd.to_datetime(earnings["report_date"]).dt.date
    earnings["eps_surprise_pct"] = (earnings["eps_actual"] / earnings["eps_estimate"] - 1) * 100
    return earnings


def prepare_fundamentals(symbol: str, fundamentals: pd.DataFrame) -> pd.DataFrame:
    fundamentals = _numeric(
        fundamentals, ("market_cap", "pe_ratio", "eps", "revenue", "debt_to_equity", "dividend_yield")
    )
    fundamentals["as_of"] = pd.to_datetime(fundamentals["as_of"]).dt.date
    return fundamentals


def fetch_news(
    provider: MarketDataProvider,
    root: Path,
    *,
    symbols: list[str],
    start: datetime,
    end: datetime,
    max_commit_retries: int,
) -> BatchResult:
    return fetch_per_symbol(
        provider,
        root,
        NEWS,
        symbols=symbols,
        fetch=lambda symbol: provider.fetch_news(symbol, start=start, end=end),
        prepare=prepare_news,
        max_commit_retries=max_commit_retries,
    )


def fetch_earnings(
    provider: MarketDataProvider, root: Path, *, symbols: list[str], max_commit_retries: int
) -> BatchResult:
    return fetch_per_symbol(
        provider,
        root,
        EARNINGS,
        symbols=symbols,
        fetch=provider.fetch_earnings,
        prepare=prepare_earnings,
        max_commit_retries=max_commit_retries,
    )


def fetch_fundamentals(
    provider: MarketDataProvider, root: Path, *, symbols: list[str], max_commit_retries: int
) -> BatchResult:
    return fetch_per_symbol(
        provider,
        root,
        FUNDAMENTALS,
        symbols=symbols,
        fetch=provider.fetch_fundamentals,
        prepare=prepare_fundamentals,
        max_commit_retries=max_commit_retries,
    )
