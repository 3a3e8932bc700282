"""Real ``dramatiq`` worker processes, messages sent with the CLI, rows in the audit trail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, children_of, run_cli, settings_env
from obs_support import free_port

from storage import create_db_engine, get_task, list_tasks

pytestmark = pytest.mark.e2e


def start_worker(env: dict[str, str], *, threads: int = 2, via_cli: bool = False) -> subprocess.Popen:
    """``dramatiq actors tests.e2e_actors``, or the same through ``tradeflow worker``."""
    command = (
        [str(Path(sys.executable).with_name("tradeflow")), "worker"]
        if via_cli
        else [sys.executable, "-m", "dramatiq", "actors"]
    )
    return subprocess.Popen(
        [*command, "tests.e2e_actors", "-p", "1", "-t", str(threads)],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(30)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def send(env: dict[str, str], actor: str, args: str) -> str:
    result = run_cli("send", actor, "--args", args, "--module", "tests.e2e_actors", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.timeout(120)
def test_cli_sent_messages_are_processed_and_listed_once(settings):
    env = settings_env(settings)
    worker = start_worker(env, via_cli=True)
    try:
        ids = [send(env, "add", f"[{i}, 1]") for i in range(3)]
        engine = create_db_engine(settings.database_url)
        wait_until(
            lambda: all(getattr(get_task(engine, i), "status", None) == "completed" for i in ids),
            60,
            "three completed rows",
        )
    finally:
        stop_worker(worker)
    listing = run_cli("jobs", "list", "--actor", "add", "--status", "completed", env=env)
    assert listing.returncode == 0, listing.stderr
    for task_id in ids:
        assert listing.stdout.count(task_id) == 1
    rows = list_tasks(engine, task_type="add")
    assert len(rows) == 3 and all(row.processing_time_ms is not None for row in rows)
    shown = run_cli("jobs", "show", ids[0], env=env)
    assert "completed" in shown.stdout and "processing_time_ms" in shown.stdout


@pytest.mark.timeout(120)
def test_sigkill_mid_task_is_redelivered_and_audited_once(settings, tmp_path: Path):
    # A dead worker's messages come back once its heartbeat is older than the
    # timeout and some broker command runs maintenance: make both quick.
    settings = settings.model_copy(update={"heartbeat_timeout_ms": 2_000, "maintenance_chance": 1_000_000})
    env = settings_env(settings)
    starts, finishes = tmp_path / "starts", tmp_path / "finishes"
    first = start_worker(env)
    try:
        # the first run outlasts any wait for its row under load; the redelivered one is quick
        task_id = send(env, "slow_marker", f'["{tmp_path}", 60.0, 0.5]')
        victim = int(
            wait_until(lambda: starts.exists() and starts.read_text().split(), 60, "the task to start")[0]
        )
        engine = create_db_engine(settings.database_url)
        status = lambda: getattr(get_task(engine, task_id), "status", None)  # noqa: E731
        wait_until(lambda: status() == "running", 30, "a running row")
        os.kill(victim, signal.SIGKILL)
    finally:
        # a failed wait must not leave the worker (and its 60 s task) running past the test
        stop_worker(first, signal.SIGKILL)
    killed_at = time.monotonic()
    assert not finishes.exists()

    second = start_worker(env)
    try:
        row = wait_until(
            lambda: (r := get_task(engine, task_id)) is not None and r.status == "completed" and r,
            60,
            "the redelivered task to complete",
        )
    finally:
        stop_worker(second)
    print(f"recovered {time.monotonic() - killed_at:.1f}s after SIGKILL")
    pids = starts.read_text().split()
    assert len(pids) == 2 and pids[0] == str(victim) and pids[1] != pids[0]
    assert finishes.read_text().split() == [pids[1]]
    assert row.worker_id.endswith(f":{pids[1]}")
    assert row.retry_count == 0
    assert [r.task_id for r in list_tasks(engine, task_type="slow_marker")] == [task_id]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _ignore_sigint() -> None:
    # As a shell starts a background job (`tradeflow up &`): SIGINT ignored, inherited by Python.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint-inherited-ignored", "sigterm"]
)
def test_up_runs_workers_until_interrupted(settings, stop_signal):
    """``tradeflow up`` stops its children and exits 0 on SIGINT (even one its parent ignored) and on
    SIGTERM (what Docker, systemd and Kubernetes send), a second signal not cutting the stop short."""
    env = settings_env(settings)
    api_port = free_port()
    env.update(TRADEFLOW_WORKER_PROCESSES="1", TRADEFLOW_WORKER_THREADS="2", TRADEFLOW_API_PORT=str(api_port))
    up = subprocess.Popen(
        [str(Path(sys.executable).with_name("tradeflow")), "up"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_ignore_sigint if stop_signal == signal.SIGINT else None,
    )
    # A reader thread keeps the pipe drained: a full pipe would block every child's logging.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)
    reader.start()
    failure = None
    try:
        result = run_cli("send", "ping", "--args", '["x"]', env=env)
        assert result.returncode == 0, result.stderr
        engine = create_db_engine(settings.database_url)
        wait_until(
            lambda: getattr(get_task(engine, result.stdout.strip()), "status", None) == "completed",
            45,
            "the ping to complete under `tradeflow up`",
        )
        wait_until(lambda: _answers(f"http://127.0.0.1:{api_port}/readyz"), 30, "the API of `tradeflow up`")
    except BaseException as error:  # reported below with the stack's output, after it is stopped
        failure = error
    finally:
        children = children_of(up.pid)
        up.send_signal(stop_signal)
        time.sleep(0.3)
        if up.poll() is None:  # impatient: a second signal while the children stop is ignored
            up.send_signal(stop_signal)
        try:
            up.wait(timeout=45)
        except subprocess.TimeoutExpired:
            for group in [*children_of(up.pid), up.pid]:  # each child of up leads a group of its own
                os.killpg(group, signal.SIGKILL)
            up.wait()
            failure = failure or AssertionError(
                f"`tradeflow up` did not stop within 45 s of {stop_signal.name}"
            )
        reader.join(10)
    output = "".join(lines)
    if failure is not None:
        pytest.fail(f"{failure}\n--- output of `tradeflow up` ---\n{output}")
    assert up.returncode == 0, output
    assert f"redis: {settings.redis_url}" in output
    assert f"api: http://127.0.0.1:{api_port}/api/v1" in output
    assert f"dashboard: http://127.0.0.1:{api_port}/" in output
    assert "stopping..." in output
    assert children and not [pid for pid in children if Path(f"/proc/{pid}").exists()], "children stopped"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_pushes_a_batch_through_real_workers(settings):
    env = settings_env(settings)
    env.update(TRADEFLOW_WORKER_PROCESSES="1", TRADEFLOW_WORKER_THREADS="4")
    result = run_cli("demo", "--count", "50", "--timeout", "120", env=env, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed │ 51" in result.stdout
