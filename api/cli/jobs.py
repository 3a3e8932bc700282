"""``tradeflow schedules``, ``dlq``, ``jobs cancel`` and ``outbox``: job control from the command line."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from actors.settings import Settings

from .common import (
    MODULE_HELP,
    CliError,
    JsonOption,
    add_modules,
    call_arguments,
    console,
    err_console,
    load_actors,
    load_settings,
    open_engine,
    plain,
    print_record,
    print_rows,
)

jobs_app = typer.Typer(help="Inspect the audit trail.", no_args_is_help=True)


def send(
    actor: Annotated[str, typer.Argument(help="Actor name, e.g. ping.")],
    args: Annotated[
        str | None, typer.Option(help="JSON array of arguments, or object of keyword arguments.")
    ] = None,
    kwargs: Annotated[str | None, typer.Option(help="JSON object of keyword arguments.")] = None,
    delay: Annotated[int | None, typer.Option(help="Delay in milliseconds.", min=0)] = None,
    user_id: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
    module: Annotated[list[str] | None, typer.Option("--module", "-m", help=MODULE_HELP)] = None,
    priority: Annotated[str | None, typer.Option(help="Lane: critical, high, normal or low.")] = None,
) -> None:
    """Send one message; prints its id."""
    add_modules(module)
    settings = load_settings()
    positional, keyword = call_arguments(args, kwargs)
    actors = load_actors(settings)
    from orchestration.jobs import JobRequest, SubmissionError, submit_job

    options = {"user_id": user_id} if user_id else {}
    request = JobRequest(
        actor=actor,
        args=positional,
        kwargs=keyword,
        priority=priority or "normal",
        delay_ms=delay,
        options=options,
    )
    try:
        message = submit_job(actors.current_broker, request)  # the checks POST /api/v1/jobs makes
    except SubmissionError as exc:
        raise CliError(str(exc)) from None
    writer = actors.audit_writer_of(actors.current_broker)
    if writer is not None and not writer.flush(settings.audit_commit_wait_ms / 1000):
        err_console.print(f"warning: audit row not written yet: {writer.last_error}")
    console.print(message.message_id, soft_wrap=True)


#: Fields of ``jobs list``'s table (``--json`` prints every field of the row).
JOB_FIELDS = (
    "task_id",
    "task_type",
    "queue",
    "status",
    "retry_count",
    "processing_time_ms",
    "created_at",
    "error",
)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="pending, running, retrying, completed, ...")] = None,
    actor: Annotated[str | None, typer.Option(help="Actor name (task type).")] = None,
    user: Annotated[str | None, typer.Option(help="User id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The newest tasks, filtered."""
    from storage import TaskStatus, list_tasks

    if status and status not in {s.value for s in TaskStatus}:
        raise CliError(f"unknown status {status!r}; use one of {', '.join(s.value for s in TaskStatus)}")
    rows = list_tasks(open_engine(load_settings()), status=status, task_type=actor, user_id=user, limit=limit)
    if as_json:
        for row in rows:
            print(row.model_dump_json())
        return
    print_rows(
        (
            {
                **row.model_dump(),
                "processing_time_ms": None
                if row.processing_time_ms is None
                else f"{row.processing_time_ms:.1f}",
                "created_at": row.created_at.isoformat(sep=" ", timespec="seconds")
                if row.created_at
                else None,
                "error": (row.error_message or "")[:60],
            }
            for row in rows
        ),
        fields=JOB_FIELDS,
        as_json=False,
    )


@jobs_app.command("show")
def jobs_show(
    task_id: Annotated[str, typer.Argument(help="Message id.")], as_json: JsonOption = False
) -> None:
    """Every field of one task, its stored result (``result``) when the actor stores results, and
    every attempt (``attempts``: error, worker, timings, trace id, then each traceback)."""
    from storage import get_attempts, get_task

    settings = load_settings()
    engine = open_engine(settings)
    row = get_task(engine, task_id)
    if row is None:
        raise CliError(f"no task with id {task_id!r}")
    attempts = [
        # the ordinal replaces the stored number (the audit seq // 3, with gaps after a dead-letter retry)
        {"number": number, **{k: plain(v) for k, v in attempt.model_dump().items() if k != "number"}}
        for number, attempt in enumerate(get_attempts(engine, task_id, task=row), 1)
    ]
    record = {**row.model_dump(), "result": _stored_result(settings, row)}
    if as_json:
        print_record({**record, "attempts": attempts}, as_json=True)
        return
    print_record(record, as_json=False)
    print_rows(attempts, fields=ATTEMPT_FIELDS, as_json=False, title="attempts")
    for attempt in attempts:
        if attempt["traceback"]:
            console.print(f"\nattempt {attempt['number']}:", soft_wrap=True)
            console.print(attempt["traceback"].rstrip(), soft_wrap=True, markup=False, highlight=False)


