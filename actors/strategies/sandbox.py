"""Running untrusted strategy code: RestrictedPython first, then a hardened child process.

The check in this process gives users precise errors (with line numbers)
without starting anything; the child (:mod:`actors.strategies.sandbox_runner`) is the
actual boundary.  See ``docs/strategy.md`` for the threat model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.ipc
from dramatiq.logging import get_logger

from .sandbox_runner import HARDENING_FAILED_EXIT, SecurityViolation, StrategyCodeError, check_strategy_code
from .wire import StrategyFailed

#: The child's script, run by path so it imports nothing of tradeflow.
RUNNER_PATH = Path(__file__).with_name("sandbox_runner.py")

#: Prefix of every rejection by a security check, static or at run time.
SECURITY_PREFIX = "Security validation failed: "

#: Environment of the child: one BLAS thread, nothing inherited.
CHILD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LANG": "C.UTF-8",
    "PATH": "/usr/bin:/bin",
}

#: Bytes of the child's stderr kept for error messages.
STDERR_KEPT = 8_192

#: Bytes read from the child's stdout per call.
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class SandboxLimits:
    """What one strategy run may use.

    Parameters:
      cpu_seconds(int): CPU time (``RLIMIT_CPU``).  Defaults to 20.
      memory_mb(int): Address space (``RLIMIT_AS``), in MiB.  Defaults to 2048.
      wall_seconds(float): Wall-clock time the parent waits.  Defaults to 30.
      output_bytes(int): Largest answer accepted.  Defaults to 16 MiB.
      open_files(int): ``RLIMIT_NOFILE``.  Defaults to 64.
      seccomp(bool): Load the syscall allow-list.  Defaults to True; only
        turn off to diagnose a kernel without seccomp.
    """

    cpu_seconds: int = 20
    memory_mb: int = 2048
    wall_seconds: float = 30.0
    output_bytes: int = 16 << 20
    open_files: int = 64
    seccomp: bool = True


def validate_code(code: str, function_name: str | None = None) -> str:
    """Check ``code`` statically; return the entry function name or raise :class:`StrategyFailed`."""
    try:
        return check_strategy_code(code, function_name)
    except SecurityViolation as exc:
        raise StrategyFailed(f"{SECURITY_PREFIX}{exc}") from None
    except StrategyCodeError as exc:
        raise StrategyFailed(f"Invalid strategy code: {exc}") from None
    except (RecursionError, MemoryError):
        raise StrategyFailed("Invalid strategy code: expressions nested too deeply to compile") from None


def arrow_stream(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class _ChildOutput:
    stdout: bytes
    stderr: bytes
    returncode: int
    timed_out: bool
    overflowed: bool


class Sandbox:
    """Runs a strategy over per-symbol frames in a fresh hardened process.

    Parameters:
      limits(SandboxLimits): Resource limits of each run.
      python(str): Interpreter of the child.  Defaults to this one.
      restricted(bool): Run the code under RestrictedPython.  Defaults to
        True; False exists only for tests that prove the process boundary
        holds without it.
      prestart(bool): Keep one child started ahead, hardened and waiting
        for its task, so a run does not wait for the interpreter and the
        numpy/pandas imports (about 0.5 s of CPU).  Each child still runs
        exactly one task.  Defaults to True.
    """

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        python: str = sys.executable,
        restricted: bool = True,
        prestart: bool = True,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits = limits or SandboxLimits()
        self.python = python
        self.restricted = restricted
        self.prestart = prestart
        self._spare: subprocess.Popen | None = None
        self._spare_lock = threading.Lock()

    def close(self) -> None:
        """Stop the child started ahead, if any."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            _kill_group(spare)
            spare.wait()
            _close_pipes(spare)

    def run(
        self, *, code: str, bars: pd.DataFrame, function_name: str | None = None
    ) -> dict[str, list[dict]]:
        """The strategy's instances per ticker.  Raises :class:`StrategyFailed` with the reason."""
        return self.run_with_cuts(code=code, bars=bars, function_name=function_name, cuts=0)[0]

    def run_with_cuts(
        self, *, code: str, bars: pd.DataFrame, function_name: str | None = None, cuts: int
    ) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
        """The instances per ticker, and per ticker ``[{"cut": iso date, "instances": [...]}]``:
        the strategy's true signals on the ticker's bars up to one of its true-signal dates, at
        most ``cuts`` such runs in all (the look-ahead check)."""
        entry = validate_code(code, function_name) if self.restricted else function_name or "strategy"
        header = json.dumps({"code": code, "function": entry, "cuts": cuts}).encode() + b"\n"
        output = self._run_child(header + arrow_stream(bars))
        return self._results(output)

    def command(self) -> list[str]:
        limits = self.limits
        command = [
            self.python,
            "-I",
            str(RUNNER_PATH),
            f"--cpu-seconds={limits.cpu_seconds}",
            f"--memory-bytes={limits.memory_mb << 20}",
            f"--open-files={limits.open_files}",
        ]
        if not limits.seccomp:
            command.append("--no-seccomp")
        if not self.restricted:
            command.append("--unrestricted")
        return command

    def _start_child(self) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CHILD_ENV,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )

    def _take_child(self) -> subprocess.Popen:
        """The spare child if it is still alive, else a new one; starts the next spare."""
        if not self.prestart:
            return self._start_child()
        with self._spare_lock:
            child, self._spare = self._spare, None
            if child is not None and child.poll() is not None:
                _close_pipes(child)
                child = None
            self._spare = self._start_child()
        return child or self._start_child()

    def _run_child(self, payload: bytes) -> _ChildOutput:
        child = self._take_child()
        feeder = threading.Thread(target=_feed, args=(child.stdin, payload), daemon=True)
        feeder.start()
        try:
            stdout, stderr, timed_out, overflowed = self._collect(child)
        finally:
            if child.poll() is None:
                _kill_group(child)
            child.wait()
            feeder.join(timeout=5)
            _close_pipes(child)
        return _ChildOutput(stdout, stderr, child.returncode, timed_out, overflowed)

    def _collect(self, child: subprocess.Popen) -> tuple[bytes, bytes, bool, bool]:
        deadline = time.monotonic() + self.limits.wall_seconds
        stdout, stderr = io.BytesIO(), io.BytesIO()
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ, stdout)
            selector.register(child.stderr, selectors.EVENT_READ, stderr)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return stdout.getvalue(), stderr.getvalue(), True, False
                for key, _ in selector.select(timeout=remaining):
                    chunk = os.read(key.fd, READ_CHUNK)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.data is stdout:
                        stdout.write(chunk)
                        if stdout.tell() > self.limits.output_bytes:
                            return b"", stderr.getvalue(), False, True
                    elif stderr.tell() < STDERR_KEPT:
                        stderr.write(chunk)
        return stdout.getvalue(), stderr.getvalue(), False, False

    def _results(self, output: _ChildOutput) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
        limits = self.limits
        if output.timed_out:
            raise StrategyFailed(
                f"Sandbox error: strategy exceeded the wall-clock limit of {limits.wall_seconds:g} s"
            )
        if output.overflowed:
            raise StrategyFailed(
                f"Sandbox error: strategy output exceeds the limit of {limits.output_bytes} bytes"
            )
        if output.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise StrategyFailed(f"Sandbox error: strategy exceeded the CPU limit of {limits.cpu_seconds} s")
        if output.returncode == HARDENING_FAILED_EXIT:
            detail = output.stderr.decode(errors="replace").strip()
            self.logger.error("Sandbox could not harden itself: %s", detail)
            raise StrategyFailed(f"Sandbox unavailable: {detail}")
        if output.returncode != 0:
            raise StrategyFailed(
                f"Sandbox error: strategy process died ({_describe_exit(output.returncode)})"
            )
        return self._parse(output.stdout)

    def _parse(self, stdout: bytes) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
        try:
            document = json.loads(stdout)
        except ValueError:
            raise StrategyFailed("Sandbox error: the strategy process returned no valid answer") from None
        if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
            raise StrategyFailed("Sandbox error: the strategy process returned no valid answer")
        if not document["ok"]:
            raise StrategyFailed(_failure_reason(document, self.limits))
        results, cuts = document.get("results"), document.get("cuts", {})
        if not _instance_lists(results) or not isinstance(cuts, dict):
            raise StrategyFailed("Sandbox error: the strategy process returned malformed results")
        for runs in cuts.values():
            if not isinstance(runs, list) or not all(
                isinstance(run, dict)
                and isinstance(run.get("cut"), str)
                and _instance_lists({"": run.get("instances")})
                for run in runs
            ):
                raise StrategyFailed("Sandbox error: the strategy process returned malformed results")
        return results, cuts


def _instance_lists(results: object) -> bool:
    """Whether ``results`` is ``{ticker: [dict, ...]}``."""
    return isinstance(results, dict) and all(
        isinstance(instances, list) and all(isinstance(i, dict) for i in instances)
        for instances in results.values()
    )


def _failure_reason(document: dict, limits: SandboxLimits) -> str:
    error = str(document.get("error", "unknown error"))
    kind = document.get("kind")
    if kind == "security":
        return f"{SECURITY_PREFIX}{error}"
    if kind == "memory":
        return f"Sandbox error: strategy ran out of memory (limit {limits.memory_mb} MiB): {error}"
    return f"Strategy error: {error}"


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def _feed(pipe, payload: bytes) -> None:
    # A child that dies early closes its stdin: that is reported from its exit, not here.
    try:
        pipe.write(payload)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass


def _close_pipes(child: subprocess.Popen) -> None:
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()


def _kill_group(child: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
