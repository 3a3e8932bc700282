"""Analysis reports: facts gathered, the configured analyzer asked, the report stored in SQL.

The ``ai_analysis`` queue's actors call these with the process's settings.  The
fact gatherers read Delta tables with pandas and pyarrow, so they are imported
when a report is made, not with this module.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from .analyzer import AnalysisRequest, FallbackAnalyzer
from .offline import OfflineAnalyzer

if TYPE_CHECKING:
    from actors.settings import Settings


@lru_cache(maxsize=1)
def _engine(database_url: str):
    from storage import create_db_engine

    return create_db_engine(database_url)


def analyzer_for(settings: Settings) -> FallbackAnalyzer:
    """The analyzer ``settings`` configure: offline rules, or an LLM falling back to them."""
    if settings.analysis_analyzer == "offline":
        return FallbackAnalyzer(primary=OfflineAnalyzer())
    from .llm import LLMAnalyzer

    llm = LLMAnalyzer(
        base_url=settings.analysis_llm_base_url,
        model=settings.analysis_llm_model,
        api_key=settings.analysis_llm_api_key,
        timeout=settings.analysis_llm_timeout_s,
    )
    return FallbackAnalyzer(primary=llm, fallback=OfflineAnalyzer())


def analyze_and_store(
    settings: Settings, kind: str, facts: dict, *, arguments: dict, message_id: str | None
) -> dict:
    """Run the analyzer on ``facts``, store the report, return what was stored.

    A report made for a message is stored under the message's id, so a redelivery
    replaces its row instead of adding one.
    """
    from storage import AnalysisRecord, save_analysis

    outcome = analyzer_for(settings).run(AnalysisRequest(kind=kind, facts=facts))
    inputs = {**facts.get("inputs", {}), **_inputs_of(facts), "arguments": arguments}
    record = AnalysisRecord(
        kind=kind,
        analyzer=outcome.analyzer,
        fallback_reason=outcome.fallback_reason,
        message_id=message_id,
        inputs=inputs,
        report=outcome.report.model_dump(mode="json"),
    )
    if message_id is not None:
        record.id = message_id
    stored = save_analysis(_engine(settings.database_url), record)
    return {
        "id": stored.id,
        "kind": kind,
        "analyzer": stored.analyzer,
        "fallback_reason": stored.fallback_reason,
        "inputs": stored.inputs,
        "report": stored.report,
    }


def _inputs_of(facts: dict) -> dict:
    """Versions read by the nested fact groups (market, portfolio)."""
    inputs = {}
    for group in ("market", "portfolio"):
        for name, value in (facts.get(group) or {}).get("inputs", {}).items():
            inputs[f"{group}.{name}"] = value
    return inputs


def market_facts_of(settings: Settings, symbols: list[str], as_of: str | None = None) -> dict:
    """Market facts of ``symbols`` from the Delta tables, as of a time (``None``: latest)."""
    from actors.market_data.ingest import parse_time

    from .facts import market_facts

    moment = parse_time(as_of, what="as_of", end=True) if as_of else None
    return market_facts(settings.delta_root, symbols, as_of=moment)


def portfolio_facts_of(settings: Settings, portfolio: dict, limits: dict | None) -> dict:
    """Facts of a portfolio given in the message, against its limits."""
    from .facts import portfolio_facts

    return portfolio_facts(settings.delta_root, portfolio, limits)


def backtest_facts_of(backtest: dict) -> dict:
    """Facts of a backtest result."""
    from .facts import backtest_facts

    return backtest_facts(backtest)
