"""The platform's own workflows, started from the CLI on ``tradeflow up``'s stack with the IB
Gateway simulator, each waited for until its final state; and every actor they name exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from saga_helpers import fast, steps_of

from actors.ib import GatewaySimulator, demo_scenario
from saga import idempotency_key
from storage import create_db_engine, get_run
from storage.analysis import list_analyses

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_every_actor_a_shipped_workflow_names_is_declared():
    import actors
    from orchestration import registry

    known = set(actors.current_broker.actors)
    for name in registry.names():
        workflow = registry.get(name)
        workflow.check_actors(known)  # raises naming the workflow, step and actor
        named = {step.actor for step in workflow.steps} | {s.compensate_with for s in workflow.steps}
        assert named - {None} <= known


@pytest.fixture
def gateway():
    with GatewaySimulator(scenario=demo_scenario(holdings=3)) as running:
        yield running


@pytest.fixture
def stack(settings, gateway, tmp_path):
    """``tradeflow up`` (one worker process, no scheduler) against the simulator."""
    env = settings_env(
        fast(
            settings,
            ib_port=gateway.port,
            ib_account="DU1",
            ib_timeout_ms=5_000,
            risk_max_position_value=50_000.0,
            data_provider="synthetic",
        )
    )
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    process = subprocess.Popen(
        [tradeflow, "up", "-p", "1", "-t", "4", "--no-scheduler", "--no-api"],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield env
    os.kill(process.pid, signal.SIGTERM)
    process.wait(60)


def _start(env, name: str, inputs: dict, *, expect: int = 0, wait: float = 120) -> str:
    started = run_cli(
        "workflow",
        "start",
        name,
        "--args",
        json.dumps(inputs),
        "--wait",
        str(wait),
        env=env,
        timeout=wait + 30,
    )
    assert started.returncode == expect, started.stdout + started.stderr
    return started.stdout.split()[0]


def test_the_platform_workflows_run_end_to_end_on_the_up_stack(stack, settings, gateway):
    db = create_db_engine(settings.database_url)

    run_id = _start(stack, "portfolio_analysis", {"user_id": "u1"})
    steps = steps_of(db, run_id)
    assert steps["portfolio"].result["account"] == "DU1"
    assert steps["portfolio"].result["symbols"] == ["SYM0", "SYM1", "SYM2"]
    assert steps["market_data"].result["symbols"] and not steps["market_data"].result.get("errors")
    reports = list_analyses(db, kind="evening_review")
    assert len(reports) == 1 and reports[0].id == steps["analysis"].result["id"]

    refresh = {"symbols": ["AAPL", "MSFT"], "start": "2026-09-01", "end": "2026-11-20"}
    run_id = _start(stack, "market_data_refresh", refresh)
    features = steps_of(db, run_id)["features"].result
    assert sorted(features["features"]) == ["AAPL", "MSFT"] and features["missing"] == []
    assert features["features"]["AAPL"]["sma_20"] is not None

    order = {"symbol": "SYM1", "action": "BUY", "quantity": 5}
    run_id = _start(stack, "order_with_prerequisites", {"order": order})
    steps = steps_of(db, run_id)
    assert steps["risk"].result["approved"] is True
    placed, fill = steps["place"].result, steps["fill"].result
    assert fill["shares"] == 5 and fill["avg_price"] == 51.0
    assert [(o.symbol, o.quantity, o.status) for o in gateway.orders.orders.values()] == [
        ("SYM1", 5, "Filled")
    ]
    assert placed["perm_id"] == next(iter(gateway.orders.orders.values())).perm_id
    # the funds are reserved under the step's idempotency key: a redelivery finds the same reservation
    assert steps["reserve"].result["reservation"] == idempotency_key(run_id, "reserve", "step", 1)

    # An order the gateway takes but never fills: the fill times out, and the compensations run
    # in reverse order: cancel the order, then release the funds.
    gateway.scenario.order_fills = "hold"
    held = {"order": {**order, "quantity": 2, "fill_timeout_s": 1}}
    run_id = _start(stack, "order_with_prerequisites", held, expect=1)
    run = get_run(db, run_id)
    steps = steps_of(db, run_id)
    assert run.status == "compensated" and "not filled within 1s" in run.error
    assert (steps["fill"].status, steps["place"].status, steps["reserve"].status) == (
        "failed",
        "compensated",
        "compensated",
    )
    order_id = steps["place"].result["order_id"]
    assert [o.status for o in gateway.orders.orders.values() if o.order_id == order_id][-1] == "Cancelled"
    shown = run_cli("workflow", "show", run_id, env=stack)
    assert shown.stdout.count("compensated") >= 3, shown.stdout

    # Refused by the risk limits: no funds reserved, no order.
    orders_before = len(gateway.orders.orders)
    run_id = _start(stack, "order_with_prerequisites", {"order": {**order, "quantity": 5_000}})
    steps = steps_of(db, run_id)
    assert (
        steps["risk"].result["approved"] is False and "position value" in steps["risk"].result["reasons"][0]
    )
    assert {steps[name].status for name in ("reserve", "place", "fill")} == {"skipped"}
    assert len(gateway.orders.orders) == orders_before
    db.dispose()
