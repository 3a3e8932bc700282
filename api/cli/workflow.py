"""``tradeflow workflow``: start, inspect and operate durable workflow runs."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from .common import (
    MODULE_HELP,
    MODULES_VARIABLE,
    JsonOption,
    add_modules,
    load_actors,
    load_settings,
    parse_json,
    plain,
    print_record,
    print_rows,
)

#: Statuses ``--wait`` stops at.
SETTLED_STATUSES = ("succeeded", "failed", "compensated", "compensation_failed", "cancelled")

#: Fields of ``workflow list --json`` (those of the HTTP API's run summary); the table leaves out ``inputs``.
RUN_FIELDS = (
    "run_id",
    "workflow",
    "status",
    "inputs",
    "open_steps",
    "error",
    "forked_from",
    "created_at",
    "finished_at",
)

#: ``workflow show --json``: the run's ``RUN_FIELDS``, these, and ``steps`` (each with ``STEP_FIELDS``).
RUN_DETAIL_FIELDS = ("workflow_version", "parent_run_id", "parent_step", "deadline_at")

#: Fields of each step of ``workflow show --json`` (the HTTP API's step view, and ``result``).
STEP_FIELDS = (
    "name",
    "actor",
    "status",
    "attempts",
    "depends_on",
    "compensate_with",
    "group",
    "progress",
    "checkpoint",
    "result",
    "error",
    "compensation_error",
    "worker_id",
    "started_at",
    "finished_at",
)

#: Fields of ``workflow list --defined --json``.
DEFINED_FIELDS = ("name", "version", "events")

#: Fields of ``workflow history --json``, one object per entry.
HISTORY_FIELDS = ("at", "kind", "step", "attempt", "detail")

#: Colour of each status in ``workflow show``.
STATUS_STYLES = {
    "succeeded": "green",
    "compensated": "cyan",
    "failed": "red",
    "compensation_failed": "bold red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "blue",
    "compensating": "magenta",
}

workflow_app = typer.Typer(
    help="Durable workflows: start, list, show, cancel, resume, fork.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)

#: ``-m/--module`` of a command.
ModuleOption = Annotated[list[str] | None, typer.Option("--module", "-m", help=MODULE_HELP)]


@workflow_app.callback()
def _workflow(module: ModuleOption = None) -> None:
    """Durable workflows: start, list, show, cancel, resume, fork."""
    add_modules(module)
    if os.environ.get(MODULES_VARIABLE, "").strip():
        _engine()  # every workflow command loads the user's modules (a bad one fails each alike)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _json(text: str | None, what: str) -> Any:
    return None if text is None else parse_json(text, what)


def _database():
    from storage import create_db_engine

    return create_db_engine(load_settings().database_url)


def _engine():
    """The saga engine of the configured broker (importing ``actors`` reads the environment)."""
    from saga import engine_of

    actors = load_actors(load_settings())  # one line on bad settings or Redis away

    return engine_of(actors.current_broker)


def _operate(operation, *args, **kwargs):
    """Run an engine operation; a refusal the user can act on is one line and exit code 1."""
    from orchestration import UnknownWorkflow
    from saga import ConcurrencyLimitExceeded, WorkflowDefinitionError, WorkflowError

    try:
        return operation(*args, **kwargs)
    except (UnknownWorkflow, WorkflowDefinitionError, WorkflowError, ConcurrencyLimitExceeded) as exc:
        raise _fail(str(exc)) from None


def _wait(run_id: str, timeout: float) -> None:
    from storage import get_run

    database = _database()
    deadline = time.monotonic() + timeout
    while (run := get_run(database, run_id)) is None or run.status not in SETTLED_STATUSES:
        if time.monotonic() > deadline:
            raise _fail(f"run {run_id} still {run and run.status} after {timeout:.0f}s")
        time.sleep(0.1)
    console.print(f"{run_id} {run.status}", highlight=False)
    if run.status != "succeeded":
        raise _fail(f"run {run_id} ended {run.status}: {run.error}")


WaitOption = Annotated[float | None, typer.Option(help="Wait up to this many seconds for the run to finish.")]


@workflow_app.command("start")
def start(
    name: Annotated[str, typer.Argument(help="Registered workflow name (see `workflow list --defined`).")],
    args: Annotated[str | None, typer.Option(help="JSON inputs of the run.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Starting twice with it returns the same run.")
    ] = None,
    deadline: Annotated[float | None, typer.Option(help="Seconds the run may take.", min=0)] = None,
    wait: WaitOption = None,
) -> None:
    """Start a run; prints its id."""
    from orchestration import registry

    inputs = _json(args, "--args")
    engine = _engine()  # first: importing ``actors`` loads the user's modules and their workflows
    workflow = _operate(registry.get, name)
    from saga.versions import check_definitions

    _operate(check_definitions, engine.database, [workflow])  # a changed definition needs a new version
    limit = timedelta(seconds=deadline) if deadline is not None else None
    run_id = _operate(engine.start, workflow, inputs, idempotency_key=idempotency_key, deadline=limit)
    console.print(run_id, highlight=False)
    if wait is not None:
        _wait(run_id, wait)


@workflow_app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="running, succeeded, failed, compensated, ...")] = None,
    workflow: Annotated[str | None, typer.Option(help="Workflow name.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    defined: Annotated[
        bool, typer.Option("--defined", help="List the registered workflows instead.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The newest runs, filtered (or, with --defined, the workflows that can be started)."""
    from orchestration import registry
    from storage import RunStatus, list_runs

    if defined:
        _engine()  # imports ``actors``, which loads the user's modules and their workflows
        rows = [
            {"name": name, "version": registry.get(name).version, "events": list(registry.events_of(name))}
            for name in registry.names()
        ]
        if as_json:
            print_rows(rows, fields=DEFINED_FIELDS, as_json=True)
            return
        for row in rows:
            on = f"  (on {', '.join(row['events'])})" if row["events"] else ""
            console.print(f"{row['name']}  v{row['version']}{on}", highlight=False)
        return
    if status and status not in {s.value for s in RunStatus}:
        raise _fail(f"unknown status {status!r}; use one of {', '.join(s.value for s in RunStatus)}")
    rows = [run.model_dump() for run in list_runs(_database(), status=status, workflow=workflow, limit=limit)]
    if not as_json:
        for row in rows:  # the table shows the start of an error; show and --json have all of it
            row["error"] = (row["error"] or "")[:60]
    fields = RUN_FIELDS if as_json else tuple(field for field in RUN_FIELDS if field != "inputs")
    print_rows(rows, fields=fields, as_json=as_json)


