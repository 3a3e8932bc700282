"""Children of ``tradeflow up``/``demo``: stopped together, and none outlives a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from api import stack

pytestmark = pytest.mark.timeout(60)

#: A child that ignores SIGTERM and has a child of its own (as a worker master has workers):
#: prints the grandchild's pid, then waits.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grandchild.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_a_child_that_ignores_sigterm_is_killed_with_its_own_children() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    grandchild = int(child.stdout.readline())
    started = time.monotonic()
    (code,) = stack.stop([child], timeout=1.0)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild outlived the stop (an orphaned worker)"


def test_children_are_stopped_together_not_one_timeout_after_another() -> None:
    sleepers = [
        subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True)
        for _ in range(3)
    ]
    for sleeper in sleepers:
        sleeper.stdout.readline()
    started = time.monotonic()
    codes = stack.stop(sleepers, timeout=2.0)
    assert codes == [-signal.SIGKILL] * 3
    assert time.monotonic() - started < 6, "three stubborn children cost one timeout, not three"


def test_running_children_lead_their_own_process_group() -> None:
    with stack.running([[sys.executable, "-c", "import time; time.sleep(30)"]], env=dict(os.environ)) as (
        child,
    ):
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
    assert child.returncode == -signal.SIGTERM
