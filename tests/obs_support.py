"""Helpers of the observability tests: real worker processes, results, waiting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import dramatiq
from conftest import settings_env
from dramatiq.results import ResultMissing, Results

from actors.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_workers(settings: Settings, *, processes: int = 2, queues: tuple[str, ...] = (), **env: str):
    """``dramatiq actors tests.obs_worker`` with ``settings`` (plus extra variables); stderr piped."""
    environment = {**settings_env(settings), "OTEL_BSP_SCHEDULE_DELAY": "100", **env}
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "tests.obs_worker",
        "-p",
        str(processes),
        "-t",
        "2",
    ]
    if queues:
        command += ["-Q", *queues]
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)


def stop_workers(process: subprocess.Popen) -> str:
    """SIGTERM, wait, and the workers' log."""
    process.terminate()
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


def result_of(broker: dramatiq.Broker, message: dramatiq.Message, *, timeout: float = 60.0) -> object:
    """The message's result, polled: a long blocking read would outlast the client's socket timeout."""
    backend = next(m.backend for m in broker.middleware if isinstance(m, Results))
    deadline = time.monotonic() + timeout
    while True:
        try:
            return message.get_result(backend=backend)
        except ResultMissing:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_until(condition, *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)
