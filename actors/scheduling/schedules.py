"""The schedule table: which actors run periodically, when, and how their runs ended.

Schedules are periodiq's ``periodic=`` actor option.  :class:`ScheduleControl`
applies the seed's default table and the settings' overrides to actors as they
are declared, and records the outcome of every scheduled or run-now message in
the ``schedules`` table.  The scheduler (:mod:`actors.scheduling.scheduler`) reads its
configuration from this middleware.
"""

from __future__ import annotations

import inspect
import os
from datetime import datetime
from typing import Any, Literal

import dramatiq
import pendulum
from dramatiq import Broker, Middleware
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError
from sqlalchemy import Engine

from actors.broker import DUPLICATE, SKIP_REASON, SKIP_STATUS
from actors.middleware import JobCancelled
from storage import ScheduleDefinition, TaskStatus, create_db_engine, record_outcome

from .cron import Cron

CatchUp = Literal["skip", "run_once"]

#: Catch-up policies: after downtime, ``skip`` the missed ticks or ``run_once`` for the latest.
CATCH_UP_POLICIES = ("skip", "run_once")

#: The seed's schedule table, actor name -> cron spec.  Settings override any
#: entry (``TRADEFLOW_SCHEDULES``); it applies to whichever module declares the actor.
#: A scheduled run sends no arguments, so the seed's ``sync_portfolio`` and
#: ``evaluate_risk_limits`` (both per account) are not here: ``monitor_risk`` does
#: both for every account each minute, on its own ``periodic=``.
DEFAULT_SCHEDULES: dict[str, str] = {
    "health_check": "*/2 * * * *",
    "cleanup_tasks": "0 3 * * *",
    "vacuum_database": "0 4 * * sun",
    "daily_summary": "0 8 * * *",
}

#: A spec value that removes an actor's schedule.
OFF = "off"

#: Message option naming the schedule a message runs for.
SCHEDULE_OPTION = "schedule"


class ScheduleError(MiddlewareError, ValueError):
    """A schedule that cannot run: raised while the actor is declared."""


