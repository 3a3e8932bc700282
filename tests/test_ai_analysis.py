"""Both analyzers: offline rules over real Delta data, and the LLM one against a stand-in chat server."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest
from llm_standin import ChatStandIn

from actors.analysis import AnalysisRequest, AnalyzerError, FallbackAnalyzer, OfflineAnalyzer
from actors.analysis.facts import backtest_facts, market_facts, portfolio_facts
from actors.analysis.llm import LLMAnalyzer
from actors.analysis.offline import symbol_signal
from actors.market_data import ingest
from actors.market_data.synthetic import SyntheticProvider
from storage import AnalysisRecord, create_db_engine, get_analysis, list_analyses, save_analysis

pytestmark = pytest.mark.timeout(60)

SYMBOLS = ["AAPL", "MSFT", "TSLA"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Delta tables with a year of daily bars and news of three symbols."""
    root = tmp_path_factory.mktemp("delta")
    provider = SyntheticProvider(seed=21)
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    ingest.fetch_bars(
        provider, root, symbols=SYMBOLS, start=start, end=end, interval="1d", max_commit_retries=5
    )
    ingest.fetch_news(provider, root, symbols=SYMBOLS, start=start, end=end, max_commit_retries=5)
    return root


@pytest.fixture
def standin():
    server = ChatStandIn()
    yield server
    server.close()


def llm(server: ChatStandIn, *, timeout: float = 10.0) -> LLMAnalyzer:
    return LLMAnalyzer(base_url=server.base_url, model="standin-1", timeout=timeout)


# -- facts ----------------------------------------------------------------------------------------


def test_market_facts_come_from_the_tables_and_name_their_versions(root):
    facts = market_facts(root, ["AAPL", "NOPE"])
    assert facts["missing"] == ["NOPE"] and list(facts["symbols"]) == ["AAPL"]
    assert facts["inputs"]["market_bars_version"] == 1 and facts["inputs"]["news_version"] == 1
    aapl = facts["symbols"]["AAPL"]
    assert aapl["as_of"].startswith("2024-12-31") and aapl["bars"] == 262
    assert aapl["volatility_regime"] in {"low", "normal", "high"}
    earlier = market_facts(root, ["AAPL"], as_of=datetime(2024, 6, 28, tzinfo=UTC))["symbols"]["AAPL"]
    assert earlier["as_of"].startswith("2024-06-28") and earlier["close"] != aapl["close"]
    with pytest.raises(ValueError, match="is not a ticker"):
        market_facts(root, ["no way"])


def test_portfolio_facts_weights_var_and_headroom(root):
    facts = portfolio_facts(
        root, {"positions": {"AAPL": 10, "MSFT": 20}, "cash": 5_000}, {"max_position_pct": 50}
    )
    positions = facts["positions"]
    assert facts["equity"] == pytest.approx(5_000 + positions["AAPL"]["value"] + positions["MSFT"]["value"])
    assert sum(p["weight_pct"] for p in positions.values()) == pytest.approx(facts["gross_exposure_pct"])
    assert facts["headroom_pct"]["position"] == pytest.approx(50 - facts["largest_weight_pct"])
    assert facts["limits"]["max_var_pct"] == 3.0  # the default where none is given
    assert facts["var_95_1d_pct"] > 0


@pytest.mark.parametrize(
    ("portfolio", "message"),
    [
        ({"AAPL": 10}, "portfolio must look like"),
        ({"positions": {"AAPL": "ten"}}, "AAPL must be a finite number"),
        ({"positions": {"GOOG": 1}}, "no daily bars for position\\(s\\) GOOG"),
        ({"positions": {"AAPL": 1}, "cash": -(10**9)}, "equity is"),
        ({"positions": {}}, "has no positions"),
    ],
)
def test_bad_portfolios_are_refused_with_the_reason(root, portfolio, message):
    with pytest.raises(ValueError, match=message):
        portfolio_facts(root, portfolio)


def test_backtest_facts_need_the_core_figures():
    with pytest.raises(ValueError, match="lacks sharpe, trades"):
        backtest_facts({"total_return_pct": 3, "max_drawdown_pct": 4})
    with pytest.raises(ValueError, match="sharpe must be a finite number"):
        backtest_facts({"total_return_pct": 3, "max_drawdown_pct": 4, "sharpe": "high", "trades": 3})
    nested = backtest_facts(
        {
            "name": "gap_fade",
            "metrics": {"total_return_pct": 3, "max_drawdown_pct": 4, "sharpe": 1, "trades": 5},
        }
    )
    assert nested["strategy"] == "gap_fade" and nested["figures"]["trades"] == 5.0


