"""The ``tradeflow`` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from config import Settings

from . import stack
from .cli_data import data_app
from .cli_ib import ib_app, ib_sim_app
from .cli_ops import ops_app
from .cli_strategy import strategy_app
from .cli_workflow import workflow_app
from .embedded import redis_answers, redis_for

app = typer.Typer(
    help="tradeflow: jobs and workflows on Dramatiq + Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="Inspect the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(strategy_app)  # backtest, screen, strategy-relay
app.add_typer(ib_app, name="ib")
app.add_typer(ib_sim_app, name="ib-sim")
app.add_typer(workflow_app, name="workflow")
app.add_typer(ops_app)  # metrics, health

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TRADEFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def _engine(settings: Settings):
    from storage import create_db_engine

    return create_db_engine(settings.database_url)


def _actors_module(settings: Settings):
    """Import ``actors`` (which reads the same environment) and check Redis answers."""
    _settings()  # fail on bad settings with our message, not a traceback from the import
    import actors

    url = settings.effective_redis_url
    if not redis_answers(url):
        raise CliError(f"cannot reach Redis at {url}: start it or set TRADEFLOW_REDIS_URL")
    return actors


def _import_modules(names: list[str] | tuple[str, ...]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CliError(f"cannot import actor module {name!r}: {exc}") from None


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def _call_arguments(args: str | None, kwargs: str | None) -> tuple[list, dict]:
    positional = _parse_json(args, "--args") if args is not None else []
    keyword = _parse_json(kwargs, "--kwargs") if kwargs is not None else {}
    if isinstance(positional, dict) and kwargs is None:
        positional, keyword = [], positional
    if not isinstance(positional, list):
        raise CliError(
            "--args must be a JSON array of positional arguments (or an object of keyword arguments)"
        )
    if not isinstance(keyword, dict):
        raise CliError("--kwargs must be a JSON object")
    return positional, keyword


@app.command()
def send(
    actor: Annotated[str, typer.Argument(help="Actor name, e.g. ping.")],
    args: Annotated[
        str | None, typer.Option(help="JSON array of arguments, or object of keyword arguments.")
    ] = None,
    kwargs: Annotated[str | None, typer.Option(help="JSON object of keyword arguments.")] = None,
    delay: Annotated[int | None, typer.Option(help="Delay in milliseconds.", min=0)] = None,
    user_id: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
    module: Annotated[
        list[str] | None, typer.Option("--module", "-m", help="Extra actor module to import.")
    ] = None,
    priority: Annotated[str | None, typer.Option(help="Lane: critical, high, normal or low.")] = None,
) -> None:
    """Send one message; prints its id."""
    settings = _settings()
    positional, keyword = _call_arguments(args, kwargs)
    actors = _actors_module(settings)
    _import_modules(module or ())
    from dramatiq.errors import ActorNotFound

    try:
        target = actors.broker.get_actor(actor)
    except ActorNotFound:
        known = ", ".join(sorted(actors.broker.actors))
        raise CliError(f"unknown actor {actor!r}; known actors: {known}") from None
    options = {"user_id": user_id} if user_id else {}
    if priority:
        options["priority"] = priority
    try:
        message = target.send_with_options(args=tuple(positional), kwargs=keyword, delay=delay, **options)
    except ValueError as exc:  # a bad priority
        raise CliError(str(exc)) from None
    writer = actors.audit_writer_of(actors.broker)
    if writer is not None and not writer.flush(settings.audit_commit_wait_ms / 1000):
        err_console.print(f"warning: audit row not written yet: {writer.last_error}")
    console.print(message.message_id, soft_wrap=True)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="pending, running, retrying, completed, ...")] = None,
    actor: Annotated[str | None, typer.Option(help="Actor name (task type).")] = None,
    user: Annotated[str | None, typer.Option(help="User id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The newest tasks, filtered."""
    from storage import TaskStatus, list_tasks

    if status and status not in {s.value for s in TaskStatus}:
        raise CliError(f"unknown status {status!r}; use one of {', '.join(s.value for s in TaskStatus)}")
    rows = list_tasks(_engine(_settings()), status=status, task_type=actor, user_id=user, limit=limit)
    if as_json:
        for row in rows:
            print(row.model_dump_json())
        return
    table = Table("actor", "queue", "status", "retries", "ms", "created", "error")
    table.columns.insert(0, Column("task id", no_wrap=True, min_width=36))
    for row in rows:
        ms = f"{row.processing_time_ms:.1f}" if row.processing_time_ms is not None else ""
        created = row.created_at.isoformat(sep=" ", timespec="seconds") if row.created_at else ""
        error = (row.error_message or "")[:60]
        table.add_row(
            row.task_id, row.task_type, row.queue, row.status, str(row.retry_count), ms, created, error
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(task_id: Annotated[str, typer.Argument(help="Message id.")]) -> None:
    """Every field of one task."""
    from storage import get_task

    row = get_task(_engine(_settings()), task_id)
    if row is None:
        raise CliError(f"no task with id {task_id!r}")
    table = Table("field", "value", show_header=False)
    for name, value in row.model_dump().items():
        table.add_row(name, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the newest revision."""
    from storage import current_revisions, upgrade

    engine = _engine(_settings())
    upgrade(engine)
    console.print(f"database at revision {', '.join(sorted(current_revisions(engine)))}", soft_wrap=True)


@app.command()
def worker(
    modules: Annotated[list[str] | None, typer.Argument(help="Extra actor modules.")] = None,
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1)] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1)] = None,
) -> None:
    """Run workers: ``dramatiq actors`` with our defaults (migrates the database first)."""
    settings = _settings()
    db_upgrade()
    command = stack.worker_command(
        processes=processes or settings.worker_processes,
        threads=threads or settings.worker_threads,
        modules=modules or (),
    )
    os.execv(command[0], command)


@app.command()
def scheduler(
    modules: Annotated[list[str] | None, typer.Argument(help="Extra actor modules.")] = None,
) -> None:
    """Run the scheduler: ``periodiq actors``."""
    command = stack.scheduler_command(modules=modules or ())
    os.execv(command[0], command)


@app.command()
def up(
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1)] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1)] = None,
    scheduler: Annotated[bool, typer.Option(help="Also run the periodiq scheduler.")] = True,
) -> None:
    """Run everything: Redis (embedded if none), workers and scheduler.  Ctrl-C stops it all."""
    settings = _settings()
    db_upgrade()
    with redis_for(settings) as redis_url:
        console.print(f"redis: {redis_url}")
        commands = [
            stack.worker_command(
                processes=processes or settings.worker_processes, threads=threads or settings.worker_threads
            )
        ]
        if scheduler:
            commands.append(stack.scheduler_command())
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


@app.command()
def demo(
    count: Annotated[int, typer.Option(min=1, max=100_000, help="How many ping messages to send.")] = 500,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the batch.")] = 120.0,
) -> None:
    """Start workers on embedded defaults, send a batch of system messages, print the audit summary."""
    settings = _settings()
    db_upgrade()
    with redis_for(settings) as redis_url:
        os.environ["TRADEFLOW_REDIS_URL"] = redis_url
        settings = _settings()
        command = stack.worker_command(processes=settings.worker_processes, threads=settings.worker_threads)
        with stack.running([command], env=stack.child_env(redis_url)):
            _run_demo_batch(settings, count=count, timeout=timeout)


def _run_demo_batch(settings: Settings, *, count: int, timeout: float) -> None:
    from storage import TERMINAL_STATUSES, status_counts

    actors = _actors_module(settings)
    started = time.perf_counter()
    ids = [actors.system.ping.send(i).message_id for i in range(count)]
    ids.append(actors.system.health_check.send().message_id)
    console.print(f"sent {len(ids)} messages in {time.perf_counter() - started:.2f}s; waiting for workers...")
    engine = _engine(settings)
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


from . import cli_jobs  # noqa: E402  (its commands use the helpers above)

cli_jobs.register(app, jobs_app)


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 1."""
    import redis
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from storage import describe_database_error

    try:
        app()
    except CliError as exc:
        err_console.print(f"error: {exc}", highlight=False)
        sys.exit(1)
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as exc:
        err_console.print(f"error: cannot reach Redis: {exc}", highlight=False)
        sys.exit(1)
    except (OperationalError, ProgrammingError) as exc:
        err_console.print(f"error: database: {describe_database_error(exc.orig or exc)}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
