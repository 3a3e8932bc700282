"""``tradeflow ib ...`` (position requests, statistics, portfolio) and ``tradeflow ib-sim``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOption, console, err_console, load_settings, print_record, print_rows, print_wide

ib_app = typer.Typer(help="IB position requests, statistics and portfolio.", no_args_is_help=True)
ib_sim_app = typer.Typer(help="Run the IB Gateway simulator.", invoke_without_command=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", highlight=False)
    return typer.Exit(1)


def _actors():
    """Import ``actors`` (it configures the broker from the same environment) once Redis answers."""
    from api.embedded import redis_answers

    url = load_settings().effective_redis_url
    if not redis_answers(url):
        raise _fail(f"cannot reach Redis at {url}: start it or set TRADEFLOW_REDIS_URL")
    import actors

    return actors


def _engine():
    from storage import create_db_engine

    return create_db_engine(load_settings().database_url)


@ib_sim_app.callback()
def ib_sim(
    scenario: Annotated[
        Path | None, typer.Option(help="JSON scenario file (default: a demo portfolio).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (IB Gateway paper: 4002).")] = 4002,
) -> None:
    """Serve a simulated IB Gateway that ib_async clients connect to.  Ctrl-C stops it."""
    from actors.ib import GatewaySimulator, Scenario, demo_scenario

    try:
        loaded = Scenario.from_file(scenario) if scenario else demo_scenario()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    simulator = GatewaySimulator(scenario=loaded, host=host, port=port)
    console.print(
        f"IB gateway simulator on {host}:{port}: accounts {', '.join(loaded.accounts)}, "
        f"{len(loaded.positions)} positions"
    )
    try:
        asyncio.run(simulator.serve_forever())
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except KeyboardInterrupt:
        console.print("stopped")


@ib_app.command("request")
def request(
    conids: Annotated[list[int], typer.Argument(help="Contract ids to refresh.")],
    account: Annotated[str, typer.Option(help="Account (default: every account holding it).")] = "",
    priority: Annotated[int, typer.Option(min=-1000, max=1000)] = 0,
    by: Annotated[str | None, typer.Option(help="Requester, recorded on the request.")] = None,
) -> None:
    """Queue position-update requests; a batch picks them up within the batch interval."""
    from storage.ib_positions import NewRequest

    try:
        requests = [NewRequest(conid=c, account=account, priority=priority, requested_by=by) for c in conids]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _actors()
    from actors.ib import request_position_updates, runtime

    state = runtime()
    for conid, enqueued in zip(
        conids, request_position_updates(state.engine, state.scheduler, requests), strict=True
    ):
        how = "merged into pending request" if enqueued.coalesced else "queued as request"
        console.print(f"conid {conid}: {how} {enqueued.request_id}")


@ib_app.command("stats")
def stats(as_json: JsonOption = False) -> None:
    """Totals of the position queue and its last batch."""
    from dataclasses import asdict

    from storage.ib_positions import queue_stats

    figures = queue_stats(_engine())
    if as_json:
        print_record({**asdict(figures), "processed": figures.processed}, as_json=True)
        return
    table = Table("statistic", "value", show_header=False)
    for name, value in (
        ("pending", figures.pending),
        ("processing", figures.processing),
        ("processed", figures.processed),
        ("succeeded", figures.succeeded),
        ("failed", figures.failed),
        ("coalesced duplicates", figures.coalesced),
        ("batches", figures.batches),
        ("last batch at", figures.last_batch_at or "-"),
        ("last batch size", figures.last_batch_size if figures.last_batch_size is not None else "-"),
        ("last batch error", figures.last_batch_error or "-"),
    ):
        table.add_row(name, str(value))
    console.print(table)


#: Fields of ``ib requests`` (table columns and ``--json`` keys).
REQUEST_FIELDS = (
    "id",
    "conid",
    "account",
    "priority",
    "status",
    "attempts",
    "coalesced",
    "created_at",
    "reason",
)


@ib_app.command("requests")
def requests_list(
    status: Annotated[str | None, typer.Option(help="pending, processing, success, failed")] = None,
    conid: Annotated[int | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The newest position requests."""
    from storage.ib_models import RequestStatus
    from storage.ib_positions import list_requests

    if status and status not in {s.value for s in RequestStatus}:
        raise _fail(f"unknown status {status!r}; use one of {', '.join(s.value for s in RequestStatus)}")
    rows = list_requests(_engine(), status=status, conid=conid, limit=limit)
    print_rows((row.model_dump() for row in rows), fields=REQUEST_FIELDS, as_json=as_json)