def test_backtest_facts_read_the_strategy_queues_fractions():
    result = {
        "strategy": "gap_and_go",
        "metrics": {
            "total_return": 0.25,
            "win_rate": 0.55,
            "sharpe": None,
            "max_drawdown": -0.12,
            "number_of_trades": 42,
            "exposure": 0.3,
        },
    }
    figures = backtest_facts(result)["figures"]
    assert figures == pytest.approx(
        {
            "total_return_pct": 25.0,
            "max_drawdown_pct": -12.0,
            "sharpe": 0.0,
            "trades": 42.0,
            "win_rate_pct": 55.0,
            "exposure_pct": 30.0,
        }
    )


# -- offline analyzer -----------------------------------------------------------------------------


def test_offline_analysis_is_deterministic_and_covers_every_symbol(root):
    facts = {"market": market_facts(root, [*SYMBOLS, "NOPE"])}
    first = OfflineAnalyzer().analyze(AnalysisRequest("morning_prep", facts))
    again = OfflineAnalyzer().analyze(AnalysisRequest("morning_prep", facts))
    assert first == again
    assert [r.symbol for r in first.recommendations] == SYMBOLS
    assert first.warnings == ["no daily bars for NOPE: fetch_market_data it first"]
    assert first.figures["symbols"] == 3.0 and first.summary.startswith("3 symbol(s)")
    for recommendation in first.recommendations:
        assert 0 <= recommendation.confidence <= 1 and recommendation.rationale.startswith("score ")


def test_signal_rules_name_their_reasons():
    strong = {
        "close": 110.0,
        "sma_50": 100.0,
        "momentum_20d_pct": 8.0,
        "momentum_60d_pct": 15.0,
        "rsi_14": 60.0,
        "news_sentiment": 0.5,
    }
    buy = symbol_signal("AAA", strong)
    assert buy.action == "buy" and buy.figures["score"] == 2.5
    assert "20-day momentum +8.0%" in buy.rationale and "positive news (sentiment +0.50)" in buy.rationale
    weak = {
        "close": 90.0,
        "sma_50": 100.0,
        "momentum_20d_pct": -9.0,
        "drawdown_pct": -30.0,
        "news_sentiment": -0.4,
    }
    sell = symbol_signal("BBB", weak)
    assert sell.action == "sell" and "30.0% below its 1-year high" in sell.rationale
    calm, wild = symbol_signal("C", strong), symbol_signal("C", {**strong, "volatility_regime": "high"})
    assert (
        wild.confidence == pytest.approx(calm.confidence * 0.75, abs=1e-3)
        and "confidence reduced" in wild.rationale
    )


def test_morning_prep_flags_gaps_and_volume_spikes():
    facts = {
        "market": {"symbols": {"GAP": {"close": 10.0, "gap_pct": -4.2, "volume_ratio": 3.1}}, "missing": []}
    }
    report = OfflineAnalyzer().analyze(AnalysisRequest("morning_prep", facts))
    (watch,) = report.recommendations
    assert watch.action == "watch" and "gapped -4.2%" in watch.rationale and "volume 3.1x" in watch.rationale
    assert "Gaps: GAP (-4.2%)" in report.summary and report.figures["gappers"] == 1


def test_risk_assessment_reduces_positions_over_their_limit(root):
    portfolio = portfolio_facts(
        root, {"positions": {"AAPL": 100, "MSFT": 1}, "cash": 0}, {"max_position_pct": 30, "max_var_pct": 50}
    )
    report = OfflineAnalyzer().analyze(
        AnalysisRequest("risk", {"portfolio": portfolio, "market": market_facts(root, ["AAPL", "MSFT"])})
    )
    assert [r.symbol for r in report.recommendations if r.action == "reduce"] == ["AAPL"]
    assert report.recommendations[0].figures["target_weight_pct"] == 30
    assert any("AAPL is" in warning for warning in report.warnings)

    balanced = portfolio_facts(
        root, {"positions": {"AAPL": 1}, "cash": 10**7}, {"max_position_pct": 30, "max_var_pct": 50}
    )
    calm = OfflineAnalyzer().analyze(
        AnalysisRequest("risk", {"portfolio": balanced, "market": {"symbols": {}}})
    )
    assert calm.recommendations == [] and calm.summary.endswith("Within all limits.")


def test_var_is_the_5th_percentile_of_portfolio_returns(root):
    from actors.market_data.tables import MARKET_BARS, read_table

    facts = portfolio_facts(root, {"positions": {"TSLA": 10}, "cash": 0})
    closes = (
        read_table(root, MARKET_BARS).to_pandas().query("symbol == 'TSLA'").sort_values("timestamp")["close"]
    )
    returns = closes.pct_change().dropna().iloc[-250:].to_numpy() * 100
    assert facts["var_95_1d_pct"] == pytest.approx(-np.percentile(returns, 5))


