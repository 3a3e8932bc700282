"""The platform's predefined workflows, one per orchestration mode of the queue-management design.

Steps name actors of the queue modules (portfolio, data_fetcher, ai_analysis,
orders); ``tests/test_platform_workflows.py`` checks that every one is declared.
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

#: Sequential: sync the user's IB portfolio -> market data of its holdings -> an AI review of it,
#: stored in ``analysis_reports`` (inputs: ``{"user_id": ...}``; the account is the configured
#: ``ib_account`` or the gateway's first).
portfolio_analysis = registry.register(
    Workflow(
        "portfolio_analysis",
        [
            Step("portfolio", "fetch_portfolio", kwargs={"user_id": inputs("user_id")}),
            Step(
                "market_data",
                "fetch_market_data",
                kwargs={
                    "symbols": result("portfolio", "symbols"),
                    "start": result("portfolio", "start"),
                    "end": result("portfolio", "end"),
                },
                depends_on=["portfolio"],
            ),
            Step(
                "analysis",
                "evening_review",
                kwargs={"portfolio": result("portfolio", "holdings")},
                depends_on=["market_data"],
                time_limit=300_000,
            ),
        ],
        concurrency_key="portfolio_analysis:{user_id}",
    ),
    on=("market.closed",),
)

#: Parallel with bounded concurrency: refresh a watchlist's bars and fundamentals, two fetches at
#: a time, then read the features of the refreshed bars (inputs: ``symbols``, ``start``, ``end``).
market_data_refresh = registry.register(
    Workflow(
        "market_data_refresh",
        [
            group(
                [
                    *(
                        Step(
                            f"bars_{interval}",
                            "fetch_market_data",
                            kwargs={
                                "symbols": inputs("symbols"),
                                "start": inputs("start"),
                                "end": inputs("end"),
                                "interval": interval,
                            },
                        )
                        for interval in ("1d", "1h")
                    ),
                    Step("fundamentals", "fetch_fundamentals", kwargs={"symbols": inputs("symbols")}),
                ],
                max_concurrency=2,
            ),
            Step(
                "features",
                "market_features",
                kwargs={"symbols": inputs("symbols")},
                depends_on=["bars_1d", "bars_1h", "fundamentals"],
            ),
        ],
    )
)

#: Conditional, with compensations: the order is checked against the risk limits; only an approved
#: one reserves funds, is placed through the gateway and awaited until filled.  A failure after the
#: reservation compensates in reverse order: cancel the order, release the funds (inputs:
#: ``{"order": {"symbol": ..., "action": "BUY", "quantity": ..., ...}}``, see ``actors/orders.py``).
order_with_prerequisites = registry.register(
    Workflow(
        "order_with_prerequisites",
        [
            Step("risk", "check_risk", kwargs={"order": inputs("order")}),
            Step(
                "reserve",
                "reserve_funds",
                kwargs={"order": inputs("order"), "risk": result("risk")},
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
            ),
            Step(
                "fill",
                "wait_for_fill",
                kwargs={
                    "order": inputs("order"),
                    "placed": result("place"),
                    "reservation": result("reserve"),
                },
                depends_on=["place"],
            ),
        ],
    )
)
