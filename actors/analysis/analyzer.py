"""The interface of an analyzer, and the errors that make the fallback take over."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .schema import AnalysisReport


class AnalyzerError(Exception):
    """The analyzer could not produce a valid report; the message says what went wrong."""


@dataclass(frozen=True)
class AnalysisRequest:
    """What to analyse: the kind and the facts (plain JSON-able data, see :mod:`.facts`)."""

    kind: str
    facts: dict[str, Any] = field(default_factory=dict)


class Analyzer(Protocol):
    """Turns facts into an :class:`AnalysisReport`, or raises :class:`AnalyzerError`."""

    name: str

    def analyze(self, request: AnalysisRequest) -> AnalysisReport: ...


@dataclass
class Outcome:
    """A report and who produced it; ``fallback_reason`` is set when the first choice failed."""

    report: AnalysisReport
    analyzer: str
    fallback_reason: str | None = None


class FallbackAnalyzer:
    """Asks ``primary`` and, when it fails, ``fallback``.

    Parameters:
      primary(Analyzer): The configured analyzer (e.g. the LLM one).
      fallback(Analyzer | None): The deterministic offline analyzer; ``None``
        (the default) lets the primary's error through.
    """

    def __init__(self, *, primary: Analyzer, fallback: Analyzer | None = None):
        self.logger = logging.getLogger(type(self).__name__)
        self.primary, self.fallback = primary, fallback

    def run(self, request: AnalysisRequest) -> Outcome:
        try:
            return Outcome(self.primary.analyze(request), analyzer=self.primary.name)
        except AnalyzerError as exc:
            if self.fallback is None:
                raise
            self.logger.warning("%s failed (%s); using %s.", self.primary.name, exc, self.fallback.name)
            return Outcome(
                self.fallback.analyze(request), analyzer=self.fallback.name, fallback_reason=str(exc)
            )
