"""Running worker and scheduler processes as children, and stopping them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

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


def api_command() -> list[str]:
    """The ``tradeflow api`` command line, run with this interpreter."""
    return [sys.executable, "-m", "api.cli", "api"]


def child_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "TRADEFLOW_REDIS_URL": redis_url}


def stop(processes: Sequence[subprocess.Popen], *, timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM to every child at once, then, after ``timeout`` seconds in all, SIGKILL to the
    process group of each child still running: the return codes.

    Each child leads a process group of its own (see :func:`running`): killing only a worker
    master would leave its worker processes running, orphaned, with our stdout still open.
    """
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # Its leader still alive, the group id cannot have been reused: safe to kill.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return [process.wait() for process in processes]


@contextmanager
def running(commands: Sequence[list[str]], *, env: dict[str, str]) -> Iterator[list[subprocess.Popen]]:
    """Run ``commands`` as children for the block, each leading a process group of its own
    (a terminal's Ctrl-C reaches only us; we stop them); stop them all on exit.

    In the main thread, SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the block whatever
    their inherited disposition, so either stops the children: Docker, systemd and Kubernetes
    stop a service with SIGTERM, and a shell starts a background job with SIGINT ignored.
    """
    processes: list[subprocess.Popen] = []
    with interrupted_by_stop_signals() as stopping:
        try:
            for command in commands:
                processes.append(subprocess.Popen(command, env=env, start_new_session=True))
            yield processes
        finally:
            stopping()  # from here a signal must not cut the children's stop short
            stop(list(reversed(processes)))


#: Signals that stop a supervisor and its children: a terminal's Ctrl-C, and a service manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupted_by_stop_signals() -> Iterator[Callable[[], None]]:
    """The first stop signal raises ``KeyboardInterrupt``; later ones, and any once the block calls
    the function it is given (its children are stopping), are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # only the main thread may set handlers; its own stay in force
        return
    received: list[int] = []

    def interrupt(number: int, frame: Any) -> None:
        if not received:
            received.append(number)
            raise KeyboardInterrupt(signal.Signals(number).name)

    previous = {number: signal.signal(number, interrupt) for number in STOP_SIGNALS}
    try:
        yield lambda: received.append(0)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
