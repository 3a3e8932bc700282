"""``tradeflow workers``: list worker processes, quiet or stop one."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from .common import CliError, JsonOption, console, load_actors, load_settings, print_rows

workers_app = typer.Typer(help="Worker processes: list, quiet, stop.", no_args_is_help=True)

#: Fields of ``workers list`` (table columns; ``--json`` adds ``running``, ``started_at``, ``heartbeat_at``).
WORKER_FIELDS = (
    "id",
    "host",
    "pid",
    "queues",
    "state",
    "threads",
    "heartbeat_age_s",
    "running_now",
    "version",
)


def _client():
    settings = load_settings()
    return load_actors(settings).current_broker.client, settings.namespace


@workers_app.command("list")
def workers_list(as_json: JsonOption = False) -> None:
    """Every live worker process: host, pid, queues, messages it runs (with their ages), heartbeat age."""
    from actors.middleware import list_workers

    client, namespace = _client()
    now = time.time()
    rows = []
    for record in list_workers(client, namespace):
        record["heartbeat_age_s"] = round(now - record["heartbeat_at"], 1)
        for running in record["running"]:
            running["age_s"] = round(now - running["started_at"], 1)
        if as_json:
            rows.append(record)
            continue
        running_now = " ".join(
            f"{r['message_id']} ({r['actor']}, {r['age_s']:.0f}s)" for r in record["running"]
        )
        rows.append({**record, "queues": ",".join(record["queues"]), "running_now": running_now})
    fields = (
        (*WORKER_FIELDS[:-2], "running", "version", "started_at", "heartbeat_at")
        if as_json
        else WORKER_FIELDS
    )
    print_rows(rows, fields=fields, as_json=as_json)


def _control(worker: str, command: str) -> None:
    from actors.middleware import request_control

    client, namespace = _client()
    if not request_control(client, namespace, worker, command):
        raise CliError(f"no live worker {worker!r} (see `tradeflow workers list`)")
    console.print(f"{worker}: asked to {command}", highlight=False)


@workers_app.command("quiet")
def workers_quiet(worker: Annotated[str, typer.Argument(help="Worker id (host:pid).")]) -> None:
    """Let a worker finish what it holds and take nothing new (within 2 s)."""
    _control(worker, "quiet")


@workers_app.command("stop")
def workers_stop(worker: Annotated[str, typer.Argument(help="Worker id (host:pid).")]) -> None:
    """Stop a worker process as SIGTERM would: it finishes its running messages, requeues the rest."""
    _control(worker, "stop")
