"""Monitoring alerts in SQL (SQLite and PostgreSQL): raised by failing checks, resolved when they pass."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from actors.settings import Settings
from actors.telemetry import Check, HealthReport
from storage import MonitoringAlert, create_db_engine, open_alerts, sync_alerts, utc_now


@pytest.fixture
def engine(migrated_url: str) -> Engine:
    engine = create_db_engine(migrated_url)
    yield engine
    engine.dispose()


def test_failing_checks_raise_one_open_alert_each_until_they_pass(engine: Engine) -> None:
    report = HealthReport(checks=[Check("workers", False, "0 workers"), Check("queues", True, "ok")])
    raised = report.record(engine)
    assert [(a.check_name, a.severity, a.message) for a in raised] == [("workers", "critical", "0 workers")]

    report.checks[0].detail = "still 0 workers"
    assert report.record(engine) == [], "a still-failing check raises nothing new"
    (still_open,) = open_alerts(engine)
    assert still_open.message == "still 0 workers" and still_open.resolved_at is None

    report = HealthReport(
        checks=[Check("workers", True, "2 workers"), Check("queues", False, "orders: 5000")]
    )
    raised = report.record(engine, severities={"queues": "critical"})
    assert [(a.check_name, a.severity) for a in raised] == [("queues", "critical")]
    assert [a.check_name for a in open_alerts(engine)] == ["queues"], "workers resolved"


def test_one_open_alert_per_check_even_when_monitors_race(engine: Engine) -> None:
    failing = {"broker": ("critical", "down")}
    assert len(sync_alerts(engine, failing=failing, passing=[])) == 1
    # a second monitor that read before the first committed: the unique index refuses its row

    with Session(engine) as session, pytest.raises(IntegrityError):
        session.add(
            MonitoringAlert(check_name="broker", severity="critical", message="x", raised_at=utc_now())
        )
        session.commit()
    assert len(open_alerts(engine)) == 1


def test_unknown_severity_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="severity of 'broker' must be one of warning, critical"):
        sync_alerts(engine, failing={"broker": ("page-me", "down")}, passing=[])


def test_health_severities_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="health_severities"):
        Settings(health_severities={"queues": "urgent"})


@pytest.mark.timeout(60)
def test_monitor_actor_records_alerts_from_the_deployment(settings: Settings) -> None:
    """The periodic monitor, run as `tradeflow send monitor_health` would have a worker run it."""
    env = settings_env(settings)

    script = "from actors.monitoring import monitor_health; import json; print(json.dumps(monitor_health()))"
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == {"healthy": False, "raised": ["workers"]}
    engine = create_db_engine(settings.database_url)
    try:
        assert [(a.check_name, a.severity) for a in open_alerts(engine)] == [("workers", "critical")]
    finally:
        engine.dispose()


def test_health_command_records_alerts_when_asked(settings: Settings) -> None:
    env = settings_env(settings)
    assert run_cli("health", env=env).returncode == 1  # no worker runs in this test
    engine = create_db_engine(settings.database_url)
    try:
        assert open_alerts(engine) == [], "without --record nothing is stored"
        assert run_cli("health", "--record", env=env).returncode == 1
        assert [a.check_name for a in open_alerts(engine)] == ["workers"]
    finally:
        engine.dispose()