@ib_app.command("updates")
def updates(
    conid: Annotated[int | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """The newest rows of the Delta table ``position_updates``."""
    from storage.position_updates import read_position_updates

    rows = read_position_updates(load_settings().delta_root).to_pylist()
    rows = [r for r in rows if conid is None or r["conid"] == conid]
    rows.sort(key=lambda r: (r["fetched_at"], r["request_id"]), reverse=True)
    if as_json:
        print_rows(rows[:limit], fields=tuple(rows[0]) if rows else (), as_json=True)
        return
    table = Table(
        "request", "conid", "account", "symbol", "position", "avg cost", "price", "value", "fetched"
    )
    for r in rows[:limit]:
        table.add_row(
            *(str(r[k]) for k in ("request_id", "conid", "account", "symbol", "position", "avg_cost")),
            *("" if r[k] is None else f"{r[k]:.2f}" for k in ("market_price", "market_value")),
            str(r["fetched_at"]),
        )
    print_wide(table)
    console.print(f"{len(rows)} rows in total")


@ib_app.command("sync")
def sync(
    account: Annotated[str | None, typer.Argument(help="Account (default: every managed account).")] = None,
    check: Annotated[bool, typer.Option(help="Also evaluate risk limits.")] = True,
) -> None:
    """Ask the workers to snapshot a portfolio (and check its risk limits)."""
    actors = _actors()

    if account is None:
        message = actors.portfolio.sync_all_portfolios.send(evaluate_limits=check)
    elif check:
        pipe = actors.portfolio.sync_portfolio.message(
            account
        ) | actors.portfolio.evaluate_risk_limits.message_with_options(args=(account,), pipe_ignore=True)
        message = pipe.run().messages[0]
    else:
        message = actors.portfolio.sync_portfolio.send(account)
    console.print(f"sent {message.message_id}")


@ib_app.command("portfolio")
def portfolio(
    account: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """The newest portfolio snapshots with their P&L."""
    from storage.portfolio import list_snapshots

    if as_json:
        snapshots = [s.model_dump() for s in list_snapshots(_engine(), account=account, limit=limit)]
        print_rows(snapshots, fields=tuple(snapshots[0]) if snapshots else (), as_json=True)
        return
    columns = ("net liq", "gross exposure", "unrealized", "realized", "daily (IB)", "equity change")
    table = Table("id", "account", "taken", *columns, "positions")
    for s in list_snapshots(_engine(), account=account, limit=limit):
        pnl = (s.unrealized_pnl, s.realized_pnl, s.daily_pnl, s.equity_change)
        money = (s.net_liquidation, s.gross_exposure, *pnl)
        table.add_row(
            str(s.id),
            s.account,
            str(s.taken_at),
            *("-" if v is None else f"{v:,.2f}" for v in money),
            str(len(s.positions)),
        )
    print_wide(table)


@ib_app.command("breaches")
def breaches(
    account: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """The newest risk-limit breaches."""
    from storage.portfolio import list_breaches

    if as_json:
        rows = [b.model_dump() for b in list_breaches(_engine(), account=account, limit=limit)]
        print_rows(rows, fields=tuple(rows[0]) if rows else (), as_json=True)
        return
    table = Table("id", "account", "limit", "limit value", "actual", "conid", "detail", "detected")
    for b in list_breaches(_engine(), account=account, limit=limit):
        table.add_row(
            str(b.id),
            b.account,
            b.limit_name,
            f"{b.limit_value:,.2f}",
            f"{b.actual_value:,.2f}",
            str(b.conid or ""),
            b.detail,
            str(b.detected_at),
        )
    print_wide(table)


@ib_app.command("demo")
def demo(
    holdings: Annotated[int, typer.Option(min=1, max=5_000, help="Positions per simulated account.")] = 50,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the workers.")] = 120.0,
) -> None:
    """The IB flow on embedded defaults: simulator, a worker, position requests, a portfolio sync.

    It runs in a Redis namespace and a SQLite database of its own, so workers
    of ``tradeflow up`` on the same Redis neither take its messages nor its
    requests.
    """
    import os
    import time

    if not os.environ.get(DEMO_MARKER):
        raise typer.Exit(_run_demo_apart(holdings=holdings, timeout=timeout))

    from actors.ib import GatewaySimulator, demo_scenario
    from api import stack
    from api.embedded import redis_for
    from storage import create_db_engine, upgrade
    from storage.ib_positions import NewRequest, queue_stats
    from storage.portfolio import list_snapshots

    settings = load_settings()
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    scenario = demo_scenario(holdings=holdings)
    with redis_for(settings) as redis_url, GatewaySimulator(scenario=scenario) as gateway:
        os.environ.update(
            TRADEFLOW_REDIS_URL=redis_url,
            TRADEFLOW_IB_PORT=str(gateway.port),
            TRADEFLOW_IB_ACCOUNT=scenario.accounts[0],
            TRADEFLOW_IB_BATCH_INTERVAL_MS="1000",
        )
        console.print(f"redis: {redis_url}; IB gateway simulator on port {gateway.port}")
        with stack.running([stack.worker_command(processes=1, threads=2)], env=dict(os.environ)):
            actors = _actors()
            from actors.ib import request_position_updates, runtime

            state = runtime()
            before = queue_stats(engine).processed
            conids = [*sorted({p.conid for p in scenario.positions}), 999_999_999]  # the last is not held
            request_position_updates(state.engine, state.scheduler, [NewRequest(conid=c) for c in conids])
            snapshots = len(list_snapshots(engine, limit=10_000))
            actors.portfolio.sync_all_portfolios.send(evaluate_limits=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done = queue_stats(engine).processed - before >= len(conids)
                if done and len(list_snapshots(engine, limit=10_000)) >= snapshots + len(scenario.accounts):
                    break
                time.sleep(0.2)
            else:
                processed = queue_stats(engine).processed - before
                raise _fail(
                    f"the demo's worker did not finish within {timeout:.0f}s: {processed} of {len(conids)} "
                    f"position requests processed; its log is above"
                )
    stats()
    portfolio(account=None, limit=len(scenario.accounts))


#: Set in the environment of the process that runs the demo itself.
DEMO_MARKER = "TRADEFLOW_IB_DEMO_APART"


def _run_demo_apart(*, holdings: int, timeout: float) -> int:
    """Run ``ib demo`` again in a child whose namespace and SQLite database are the demo's own.

    A child, because importing ``actors`` configures the broker and the IB
    runtime from the environment once per process.
    """
    import os
    import subprocess
    import sys
    import tempfile

    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="tradeflow-ib-demo-") as folder:
        env = {
            **os.environ,
            DEMO_MARKER: "1",
            "TRADEFLOW_NAMESPACE": f"{settings.namespace}-ib-demo-{os.getpid()}",
            "TRADEFLOW_DATABASE_URL": f"sqlite:///{folder}/demo.db",
            "TRADEFLOW_DELTA_ROOT": f"{folder}/delta",
        }
        if settings.redis_url:
            env["TRADEFLOW_REDIS_URL"] = settings.redis_url
        command = [
            sys.executable,
            "-m",
            "api.cli",
            "ib",
            "demo",
            "--holdings",
            str(holdings),
            "--timeout",
            str(timeout),
        ]
        try:
            return subprocess.run(command, env=env).returncode
        finally:
            _forget_namespace(settings, env["TRADEFLOW_NAMESPACE"])


def _forget_namespace(settings, namespace: str) -> None:
    """Delete the demo's Redis keys (its own namespace only)."""
    import redis

    from api.embedded import redis_answers

    if not redis_answers(settings.effective_redis_url):
        return
    client = redis.Redis.from_url(settings.effective_redis_url)
    for pattern in (f"{namespace}:*", f"{namespace}-results:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