#: Columns of the attempts table of ``jobs show`` (``--json`` has every field of each attempt).
ATTEMPT_FIELDS = (
    "number",
    "retry_count",
    "status",
    "started_at",
    "duration_ms",
    "worker_id",
    "error_message",
    "trace_id",
)


def _stored_result(settings: Settings, row) -> Any:
    """The job's result from the results backend; None when there is none (or Redis is away)."""
    from dramatiq.message import Message
    from dramatiq.results import ResultFailure, ResultMissing, Results

    from api.embedded import redis_answers

    if not redis_answers(settings.effective_redis_url):
        return None
    import actors

    backend = next((m.backend for m in actors.current_broker.middleware if isinstance(m, Results)), None)
    if backend is None:
        return None
    message = Message(
        queue_name=row.queue,
        actor_name=row.task_type,
        args=(),
        kwargs={},
        options={},
        message_id=row.task_id,
        message_timestamp=0,
    )
    try:
        return backend.get_result(message)
    except ResultMissing:
        return None
    except ResultFailure as exc:
        return {"error": f"{exc.orig_exc_type}: {exc.orig_exc_msg}"}


#: Fields of each line ``jobs watch`` prints.
WATCH_FIELDS = ("at", "task_id", "task_type", "status", "retry_count", "error_message")


@jobs_app.command("watch")
def jobs_watch(
    task_ids: Annotated[list[str] | None, typer.Argument(help="Message ids; none: every job.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (task type).")] = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between looks at the audit trail.", min=0.05)
    ] = 0.5,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.", min=0)] = None,
    as_json: JsonOption = False,
) -> None:
    """Print each state change of jobs as it happens (Ctrl-C stops).

    With message ids it exits when all of them have finished: 0 if all
    completed, 1 otherwise.
    """
    import time

    from storage import TERMINAL_STATUSES, get_task, list_tasks, utc_now

    engine = open_engine(load_settings())
    wanted = list(dict.fromkeys(task_ids or ()))
    seen: dict[str, tuple] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            if wanted:
                rows = [row for row in (get_task(engine, task_id) for task_id in wanted) if row is not None]
            else:
                rows = list_tasks(engine, task_type=actor, limit=500)
            for row in reversed(rows):
                state = (row.status, row.retry_count, row.error_message)
                if seen.get(row.task_id) == state:
                    continue
                seen[row.task_id] = state
                change = {**row.model_dump(), "at": utc_now()}
                if as_json:
                    print(json.dumps({field: plain(change[field]) for field in WATCH_FIELDS}), flush=True)
                else:
                    error = f"  {row.error_message[:100]}" if row.error_message else ""
                    console.print(
                        f"{change['at']:%H:%M:%S} {row.task_id} {row.task_type} {row.status}{error}",
                        soft_wrap=True,
                        highlight=False,
                    )
            if wanted and len(rows) == len(wanted) and all(r.status in TERMINAL_STATUSES for r in rows):
                if any(r.status != "completed" for r in rows):
                    raise typer.Exit(1)
                return
            if deadline is not None and time.monotonic() >= deadline:
                if wanted:
                    raise CliError(f"timed out after {timeout}s with jobs still unfinished")
                return
            time.sleep(interval)


schedules_app = typer.Typer(
    help="Schedules: list, enable, disable, run now; create, change, delete run-time ones.",
    no_args_is_help=True,
)


def _schedules_broker():
    settings = load_settings()
    return load_actors(settings).current_broker, open_engine(settings), settings


def _schedule_call(operation, *args):
    """Run a schedule operation; an unknown schedule is one line and exit code 1."""
    from storage import UnknownSchedule

    try:
        return operation(*args)
    except UnknownSchedule as exc:
        raise CliError(str(exc)) from None


#: Fields of ``schedules list`` (table columns and ``--json`` keys).
SCHEDULE_FIELDS = (
    "name",
    "spec",
    "queue",
    "enabled",
    "catch_up",
    "last_run_at",
    "last_status",
    "next_run_at",
)


