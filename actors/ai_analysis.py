"""The ``ai_analysis`` queue: morning preparation, evening review, recommendations, strategy and risk.

Each actor gathers facts (Delta tables, the portfolio it is given, a
backtest result), asks the configured analyzer (``offline`` rules, or an
``llm`` with the offline rules as fallback), stores the report in the
``analysis_reports`` SQL table with the analyzer used and the versions of
the data read, and returns it.  Bad input fails at once (``ValueError``).
"""

from __future__ import annotations

from functools import lru_cache

import dramatiq
from dramatiq.middleware import CurrentMessage

#: Queue of the analysis actors.
QUEUE = "ai_analysis"
#: Time limit of one analysis (an LLM may take a while), in milliseconds.
ANALYSIS_TIME_LIMIT_MS = 5 * 60_000

_OPTIONS = {
    "queue_name": QUEUE,
    "store_results": True,
    "throws": (ValueError,),
    "time_limit": ANALYSIS_TIME_LIMIT_MS,
}


def _settings():
    from . import settings

    return settings


@lru_cache(maxsize=1)
def _engine(database_url: str):
    from storage import create_db_engine

    return create_db_engine(database_url)


def _analyzer(settings):
    from .analysis import FallbackAnalyzer, OfflineAnalyzer

    if settings.analysis_analyzer == "offline":
        return FallbackAnalyzer(primary=OfflineAnalyzer())
    from .analysis.llm import LLMAnalyzer

    llm = LLMAnalyzer(
        base_url=settings.analysis_llm_base_url,
        model=settings.analysis_llm_model,
        api_key=settings.analysis_llm_api_key,
        timeout=settings.analysis_llm_timeout_s,
    )
    return FallbackAnalyzer(primary=llm, fallback=OfflineAnalyzer())


def _analyze(kind: str, facts: dict, *, arguments: dict) -> dict:
    """Run the analyzer on ``facts``, store the report, return what was stored."""
    from storage import AnalysisRecord, save_analysis

    from .analysis import AnalysisRequest

    settings = _settings()
    outcome = _analyzer(settings).run(AnalysisRequest(kind=kind, facts=facts))
    message = CurrentMessage.get_current_message()
    inputs = {**facts.get("inputs", {}), **_inputs_of(facts), "arguments": arguments}
    record = AnalysisRecord(
        kind=kind,
        analyzer=outcome.analyzer,
        fallback_reason=outcome.fallback_reason,
        message_id=message.message_id if message else None,
        inputs=inputs,
        report=outcome.report.model_dump(mode="json"),
    )
    if message is not None:
        record.id = message.message_id  # a redelivery replaces its row instead of adding one
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


def _market(symbols, as_of=None) -> dict:
    from .analysis.facts import market_facts
    from .market_data.ingest import parse_time

    moment = parse_time(as_of, what="as_of", end=True) if as_of else None
    return market_facts(_settings().delta_root, symbols, as_of=moment)


def _portfolio(portfolio, limits) -> dict:
    from .analysis.facts import portfolio_facts

    return portfolio_facts(_settings().delta_root, portfolio, limits)


@dramatiq.actor(**_OPTIONS)
def morning_prep(symbols: list[str], as_of: str | None = None) -> dict:
    """Before the open: signals per symbol, gaps and volume spikes to watch."""
    facts = {"market": _market(symbols, as_of)}
    return _analyze("morning_prep", facts, arguments={"symbols": symbols, "as_of": as_of})


@dramatiq.actor(**_OPTIONS)
def evening_review(portfolio: dict, limits: dict | None = None) -> dict:
    """After the close: the day's P&L per position and what to do with each."""
    portfolio_facts = _portfolio(portfolio, limits)
    facts = {"portfolio": portfolio_facts, "market": _market(list(portfolio_facts["positions"]))}
    return _analyze("evening_review", facts, arguments={"portfolio": portfolio, "limits": limits})


@dramatiq.actor(**_OPTIONS)
def generate_recommendations(
    symbols: list[str], portfolio: dict | None = None, limits: dict | None = None
) -> dict:
    """Buy / sell / hold per symbol; ``reduce`` where a position exceeds its limit."""
    facts = {"market": _market(symbols)}
    if portfolio is not None:
        facts["portfolio"] = _portfolio(portfolio, limits)
    return _analyze(
        "recommendations", facts, arguments={"symbols": symbols, "portfolio": portfolio, "limits": limits}
    )


@dramatiq.actor(**_OPTIONS)
def analyze_strategy(backtest: dict) -> dict:
    """Deploy, revise or reject a strategy from its backtest result (see ``docs/data.md``)."""
    from .analysis.facts import backtest_facts

    return _analyze("strategy", backtest_facts(backtest), arguments={"backtest": backtest})


@dramatiq.actor(**_OPTIONS)
def assess_risk(portfolio: dict, limits: dict | None = None) -> dict:
    """Concentration, exposure, 1-day VaR and headroom to each limit, with reductions for breaches."""
    portfolio_facts = _portfolio(portfolio, limits)
    facts = {"portfolio": portfolio_facts, "market": _market(list(portfolio_facts["positions"]))}
    return _analyze("risk", facts, arguments={"portfolio": portfolio, "limits": limits})
