"""``tradeflow data``: fetch in-process, read bars, list analyses, as a user runs it."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, settings_env
from data_workers import data_settings
from typer.testing import CliRunner

from api.cli import CliError, app
from storage import AnalysisRecord, create_db_engine, save_analysis

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(redis_url, namespace, tmp_path, monkeypatch):
    settings = data_settings(redis_url, namespace, tmp_path)
    for name, value in settings_env(settings).items():
        if name.startswith("TRADEFLOW_"):
            monkeypatch.setenv(name, value)
    return settings


def test_fetch_and_show_bars_as_a_user_would(settings):
    env = settings_env(settings)
    fetched = run_cli(
        "data", "fetch", "AAPL", "NOPE", "--start", "2024-01-01", "--end", "2024-01-31", env=env
    )
    assert fetched.returncode == 0, fetched.stderr
    result = json.loads(fetched.stdout)
    assert result["inserted"] == 23 and "NOPE" in result["errors"]

    shown = run_cli("data", "bars", "aapl", "--last", "3", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "AAPL 1d (23 bars stored)" in shown.stdout and "2024-01-31" in shown.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["data", "bars", "MSFT"], "no 1d bars of MSFT"),
        (
            ["data", "fetch", "AAPL", "--start", "soon", "--end", "2024-01-31"],
            "--start='soon' is not an ISO date",
        ),
        (
            ["data", "fetch", "AAPL", "--start", "2024-01-01", "--end", "2024-01-31", "--interval", "2d"],
            "'2d' is unknown",
        ),
    ],
)
def test_bad_requests_name_the_problem(settings, arguments, message):
    outcome = CliRunner().invoke(app, arguments)
    assert isinstance(outcome.exception, CliError) and message in str(outcome.exception)


def test_analyses_are_listed(settings):
    engine = create_db_engine(settings.database_url)
    save_analysis(
        engine, AnalysisRecord(kind="risk", analyzer="offline", report={"summary": "Within all limits."})
    )
    engine.dispose()
    listed = CliRunner().invoke(app, ["data", "analyses", "--kind", "risk"])
    assert listed.exit_code == 0, listed.output
    assert "Within all limits." in listed.output and "offline" in listed.output
    assert (
        "no analyses stored of kind strategy"
        in CliRunner().invoke(app, ["data", "analyses", "--kind", "strategy"]).output
    )
