"""``tradeflow schedules``, ``tradeflow dlq``, ``tradeflow jobs cancel`` and ``tradeflow outbox``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from config import Settings

console = Console()
err_console = Console(stderr=True)


class CliError(typer.Exit):
    """A problem the user can fix: one line on stderr, exit code 1.

    Not ``api.cli.CliError``: under ``python -m api.cli`` that module runs as
    ``__main__``, and a class imported from ``api.cli`` would not be the one it catches.
    """

    def __init__(self, message: str) -> None:
        err_console.print(f"error: {message}", highlight=False)
        super().__init__(1)


def _shared(helper: str, *args):
    """Call a helper of ``api.cli``, turning its ``CliError`` into ours."""
    from . import cli

    try:
        return getattr(cli, helper)(*args)
    except cli.CliError as exc:
        raise CliError(str(exc)) from None


def _settings() -> Settings:
    return _shared("_settings")


def _engine(settings: Settings):
    return _shared("_engine", settings)


def _actors_module(settings: Settings):
    return _shared("_actors_module", settings)


schedules_app = typer.Typer(help="Periodic schedules: list, enable, disable, run now.", no_args_is_help=True)


def _registered_schedules():
    """The actors module, with every periodic actor it declares registered in the schedules table."""
    from actors.schedules import schedule_control_of
    from storage import register_schedules

    settings = _settings()
    actors = _actors_module(settings)
    control = schedule_control_of(actors.broker)
    periodic = [actor for actor in actors.broker.actors.values() if "periodic" in actor.options]
    register_schedules(_engine(settings), [control.definition(actor) for actor in periodic])
    return actors, settings


def _schedule_name(name: str):
    from storage import UnknownSchedule, get_schedule

    actors, settings = _registered_schedules()
    try:
        get_schedule(_engine(settings), name)
    except UnknownSchedule as exc:
        raise CliError(str(exc)) from None
    return actors, settings


@schedules_app.command("list")
def schedules_list() -> None:
    """Every schedule with its state: enabled, last run and status, next run."""
    from storage import list_schedules

    _, settings = _registered_schedules()
    table = Table("name", "spec", "queue", "enabled", "catch-up", "last run", "last status", "next run")
    for row in list_schedules(_engine(settings)):
        table.add_row(
            row.name,
            row.spec,
            row.queue,
            "yes" if row.enabled else "no",
            row.catch_up,
            str(row.last_run_at or ""),
            row.last_status or "",
            str(row.next_run_at or ""),
        )
    console.print(table)


@schedules_app.command("enable")
def schedules_enable(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Fire the schedule again from its next tick."""
    from storage import set_enabled

    _, settings = _schedule_name(name)
    set_enabled(_engine(settings), name, True)
    console.print(f"{name}: enabled")


@schedules_app.command("disable")
def schedules_disable(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Stop firing the schedule (a run already queued still runs)."""
    from storage import set_enabled

    _, settings = _schedule_name(name)
    set_enabled(_engine(settings), name, False)
    console.print(f"{name}: disabled")


@schedules_app.command("run")
def schedules_run(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Send the schedule's actor now (even when disabled); prints the message id."""
    from actors.schedules import SCHEDULE_OPTION
    from storage import record_manual_run

    actors, settings = _schedule_name(name)
    message = actors.broker.actors[name].send_with_options(**{SCHEDULE_OPTION: name})
    record_manual_run(_engine(settings), name, message_id=message.message_id)
    writer = actors.audit_writer_of(actors.broker)
    if writer is not None:
        writer.flush(settings.audit_commit_wait_ms / 1000)
    console.print(message.message_id, soft_wrap=True)


def register(app: typer.Typer, jobs_app: typer.Typer) -> None:
    """Add these commands to the ``tradeflow`` app."""
    app.add_typer(schedules_app, name="schedules")
