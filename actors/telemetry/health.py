"""Health of a deployment: broker, database, workers, scheduler, queue depths.

``tradeflow health`` prints it (exit code 1 when unhealthy); the API can
serve :meth:`HealthReport.as_dict` as it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from actors.broker import RedisRoutes

from .exposition import RedisStateCollector

#: Severity of an alert raised by each failing check (``Settings.health_severities`` overrides).
DEFAULT_SEVERITIES = {
    "broker": "critical",
    "database": "critical",
    "workers": "critical",
    "scheduler": "critical",
    "queues": "warning",
    "connections": "warning",
}

#: Share of the server's connections (those not reserved for superusers) in use above which
#: the ``connections`` check fails: the next worker processes may find none.
CONNECTIONS_HIGH = 0.9


@dataclass
class Check:
    """One verdict: ``name``, whether it is fine, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class HealthReport:
    """Every check, the queue depths and the worker count."""

    checks: list[Check] = field(default_factory=list)
    queue_depths: dict[str, dict[str, int]] = field(default_factory=dict)
    workers_alive: int = 0

    @property
    def healthy(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(check for check in self.checks if check.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, **asdict(self)}

    def record(
        self, engine: Engine, *, severities: Mapping[str, str] | None = None, events: Any = None
    ) -> list[Any]:
        """Store the verdicts as monitoring alerts (raise and resolve); the alerts raised now,
        each also appended to the live-events stream ``events`` (an ``actors.broker.EventLog``)."""
        from storage import sync_alerts

        levels = {**DEFAULT_SEVERITIES, **(severities or {})}
        failing = {c.name: (levels.get(c.name, "critical"), c.detail) for c in self.checks if not c.ok}
        raised = sync_alerts(engine, failing=failing, passing=[c.name for c in self.checks if c.ok])
        if events is not None and raised:
            from actors.broker import entry

            events.append_many(
                entry("alert.raised", check=alert.check_name, severity=alert.severity, message=alert.message)
                for alert in raised
            )
        return raised


def check_health(
    *,
    client: redis.Redis,
    namespace: str,
    engine: Engine,
    heartbeat_timeout: float,
    max_queue_depth: int,
    scheduler_silence: float,
    routes: RedisRoutes | None = None,
) -> HealthReport:
    """Check everything; never raises for an unreachable part (that is a failed check).

    Parameters:
      client: The broker's Redis.
      namespace: The broker's key prefix.
      engine: The tradeflow database.
      heartbeat_timeout: Seconds after which a silent worker is dead.
      max_queue_depth: Most ready messages a healthy queue holds.
      scheduler_silence: Seconds a scheduler that ticked before may stay silent.
      routes: Where each queue's depth is read, when queues live on Redis instances of
        their own (``client`` is then their default one).
    """
    report = HealthReport()
    report.checks.append(_check_database(engine))
    if engine.dialect.name == "postgresql":
        report.checks.append(_check_connections(engine))
    try:
        client.ping()
    except redis.RedisError as exc:
        report.checks.append(Check("broker", False, f"cannot reach Redis: {exc}"))
        return report
    report.checks.append(Check("broker", True, "Redis answers"))
    state = RedisStateCollector(
        client=client, namespace=namespace, queues=[], heartbeat_timeout=heartbeat_timeout, routes=routes
    )
    report.workers_alive = state.workers_alive()
    report.checks.append(
        Check(
            "workers",
            report.workers_alive > 0,
            f"{report.workers_alive} worker process(es) with a recent heartbeat",
        )
    )
    report.checks.append(_check_scheduler(state.scheduler_ticks(), scheduler_silence))
    report.queue_depths = state.depths()
    deep = {queue: d["ready"] for queue, d in report.queue_depths.items() if d["ready"] > max_queue_depth}
    detail = ", ".join(f"{queue}: {ready}" for queue, ready in sorted(deep.items()))
    report.checks.append(
        Check(
            "queues", not deep, f"over {max_queue_depth} ready: {detail}" if deep else "depths within bounds"
        )
    )
    return report


def _check_database(engine: Engine) -> Check:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check(
            "database", False, f"cannot query the database: {exc.__class__.__name__}: {exc.orig or exc}"
        )
    return Check("database", True, "answers")


def _check_connections(engine: Engine) -> Check:
    """PostgreSQL's client connections in use (every client's, server-wide) against its maximum."""
    try:
        with engine.connect() as connection:
            used = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            ).scalar()
            maximum = int(connection.execute(text("SHOW max_connections")).scalar())
            reserved = int(connection.execute(text("SHOW superuser_reserved_connections")).scalar())
    except SQLAlchemyError as exc:
        return Check(
            "connections", False, f"cannot count connections: {exc.__class__.__name__}: {exc.orig or exc}"
        )
    detail = f"{used} of {maximum} in use ({reserved} reserved for superusers)"
    return Check("connections", used < CONNECTIONS_HIGH * (maximum - reserved), detail)


def _check_scheduler(ticks: dict[str, float], silence: float) -> Check:
    last = ticks.get("last_fired")
    if last is None:
        return Check("scheduler", True, "no periodic message sent yet (no scheduler, or none due)")
    quiet = time.time() - last
    if quiet > silence:
        return Check("scheduler", False, f"silent for {quiet:.0f}s (limit {silence:.0f}s)")
    return Check("scheduler", True, f"last tick {quiet:.0f}s ago")
