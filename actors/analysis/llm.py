"""An analyzer backed by any OpenAI-compatible chat-completions endpoint.

The model is sent the same facts the offline analyzer reads and must answer
with JSON matching :class:`AnalysisReport`.  Anything else (endpoint down,
timeout, an error status, invalid JSON, JSON that breaks the schema, or a
recommendation about a symbol it was not asked about) is an
:class:`AnalyzerError` naming the problem, and the caller falls back.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from .analyzer import AnalysisRequest, AnalyzerError
from .schema import AnalysisReport

#: What the model is told to do, whatever the kind.
SYSTEM_PROMPT = (
    "You are a trading analyst. You get facts as JSON and answer with ONE JSON object and nothing else, "
    "matching this JSON schema:\n{schema}\n"
    "Use only symbols present in the facts. Confidence is between 0 and 1. Percentages are in percent."
)
#: What each kind asks for.
TASKS = {
    "morning_prep": "Prepare the trading day: recommendations per symbol; flag gaps and volume spikes.",
    "evening_review": "Review the day's performance of the portfolio and recommend per position.",
    "recommendations": "Recommend buy/sell/hold/reduce per symbol, respecting the portfolio's limits.",
    "strategy": "Assess the backtest: recommend deploy, revise or reject for the strategy.",
    "risk": "Assess the portfolio's risk against its limits; recommend reductions where a limit is breached.",
}


class LLMAnalyzer:
    """Asks a chat-completions endpoint for the report, and checks it.

    Parameters:
      base_url(str): The endpoint's base URL, e.g. ``http://127.0.0.1:8000/v1``.
      model(str): The model name sent in the request.
      api_key(str): Sent as the bearer token (local servers usually ignore it).
      timeout(float): Seconds to wait for the answer.  Defaults to 30.
    """

    def __init__(self, *, base_url: str, model: str, api_key: str = "not-needed", timeout: float = 30.0):
        from openai import OpenAI

        self.logger = logging.getLogger(type(self).__name__)
        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    @property
    def name(self) -> str:
        return f"llm:{self.model}"

    def analyze(self, request: AnalysisRequest) -> AnalysisReport:
        content = self._ask(request)
        try:
            report = AnalysisReport.model_validate_json(content)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                raise AnalyzerError(f"{self.name} answered with invalid JSON: {content[:200]!r}") from None
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise AnalyzerError(
                f"{self.name} answered JSON that breaks the report schema ({problems})"
            ) from None
        self._check(request, report)
        return report

    def _ask(self, request: AnalysisRequest) -> str:
        import openai

        if request.kind not in TASKS:
            raise AnalyzerError(f"unknown analysis kind {request.kind!r}")
        schema = json.dumps(AnalysisReport.model_json_schema())
        user = {"kind": request.kind, "task": TASKS[request.kind], "facts": request.facts}
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT.format(schema=schema)},
                    {"role": "user", "content": json.dumps(user, default=str)},
                ],
                response_format={"type": "json_object"},
                temperature=0,
            )
        except openai.APITimeoutError:
            raise AnalyzerError(f"{self.name} did not answer within {self.client.timeout}s") from None
        except openai.APIConnectionError as exc:
            raise AnalyzerError(
                f"{self.name} is unreachable at {self.client.base_url} ({exc.__cause__ or exc})"
            ) from None
        except openai.APIStatusError as exc:
            raise AnalyzerError(
                f"{self.name} refused the request: HTTP {exc.status_code} {exc.message}"
            ) from None
        except openai.APIError as exc:  # e.g. a body that is not a chat completion at all
            raise AnalyzerError(
                f"{self.name} answered something that is not a chat completion ({exc})"
            ) from None
        if not response.choices or not response.choices[0].message.content:
            raise AnalyzerError(f"{self.name} answered with no content")
        return response.choices[0].message.content

    def _check(self, request: AnalysisRequest, report: AnalysisReport) -> None:
        if report.kind != request.kind:
            raise AnalyzerError(
                f"{self.name} answered a {report.kind!r} report to a {request.kind!r} request"
            )
        allowed = _subjects(request)
        strangers = sorted({r.symbol for r in report.recommendations} - allowed)
        if strangers:
            raise AnalyzerError(f"{self.name} recommends symbols it was not given: {', '.join(strangers)}")


def _subjects(request: AnalysisRequest) -> set[str]:
    """The symbols (or strategy name) a report may recommend about."""
    facts = request.facts
    subjects = set(facts.get("market", {}).get("symbols", {}))
    subjects |= set(facts.get("portfolio", {}).get("positions", {}))
    if "strategy" in facts:
        subjects |= {facts["strategy"], *facts.get("symbols", [])}
    return subjects
