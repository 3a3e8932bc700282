"""``tradeflow api`` (serve the HTTP API) and ``tradeflow api-keys`` (create, list, revoke keys)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from .common import (
    MODULE_HELP,
    CliError,
    JsonOption,
    add_modules,
    console,
    err_console,
    load_actors,
    load_settings,
    migrate,
    open_engine,
    print_rows,
)

http_app = typer.Typer()
api_keys_app = typer.Typer(help="API keys of the HTTP API: create, list, revoke.", no_args_is_help=True)

#: Fields of ``api-keys list`` (table columns and ``--json`` keys; never the token or its hash).
API_KEY_FIELDS = ("key_id", "name", "role", "created_at", "expires_at", "revoked_at", "last_used_at")

#: Units of ``--expires`` given as a duration, in seconds.
EXPIRY_UNITS = {"h": 3_600, "d": 86_400, "w": 7 * 86_400}


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``2w`` from now, or an ISO date/time (UTC unless it says otherwise) -> naive UTC."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    number, unit = text[:-1], text[-1:].lower()
    if unit in EXPIRY_UNITS and number.isdigit():
        return now + timedelta(seconds=int(number) * EXPIRY_UNITS[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"invalid --expires {text!r}: use a duration (30d, 12h, 2w) or an ISO date") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


@http_app.command("api")
def api(
    modules: Annotated[list[str] | None, typer.Option("--module", "-m", help=MODULE_HELP)] = None,
) -> None:
    """Serve the HTTP API on TRADEFLOW_API_HOST:TRADEFLOW_API_PORT (migrates the database first)."""
    add_modules(modules)  # ``import actors`` (below) loads them, with TRADEFLOW_MODULES
    settings = load_settings()
    migrate(settings)
    actors = load_actors(settings)
    from api.http import serve, url_of
    from orchestration import registry

    url = url_of(settings)
    console.print(f"api: {url}  (docs: {url.removesuffix('/v1')}/docs)", soft_wrap=True)
    runner = [sys.executable, "-m", "api.cli", "api-operations"] if settings.api_operations_runner else None
    serve(settings, broker=actors.current_broker, workflows=registry, runner_command=runner)


@http_app.command("api-operations")
def api_operations(
    parent_pid: Annotated[
        int | None, typer.Option(help="Stop when this process (the API that started it) is gone.")
    ] = None,
) -> None:
    """Run the API's bulk operations (``tradeflow api`` starts one itself; more can run anywhere)."""
    settings = load_settings()
    actors = load_actors(settings)
    from api.http.runner import run_operations
    from orchestration import registry

    run_operations(settings, broker=actors.current_broker, workflows=registry, parent_pid=parent_pid)


@api_keys_app.command("create")
def create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key (shown in the audit log).")] = "cli",
    expires: Annotated[
        str | None, typer.Option(help="Duration (30d, 12h, 2w) or ISO date; default: never.")
    ] = None,
) -> None:
    """Create a key and print its token (shown only now)."""
    from storage import create_api_key

    settings = load_settings()
    expires_at = parse_expiry(expires) if expires else None
    try:
        key, token = create_api_key(open_engine(settings), name=name, role=role, expires_at=expires_at)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    err_console.print(f"key {key.key_id} ({key.role}) created; the token is shown only once:")
    console.print(token, soft_wrap=True, highlight=False)


@api_keys_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """Every key: id, name, role, created, expires, revoked, last used (UTC)."""
    from storage import list_api_keys

    keys = list_api_keys(open_engine(load_settings()))
    print_rows((key.model_dump() for key in keys), fields=API_KEY_FIELDS, as_json=as_json)


@api_keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="Key id (see `api-keys list`).")]) -> None:
    """Revoke a key: every request with it is refused from now on."""
    from storage import UnknownApiKey, revoke_api_key

    try:
        key = revoke_api_key(open_engine(load_settings()), key_id)
    except UnknownApiKey as exc:
        raise CliError(str(exc)) from None
    console.print(f"{key.key_id}: revoked at {key.revoked_at}")