@schedules_app.command("list")
def schedules_list(as_json: JsonOption = False) -> None:
    """Every schedule with its state: enabled, last run and status, next run (times in UTC)."""
    from orchestration.schedules import schedule_views

    broker, engine, settings = _schedules_broker()
    rows = []
    for view in schedule_views(broker, engine, timezone=settings.schedule_timezone):
        row = view.row
        rows.append(
            {
                "name": row.name,
                "spec": row.spec,
                "queue": row.queue,
                "enabled": row.enabled if as_json else ("yes" if row.enabled else "no"),
                "catch_up": row.catch_up,
                "last_run_at": row.last_run_at,
                "last_status": row.last_status,
                "next_run_at": view.next_run_at,
            }
        )
    print_rows(rows, fields=SCHEDULE_FIELDS, as_json=as_json)


@schedules_app.command("enable")
def schedules_enable(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Fire the schedule again from its next tick."""
    from orchestration.schedules import set_schedule_enabled

    broker, engine, _ = _schedules_broker()
    _schedule_call(set_schedule_enabled, broker, engine, name, True)
    console.print(f"{name}: enabled")


@schedules_app.command("disable")
def schedules_disable(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Stop firing the schedule (a run already queued still runs)."""
    from orchestration.schedules import set_schedule_enabled

    broker, engine, _ = _schedules_broker()
    _schedule_call(set_schedule_enabled, broker, engine, name, False)
    console.print(f"{name}: disabled")


def _schedule_refusal(operation, *args, **kwargs):
    """A schedule change; its refusals (bad spec, actor, arguments, name) as one line."""
    from orchestration.jobs import SubmissionError
    from storage import ScheduleConflict, UnknownSchedule

    try:
        return operation(*args, **kwargs)
    except (UnknownSchedule, ScheduleConflict, SubmissionError, ValueError) as exc:
        raise CliError(str(exc)) from None


@schedules_app.command("create")
def schedules_create(
    name: Annotated[str, typer.Argument(help="Schedule name (not an actor's).")],
    actor: Annotated[str, typer.Option(help="Actor to call.")],
    cron: Annotated[str, typer.Option(help="Cron spec, e.g. '*/15 * * * *' or @daily.")],
    args: Annotated[
        str | None, typer.Option(help="JSON array of arguments, or object of keyword arguments.")
    ] = None,
    kwargs: Annotated[str | None, typer.Option(help="JSON object of keyword arguments.")] = None,
    catch_up: Annotated[str, typer.Option(help="skip or run_once after scheduler downtime.")] = "skip",
) -> None:
    """Create a run-time schedule; running schedulers fire it from their next tick."""
    from orchestration.schedules import RuntimeSchedule, create_schedule

    positional, keyword = call_arguments(args, kwargs)
    broker, engine, _ = _schedules_broker()
    schedule = RuntimeSchedule(
        name=name, actor=actor, spec=cron, args=positional, kwargs=keyword, catch_up=catch_up
    )
    _schedule_refusal(create_schedule, broker, engine, schedule)
    console.print(f"{name}: created ({cron} -> {actor})")


@schedules_app.command("change")
def schedules_change(
    name: Annotated[str, typer.Argument(help="Run-time schedule name.")],
    cron: Annotated[str | None, typer.Option(help="New cron spec.")] = None,
    args: Annotated[str | None, typer.Option(help="New JSON arguments.")] = None,
    kwargs: Annotated[str | None, typer.Option(help="New JSON keyword arguments.")] = None,
) -> None:
    """Change a run-time schedule's spec or arguments (from the next tick)."""
    from orchestration.schedules import change_schedule

    positional, keyword = call_arguments(args, kwargs) if (args or kwargs) else (None, None)
    broker, engine, _ = _schedules_broker()
    _schedule_refusal(change_schedule, broker, engine, name, spec=cron, args=positional, kwargs=keyword)
    console.print(f"{name}: changed")


@schedules_app.command("delete")
def schedules_delete(name: Annotated[str, typer.Argument(help="Run-time schedule name.")]) -> None:
    """Delete a run-time schedule (code's schedules can only be disabled)."""
    from orchestration.schedules import delete_schedule

    _, engine, _ = _schedules_broker()
    _schedule_refusal(delete_schedule, engine, name)
    console.print(f"{name}: deleted")


@schedules_app.command("run")
def schedules_run(name: Annotated[str, typer.Argument(help="Schedule (actor) name.")]) -> None:
    """Send the schedule's actor now (even when disabled); prints the message id."""
    from orchestration.schedules import run_schedule_now

    broker, engine, settings = _schedules_broker()
    message_id = _schedule_call(run_schedule_now, broker, engine, name)
    _flush_audit(settings)
    console.print(message_id, soft_wrap=True)


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
    settings = load_settings()
    return load_actors(settings).current_broker, settings


#: Fields of ``dlq list`` (table columns and ``--json`` keys); ``dlq show`` adds ``kwargs`` and ``traceback``.
DEAD_LETTER_FIELDS = ("message_id", "actor", "queue", "args", "error", "failed_at", "attempts")


def _letter_record(letter, *, full: bool) -> dict[str, Any]:
    record = {
        "message_id": letter.message_id,
        "actor": letter.message.actor_name,
        "queue": letter.queue,
        "args": list(letter.message.args),
        "kwargs": letter.message.kwargs,
        "error": letter.reason,
        "failed_at": letter.failed_at,
        "attempts": letter.attempts,
    }
    if full:
        record["traceback"] = letter.traceback
    return record


@dlq_app.command("list")
def dlq_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None, as_json: JsonOption = False
) -> None:
    """Every dead letter, oldest first."""
    from actors.middleware import list_dead_letters

    broker, _ = _broker()
    rows = []
    for letter in list_dead_letters(broker, queue=queue):
        record = _letter_record(letter, full=False)
        if not as_json:  # the table shows the start of the long texts; show and --json have all
            arguments = json.dumps({"args": record.pop("args"), "kwargs": record.pop("kwargs")})
            record.update(args=arguments[:60], error=letter.reason[:80])
        rows.append(record)
    print_rows(
        rows, fields=DEAD_LETTER_FIELDS if not as_json else (*DEAD_LETTER_FIELDS, "kwargs"), as_json=as_json
    )