def _label(step) -> str:
    style = STATUS_STYLES.get(step.status, "white")
    parts = [f"[bold]{step.name}[/bold]", f"({step.actor})", f"[{style}]{step.status}[/{style}]"]
    parts.append(f"attempts {step.attempts}")
    if step.started_at and step.finished_at:
        parts.append(f"{(step.finished_at - step.started_at).total_seconds() * 1000:.0f} ms")
    if step.progress is not None and step.status == "running":
        parts.append(f"{step.progress:.0f}%")
    if len(step.depends_on) > 1:
        parts.append(f"[dim]after {', '.join(step.depends_on)}[/dim]")
    if step.error:
        parts.append(f"[red]error: {step.error[:200]}[/red]")
    if step.compensation_error:
        parts.append(f"[bold red]compensation error: {step.compensation_error[:200]}[/bold red]")
    return "  ".join(parts)


def _step_record(step) -> dict[str, Any]:
    """``step`` with ``STEP_FIELDS``, as the HTTP API's step view names them."""
    extra = {"compensate_with": (step.spec or {}).get("compensate_with"), "group": step.group_name}
    return {field: extra[field] if field in extra else getattr(step, field) for field in STEP_FIELDS}


@workflow_app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="Run id.")], as_json: JsonOption = False) -> None:
    """The run and a tree of its steps (each under its first dependency) with status,
    attempts, timings and errors."""
    from storage import get_run, get_steps

    database = _database()
    run = get_run(database, run_id)
    if run is None:
        raise _fail(f"no run with id {run_id!r}")
    if as_json:
        record = {field: getattr(run, field) for field in (*RUN_FIELDS, *RUN_DETAIL_FIELDS)}
        steps = [{k: plain(v) for k, v in _step_record(step).items()} for step in get_steps(database, run_id)]
        print_record({**record, "steps": steps}, as_json=True)
        return
    style = STATUS_STYLES.get(run.status, "white")
    header = (
        f"[bold]{run.workflow}[/bold] {run.run_id} [{style}]{run.status}[/{style}]  created {run.created_at}"
    )
    if run.finished_at:
        header += f"  took {(run.finished_at - run.created_at).total_seconds():.2f}s"
    if run.forked_from:
        header += f"  forked from {run.forked_from}"
    tree = Tree(header)
    if run.error:
        tree.add(f"[red]error: {run.error}[/red]")
    nodes: dict[str, Tree] = {}
    for step in get_steps(database, run_id):
        parent = nodes.get(step.depends_on[0]) if step.depends_on else None
        nodes[step.name] = (parent or tree).add(_label(step))
    console.print(tree)


