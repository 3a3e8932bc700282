"""What every command group shares: the user-error type, the consoles, settings and engines.

Each group module imports from here, never from the app that assembles them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from actors.settings import Settings
from api.embedded import redis_answers

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


def load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        # importing ``actors`` configures the broker from the same environment
        from actors.settings import Settings

        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TRADEFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def open_engine(settings: Settings):
    from storage import create_db_engine

    return create_db_engine(settings.database_url)


def load_actors(settings: Settings):
    """Import ``actors`` (which reads the same environment) and check Redis answers."""
    load_settings()  # fail on bad settings with our message, not a traceback from the import
    import actors

    url = settings.effective_redis_url
    if not redis_answers(url):
        raise CliError(f"cannot reach Redis at {url}: start it or set TRADEFLOW_REDIS_URL")
    return actors


#: Environment variable of the user's modules (``Settings.modules``).
MODULES_VARIABLE = "TRADEFLOW_MODULES"

#: Help of every ``-m/--module`` option.
MODULE_HELP = "A module with your actors and workflows (repeatable); adds to TRADEFLOW_MODULES."


def add_modules(names: list[str] | None) -> None:
    """Add ``names`` to ``TRADEFLOW_MODULES`` of this process (``import actors`` loads them)
    and of the children it starts (worker, scheduler)."""
    if not names:
        return
    current = [n for n in os.environ.get(MODULES_VARIABLE, "").split(",") if n.strip()]
    merged = current + [name for name in names if name not in current]
    os.environ[MODULES_VARIABLE] = ",".join(merged)
    if "actors" in sys.modules:  # imported already (a test's process): load them now
        from actors.runtime import load_modules

        load_modules(merged)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def call_arguments(args: str | None, kwargs: str | None) -> tuple[list, dict]:
    positional = parse_json(args, "--args") if args is not None else []
    keyword = parse_json(kwargs, "--kwargs") if kwargs is not None else {}
    if isinstance(positional, dict) and kwargs is None:
        positional, keyword = [], positional
    if not isinstance(positional, list):
        raise CliError(
            "--args must be a JSON array of positional arguments (or an object of keyword arguments)"
        )
    if not isinstance(keyword, dict):
        raise CliError("--kwargs must be a JSON object")
    return positional, keyword


def check_workflows(settings: Settings) -> None:
    """At start-up (``up``, ``worker``): load the user's modules and refuse a workflow whose
    definition changed under a version already started (``saga.versions``)."""
    load_settings()
    import actors  # noqa: F401  (loads TRADEFLOW_MODULES: their workflows register)
    from orchestration import registry
    from saga import WorkflowDefinitionError

    try:
        registry.check_definitions(open_engine(settings))
    except WorkflowDefinitionError as exc:
        raise CliError(str(exc)) from None


def migrate(settings: Settings) -> None:
    """Create or migrate the schema to the newest revision, and say which."""
    from storage import current_revisions, upgrade

    engine = open_engine(settings)
    upgrade(engine)
    console.print(f"database at revision {', '.join(sorted(current_revisions(engine)))}", soft_wrap=True)
