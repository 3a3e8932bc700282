"""Analysis of markets, portfolios and strategies: an offline rules engine and an LLM, one interface."""

from .analyzer import AnalysisRequest, Analyzer, AnalyzerError, FallbackAnalyzer, Outcome
from .offline import OfflineAnalyzer
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
]