def _find(broker, message_id: str):
    from actors.middleware import UnknownDeadLetter, find_dead_letter

    try:
        return find_dead_letter(broker, message_id)
    except UnknownDeadLetter as exc:
        raise CliError(str(exc)) from None


@dlq_app.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="Message id.")], as_json: JsonOption = False
) -> None:
    """Everything about one dead letter, with its last traceback."""
    broker, _ = _broker()
    print_record(_letter_record(_find(broker, message_id), full=True), as_json=as_json)


#: Dead letters ``dlq retry --all`` moves back per round trip.
DLQ_RETRY_BATCH = 500


@dlq_app.command("retry")
def dlq_retry(
    message_id: Annotated[str | None, typer.Argument(help="Message id (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Retry every dead letter.")] = False,
) -> None:
    """Enqueue dead letters again with a fresh retry budget."""
    from actors.middleware import list_dead_letters, retry_dead_letters

    if (message_id is None) == (not all_):
        raise CliError("give either a message id or --all")
    broker, settings = _broker()
    letters = list_dead_letters(broker) if all_ else [_find(broker, message_id)]
    retried = []
    for start in range(0, len(letters), DLQ_RETRY_BATCH):  # each batch one atomic call a queue
        retried += retry_dead_letters(broker, letters[start : start + DLQ_RETRY_BATCH])
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
    from actors.middleware import purge_dead_letters

    older_than_ms = parse_duration_ms(older_than) if older_than is not None else None
    broker, _ = _broker()
    console.print(f"purged {purge_dead_letters(broker, older_than_ms=older_than_ms)}")


def cancel(message_id: Annotated[str, typer.Argument(help="Message id.")]) -> None:
    """Cancel a pending, delayed or running job: it never starts, or is interrupted; never retried."""
    from actors.middleware import CancelState, cancel_job

    broker, settings = _broker()
    outcome = cancel_job(broker, message_id, engine=open_engine(settings), ttl=settings.cancel_ttl_ms)
    if outcome.state is CancelState.UNKNOWN:
        raise CliError(
            f"no job with id {message_id!r} in the audit trail; the cancellation is kept "
            f"for {settings.cancel_ttl_ms // 1000}s in case it turns up"
        )
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

    from actors.broker import OutboxRelay

    broker, settings = _broker()
    relay = OutboxRelay(
        broker=broker,
        engine=open_engine(settings),
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
def outbox_status(as_json: JsonOption = False) -> None:
    """How many committed messages wait for the relay."""
    from storage import unsent_count

    unsent = unsent_count(open_engine(load_settings()))
    if as_json:
        print_record({"unsent": unsent}, as_json=True)
        return
    console.print(f"unsent {unsent}")


def _flush_audit(settings: Settings) -> None:
    import actors

    writer = actors.audit_writer_of(actors.current_broker)
    if writer is not None and not writer.flush(settings.audit_commit_wait_ms / 1000):
        err_console.print(f"warning: audit rows not written yet: {writer.last_error}")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``tradeflow`` app."""
    app.command()(send)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(schedules_app, name="schedules")
    app.add_typer(dlq_app, name="dlq")
    jobs_app.command("cancel")(cancel)
    app.add_typer(outbox_app, name="outbox")
