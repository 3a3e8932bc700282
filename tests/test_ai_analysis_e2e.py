"""The ai_analysis queue end to end: a worker asks the stand-in LLM, falls back, stores the reports."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from data_workers import Client, data_settings, worker
from dramatiq.results import ResultFailure
from llm_standin import ChatStandIn

from actors.market_data import ingest
from actors.market_data.synthetic import SyntheticProvider
from storage import create_db_engine, get_analysis, list_analyses

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def standin():
    server = ChatStandIn()
    yield server
    server.close()


@pytest.fixture
def settings(redis_url, namespace, tmp_path, standin):
    settings = data_settings(
        redis_url,
        namespace,
        tmp_path,
        analysis_analyzer="llm",
        analysis_llm_base_url=standin.base_url,
        analysis_llm_model="standin-1",
        analysis_llm_timeout_s=10,
    )
    provider = SyntheticProvider(seed=settings.data_synthetic_seed)
    ingest.fetch_bars(
        provider,
        settings.delta_root,
        symbols=["AAPL", "MSFT"],
        start=datetime(2024, 1, 1, tzinfo=UTC),
        end=datetime(2024, 10, 1, tzinfo=UTC),
        interval="1d",
        max_commit_retries=5,
    )
    return settings


def test_analyses_through_a_worker_with_the_llm_and_its_fallback(settings, standin):
    engine = create_db_engine(settings.database_url)
    with worker(settings, "ai_analysis"):
        client = Client(settings, "ai_analysis")
        answered = client.call("morning_prep", ["AAPL", "MSFT"])
        assert answered["analyzer"] == "llm:standin-1" and answered["fallback_reason"] is None
        assert answered["report"]["summary"] == "stand-in review of 2 symbol(s)"
        assert answered["inputs"]["market.market_bars_version"] == 1
        row = get_analysis(engine, answered["id"])
        assert (
            row.kind == "morning_prep"
            and row.analyzer == "llm:standin-1"
            and row.message_id == answered["id"]
        )

        standin.mode = "invalid_json"
        fallback = client.call("generate_recommendations", ["AAPL"], {"positions": {"AAPL": 1000}, "cash": 0})
        assert fallback["analyzer"] == "offline" and "invalid JSON" in fallback["fallback_reason"]
        (recommendation,) = fallback["report"]["recommendations"]
        assert recommendation["action"] == "reduce"  # 100 % of equity in one name, over the 20 % limit
        assert get_analysis(engine, fallback["id"]).fallback_reason == fallback["fallback_reason"]

        with pytest.raises(ResultFailure, match="backtest result lacks sharpe"):
            client.call("analyze_strategy", {"total_return_pct": 4, "max_drawdown_pct": 2, "trades": 40})

        standin.mode = "error"  # the endpoint is broken from here on: every answer is the offline one
        portfolio = {"positions": {"AAPL": 10, "MSFT": 10}, "cash": 1_000_000}
        review = client.call("evening_review", portfolio)
        assert review["analyzer"] == "offline" and "HTTP 500" in review["fallback_reason"]
        assert review["report"]["summary"].startswith("Day P&L")
        risk = client.call("assess_risk", portfolio, {"max_position_pct": 50})
        assert risk["report"]["summary"].endswith("Within all limits.")
        assert risk["report"]["figures"]["headroom_position_pct"] > 0
        strategy = client.call(
            "analyze_strategy",
            {
                "name": "gap_fade",
                "metrics": {"total_return_pct": 30, "max_drawdown_pct": -8, "sharpe": 1.5, "trades": 90},
            },
        )
        assert strategy["report"]["recommendations"][0]["action"] == "deploy"
        kinds = {row.kind for row in list_analyses(engine)}
        assert kinds == {"morning_prep", "recommendations", "evening_review", "risk", "strategy"}
    engine.dispose()
