"""The ``tradeflow`` command line."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import jobs
from .common import MODULE_HELP, CliError, add_modules, describe_settings_error, err_console, plain_help_types
from .data import data_app
from .http import api_keys_app, http_app
from .ib import ib_app, ib_sim_app
from .ops import ops_app
from .processes import db_app, processes_app
from .strategy import strategy_app
from .workers import workers_app
from .workflow import workflow_app

app = typer.Typer(
    help="tradeflow: jobs and workflows on Dramatiq + Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # tradeflow --install-completion [bash|zsh|fish]
)
plain_help_types()


@app.callback()
def _root(
    module: Annotated[list[str] | None, typer.Option("--module", "-m", help=MODULE_HELP)] = None,
) -> None:
    """tradeflow: jobs and workflows on Dramatiq + Redis."""
    add_modules(module)


jobs.register(app)  # send, jobs, schedules, dlq, outbox
app.add_typer(processes_app)  # worker, scheduler, up, demo
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(strategy_app)  # backtest, screen, strategy-relay
app.add_typer(ib_app, name="ib")
app.add_typer(ib_sim_app, name="ib-sim")
app.add_typer(workflow_app, name="workflow")
app.add_typer(ops_app)  # metrics, health
app.add_typer(http_app)  # api
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(workers_app, name="workers")


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 1.

    Anything else is one line too (exit code 2); ``TRADEFLOW_CLI_TRACEBACK=1``
    shows where it came from.
    """

    import redis
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from storage import describe_database_error

    try:
        app()
    except CliError as exc:
        _fail(f"error: {exc}")
    except (ValidationError, SettingsError) as exc:  # settings read by an import, e.g. ``import actors``
        _fail(f"error: {describe_settings_error(exc)}")
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as exc:
        _fail(f"error: cannot reach Redis: {exc}")
    except redis.RedisError as exc:  # e.g. the URL points at something that is not Redis
        _fail(
            f"error: Redis answered unexpectedly ({type(exc).__name__}: {exc}); is TRADEFLOW_REDIS_URL right?"
        )
    except ImportError as exc:
        if getattr(exc, "user_error", False):  # actors.runtime.ModuleLoadError
            _fail(f"error: {exc}")
        _unexpected(exc)
    except (OperationalError, ProgrammingError) as exc:
        _fail(f"error: database: {describe_database_error(exc.orig or exc)}")
    except Exception as exc:
        _unexpected(exc)


def _unexpected(exc: Exception) -> None:
    """One line for what no handler above expected (exit code 2), or the extra to install."""
    import os

    if os.environ.get("TRADEFLOW_CLI_TRACEBACK"):
        raise exc
    extra = _missing_extra(exc)
    if extra is not None:
        _fail(f"error: this command {extra}")
    _fail(f"error: unexpected {type(exc).__name__}: {exc} (TRADEFLOW_CLI_TRACEBACK=1 shows where)", code=2)


def _fail(line: str, *, code: int = 1) -> None:
    err_console.print(line, highlight=False, soft_wrap=True, markup=False)
    sys.exit(code)


def _missing_extra(exc: Exception) -> str | None:
    """What to install, when ``exc`` is an optional module missing."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    try:
        from actors.middleware import missing_extra
    except Exception:  # settings or imports broken too: the generic line says enough
        return None
    return missing_extra(exc)
