"""Market data into real Delta tables in a temp dir: providers, features, idempotent MERGE, upkeep."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from conftest import REPO_ROOT

from actors.market_data import (
    BarRequest,
    NoDataError,
    UnknownSymbolError,
    build_provider,
    ingest,
    maintenance,
)
from actors.market_data.features import add_features
from actors.market_data.files import FileProvider
from actors.market_data.providers import SymbolDataError, check_bars
from actors.market_data.synthetic import SyntheticProvider
from actors.market_data.tables import EARNINGS, FUNDAMENTALS, MARKET_BARS, NEWS, read_table, table_version

pytestmark = pytest.mark.timeout(60)

RETRIES = {"max_commit_retries": 10}


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def fetch(root, provider, symbols, start, end, interval="1d"):
    return ingest.fetch_bars(
        provider, root, symbols=symbols, start=start, end=end, interval=interval, **RETRIES
    )


def stored(root, symbol="AAPL", interval="1d") -> pd.DataFrame:
    table = read_table(
        root, MARKET_BARS, filter=(pc.field("symbol") == symbol) & (pc.field("interval") == interval)
    )
    return table.to_pandas().sort_values("timestamp", ignore_index=True)


@pytest.fixture
def synthetic() -> SyntheticProvider:
    return SyntheticProvider(seed=11)


# -- synthetic provider ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_independent_of_the_range(synthetic):
    request = BarRequest("AAPL", utc(2023, 1, 1), utc(2025, 1, 1), "1d")
    again = SyntheticProvider(seed=11).fetch_bars(request)
    pd.testing.assert_frame_equal(synthetic.fetch_bars(request), again)
    other_seed = SyntheticProvider(seed=12).fetch_bars(request)
    assert not np.allclose(other_seed["close"], again["close"])

    part = synthetic.fetch_bars(BarRequest("AAPL", utc(2024, 3, 1), utc(2024, 4, 1), "1d"))
    whole = again.set_index("timestamp").loc[part["timestamp"]].reset_index()
    pd.testing.assert_frame_equal(part.reset_index(drop=True), whole)

    hours = synthetic.fetch_bars(BarRequest("AAPL", utc(2024, 3, 4), utc(2024, 3, 9), "1h"))
    day = synthetic.fetch_bars(BarRequest("AAPL", utc(2024, 3, 5), utc(2024, 3, 6), "1h"))
    assert len(hours) == 5 * 7 and len(day) == 7
    pd.testing.assert_frame_equal(day.reset_index(drop=True), hours.iloc[7:14].reset_index(drop=True))


def test_synthetic_bars_are_valid_and_realistic(synthetic):
    bars = check_bars(
        synthetic.fetch_bars(BarRequest("MSFT", utc(2023, 1, 1), utc(2025, 1, 1), "1d")), what="MSFT"
    )
    assert (bars["timestamp"].dt.day_of_week < 5).all()  # weekdays only
    featured = add_features(bars)
    returns = featured["return_pct"].dropna()
    assert 0.5 < returns.std() < 6  # a stock, not a constant or a lottery ticket
    assert (featured["gap_pct"].abs() > 2).sum() >= 3  # overnight gaps happen
    assert (featured["volume_ratio"] > 2).sum() >= 3  # and volume spikes
    rolling_vol = returns.rolling(40).std().dropna()
    assert rolling_vol.max() > 1.8 * rolling_vol.min()  # volatility regimes

    minutes = synthetic.fetch_bars(BarRequest("MSFT", utc(2024, 6, 3), utc(2024, 6, 4), "5m"))
    day = bars.set_index("timestamp").loc[pd.Timestamp("2024-06-03", tz="UTC")]
    checked = check_bars(minutes, what="5m")
    assert len(checked) == 78
    assert checked["open"].iat[0] == pytest.approx(day["open"]) and checked["close"].iat[-1] == pytest.approx(
        day["close"]
    )
    assert checked["high"].max() <= day["high"] + 1e-9 and checked["low"].min() >= day["low"] - 1e-9


def test_synthetic_universe_and_empty_ranges_are_symbol_errors():
    provider = SyntheticProvider(seed=1, symbols=frozenset({"AAPL"}))
    with pytest.raises(UnknownSymbolError, match="not in the synthetic universe"):
        provider.fetch_bars(BarRequest("NOPE", utc(2024, 1, 1), utc(2024, 2, 1), "1d"))
    with pytest.raises(NoDataError, match="no trading day"):  # a weekend
        provider.fetch_bars(BarRequest("AAPL", utc(2024, 1, 6), utc(2024, 1, 8), "1d"))
    with pytest.raises(NoDataError, match="covers weekdays from 2000-01-03"):
        provider.fetch_bars(BarRequest("AAPL", utc(1990, 1, 1), utc(1991, 1, 1), "1d"))


# -- features -------------------------------------------------------------------------------------


def test_features_on_a_known_series():
    closes = np.arange(1.0, 61.0)  # a steady climb: every bar gains 1
    bars = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=60, freq="D", tz="UTC"),
            "open": closes - 0.5,
            "high": closes + 1,
            "low": closes - 1,
            "close": closes,
            "volume": [100] * 59 + [300],
        }
    )
    features = add_features(bars)
    last = features.iloc[-1]
    assert last["return_pct"] == pytest.approx((60 / 59 - 1) * 100)
    assert last["gap_pct"] == pytest.approx((59.5 / 59 - 1) * 100)
    assert last["volume_ratio"] == pytest.approx(3.0)
    assert last["sma_20"] == pytest.approx(np.mean(closes[-20:]))
    assert last["sma_50"] == pytest.approx(np.mean(closes[-50:]))
    assert last["rsi_14"] == 100.0  # no losses at all
    assert last["atr_14"] == pytest.approx(2.0)  # true range is high - low = 2 throughout
    expected_ema = pd.Series(closes).ewm(span=12, adjust=False).mean().iat[-1]
    assert last["ema_12"] == pytest.approx(expected_ema)
    assert features["sma_20"].isna().sum() == 19 and features["volume_ratio"].isna().sum() == 20
    assert features["rsi_14"].isna().sum() == 14 and pd.isna(features["gap_pct"].iat[0])


def test_rsi_of_a_falling_series_is_zero_and_features_never_look_ahead(synthetic):
    bars = check_bars(
        synthetic.fetch_bars(BarRequest("XOM", utc(2024, 1, 1), utc(2024, 12, 1), "1d")), what="x"
    )
    full = add_features(bars)
    prefix = add_features(bars.iloc[:100])
    pd.testing.assert_frame_equal(full.iloc[:100], prefix)
    falling = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=20, freq="D", tz="UTC"),
            "open": np.arange(40.0, 20.0, -1),
            "high": np.arange(40.5, 20.5, -1),
            "low": np.arange(38.5, 18.5, -1),
            "close": np.arange(39.0, 19.0, -1),
            "volume": [10] * 20,
        }
    )
    assert add_features(falling)["rsi_14"].iat[-1] == pytest.approx(0.0)


# -- idempotent upsert ----------------------------------------------------------------------------


def test_fetching_the_same_range_twice_changes_nothing(tmp_path, synthetic):
    first = fetch(tmp_path, synthetic, ["AAPL", "MSFT"], utc(2024, 1, 1), utc(2024, 7, 1))
    assert first.changed and first.inserted == 2 * 130 and first.errors == {}
    rows_before = stored(tmp_path, "MSFT")

    second = fetch(tmp_path, synthetic, ["AAPL", "MSFT"], utc(2024, 1, 1), utc(2024, 7, 1))
    assert not second.changed
    assert (second.inserted, second.updated) == (0, 0)
    assert second.version == second.version_before == first.version
    assert second.symbols["AAPL"]["new_bars"] == 0
    pd.testing.assert_frame_equal(stored(tmp_path, "MSFT"), rows_before)


def test_overlapping_ranges_extend_and_features_match_one_big_fetch(tmp_path, synthetic):
    fetch(tmp_path, synthetic, ["AAPL"], utc(2024, 1, 1), utc(2024, 7, 1))
    extended = fetch(tmp_path, synthetic, ["AAPL"], utc(2024, 6, 1), utc(2024, 9, 1))
    assert extended.changed and extended.inserted == 45 and extended.updated == 0
    assert extended.symbols["AAPL"] == {
        "bars": 65,
        "new_bars": 45,
        "first": "2024-06-03T00:00:00+00:00",
        "last": "2024-08-30T00:00:00+00:00",
    }
    # A backfill before the stored bars: the later bars' features change and are updated.
    backfill = fetch(tmp_path, synthetic, ["AAPL"], utc(2023, 11, 1), utc(2024, 1, 15))
    assert backfill.inserted == 43 and backfill.updated > 0

    bars = stored(tmp_path)
    assert bars["timestamp"].is_unique and len(bars) == 43 + 130 + 45
    fresh = tmp_path / "fresh"
    fetch(fresh, synthetic, ["AAPL"], utc(2023, 11, 1), utc(2024, 9, 1))
    pd.testing.assert_frame_equal(bars, stored(fresh))


def test_a_bad_symbol_is_a_per_symbol_error_not_a_failed_batch(tmp_path):
    provider = SyntheticProvider(seed=3, symbols=frozenset({"AAPL", "MSFT"}))
    result = fetch(
        tmp_path, provider, ["AAPL", "NOPE", "bad ticker!", "MSFT"], utc(2024, 1, 1), utc(2024, 2, 1)
    )
    assert set(result.symbols) == {"AAPL", "MSFT"}
    assert "NOPE: not in the synthetic universe" in result.errors["NOPE"]
    assert "is not a ticker" in result.errors["bad ticker!"]
    assert set(stored(tmp_path, "MSFT")["symbol"]) == {"MSFT"}

    weekend = fetch(tmp_path, provider, ["AAPL"], utc(2024, 1, 6), utc(2024, 1, 8))
    assert "no trading day" in weekend.errors["AAPL"] and not weekend.changed


def test_only_bad_symbols_writes_nothing(tmp_path):
    provider = SyntheticProvider(seed=3, symbols=frozenset({"AAPL"}))
    result = fetch(tmp_path, provider, ["NOPE"], utc(2024, 1, 1), utc(2024, 2, 1))
    assert result.symbols == {} and list(result.errors) == ["NOPE"]
    assert table_version(tmp_path, MARKET_BARS) is None


@pytest.mark.parametrize(
    ("symbols", "interval", "start", "end", "message"),
    [
        ([], "1d", utc(2024, 1, 1), utc(2024, 2, 1), "symbols is empty"),
        ("AAPL", "1d", utc(2024, 1, 1), utc(2024, 2, 1), "must be a list"),
        (["AAPL"], "2d", utc(2024, 1, 1), utc(2024, 2, 1), "interval '2d' is unknown"),
        (["AAPL"], "1d", utc(2024, 2, 1), utc(2024, 1, 1), "must be after start"),
    ],
)
def test_a_bad_batch_is_refused_with_the_reason(tmp_path, synthetic, symbols, interval, start, end, message):
    with pytest.raises(ValueError, match=message):
        fetch(tmp_path, synthetic, symbols, start, end, interval)


def test_times_parse_from_iso_text():
    assert ingest.parse_time("2024-01-31", what="end", end=True) == utc(2024, 2, 1)
    assert ingest.parse_time("2024-01-31T10:00:00", what="start") == utc(2024, 1, 31, 10)
    with pytest.raises(ValueError, match="start='yesterday' is not an ISO date"):
        ingest.parse_time("yesterday", what="start")


def test_build_provider_names_the_choices(tmp_path):
    assert build_provider("synthetic", seed=1).name == "synthetic"
    assert build_provider("files", files_dir=tmp_path).name == "files"
    with pytest.raises(ValueError, match="use one of synthetic, files, ib, yfinance"):
        build_provider("bloomberg")


# -- files provider -------------------------------------------------------------------------------


def test_files_provider_imports_csv_and_parquet(tmp_path, synthetic):
    folder = tmp_path / "files"
    (folder / "1d").mkdir(parents=True)
    source = synthetic.fetch_bars(BarRequest("AAPL", utc(2024, 1, 1), utc(2024, 3, 1), "1d"))
    csv = source.rename(columns={"timestamp": "Date", "close": "Close"})
    csv["Date"] = csv["Date"].dt.strftime("%Y-%m-%d")
    csv.to_csv(folder / "1d" / "AAPL.csv", index=False)
    source.to_parquet(folder / "MSFT.parquet")

    provider = FileProvider(folder=folder)
    result = fetch(tmp_path / "delta", provider, ["AAPL", "MSFT", "GOOG"], utc(2024, 1, 1), utc(2024, 2, 1))
    assert result.symbols["AAPL"]["bars"] == result.symbols["MSFT"]["bars"] == 23
    assert "GOOG: no file for it" in result.errors["GOOG"]
    aapl = stored(tmp_path / "delta", "AAPL")
    assert aapl["source"].unique().tolist() == ["files"]
    expected = source[source["timestamp"] < utc(2024, 2, 1)]["close"].to_numpy()
    np.testing.assert_allclose(aapl["close"].to_numpy(), expected)


def test_files_provider_names_the_fault_in_a_bad_file(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    pd.DataFrame(
        {"timestamp": ["2024-01-02"], "open": [10], "high": [9], "low": [8], "close": [9], "volume": [1]}
    ).to_csv(folder / "BAD.csv", index=False)
    pd.DataFrame({"timestamp": ["2024-01-02"], "open": [10]}).to_csv(folder / "THIN.csv", index=False)
    pd.DataFrame(
        {"timestamp": ["not a date"], "open": [1], "high": [1], "low": [1], "close": [1], "volume": [1]}
    ).to_csv(folder / "ODD.csv", index=False)
    (folder / "JUNK.parquet").write_bytes(b"not parquet")
    result = fetch(
        tmp_path / "delta",
        FileProvider(folder=folder),
        ["BAD", "THIN", "ODD", "JUNK"],
        utc(2024, 1, 1),
        utc(2024, 2, 1),
    )
    assert "row 1 has high below open/close/low" in result.errors["BAD"]
    assert "missing column(s) high, low, close, volume" in result.errors["THIN"]
    assert "unreadable timestamp 'not a date'" in result.errors["ODD"]
    assert "JUNK.parquet: cannot be read" in result.errors["JUNK"]
    assert result.symbols == {}


# -- news, earnings, fundamentals -----------------------------------------------------------------


def test_news_is_scored_on_ingest_and_refetching_changes_nothing(tmp_path, synthetic):
    first = ingest.fetch_news(
        synthetic, tmp_path, symbols=["AAPL"], start=utc(2024, 1, 1), end=utc(2024, 4, 1), **RETRIES
    )
    again = ingest.fetch_news(
        synthetic, tmp_path, symbols=["AAPL"], start=utc(2024, 1, 1), end=utc(2024, 4, 1), **RETRIES
    )
    assert first.inserted == first.symbols["AAPL"]["rows"] > 5
    assert not again.changed
    news = read_table(tmp_path, NEWS).to_pandas()
    assert news["id"].is_unique
    positive = news[news["headline"].str.contains("beats|rally|upgrade|wins")]
    negative = news[news["headline"].str.contains("misses|cuts|probe|downgrade")]
    assert not positive.empty and not negative.empty
    assert (positive["sentiment_compound"] > 0.3).all() and (negative["sentiment_compound"] < -0.2).all()


def test_news_from_files_gets_sentiment(tmp_path):
    folder = tmp_path / "files" / "news"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "published_at": ["2024-03-01T14:00:00Z", "2024-03-02T14:00:00Z"],
            "headline": [
                "ACME posts record profit, a great quarter",
                "ACME faces terrible lawsuit and losses",
            ],
        }
    ).to_csv(folder / "ACME.csv", index=False)
    result = ingest.fetch_news(
        FileProvider(folder=tmp_path / "files"),
        tmp_path / "delta",
        symbols=["ACME", "NONE"],
        start=utc(2024, 1, 1),
        end=utc(2025, 1, 1),
        **RETRIES,
    )
    assert result.symbols == {"ACME": {"rows": 2}} and "NONE: no file" in result.errors["NONE"]
    news = read_table(tmp_path / "delta", NEWS).to_pandas().sort_values("published_at")
    good, bad = news["sentiment_compound"].tolist()
    assert good > 0.5 and bad < -0.5


def test_earnings_and_fundamentals_are_stored(tmp_path, synthetic):
    earnings = ingest.fetch_earnings(synthetic, tmp_path, symbols=["AAPL", "MSFT"], **RETRIES)
    fundamentals = ingest.fetch_fundamentals(synthetic, tmp_path, symbols=["AAPL"], **RETRIES)
    assert earnings.inserted > 100 and fundamentals.inserted > 50
    rows = read_table(tmp_path, EARNINGS).to_pandas()
    surprise = (rows["eps_actual"] / rows["eps_estimate"] - 1) * 100
    np.testing.assert_allclose(rows["eps_surprise_pct"], surprise)
    latest = read_table(tmp_path, FUNDAMENTALS).to_pandas().sort_values("as_of").iloc[-1]
    assert latest["market_cap"] > 0 and latest["pe_ratio"] > 0 and latest["provider"] == "synthetic"
    assert not ingest.fetch_earnings(synthetic, tmp_path, symbols=["AAPL", "MSFT"], **RETRIES).changed


# -- upkeep ---------------------------------------------------------------------------------------


def test_24h_stats_cleanup_and_optimize(tmp_path, synthetic):
    fetch(tmp_path, synthetic, ["AAPL"], utc(2024, 1, 1), utc(2024, 3, 1))
    fetch(tmp_path, synthetic, ["AAPL"], utc(2024, 2, 26), utc(2024, 2, 28), interval="1h")
    ingest.fetch_news(
        synthetic, tmp_path, symbols=["AAPL"], start=utc(2024, 1, 1), end=utc(2024, 3, 1), **RETRIES
    )

    stats = maintenance.update_24h_stats(tmp_path)["stats"]
    daily, hourly = stats["AAPL/1d"], stats["AAPL/1h"]
    bars = stored(tmp_path)
    assert daily["last"] == bars["close"].iat[-1] and daily["bars"] == 1
    assert daily["change_pct"] == pytest.approx((bars["close"].iat[-1] / bars["close"].iat[-2] - 1) * 100)
    hours = stored(tmp_path, interval="1h")
    assert hourly["bars"] == 7 and hourly["volume"] == hours["volume"].iloc[-7:].sum()
    assert hourly["high"] == hours["high"].iloc[-7:].max()

    deleted = maintenance.cleanup_data(tmp_path, older_than=utc(2024, 2, 1))
    assert deleted["market_bars"] == 23 and deleted["news"] > 0
    assert stored(tmp_path)["timestamp"].min() == pd.Timestamp("2024-02-01", tz="UTC")
    assert maintenance.cleanup_data(tmp_path, older_than=utc(2024, 2, 1)) == {"market_bars": 0, "news": 0}

    before = stored(tmp_path)
    report = maintenance.optimize_tables(tmp_path, retention_hours=0)
    assert report["market_bars"]["files_removed"] >= 2 and report["market_bars"]["files_vacuumed"] >= 2
    pd.testing.assert_frame_equal(stored(tmp_path), before)


def test_check_bars_rejects_impossible_bars():
    bad = pd.DataFrame(
        {
            "timestamp": ["2024-01-02"],
            "open": [1.0],
            "high": [2.0],
            "low": [0.5],
            "close": [1.0],
            "volume": [-5],
        }
    )
    with pytest.raises(SymbolDataError, match="negative volume"):
        check_bars(bad, what="X")


def test_features_of_a_batch_equal_features_of_each_series(synthetic):
    request = {"start": utc(2024, 1, 1), "end": utc(2024, 6, 1), "interval": "1d"}
    frames = {
        symbol: check_bars(synthetic.fetch_bars(BarRequest(symbol, **request)), what=symbol)
        for symbol in ("AAPL", "MSFT")
    }
    batch = pd.concat([bars.assign(symbol=symbol) for symbol, bars in frames.items()], ignore_index=True)
    together = add_features(batch, by="symbol")
    for symbol, bars in frames.items():
        alone = add_features(bars)
        pd.testing.assert_frame_equal(
            together[together["symbol"] == symbol].drop(columns="symbol").reset_index(drop=True), alone
        )


def test_concurrent_writers_of_one_symbol_rerun_and_agree_with_a_serial_run(tmp_path, synthetic):
    """delta-rs refuses a MERGE whose partition changed under it; the fetch reruns on fresh data."""
    ranges = [
        (utc(2022, 1, 1), utc(2022, 12, 1)),
        (utc(2024, 1, 1), utc(2024, 12, 1)),
        (utc(2023, 1, 1), utc(2023, 6, 1)),
    ]
    outcomes: list[object] = []

    def fetch_range(first, last):
        try:
            outcomes.append(fetch(tmp_path / "concurrent", synthetic, ["AAPL", "MSFT"], first, last))
        except Exception as exc:  # the assertion below names it
            outcomes.append(exc)

    threads = [threading.Thread(target=fetch_range, args=span) for span in ranges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert all(isinstance(outcome, ingest.BatchResult) for outcome in outcomes), outcomes
    for first, last in ranges:
        fetch(tmp_path / "serial", synthetic, ["AAPL", "MSFT"], first, last)
    for symbol in ("AAPL", "MSFT"):
        pd.testing.assert_frame_equal(
            stored(tmp_path / "concurrent", symbol), stored(tmp_path / "serial", symbol)
        )


def test_a_malformed_earnings_file_is_a_per_symbol_error(tmp_path):
    folder = tmp_path / "files" / "earnings"
    folder.mkdir(parents=True)
    good = {
        "fiscal_period": ["2024Q1"],
        "report_date": ["2024-04-25"],
        "eps_estimate": [1.0],
        "eps_actual": [1.1],
    }
    pd.DataFrame(good).to_csv(folder / "GOOD.csv", index=False)
    pd.DataFrame({**good, "eps_actual": ["a lot"]}).to_csv(folder / "BAD.csv", index=False)
    result = ingest.fetch_earnings(
        FileProvider(folder=tmp_path / "files"), tmp_path / "delta", symbols=["GOOD", "BAD"], **RETRIES
    )
    assert result.inserted == 1 and list(result.symbols) == ["GOOD"]
    assert "BAD: malformed earnings from files" in result.errors["BAD"] and "a lot" in result.errors["BAD"]
    stored_row = read_table(tmp_path / "delta", EARNINGS).to_pylist()[0]
    assert stored_row["eps_surprise_pct"] == pytest.approx(10.0) and stored_row["revenue_actual"] is None


def test_importing_the_actors_leaves_deltalake_unloaded(tmp_path):
    """The dramatiq master imports ``actors`` before forking; deltalake is not fork-safe."""
    code = (
        "import sys, actors; print(sorted(m for m in ('deltalake', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    env = {
        **os.environ,
        "TRADEFLOW_AUDIT_ENABLED": "false",
        "TRADEFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
    }
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