class ScheduleControl(Middleware):
    """Applies the schedule table to actors and records how scheduled runs end.

    Parameters:
      overrides(dict[str, str]): Actor name -> cron spec or ``"off"``; wins over
        the actor's own ``periodic=`` and over ``defaults``.
      defaults(dict[str, str]): Applied to actors declared without ``periodic=``.
      catch_up(dict[str, str]): Actor name -> ``skip`` or ``run_once``; wins over
        the actor's ``catch_up=`` option.
      default_catch_up(str): For the rest.  Defaults to ``skip``.
      timezone(str): IANA timezone the specs are read in.  Defaults to UTC.
      lease_ttl(int): Milliseconds a (schedule, tick) lease is kept in Redis.
      database_url(str | None): Where the ``schedules`` table is; ``None`` keeps
        no runtime state (every schedule enabled, nothing recorded).
    """

    actor_options = {"catch_up"}

    def __init__(
        self,
        *,
        overrides: dict[str, str] | None = None,
        defaults: dict[str, str] | None = None,
        catch_up: dict[str, str] | None = None,
        default_catch_up: CatchUp = "skip",
        timezone: str = "UTC",
        lease_ttl: int = 86_400_000,
        database_url: str | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.overrides = {name: _parse_override(name, spec) for name, spec in (overrides or {}).items()}
        self.defaults = {
            name: Cron.parse(spec)
            for name, spec in (DEFAULT_SCHEDULES if defaults is None else defaults).items()
        }
        self.catch_up = {name: _check_policy(name, policy) for name, policy in (catch_up or {}).items()}
        self.default_catch_up = _check_policy("default", default_catch_up)
        self.timezone = timezone
        self.lease_ttl = lease_ttl
        self.database_url = database_url
        self._engine: Engine | None = None
        self._engine_pid = 0

    @property
    def engine(self) -> Engine | None:
        """This process's engine of the schedules table (made on first use, again after a fork)."""
        if self.database_url is None:
            return None
        if self._engine is None or self._engine_pid != os.getpid():
            self._engine, self._engine_pid = create_db_engine(self.database_url), os.getpid()
        return self._engine

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor) -> None:
        # Before, not after: the broker lets a MiddlewareError from a before-hook through, so a
        # schedule that could never run stops the declaration instead of being logged.
        self._apply(actor)

    def after_declare_actor(self, broker: Broker, actor: dramatiq.Actor) -> None:
        # Also what add_middleware calls for the actors declared before this middleware joined
        # (and lets a ScheduleError through); for the others it finds their schedule applied.
        self._apply(actor)

    def _apply(self, actor: dramatiq.Actor) -> None:
        spec = self._spec_of(actor)
        if spec is None:
            actor.options.pop("periodic", None)
            return
        _check_runs_without_arguments(actor)
        actor.options["periodic"] = spec

    def _spec_of(self, actor: dramatiq.Actor) -> Cron | None:
        name = actor.actor_name
        if name in self.overrides:
            return self.overrides[name]
        periodic = actor.options.get("periodic")
        if isinstance(periodic, Cron):
            return periodic
        if periodic is not None:
            return Cron.parse(str(periodic))  # periodiq's own spec: fix its Sunday
        return self.defaults.get(name)

    def definition(self, actor: dramatiq.Actor) -> ScheduleDefinition:
        """The schedule row the code declares for a periodic ``actor``."""
        return ScheduleDefinition(
            name=actor.actor_name,
            queue=actor.queue_name,
            spec=str(actor.options["periodic"]),
            catch_up=self.policy(actor),
        )

    def policy(self, actor: dramatiq.Actor) -> CatchUp:
        name = actor.actor_name
        return self.catch_up.get(name) or actor.options.get("catch_up") or self.default_catch_up

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            self._record(message, TaskStatus.COMPLETED, None)
        elif isinstance(exception, JobCancelled):
            self._record(message, TaskStatus.CANCELLED, "cancelled while running")
        elif message.failed:
            self._record(message, TaskStatus.FAILED, f"{type(exception).__name__}: {exception}")
        else:
            self._record(message, TaskStatus.RETRYING, f"{type(exception).__name__}: {exception}")

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        if message.options.get(SKIP_STATUS) == DUPLICATE:
            return
        status = TaskStatus.FAILED if message.failed else TaskStatus.CANCELLED
        status = TaskStatus(message.options.get(SKIP_STATUS, status))
        self._record(message, status, message.options.get(SKIP_REASON, "skipped"))

    def _record(self, message: Message, status: TaskStatus, error: str | None) -> None:
        name = message.options.get(SCHEDULE_OPTION)
        if name is None or self.engine is None:
            return
        tick = message.options.get("schedule_tick")
        try:
            record_outcome(
                self.engine,
                name,
                message_id=message.message_id,
                status=status.value,
                error=error,
                tick=pendulum.parse(tick).in_timezone("UTC").naive() if tick else None,
            )
        except Exception as exc:  # the run's outcome is in the audit trail too: never fail the message
            self.logger.warning("Could not record the outcome of schedule %r: %s", name, exc)


def next_tick(actor: dramatiq.Actor, *, timezone: str, after: datetime | None = None) -> datetime:
    """The next tick of a periodic actor after ``after`` (default: now), as naive UTC."""
    start = pendulum.instance(after, tz="UTC") if after is not None else pendulum.now("UTC")
    tick = actor.options["periodic"].next_valid_date(start.in_timezone(timezone))
    return tick.in_timezone("UTC").naive()


def schedule_control_of(broker: Broker) -> ScheduleControl:
    """The broker's :class:`ScheduleControl`; a clear error if it has none."""
    for middleware in broker.middleware:
        if isinstance(middleware, ScheduleControl):
            return middleware
    raise RuntimeError("this broker has no ScheduleControl middleware: build it with actors.build_broker")


def _check_runs_without_arguments(actor: dramatiq.Actor) -> None:
    """A scheduled run sends no arguments: an actor that needs some would fail every tick."""
    signature = inspect.signature(actor.fn)
    try:
        signature.bind()
    except TypeError:
        needed = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.default is parameter.empty
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        raise ScheduleError(
            f"actor {actor.actor_name!r} has a schedule, but a scheduled run sends no arguments and it "
            f"needs {', '.join(needed)}: give them defaults, or turn its schedule off with "
            f'TRADEFLOW_SCHEDULES=\'{{"{actor.actor_name}": "off"}}\''
        ) from None


def _parse_override(name: str, spec: str) -> Cron | None:
    if spec.strip().lower() == OFF:
        return None
    try:
        return Cron.parse(spec)
    except ValueError as exc:
        raise ValueError(f"schedule override of {name!r}: {exc}") from None


def _check_policy(name: str, policy: str) -> CatchUp:
    if policy not in CATCH_UP_POLICIES:
        raise ValueError(
            f"catch-up policy of {name!r} is {policy!r}; use one of {', '.join(CATCH_UP_POLICIES)}"
        )
    return policy  # type: ignore[return-value]
