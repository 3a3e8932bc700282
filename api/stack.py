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
from dataclasses import dataclass
from pathlib import Path
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


#: Seconds before a child that exited is started again; doubled for each exit that follows
#: a short life (see :data:`STABLE_AFTER`).
RESTART_BACKOFF = 0.5

#: Longest wait before a restart, in seconds.
MAX_RESTART_BACKOFF = 30.0

#: Seconds after which a running child counts as healthy: its next exit restarts it after
#: :data:`RESTART_BACKOFF` again.
STABLE_AFTER = 60.0

#: Seconds between two looks at the children.
POLL_INTERVAL = 0.25


@dataclass
class Supervised:
    """One supervised child: its ``name`` (``worker``, ``scheduler``), command, and the state
    of its restarts."""

    name: str
    command: list[str]
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Keeps the children of :func:`running` alive until a stop signal: a child that exits is
    reported and started again after a backoff (0.5 s, doubling to 30 s, back to 0.5 s after a
    minute of health).

    Parameters:
      processes(list[Popen]): The running children (as :func:`running` yields them); restarted
        ones replace their predecessors in it, so stopping it stops the current ones.
      names(list[str]): The kind of each child (``worker``, ``scheduler``), in order.
      env(dict): The children's environment.
      on_exit(callable): ``on_exit(name, process)``, called once a child exited, before its
        restart is scheduled: a worker master's dead processes have their messages requeued.
      on_restart(callable): ``on_restart(name)``, called for each restart (counted).
      watch(callable): ``watch(name, process)``, called each poll for each running child:
        notices a worker process that died while its master lives.  Defaults to None.
      log(callable): ``log(line)``.  Defaults to print on stderr.
    """

    def __init__(
        self,
        *,
        processes: list[subprocess.Popen],
        names: Sequence[str],
        env: dict[str, str],
        on_exit: Callable[[str, subprocess.Popen], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        watch: Callable[[str, subprocess.Popen], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.processes = processes
        self.env = env
        self.on_exit = on_exit
        self.on_restart = on_restart
        self.watch = watch
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        now = time.monotonic()
        pairs = zip(names, processes, strict=True)
        self.children = [Supervised(name, list(process.args), started_at=now) for name, process in pairs]

    def run(self) -> None:
        """Supervise until interrupted (a stop signal raises ``KeyboardInterrupt``)."""
        while True:
            self.poll()
            time.sleep(POLL_INTERVAL)

    def poll(self) -> None:
        now = time.monotonic()
        for index, child in enumerate(self.children):
            process = self.processes[index]
            if child.restart_at is None and process.poll() is None:
                self._call(self.watch, child.name, process)
                continue
            if child.restart_at is None:
                self._exited(child, process, now)
            if now >= child.restart_at:
                self._restart(index, child, now)

    def _exited(self, child: Supervised, process: subprocess.Popen, now: float) -> None:
        lived = now - child.started_at
        if lived >= STABLE_AFTER:
            child.backoff = RESTART_BACKOFF
        self.log(
            f"warning: {child.name} (pid {process.pid}) exited with code {process.returncode} "
            f"after {lived:.1f}s; restarting in {child.backoff:.0f}s"
        )
        self._call(self.on_exit, child.name, process)
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, MAX_RESTART_BACKOFF)

    def _restart(self, index: int, child: Supervised, now: float) -> None:
        self.processes[index] = subprocess.Popen(child.command, env=self.env, start_new_session=True)
        child.started_at, child.restart_at = now, None
        child.restarts += 1
        self.log(f"restarted {child.name} (pid {self.processes[index].pid}, restart {child.restarts})")
        self._call(self.on_restart, child.name)

    def _call(self, hook, *args) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:  # Redis or the database away: supervising goes on
            self.log(f"warning: {getattr(hook, '__name__', hook)} failed: {exc}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
