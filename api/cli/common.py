"""What every command group shares: the user-error type, the consoles, settings and engines.

Each group module imports from here, never from the app that assembles them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

if TYPE_CHECKING:
    from actors.settings import Settings
from api.embedded import redis_answers

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


def load_settings() -> Settings:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        # importing ``actors`` configures the broker from the same environment
        from actors.settings import Settings

        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise CliError(describe_settings_error(exc)) from None


def describe_settings_error(exc: Exception) -> str:
    """One line naming the environment variables that are wrong and why."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"TRADEFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid settings: {problems}"
    # pydantic-settings: 'error parsing value for field "schedules" from source "EnvSettingsSource"'
    text = str(exc)
    field = text.split('field "', 1)[1].split('"', 1)[0] if 'field "' in text else None
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    if field is None:
        return f"invalid settings: {text}{cause}"
    return f"invalid settings: TRADEFLOW_{field.upper()} is not valid JSON{cause}"


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
    if os.getcwd() not in sys.path:  # found from the current folder, as `dramatiq` finds them
        sys.path.insert(0, os.getcwd())
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


#: ``--json`` of every list and show command: one JSON object per line (lists) or one object (show),
#: with the field names documented in docs/cli.md.
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="JSON: one object per line for a list, one object for a show."),
]


def plain(value: Any) -> Any:
    """``value`` as JSON has it: datetimes and other objects as their text, NaN as null."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # numpy scalars: int64 and the like
    if isinstance(value, float) and value != value:
        return None
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def print_rows(
    rows: Iterable[dict[str, Any]], *, fields: Sequence[str], as_json: bool, title: str | None = None
) -> None:
    """Rows as JSON lines (keys = ``fields``) or as a table whose ids and names are never cut.

    The table is as wide as its content needs, wider than the terminal or the
    80 columns of a pipe if need be: a value printed can be pasted into the
    next command.
    """
    rows = list(rows)
    if as_json:
        for row in rows:
            print(json.dumps({field: plain(row.get(field)) for field in fields}))
        return
    table = Table(*(Column(field, no_wrap=True, overflow="ignore") for field in fields), title=title)
    for row in rows:
        table.add_row(*(_cell(row.get(field)) for field in fields))
    print_wide(table)


def print_record(record: dict[str, Any], *, as_json: bool) -> None:
    """One object: as JSON, or as a two-column table of field and value (values never cut)."""
    if as_json:
        print(json.dumps({key: plain(value) for key, value in record.items()}))
        return
    table = Table(Column("field", no_wrap=True), Column("value", no_wrap=True), show_header=False)
    for name, value in record.items():
        table.add_row(name, _cell(value))
    print_wide(table)


def print_wide(table: Table) -> None:
    """Print ``table`` at its natural width when the console is narrower (a pipe is 80 columns)."""
    width = Measurement.get(console, console.options.update(max_width=100_000), table).maximum
    if width <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file, width=width, force_terminal=console.is_terminal, no_color=console.no_color
    )
    wide.print(table, crop=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


#: How ``--help`` names a value's type: the words click uses, not Python annotations.
PLAIN_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "", "Path": "PATH"}


def plain_help_types() -> None:
    """Make ``--help`` say ``TEXT``, ``INTEGER``, ``TEXT...`` where Typer says ``<str>``, ``<list[str]>``.

    Typer builds the label from the Python annotation in one method of its
    parameter class; this wraps that method (once) to translate the label.
    """
    from typer import core

    original = core._TyperParameter.display_type
    if getattr(original, "plain", False):
        return

    def display_type(self, ctx) -> str:
        label = original(self, ctx).strip("<>")
        repeated = label.startswith("list[") and label.endswith("]")
        if repeated:
            label = label[len("list[") : -1]
        label = label.removesuffix(" range")
        word = PLAIN_TYPES.get(label, label.upper() if "|" not in label else label)
        return f"{word}..." if repeated and word else word

    def usage_name(self) -> str:  # ACTOR and [ACCOUNT], as click writes them, not {actor}
        name = self.display_name_raw.upper()
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    display_type.plain = True
    core._TyperParameter.display_type = display_type
    core.TyperArgument._usage_display_name = usage_name
