"""Analysis of markets, portfolios and strategies: an offline rules engine and an LLM, one interface."""

from .analyzer import AnalysisRequest, Analyzer, AnalyzerError, FallbackAnalyzer, Outcome
from .offline import OfflineAnalyzer
from .reports import analyze_and_store, analyzer_for, backtest_facts_of, market_facts_of, portfolio_facts_of
from .schema import KINDS, AnalysisReport, Recommendation

__all__ = [
    "KINDS",
    "AnalysisReport",
    "AnalysisRequest",
    "Analyzer",
    "AnalyzerError",
    "FallbackAnalyzer",
    "OfflineAnalyzer",
    "Outcome",
    "Recommendation",
    "analyze_and_store",
    "analyzer_for",
    "backtest_facts_of",
    "market_facts_of",
    "portfolio_facts_of",
]