@pytest.mark.parametrize(
    ("figures", "action"),
    [
        (
            {
                "total_return_pct": 25,
                "max_drawdown_pct": -9,
                "sharpe": 1.6,
                "trades": 120,
                "profit_factor": 1.8,
            },
            "deploy",
        ),
        ({"total_return_pct": 25, "max_drawdown_pct": -40, "sharpe": 1.2, "trades": 12}, "revise"),
        ({"total_return_pct": -5, "max_drawdown_pct": -20, "sharpe": -0.2, "trades": 200}, "reject"),
    ],
)
def test_strategy_analysis(figures, action):
    report = OfflineAnalyzer().analyze(AnalysisRequest("strategy", backtest_facts({"name": "s1", **figures})))
    (recommendation,) = report.recommendations
    assert recommendation.symbol == "s1" and recommendation.action == action
    if action == "revise":
        assert (
            "only 12 trades" in recommendation.rationale
            and "drawdown 40.0% exceeds" in recommendation.rationale
        )


# -- LLM analyzer through the stand-in server -----------------------------------------------------


def test_llm_analyzer_sends_the_facts_and_returns_the_validated_report(root, standin):
    facts = {"market": market_facts(root, SYMBOLS)}
    report = llm(standin).analyze(AnalysisRequest("recommendations", facts))
    assert report.kind == "recommendations" and [r.symbol for r in report.recommendations] == SYMBOLS
    assert report.summary == "stand-in review of 3 symbol(s)"
    (sent,) = standin.requests
    assert sent["model"] == "standin-1" and sent["response_format"] == {"type": "json_object"}
    assert '"confidence"' in sent["messages"][0]["content"]  # the schema is in the system prompt
    assert (
        '"AAPL"' in sent["messages"][1]["content"] and '"momentum_20d_pct"' in sent["messages"][1]["content"]
    )


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("invalid_json", "answered with invalid JSON: 'Sure! Here is my analysis"),
        (
            "bad_schema",
            r"breaks the report schema \(recommendations.0.confidence: Input should be less than or equal",
        ),
        ("stranger", "recommends symbols it was not given: ZZZZ"),
        ("error", "refused the request: HTTP 500"),
    ],
)
def test_llm_failures_are_clear_errors_and_the_fallback_answers(root, standin, mode, message):
    standin.mode = mode
    request = AnalysisRequest("morning_prep", {"market": market_facts(root, SYMBOLS)})
    with pytest.raises(AnalyzerError, match=message):
        llm(standin).analyze(request)
    outcome = FallbackAnalyzer(primary=llm(standin), fallback=OfflineAnalyzer()).run(request)
    assert outcome.analyzer == "offline" and outcome.fallback_reason
    assert outcome.report == OfflineAnalyzer().analyze(request)


def test_llm_timeout_and_unreachable_endpoint(root, standin):
    standin.mode, standin.delay = "slow", 5.0
    request = AnalysisRequest("risk", {"market": {"symbols": {}}, "portfolio": {"positions": {}}})
    started = time.monotonic()
    with pytest.raises(AnalyzerError, match=r"did not answer within 0\.5"):
        llm(standin, timeout=0.5).analyze(request)
    assert time.monotonic() - started < 4.5  # gave up at its timeout, not when the server answered

    down = ChatStandIn()
    down.close()
    with pytest.raises(AnalyzerError, match=r"is unreachable at http://127\.0\.0\.1"):
        llm(down).analyze(request)


# -- storage --------------------------------------------------------------------------------------


def test_analysis_records_are_stored_and_queryable(migrated_url):
    engine = create_db_engine(migrated_url)
    first = save_analysis(
        engine,
        AnalysisRecord(
            id="m1",
            kind="risk",
            analyzer="offline",
            inputs={"v": 1},
            report={"a": 1, "f": {"x": [float("nan")]}},
        ),
    )
    assert get_analysis(engine, "m1").report == {"a": 1, "f": {"x": [None]}}  # PostgreSQL's JSON has no NaN
    save_analysis(
        engine, AnalysisRecord(kind="strategy", analyzer="llm:x", fallback_reason=None, report={"b": 2})
    )
    replaced = save_analysis(
        engine, AnalysisRecord(id="m1", kind="risk", analyzer="offline", inputs={"v": 2}, report={"a": 2})
    )
    assert first.id == replaced.id == "m1"
    assert get_analysis(engine, "m1").inputs == {"v": 2}  # a redelivery replaces, never duplicates
    assert [r.kind for r in list_analyses(engine, kind="risk")] == ["risk"]
    assert len(list_analyses(engine)) == 2
    engine.dispose()