@workflow_app.command("history")
def history(run_id: Annotated[str, typer.Argument(help="Run id.")], as_json: JsonOption = False) -> None:
    """The run's event history, oldest first: started, dispatched, claimed, succeeded, failed,
    retrying, compensation started/compensated, cancel requested, resumed, forked, its end."""
    from storage import get_history, get_run

    database = _database()
    if get_run(database, run_id) is None:
        raise _fail(f"no run with id {run_id!r}")
    if as_json:
        print_rows(
            (entry.model_dump() for entry in get_history(database, run_id)),
            fields=HISTORY_FIELDS,
            as_json=True,
        )
        return
    for entry in get_history(database, run_id):
        parts = [entry.at.isoformat(sep=" ", timespec="milliseconds"), entry.kind]
        if entry.step is not None:
            parts.append(entry.step)
        if entry.attempt is not None:
            parts.append(f"#{entry.attempt}")
        if entry.detail:
            parts.append(entry.detail)
        console.print("  ".join(parts), highlight=False, soft_wrap=True, markup=False)


@workflow_app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    compensate: Annotated[bool, typer.Option(help="Compensate the steps that succeeded.")] = True,
) -> None:
    """Cancel a running run: pending steps never start, running ones are aborted."""
    _operate(_engine().cancel, run_id, compensate=compensate)
    console.print(f"{run_id} cancelling", highlight=False)


@workflow_app.command("resume")
def resume(run_id: Annotated[str, typer.Argument(help="Run id.")], wait: WaitOption = None) -> None:
    """Resume a stopped run from its failed steps, or retry a failed compensation."""
    _operate(_engine().resume, run_id)
    console.print(f"{run_id} resumed", highlight=False)
    if wait is not None:
        _wait(run_id, wait)


@workflow_app.command("resolve")
def resolve(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """Mark a failed compensation as done by hand and let the run finish compensating."""
    _operate(_engine().resolve, run_id)
    console.print(f"{run_id} resolved", highlight=False)


@workflow_app.command("fork")
def fork(
    run_id: Annotated[str, typer.Argument(help="Run id to fork.")],
    args: Annotated[str | None, typer.Option(help="New JSON inputs (default: the run's).")] = None,
    wait: WaitOption = None,
) -> None:
    """Start a new run of the same steps, reusing the results of the steps that succeeded."""
    new_id = _operate(_engine().fork, run_id, inputs=_json(args, "--args"))
    console.print(new_id, highlight=False)
    if wait is not None:
        _wait(new_id, wait)


@workflow_app.command("signal")
def signal(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    name: Annotated[str, typer.Argument(help="Signal name, as a wait_for_signal step names it.")],
    payload: Annotated[str | None, typer.Option(help="JSON payload the waiting step returns.")] = None,
) -> None:
    """Send a signal to a run: the steps waiting for it run now; if none waits yet, it is kept."""
    data = _json(payload, "--payload")
    woke = _operate(_engine().signal, run_id, name, data)
    console.print(
        f"{run_id} {name}: woke {woke} step(s)" if woke else f"{run_id} {name}: kept", highlight=False
    )


@workflow_app.command("publish")
def publish(
    event: Annotated[str, typer.Argument(help="Event name, e.g. market.closed.")],
    payload: Annotated[str | None, typer.Option(help="JSON payload: the inputs of the started runs.")] = None,
    event_id: Annotated[str | None, typer.Option(help="Publishing the same id again starts nothing.")] = None,
) -> None:
    """Publish an event: start every workflow registered for it; prints their run ids."""
    from orchestration import registry

    data = _json(payload, "--payload")
    run_ids = _operate(registry.publish, _engine(), event, data, event_id=event_id)
    if not run_ids:
        raise _fail(f"no workflow is registered for event {event!r}")
    for run_id in run_ids:
        console.print(run_id, highlight=False)
