"""``tradeflow worker``, ``scheduler``, ``up``, ``demo`` and ``db``: the processes of a deployment."""

from __future__ import annotations

import os
import signal
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
    load_settings()  # bad settings: one line here, not periodiq's traceback
    command = stack.scheduler_command(modules=modules or ())
    os.execv(command[0], command)


@processes_app.command()
def up(
    modules: Annotated[list[str] | None, typer.Argument(help="Extra actor modules.")] = None,
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1)] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1)] = None,
    scheduler: Annotated[bool, typer.Option(help="Also run the periodiq scheduler.")] = True,
    api: Annotated[bool, typer.Option(help="Also serve the HTTP API (TRADEFLOW_API_HOST/PORT).")] = True,
    module: ModuleOption = None,
) -> None:
    """Run everything: Redis (embedded if none), workers, scheduler and HTTP API, until Ctrl-C
    or SIGTERM.

    A worker, scheduler or API process that dies is started again after a backoff (0.5 s
    doubling to 30 s), counted in ``task_queue_worker_restarts_total``; the messages a dead
    worker process held are requeued as soon as its death is seen."""
    add_modules(module)
    settings = load_settings()
    migrate(settings)
    check_workflows(settings)
    with redis_for(settings) as redis_url:
        console.print(f"redis: {redis_url}")
        os.environ["TRADEFLOW_REDIS_URL"] = redis_url
        broker = load_actors(load_settings()).current_broker
        from actors.telemetry import count_restart

        commands = [
            stack.worker_command(
                processes=processes or settings.worker_processes,
                threads=threads or settings.worker_threads,
                modules=modules or (),
            )
        ]
        names = ["worker"]
        if scheduler:
            commands.append(stack.scheduler_command(modules=modules or ()))
            names.append("scheduler")
        if api:
            from api.http import url_of

            commands.append(stack.api_command())
            names.append("api")
            console.print(f"api: {url_of(settings)}", soft_wrap=True)
            console.print(f"dashboard: {url_of(settings).removesuffix('/api/v1')}/", soft_wrap=True)
        watch = _WorkerDeaths(broker)
        with stack.running(commands, env=stack.child_env(redis_url)) as children:
            supervisor = stack.Supervisor(
                processes=children,
                names=names,
                env=stack.child_env(redis_url),
                on_exit=watch.exited,
                watch=watch.poll,
                on_restart=lambda name: count_restart(broker.client, broker.namespace, name),
                log=lambda line: err_console.print(line, highlight=False),
            )
            try:
                supervisor.run()
            except KeyboardInterrupt:
                console.print("stopping...")
    raise typer.Exit(0)


#: Seconds a worker master whose worker processes all died may take to exit before it is
#: killed: Dramatiq's master waits for its forks, and one stopped while it boots lingers.
MASTER_EXIT_GRACE = 1.0


class _WorkerDeaths:
    """What ``up`` does when it sees worker processes die: requeue their messages at once
    (without waiting for their heartbeat timeout), and kill a master left with none alive
    that does not exit in :data:`MASTER_EXIT_GRACE` seconds."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.orphaned: dict[int, float] = {}  # master pid -> when its last worker process died

    def poll(self, name: str, master) -> None:
        """A running child: requeue the messages of its dead worker processes."""
        if name != "worker":
            return
        pids = self._requeue(master, every=False)
        if pids is None:
            return
        if pids:
            self.orphaned.pop(master.pid, None)
            return
        died = self.orphaned.setdefault(master.pid, time.monotonic())
        if time.monotonic() - died > MASTER_EXIT_GRACE:
            err_console.print(f"worker master {master.pid} has no worker process left; killing it")
            os.killpg(master.pid, signal.SIGKILL)

    def exited(self, name: str, master) -> None:
        """A child exited: requeue what its worker processes held (a clean stop leaves nothing)."""
        if name == "worker":
            self._requeue(master, every=True)
            self.orphaned.pop(master.pid, None)

    def _requeue(self, master, *, every: bool) -> list[int] | None:
        """Requeue the messages of the dead (``every``: all) worker processes of ``master``;
        the live ones, or None if it registered none yet (booting)."""
        from actors.middleware import requeue_observed_death, worker_processes

        pids = list(worker_processes(self.broker, master_pid=master.pid))
        if not pids:
            return None if master.pid not in self.orphaned else []
        dead = pids if every else [pid for pid in pids if not stack.process_alive(pid)]
        if dead:
            recovered = requeue_observed_death(self.broker, master_pid=master.pid, pids=dead)
            err_console.print(f"worker processes {dead} died; requeued their messages at once: {recovered}")
        return [pid for pid in pids if pid not in dead]


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
