"""``tradeflow ib-sim`` and ``tradeflow ib ...`` as a user runs them, with real workers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, run_cli, settings_env

from actors.ib import demo_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def _wait_output(args, env, expected: str, timeout: float = 40) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = run_cli(*args, env=env).stdout
        if expected in out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def _stat(name: str, value: int) -> str:
    """How ``tradeflow ib stats`` prints one figure (a rich table row)."""
    return f"│ {name:<20} │ {value:<2}"


def test_simulator_workers_and_cli_end_to_end(settings, request, tmp_path):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(demo_scenario(holdings=3).to_dict()))
    port = _free_port()
    settings = settings.model_copy(
        update={
            "ib_port": port,
            "ib_batch_interval_ms": 1_000,
            "ib_account": "DU1",
            "risk_max_gross_exposure": 1000.0,
        }
    )
    env = settings_env(settings) | {"COLUMNS": "250"}  # rich tables unwrapped
    sim = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "ib-sim", "--scenario", str(scenario_file), "--port", str(port)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "ib_positions", "portfolio"],
        env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        _wait_port(port)
        args = ("ib", "request", "100000", "100001", "999", "100000", "--account", "DU1", "--by", "cli")
        queued = run_cli(*args, env=env)
        assert queued.returncode == 0, queued.stderr
        assert "conid 100000: queued as request 1" in queued.stdout
        assert "conid 100000: merged into pending request 1" in queued.stdout
        stats = _wait_output(["ib", "stats"], env, _stat("processed", 3))
        for name, value in (("succeeded", 2), ("failed", 1), ("coalesced duplicates", 1), ("batches", 1)):
            assert _stat(name, value) in stats, stats
        failed = run_cli("ib", "requests", "--status", "failed", env=env).stdout
        assert "conid 999 not held in account DU1" in failed
        updates = run_cli("ib", "updates", env=env).stdout
        assert "2 rows in total" in updates and "SYM1" in updates and "51.00" in updates

        assert run_cli("ib", "sync", "DU1", env=env).returncode == 0
        breaches = _wait_output(["ib", "breaches"], env, "max_gross_exposure")
        assert "max_gross_exposure" in breaches
        portfolio = run_cli("ib", "portfolio", "--account", "DU1", env=env).stdout
        # net liq, IB's daily P&L (25 + 50 + 75) and the equity change (100,000 - 99,000)
        assert "100,000.00" in portfolio and "│ 150.00" in portfolio and "1,000.00" in portfolio
    finally:
        workers.terminate()
        sim.terminate()
        workers.wait(timeout=20)
        sim.wait(timeout=10)


def test_cli_reports_bad_input(settings, tmp_path, request):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("runs once, on SQLite")
    env = settings_env(settings)
    (tmp_path / "bad.json").write_text(json.dumps({"accounts": ["DU1"], "latency": 3}))
    result = run_cli("ib-sim", "--scenario", str(tmp_path / "bad.json"), env=env)
    assert (
        result.returncode == 1 and "invalid scenario: latency: Unexpected keyword argument" in result.stderr
    )
    result = run_cli("ib", "request", "0", env=env)
    assert result.returncode == 1 and "conid must be a positive integer" in result.stderr
    result = run_cli("ib", "requests", "--status", "done", env=env)
    assert result.returncode == 1 and "unknown status 'done'" in result.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        result = run_cli("ib-sim", "--port", str(busy.getsockname()[1]), env=env, timeout=20)
    finally:
        busy.close()
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stderr


def test_ib_demo_runs_the_whole_flow_beside_the_workers_of_tradeflow_up(settings, request):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("runs once, on SQLite")
    env = settings_env(settings) | {"COLUMNS": "250"}
    # the workers of a `tradeflow up` on the same Redis, namespace and database, whose gateway does not exist
    up_workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "ib_positions", "portfolio"],
        env=env | {"TRADEFLOW_IB_PORT": str(_free_port())},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run_cli("ib", "demo", "--holdings", "3", "--timeout", "60", env=env, timeout=100)
    finally:
        up_workers.terminate()
        up_workers.wait(timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, value in (("processed", 4), ("succeeded", 3), ("failed", 1)):
        assert _stat(name, value) in result.stdout, result.stdout
    assert "│ DU1     │" in result.stdout and "│ DU2     │" in result.stdout
