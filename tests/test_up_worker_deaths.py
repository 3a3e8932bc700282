"""``tradeflow up``'s watch over worker masters: a Dramatiq main process whose worker processes
all died is killed if it does not exit by itself, since it may never do so (a worker SIGKILLed
while it sets its readiness event dies holding the event's lock, and the main process waits on
that lock forever: see tests/test_jobs_crashes.py).  Real Redis; the master is a real process
group standing in for a wedged ``dramatiq`` main process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from jobs_support import sqlite_only

from actors import audit_writer_of, build_broker
from actors.middleware.recovery import processes_key
from api.cli.processes import MASTER_EXIT_GRACE, _WorkerDeaths
from api.stack import process_alive

pytestmark = pytest.mark.timeout(60)

#: A process that never exits by itself, as a wedged main process.
WEDGED = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def broker(settings):
    broker = build_broker(settings)
    yield broker
    audit_writer_of(broker).close(5)


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(10)
    return finished.pid


def _register(broker, master: subprocess.Popen, pid: int) -> None:
    broker.client.hset(processes_key(broker.namespace, master_pid=master.pid), str(pid), "broker-id")


@sqlite_only
def test_a_master_left_without_a_live_worker_process_is_killed(broker):
    master = subprocess.Popen(WEDGED, start_new_session=True)
    try:
        _register(broker, master, _dead_pid())
        deaths = _WorkerDeaths(broker)
        deaths.poll("worker", master)  # sees the death, requeues, starts the grace
        assert master.poll() is None, "killed before its grace to exit by itself"
        time.sleep(MASTER_EXIT_GRACE + 0.2)
        deaths.poll("worker", master)
        assert master.wait(5) == -signal.SIGKILL
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(5)


@sqlite_only
def test_a_master_with_a_live_worker_process_is_left_alone(broker):
    master = subprocess.Popen(WEDGED, start_new_session=True)
    worker = subprocess.Popen(WEDGED)
    try:
        _register(broker, master, worker.pid)
        _register(broker, master, _dead_pid())  # one of its two workers died: the master goes on
        deaths = _WorkerDeaths(broker)
        for _ in range(3):
            deaths.poll("worker", master)
            time.sleep(MASTER_EXIT_GRACE / 2 + 0.1)
        assert master.poll() is None and process_alive(worker.pid)
    finally:
        for process in (master, worker):
            process.kill()
            process.wait(5)


@sqlite_only
def test_a_booting_master_with_no_worker_registered_yet_is_left_alone(broker):
    master = subprocess.Popen(WEDGED, start_new_session=True)
    try:
        deaths = _WorkerDeaths(broker)
        for _ in range(3):
            deaths.poll("worker", master)
            time.sleep(MASTER_EXIT_GRACE / 2 + 0.1)
        assert master.poll() is None
    finally:
        master.kill()
        master.wait(5)
