"""The default analyzer: deterministic rules over the facts, no network.

Every recommendation names the rules that fired in its rationale and
carries the figures they used, so a reader can check it by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from .analyzer import AnalysisRequest, AnalyzerError
from .schema import AnalysisReport, Recommendation

#: Momentum (percent) over 20 / 60 bars that counts as a trend.
MOMENTUM_20D, MOMENTUM_60D = 5.0, 10.0
#: RSI bounds of overbought / oversold.
RSI_HIGH, RSI_LOW = 70.0, 30.0
#: Mean VADER compound score of the recent news that counts as positive / negative.
SENTIMENT = 0.2
#: Drawdown from the 1-year high (percent) that counts against a symbol.
DEEP_DRAWDOWN = -20.0
#: Score at which a symbol is a buy (or, negated, a sell).
ACTION_SCORE = 1.5
#: Gap (percent) and volume ratio that make a symbol worth watching at the open.
GAP_ANOMALY, VOLUME_ANOMALY = 2.0, 2.0
#: Confidence is scaled by this in a high-volatility regime.
HIGH_VOLATILITY_DISCOUNT = 0.75
#: A strategy is deployable with at least this Sharpe ratio and trades, and at most this drawdown (percent).
DEPLOY_SHARPE, DEPLOY_TRADES, DEPLOY_DRAWDOWN = 1.0, 30, 25.0
#: Below this Sharpe ratio (or a loss) a strategy is rejected.
REJECT_SHARPE = 0.3
#: Profit factor under which a strategy's edge is thin.
THIN_PROFIT_FACTOR = 1.2


class OfflineAnalyzer:
    """Quantitative rules over market, news, portfolio and backtest facts.  Deterministic."""

    name = "offline"

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)

    def analyze(self, request: AnalysisRequest) -> AnalysisReport:
        handler = getattr(self, f"_{request.kind}", None)
        if handler is None:
            raise AnalyzerError(f"unknown analysis kind {request.kind!r}")
        return handler(request.facts)

    def _morning_prep(self, facts: dict) -> AnalysisReport:
        recommendations = []
        gappers, spikes = [], []
        for symbol, figures in facts["market"]["symbols"].items():
            recommendation = symbol_signal(symbol, figures)
            anomalies = _anomalies(figures)
            if _gapped(figures):
                gappers.append(f"{symbol} ({figures['gap_pct']:+.1f}%)")
            if _volume_spike(figures):
                spikes.append(f"{symbol} ({figures['volume_ratio']:.1f}x)")
            if anomalies and recommendation.action == "hold":
                recommendation = recommendation.model_copy(
                    update={
                        "action": "watch",
                        "rationale": f"{'; '.join(anomalies)}; {recommendation.rationale}",
                    }
                )
            recommendations.append(recommendation)
        summary = (
            f"{_count_actions(recommendations)}. Gaps: {', '.join(gappers) or 'none'}. "
            f"Volume spikes: {', '.join(spikes) or 'none'}."
        )
        return self._report(
            "morning_prep", facts, summary, recommendations, gappers=len(gappers), volume_spikes=len(spikes)
        )

    def _recommendations(self, facts: dict) -> AnalysisReport:
        weights = _weights(facts)
        limit = (facts.get("portfolio") or {}).get("limits", {}).get("max_position_pct")
        recommendations = []
        for symbol, figures in facts["market"]["symbols"].items():
            recommendation = symbol_signal(symbol, figures)
            if (
                limit is not None
                and abs(weights.get(symbol, 0.0)) > limit
                and recommendation.action in ("buy", "hold")
            ):
                recommendation = _over_limit(recommendation, weights[symbol], limit)
            recommendations.append(recommendation)
        return self._report("recommendations", facts, f"{_count_actions(recommendations)}.", recommendations)

    def _evening_review(self, facts: dict) -> AnalysisReport:
        portfolio = facts["portfolio"]
        positions = portfolio["positions"]
        start_equity = portfolio["equity"] - portfolio["day_pnl"]
        day_return = portfolio["day_pnl"] / start_equity * 100 if start_equity else None
        best = max(positions, key=lambda symbol: positions[symbol]["day_pnl"])
        worst = min(positions, key=lambda symbol: positions[symbol]["day_pnl"])
        recommendations = []
        for symbol in positions:
            recommendation = symbol_signal(symbol, facts["market"]["symbols"].get(symbol, {}))
            weight, limit = positions[symbol]["weight_pct"], portfolio["limits"]["max_position_pct"]
            if abs(weight) > limit and recommendation.action in ("buy", "hold"):
                recommendation = _over_limit(recommendation, weight, limit)
            recommendations.append(recommendation)
        summary = (
            f"Day P&L {portfolio['day_pnl']:+,.2f} ({day_return:+.2f}%) "
            f"on equity {portfolio['equity']:,.2f}. "
            f"Best {best} ({positions[best]['day_pnl']:+,.2f}), "
            f"worst {worst} ({positions[worst]['day_pnl']:+,.2f}). "
            f"{_count_actions(recommendations)}."
        )
        return self._report(
            "evening_review",
            facts,
            summary,
            recommendations,
            day_pnl=portfolio["day_pnl"],
            day_return_pct=day_return,
        )

    def _strategy(self, facts: dict) -> AnalysisReport:
        figures = facts["figures"]
        sharpe, trades = figures["sharpe"], figures["trades"]
        drawdown, total = abs(figures["max_drawdown_pct"]), figures["total_return_pct"]
        weaknesses = []
        if trades < DEPLOY_TRADES:
            weaknesses.append(f"only {trades:.0f} trades (< {DEPLOY_TRADES}): the result may be luck")
        if drawdown > DEPLOY_DRAWDOWN:
            weaknesses.append(f"max drawdown {drawdown:.1f}% exceeds {DEPLOY_DRAWDOWN:.0f}%")
        if sharpe < DEPLOY_SHARPE:
            weaknesses.append(f"Sharpe {sharpe:.2f} below {DEPLOY_SHARPE:.1f}")
        if figures.get("profit_factor") is not None and figures["profit_factor"] < THIN_PROFIT_FACTOR:
            weaknesses.append(
                f"profit factor {figures['profit_factor']:.2f} under {THIN_PROFIT_FACTOR}: a thin edge"
            )
        if total <= 0 or sharpe < REJECT_SHARPE:
            action, confidence = "reject", 0.8
            rationale = f"return {total:+.1f}% with Sharpe {sharpe:.2f}: no edge. " + "; ".join(weaknesses)
        elif not weaknesses:
            action, confidence = "deploy", min(0.9, 0.6 + 0.1 * sharpe)
            rationale = (
                f"return {total:+.1f}%, Sharpe {sharpe:.2f}, drawdown {drawdown:.1f}%, {trades:.0f} trades"
            )
        else:
            action, confidence = "revise", 0.6
            rationale = "; ".join(weaknesses)
        recommendation = Recommendation(
            symbol=facts["strategy"],
            action=action,
            confidence=round(confidence, 3),
            rationale=rationale.strip(),
            figures=figures,
        )
        summary = f"{facts['strategy']}: {action} ({len(weaknesses)} weakness(es))."
        return AnalysisReport(
            kind="strategy", summary=summary, recommendations=[recommendation], figures=figures
        )

    def _risk(self, facts: dict) -> AnalysisReport:
        portfolio = facts["portfolio"]
        limits, positions = portfolio["limits"], portfolio["positions"]
        warnings, recommendations = [], []
        for symbol, position in positions.items():
            weight = position["weight_pct"]
            if abs(weight) > limits["max_position_pct"]:
                warnings.append(
                    f"{symbol} is {weight:.1f}% of equity (limit {limits['max_position_pct']:.0f}%)"
                )
                recommendations.append(
                    _over_limit(
                        Recommendation(
                            symbol=symbol, action="hold", confidence=0.9, rationale="concentration risk"
                        ),
                        weight,
                        limits["max_position_pct"],
                    )
                )
        if portfolio["gross_exposure_pct"] > limits["max_gross_exposure_pct"]:
            warnings.append(
                f"gross exposure {portfolio['gross_exposure_pct']:.1f}% "
                f"over {limits['max_gross_exposure_pct']:.0f}%"
            )
        var = portfolio["var_95_1d_pct"]
        if var is not None and var > limits["max_var_pct"]:
            warnings.append(f"1-day 95% VaR {var:.2f}% over {limits['max_var_pct']:.1f}%")
            riskiest = max(
                positions,
                key=lambda symbol: abs(positions[symbol]["weight_pct"]) * _volatility(facts, symbol),
            )
            if all(r.symbol != riskiest for r in recommendations):
                recommendations.append(
                    Recommendation(
                        symbol=riskiest,
                        action="reduce",
                        confidence=0.7,
                        rationale=(
                            f"largest contributor to a VaR of {var:.2f}% (limit {limits['max_var_pct']:.1f}%)"
                        ),
                        figures={"weight_pct": positions[riskiest]["weight_pct"], "var_95_1d_pct": var},
                    )
                )
        headroom = portfolio["headroom_pct"]
        summary = (
            f"Equity {portfolio['equity']:,.2f}; gross exposure {portfolio['gross_exposure_pct']:.1f}%; "
            f"largest {portfolio['largest_position']} at {portfolio['largest_weight_pct']:.1f}%; "
            f"VaR {'n/a' if var is None else f'{var:.2f}%'}. "
            + ("Within all limits." if not warnings else f"{len(warnings)} limit breach(es).")
        )
        figures = {
            "equity": portfolio["equity"],
            "gross_exposure_pct": portfolio["gross_exposure_pct"],
            "largest_weight_pct": portfolio["largest_weight_pct"],
            "concentration_hhi": portfolio["concentration_hhi"],
            "var_95_1d_pct": var,
            **{f"headroom_{name}_pct": value for name, value in headroom.items()},
        }
        return AnalysisReport(
            kind="risk", summary=summary, recommendations=recommendations, figures=figures, warnings=warnings
        )

    def _report(
        self, kind: str, facts: dict, summary: str, recommendations: list[Recommendation], **figures: Any
    ) -> AnalysisReport:
        missing = facts["market"].get("missing", [])
        warnings = [f"no daily bars for {symbol}: fetch_market_data it first" for symbol in missing]
        counts = {
            action: sum(r.action == action for r in recommendations)
            for action in ("buy", "sell", "hold", "watch", "reduce")
        }
        return AnalysisReport(
            kind=kind,
            summary=summary,
            recommendations=recommendations,
            figures={
                "symbols": float(len(recommendations)),
                **{k: float(v) for k, v in counts.items()},
                **figures,
            },
            warnings=warnings,
        )


def symbol_signal(symbol: str, figures: dict) -> Recommendation:
    """Buy / sell / hold from momentum, trend, RSI, news sentiment and drawdown, with the reasons."""
    score, reasons = 0.0, []

    def rule(condition: bool, points: float, reason: str) -> None:
        nonlocal score
        if condition:
            score += points
            reasons.append(reason)

    momentum_20, momentum_60 = figures.get("momentum_20d_pct"), figures.get("momentum_60d_pct")
    if momentum_20 is not None:
        rule(momentum_20 > MOMENTUM_20D, 1.0, f"20-day momentum {momentum_20:+.1f}%")
        rule(momentum_20 < -MOMENTUM_20D, -1.0, f"20-day momentum {momentum_20:+.1f}%")
    if momentum_60 is not None:
        rule(momentum_60 > MOMENTUM_60D, 0.5, f"60-day momentum {momentum_60:+.1f}%")
        rule(momentum_60 < -MOMENTUM_60D, -0.5, f"60-day momentum {momentum_60:+.1f}%")
    if figures.get("sma_50") is not None:
        above = figures["close"] > figures["sma_50"]
        rule(above, 0.5, "above its 50-day average")
        rule(not above, -0.5, "below its 50-day average")
    rsi = figures.get("rsi_14")
    if rsi is not None:
        rule(rsi > RSI_HIGH, -0.5, f"overbought (RSI {rsi:.0f})")
        rule(rsi < RSI_LOW, 0.5, f"oversold (RSI {rsi:.0f})")
    sentiment = figures.get("news_sentiment")
    if sentiment is not None:
        rule(sentiment > SENTIMENT, 0.5, f"positive news (sentiment {sentiment:+.2f})")
        rule(sentiment < -SENTIMENT, -0.5, f"negative news (sentiment {sentiment:+.2f})")
    drawdown = figures.get("drawdown_pct")
    if drawdown is not None:
        rule(drawdown < DEEP_DRAWDOWN, -0.5, f"{drawdown:.1f}% below its 1-year high")

    action = "buy" if score >= ACTION_SCORE else "sell" if score <= -ACTION_SCORE else "hold"
    confidence = min(0.9, 0.35 + 0.15 * abs(score))
    if figures.get("volatility_regime") == "high":
        confidence *= HIGH_VOLATILITY_DISCOUNT
        reasons.append("high-volatility regime: confidence reduced")
    numbers = {
        name: value
        for name, value in figures.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return Recommendation(
        symbol=symbol,
        action=action,
        confidence=round(confidence, 3),
        rationale=f"score {score:+.1f}: " + ("; ".join(reasons) or "no strong signal"),
        figures={**numbers, "score": score},
    )


def _gapped(figures: dict) -> bool:
    return figures.get("gap_pct") is not None and abs(figures["gap_pct"]) >= GAP_ANOMALY


def _volume_spike(figures: dict) -> bool:
    return (figures.get("volume_ratio") or 0) >= VOLUME_ANOMALY


def _anomalies(figures: dict) -> list[str]:
    anomalies = []
    if _gapped(figures):
        anomalies.append(f"gapped {figures['gap_pct']:+.1f}%")
    if _volume_spike(figures):
        anomalies.append(f"volume {figures['volume_ratio']:.1f}x its 20-day average")
    return anomalies


def _over_limit(recommendation: Recommendation, weight: float, limit: float) -> Recommendation:
    return recommendation.model_copy(
        update={
            "action": "reduce",
            "rationale": (
                f"{weight:.1f}% of equity exceeds the {limit:.0f}% position limit; {recommendation.rationale}"
            ),
            "figures": {**recommendation.figures, "weight_pct": weight, "target_weight_pct": limit},
        }
    )


def _weights(facts: dict) -> dict[str, float]:
    positions = (facts.get("portfolio") or {}).get("positions", {})
    return {symbol: position["weight_pct"] for symbol, position in positions.items()}


def _volatility(facts: dict, symbol: str) -> float:
    return (facts.get("market", {}).get("symbols", {}).get(symbol, {}).get("volatility_pct")) or 1.0


def _count_actions(recommendations: list[Recommendation]) -> str:
    counts: dict[str, int] = {}
    for recommendation in recommendations:
        counts[recommendation.action] = counts.get(recommendation.action, 0) + 1
    return f"{len(recommendations)} symbol(s): " + (
        ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "none"
    )
