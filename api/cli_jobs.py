"""``tradeflow schedules``, ``dlq``, ``jobs cancel`` and ``outbox``: job control from the command line."""

from __future__ import annotations

import contextlib
import json
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
    """Every schedule with its state: enabled, last run and status, next run (times in UTC)."""
    from actors.schedules import next_tick
    from storage import list_schedules, utc_now

    actors, settings = _registered_schedules()
    table = Table("name", "spec", "queue", "enabled", "catch-up", "last run", "last status", "next run")
    for row in list_schedules(_engine(settings)):
        actor = actors.broker.actors.get(row.name)
        next_run = row.next_run_at
        if actor is not None and "periodic" in actor.options and (next_run is None or next_run < utc_now()):
            next_run = next_tick(actor, timezone=settings.schedule_timezone)
        table.add_row(
            row.name,
            row.spec,
            row.queue,
            "yes" if row.enabled else "no",
            row.catch_up,
            str(row.last_run_at or ""),
            row.last_status or "",
            str(next_run or "") if row.enabled else "",
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
    _flush_audit(settings)
    console.print(message.message_id, soft_wrap=True)


dlq_app = typer.Typer(help="Dead letters: list, show, retry, purge.", no_args_is_help=True)

#: Units accepted by ``--older-than``, in milliseconds.
DURATION_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"12h"``, ``"7d"`` -> milliseconds; a clear error otherwise."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in DURATION_UNITS or not number.isdigit():
        raise CliError(f"invalid duration {text!r}: use a whole number and a unit s, m, h or d (e.g. 7d)")
    return int(number) * DURATION_UNITS[unit]


def _broker():
    settings = _settings()
    return _actors_module(settings).broker, settings


@dlq_app.command("list")
def dlq_list(queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None) -> None:
    """Every dead letter, oldest first."""
    from actors.dead_letters import list_dead_letters

    broker, _ = _broker()
    table = Table("message id", "actor", "queue", "args", "error", "failed at", "attempts")
    for letter in list_dead_letters(broker, queue=queue):
        arguments = json.dumps({"args": list(letter.message.args), "kwargs": letter.message.kwargs})
        table.add_row(
            letter.message_id,
            letter.message.actor_name,
            letter.queue,
            arguments[:60],
            letter.reason[:80],
            str(letter.failed_at),
            str(letter.attempts),
        )
    console.print(table)


def _find(broker, message_id: str):
    from actors.dead_letters import UnknownDeadLetter, find_dead_letter

    try:
        return find_dead_letter(broker, message_id)
    except UnknownDeadLetter as exc:
        raise CliError(str(exc)) from None


@dlq_app.command("show")
def dlq_show(message_id: Annotated[str, typer.Argument(help="Message id.")]) -> None:
    """Everything about one dead letter, with its last traceback."""
    broker, _ = _broker()
    letter = _find(broker, message_id)
    table = Table("field", "value", show_header=False)
    rows = {
        "message id": letter.message_id,
        "actor": letter.message.actor_name,
        "queue": letter.queue,
        "args": json.dumps(list(letter.message.args)),
        "kwargs": json.dumps(letter.message.kwargs),
        "error": letter.reason,
        "failed at": str(letter.failed_at),
        "attempts": str(letter.attempts),
        "traceback": letter.message.options.get("traceback", ""),
    }
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)


@dlq_app.command("retry")
def dlq_retry(
    message_id: Annotated[str | None, typer.Argument(help="Message id (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Retry every dead letter.")] = False,
) -> None:
    """Enqueue dead letters again with a fresh retry budget."""
    from actors.dead_letters import list_dead_letters, retry_dead_letter

    if (message_id is None) == (not all_):
        raise CliError("give either a message id or --all")
    broker, settings = _broker()
    letters = list_dead_letters(broker) if all_ else [_find(broker, message_id)]
    retried = [letter.message_id for letter in letters if retry_dead_letter(broker, letter) is not None]
    _flush_audit(settings)
    for retried_id in retried:
        console.print(retried_id, soft_wrap=True)
    err_console.print(f"retried {len(retried)} of {len(letters)}")


@dlq_app.command("purge")
def dlq_purge(
    older_than: Annotated[
        str | None, typer.Option(help="Only those dead longer than this (e.g. 7d, 12h).")
    ] = None,
) -> None:
    """Delete dead letters (all, or those older than --older-than); their audit rows stay dead_letter."""
    from actors.dead_letters import purge_dead_letters

    older_than_ms = parse_duration_ms(older_than) if older_than is not None else None
    broker, _ = _broker()
    console.print(f"purged {purge_dead_letters(broker, older_than_ms=older_than_ms)}")


def cancel(message_id: Annotated[str, typer.Argument(help="Message id.")]) -> None:
    """Cancel a pending, delayed or running job: it never starts, or is interrupted; never retried."""
    from actors.cancellation import cancel_job

    broker, settings = _broker()
    outcome = cancel_job(broker, message_id, engine=_engine(settings), ttl=settings.cancel_ttl_ms)
    console.print(
        f"{message_id}: {outcome.state.value}" + (f" (was {outcome.status})" if outcome.status else "")
    )


outbox_app = typer.Typer(
    help="Transactional outbox: relay committed messages to Redis.", no_args_is_help=True
)


@outbox_app.command("relay")
def outbox_relay(once: Annotated[bool, typer.Option(help="Relay what is there, then exit.")] = False) -> None:
    """Run the relay (until Ctrl-C / SIGTERM); several may run at once on PostgreSQL."""
    import signal

    from actors.outbox import OutboxRelay

    broker, settings = _broker()
    relay = OutboxRelay(
        broker=broker,
        engine=_engine(settings),
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval_ms / 1000,
    )
    if once:
        while relay.relay_once() == relay.batch_size:
            pass
    else:
        signal.signal(signal.SIGTERM, lambda *_: relay.stop())
        with contextlib.suppress(KeyboardInterrupt):
            relay.run_forever()
    _flush_audit(settings)
    console.print(f"relayed {relay.relayed}")


@outbox_app.command("status")
def outbox_status() -> None:
    """How many committed messages wait for the relay."""
    from storage import unsent_count

    console.print(f"unsent {unsent_count(_engine(_settings()))}")


def _flush_audit(settings: Settings) -> None:
    import actors

    writer = actors.audit_writer_of(actors.broker)
    if writer is not None and not writer.flush(settings.audit_commit_wait_ms / 1000):
        err_console.print(f"warning: audit rows not written yet: {writer.last_error}")


def register(app: typer.Typer, jobs_app: typer.Typer) -> None:
    """Add these commands to the ``tradeflow`` app."""
    app.add_typer(schedules_app, name="schedules")
    app.add_typer(dlq_app, name="dlq")
    jobs_app.command("cancel")(cancel)
    app.add_typer(outbox_app, name="outbox")
