"""The ``ai_analysis`` queue: morning preparation, evening review, recommendations, strategy and risk.

Each actor gathers facts (Delta tables, the portfolio it is given, a
backtest result), asks the configured analyzer (``offline`` rules, or an
``llm`` with the offline rules as fallback), stores the report in the
``analysis_reports`` SQL table with the analyzer used and the versions of
the data read, and returns it.  Bad input fails at once (``ValueError``).
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.analysis import analyze_and_store, backtest_facts_of, market_facts_of, portfolio_facts_of
from actors.runtime import process_settings

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


def _analyze(kind: str, facts: dict, *, arguments: dict) -> dict:
    message = CurrentMessage.get_current_message()
    message_id = message.message_id if message else None
    return analyze_and_store(process_settings(), kind, facts, arguments=arguments, message_id=message_id)


def _market(symbols: list[str], as_of: str | None = None) -> dict:
    return market_facts_of(process_settings(), symbols, as_of)


def _portfolio(portfolio: dict, limits: dict | None) -> dict:
    return portfolio_facts_of(process_settings(), portfolio, limits)


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
    return _analyze("strategy", backtest_facts_of(backtest), arguments={"backtest": backtest})


@dramatiq.actor(**_OPTIONS)
def assess_risk(portfolio: dict, limits: dict | None = None) -> dict:
    """Concentration, exposure, 1-day VaR and headroom to each limit, with reductions for breaches."""
    portfolio_facts = _portfolio(portfolio, limits)
    facts = {"portfolio": portfolio_facts, "market": _market(list(portfolio_facts["positions"]))}
    return _analyze("risk", facts, arguments={"portfolio": portfolio, "limits": limits})
