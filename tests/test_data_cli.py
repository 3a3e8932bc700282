"""``tradeflow data``: fetch in-process, read bars, list analyses, as a user runs it."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, settings_env
from data_workers import data_settings

from storage import AnalysisRecord, create_db_engine, save_analysis

pytestmark = pytest.mark.timeout(120)


def test_fetch_bars_and_analyses_from_the_command_line(redis_url, namespace, tmp_path):
    settings = data_settings(redis_url, namespace, tmp_path)
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

    missing = run_cli("data", "bars", "MSFT", env=env)
    assert missing.returncode == 1 and "no 1d bars of MSFT" in missing.stderr
    bad = run_cli("data", "fetch", "AAPL", "--start", "soon", "--end", "2024-01-31", env=env)
    assert bad.returncode == 1 and "--start='soon' is not an ISO date" in bad.stderr

    engine = create_db_engine(settings.database_url)
    save_analysis(
        engine, AnalysisRecord(kind="risk", analyzer="offline", report={"summary": "Within all limits."})
    )
    engine.dispose()
    listed = run_cli("data", "analyses", "--kind", "risk", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "Within all limits." in listed.stdout and "offline" in listed.stdout
