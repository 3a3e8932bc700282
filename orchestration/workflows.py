"""The platform's predefined workflows, one per orchestration mode of the queue-management design.

Steps name actors that other areas build (portfolio, market data, AI
analysis, orders); starting a workflow whose actors are not deployed yet
fails with an error naming the missing actor.
"""

from __future__ import annotations

from datetime import timedelta

from saga import Step, Workflow, inputs, result

from .builders import group, pipeline
from .registry import WorkflowRegistry

#: Every workflow ``tradeflow workflow start`` knows.
registry = WorkflowRegistry()

#: Health of the whole path: a worker checks Redis, then another answers a ping with that result.
system_check = registry.register(
    Workflow(
        "system_check",
        [pipeline(Step("health", "health_check"), Step("ping", "ping"))],
        deadline=timedelta(minutes=1),
    ),
    on=("system.check_requested",),
)

#: Sequential: portfolio -> data fetcher -> AI analysis, each result feeding the next.
portfolio_analysis = registry.register(
    Workflow(
        "portfolio_analysis",
        [
            pipeline(
                Step("portfolio", "fetch_portfolio", kwargs={"user_id": inputs("user_id")}),
                Step("market_data", "fetch_market_data"),
                Step("analysis", "run_ai_analysis", time_limit=300_000),
            )
        ],
        concurrency_key="portfolio_analysis:{user_id}",
    ),
    on=("market.closed",),
)

#: Parallel with bounded concurrency: refresh market data of a watchlist, then rebuild features.
market_data_refresh = registry.register(
    Workflow(
        "market_data_refresh",
        [
            pipeline(
                group(
                    [
                        Step(
                            f"bars_{kind}",
                            "fetch_market_data",
                            kwargs={"kind": kind, "symbols": inputs("symbols")},
                        )
                        for kind in ("daily", "minute", "fundamentals")
                    ],
                    max_concurrency=2,
                ),
                Step("features", "build_features"),
            )
        ],
    )
)

#: Conditional, with compensations: an order only after the risk check passes; undone on failure.
order_with_prerequisites = registry.register(
    Workflow(
        "order_with_prerequisites",
        [
            Step("risk", "check_risk", kwargs={"order": inputs("order")}),
            Step(
                "reserve",
                "reserve_funds",
                kwargs={"order": inputs("order")},
                depends_on=["risk"],
                when=result("risk", "approved") == True,  # noqa: E712  (builds a condition)
                compensate_with="release_funds",
            ),
            Step(
                "place",
                "place_order",
                kwargs={"order": inputs("order"), "reservation": result("reserve")},
                depends_on=["reserve"],
                compensate_with="cancel_order",
                max_retries=2,
            ),
        ],
    )
)
