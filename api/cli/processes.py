"""``tradeflow worker``, ``scheduler``, ``up``, ``demo`` and ``db``: the processes of a deployment."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

if TYPE_CHECKING:
    from actors.settings import Settings
from api import stack
from api.embedded import redis_for

from .common import (
    MODULE_HELP,
    CliError,
    add_modules,
    check_workflows,
    console,
    err_console,
    load_actors,
    load_settings,
    migrate,
    open_engine,
)

#: ``-m/--module``: the user's modules, passed to the children in ``TRADEFLOW_MODULES``.
ModuleOption = Annotated[list[str] | None, typer.Option("--module", "-m", help=MODULE_HELP)]

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
processes_app = typer.Typer()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the newest revision."""
    migrate(load_settings())


@processes_app.command()
def worker(
    modules: Annotated[list[str] | None, typer.Argument(help="Extra actor modules.")] = None,
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1)] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1)] = None,
    module: ModuleOption = None,
) -> None:
    """Run workers: ``dramatiq actors`` with our defaults (migrates the database first)."""
    add_modules(module)
    settings = load_settings()
    migrate(settings)
    check_workflows(settings)
    command = stack.worker_command(
        processes=processes or settings.worker_processes,
        threads=threads or settings.worker_threads,
        modules=modules or (),
    )
    os.execv(command[0], command)


@processes_app.command()
def scheduler(
    modules: Annotated[list[str] | None, typer.Argument(help="Extra actor modules.")] = None,
    module: ModuleOption = None,
) -> None:
    """Run the scheduler: ``periodiq actors``."""
    add_modules(module)
    command = stack.scheduler_command(modules=modules or ())
    os.execv(command[0], command)


@processes_app.command()
def up(
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1)] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1)] = None,
    scheduler: Annotated[bool, typer.Option(help="Also run the periodiq scheduler.")] = True,
    api: Annotated[bool, typer.Option(help="Also serve the HTTP API (TRADEFLOW_API_HOST/PORT).")] = True,
    module: ModuleOption = None,
) -> None:
    """Run everything: Redis (embedded if none), workers, scheduler and HTTP API.  Ctrl-C stops it all."""
    add_modules(module)
    settings = load_settings()
    migrate(settings)
    check_workflows(settings)
    with redis_for(settings) as redis_url:
        console.print(f"redis: {redis_url}")
        commands = [
            stack.worker_command(
                processes=processes or settings.worker_processes, threads=threads or settings.worker_threads
            )
        ]
        if scheduler:
            commands.append(stack.scheduler_command())
        if api:
            from api.http import url_of

            commands.append(stack.api_command())
            console.print(f"api: {url_of(settings)}", soft_wrap=True)
            console.print(f"dashboard: {url_of(settings).removesuffix('/api/v1')}/", soft_wrap=True)
        with stack.running(commands, env=stack.child_env(redis_url)) as children:
            try:
                code = _supervise(children[0], children[1:])
            except KeyboardInterrupt:
                console.print("stopping...")
                code = 0
    raise typer.Exit(code)


def _supervise(workers, others) -> int:
    """Block while the workers run; a scheduler that exits (e.g. no periodic actor) is reported, not fatal."""
    reported = set()
    while workers.poll() is None:
        for child in others:
            if child.poll() is not None and child.pid not in reported:
                reported.add(child.pid)
                err_console.print(
                    f"warning: {' '.join(child.args[:3])}... exited with code {child.returncode}"
                )
        time.sleep(0.5)
    err_console.print(f"error: the workers exited with code {workers.returncode}")
    return 1


@processes_app.command()
def demo(
    count: Annotated[int, typer.Option(min=1, max=100_000, help="How many ping messages to send.")] = 500,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the batch.")] = 120.0,
) -> None:
    """Start workers on embedded defaults, send a batch of system messages, print the audit summary."""
    settings = load_settings()
    migrate(settings)
    with redis_for(settings) as redis_url:
        os.environ["TRADEFLOW_REDIS_URL"] = redis_url
        settings = load_settings()
        command = stack.worker_command(processes=settings.worker_processes, threads=settings.worker_threads)
        with stack.running([command], env=stack.child_env(redis_url)):
            _run_demo_batch(settings, count=count, timeout=timeout)


def _run_demo_batch(settings: Settings, *, count: int, timeout: float) -> None:
    from storage import TERMINAL_STATUSES, status_counts

    actors = load_actors(settings)
    started = time.perf_counter()
    ids = [actors.system.ping.send(i).message_id for i in range(count)]
    ids.append(actors.system.health_check.send().message_id)
    console.print(f"sent {len(ids)} messages in {time.perf_counter() - started:.2f}s; waiting for workers...")
    engine = open_engine(settings)
    deadline = time.monotonic() + timeout
    while True:
        counts = status_counts(engine, task_ids=ids)
        done = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)
        if done == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    table = Table("status", "tasks", title=f"audit summary ({elapsed:.2f}s, {done / elapsed:.0f} msg/s)")
    for status, n in sorted(counts.items()):
        table.add_row(status, str(n))
    console.print(table)
    if done != len(ids):
        raise CliError(f"only {done} of {len(ids)} messages finished within {timeout:.0f}s")
