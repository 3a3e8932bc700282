"""What every analyzer returns, validated the same way whoever wrote it (rules or an LLM)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: What an analysis can be asked for (one actor each).
KINDS = ("morning_prep", "evening_review", "recommendations", "strategy", "risk")

#: Actions a recommendation may take: on a symbol (buy .. watch) or on a strategy (deploy .. reject).
Action = Literal["buy", "sell", "hold", "reduce", "watch", "deploy", "revise", "reject"]


class Recommendation(BaseModel):
    """One recommendation about a symbol (or a strategy, for strategy analysis)."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=40)
    action: Action
    confidence: float = Field(ge=0, le=1)
    rationale: str = Field(min_length=1, max_length=2_000)
    figures: dict[str, float | None] = Field(default_factory=dict)


class AnalysisReport(BaseModel):
    """The answer of an analyzer: a summary, recommendations and the figures behind them."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["morning_prep", "evening_review", "recommendations", "strategy", "risk"]
    summary: str = Field(min_length=1, max_length=4_000)
    recommendations: list[Recommendation] = Field(default_factory=list)
    figures: dict[str, float | None] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
