"""Running worker and scheduler processes as children, and stopping them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

#: Seconds a child gets to finish after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0

#: The module every worker and scheduler imports: it configures the broker.
ACTORS_MODULE = "actors"


def worker_command(*, processes: int, threads: int, modules: Sequence[str] = ()) -> list[str]:
    """The ``dramatiq actors`` command line, run with this interpreter."""
    return [
        sys.executable,
        "-m",
        "dramatiq",
        ACTORS_MODULE,
        *modules,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


def scheduler_command(*, modules: Sequence[str] = ()) -> list[str]:
    """The ``periodiq actors`` command line, run with this interpreter."""
    script = "import sys, periodiq; sys.argv[0] = 'periodiq'; periodiq.entrypoint()"
    return [sys.executable, "-c", script, ACTORS_MODULE, *modules]


def child_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "TRADEFLOW_REDIS_URL": redis_url}


def stop(process: subprocess.Popen, *, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait, then SIGKILL: the return code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@contextmanager
def running(commands: Sequence[list[str]], *, env: dict[str, str]) -> Iterator[list[subprocess.Popen]]:
    """Run ``commands`` as children for the block; stop them in reverse order on exit."""
    processes: list[subprocess.Popen] = []
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, env=env))
        yield processes
    finally:
        for process in reversed(processes):
            stop(process)
