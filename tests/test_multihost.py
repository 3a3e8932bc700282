"""Many hosts: Redis, PostgreSQL, two workers, a scheduler and a producer, each in its own
network namespace on one virtual switch (tests/netns.py), each service a real process bound
to its host's address.  A mixed load (jobs of every priority, fan-out / fan-in workflows, one
of them compensated, a schedule) runs; then one worker host's link goes down mid-run and the
other host finishes its in-flight work within the documented bound
(``heartbeat_timeout + recovery_interval``, docs/jobs.md); nothing is lost."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from broker_support import wait_until
from conftest import REPO_ROOT, settings_env
from netns import Network, netns_permitted

from actors.settings import Settings

#: Heartbeat timeout and recovery interval of this run (ms): the bound is their sum.
HEARTBEAT_TIMEOUT_MS, RECOVERY_INTERVAL_MS = 3_000, 1_000

#: Seconds on top of the bound: the recovered job's own run (0.3 s), a retry's back-off, a
#: loaded machine.
SLACK = 4.0


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[-1]


class Hosts:
    """The network and every process started on it; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self.net = Network()
        self.processes: list[subprocess.Popen] = []
        self.folders: list[str] = []

    def start(
        self,
        host: str,
        *command: str,
        env: dict | None = None,
        hostname: str | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen:
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            self.net.command(host, *command, hostname=hostname),
            env=env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def run(self, host: str, *command: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.net.command(host, *command),
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self.net.close()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def hosts():
    reason = netns_permitted() if os.geteuid() == 0 else "network namespaces need root"
    if reason:
        pytest.skip(reason)
    hosts = Hosts()
    try:
        yield hosts
    finally:
        hosts.close()


def _start_postgres(hosts: Hosts, address: str) -> None:
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    folder = tempfile.mkdtemp(
        prefix="tf-multihost-pg-"
    )  # postgres must reach it: not under pytest's 0700 tmp
    hosts.folders.append(folder)
    os.chmod(folder, 0o755)
    data = Path(folder) / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    shutil.chown(folder, "postgres", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 10.77.0.0/24 trust\n")
    hosts.start(
        "pg",
        "runuser",
        "-u",
        "postgres",
        "--",
        postgres,
        "-D",
        str(data),
        "-p",
        "5432",
        "-c",
        f"listen_addresses={address}",
        "-c",
        f"unix_socket_directories={folder}",
        "-c",
        "fsync=off",
    )
    assert wait_until(
        lambda: hosts.run("prod", "pg_isready", "-h", address, "-p", "5432").returncode == 0,
        timeout=30,
        interval=0.1,
    ), "timed out waiting for PostgreSQL"


@pytest.mark.timeout(240)
def test_two_worker_hosts_one_cut_mid_run_nothing_lost(hosts, tmp_path):
    net = hosts.net
    redis_address = net.add_host("redis", 2)
    pg_address = net.add_host("pg", 3)
    for host, number in (("w1", 11), ("w2", 12), ("sched", 20), ("prod", 30)):
        net.add_host(host, number)

    hosts.start(
        "redis",
        "redis-server",
        "--bind",
        redis_address,
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    )
    assert wait_until(
        lambda: hosts.run("prod", "redis-cli", "-h", redis_address, "ping").stdout.strip() == "PONG",
        timeout=20,
        interval=0.1,
    ), "timed out waiting for Redis"
    _start_postgres(hosts, pg_address)

    settings = Settings(
        redis_url=f"redis://{redis_address}:6379/0",
        database_url=f"postgresql+psycopg://postgres@{pg_address}:5432/postgres",
        namespace="mh",
        delta_root=tmp_path / "delta",
        heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
        recovery_interval_ms=RECOVERY_INTERVAL_MS,
        workflow_lease_ms=HEARTBEAT_TIMEOUT_MS,
        workflow_recovery_after_ms=HEARTBEAT_TIMEOUT_MS,
        workflow_recovery_interval_ms=RECOVERY_INTERVAL_MS,
        audit_running_delay_ms=0,
        min_backoff_ms=100,
        max_backoff_ms=500,
        metrics_port=0,
    )
    env = {**settings_env(settings), "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"}
    migrate = (
        "import os; from storage import create_db_engine, upgrade;"
        " upgrade(create_db_engine(os.environ['TRADEFLOW_DATABASE_URL']))"
    )
    done = hosts.run("prod", sys.executable, "-c", migrate, env=env)
    assert done.returncode == 0, done.stderr

    worker = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "tests.multihost_actors",
        "-p",
        "1",
        "-t",
        "4",
        "-Q",
        "multihost",
    ]
    for host, name in (("w1", "worker1"), ("w2", "worker2")):
        host_env = {**env, "TRADEFLOW_METRICS_DIR": str(tmp_path / f"metrics-{name}")}
        hosts.start(host, *worker, env=host_env, hostname=name, log=tmp_path / f"{name}.log")
    script = str(REPO_ROOT / "tests" / "multihost_actors.py")
    hosts.start(
        "sched",
        sys.executable,
        script,
        "schedule",
        "60",
        env=env,
        hostname="scheduler",
        log=tmp_path / "scheduler.log",
    )
    producer = hosts.start(
        "prod",
        sys.executable,
        script,
        "produce",
        str(tmp_path),
        env=env,
        hostname="producer",
        log=tmp_path / "producer.log",
    )

    assert wait_until(
        lambda: (tmp_path / "cut-now").exists() or producer.poll() is not None, timeout=90, interval=0.1
    ), "timed out waiting for the producer's load"
    assert producer.poll() is None, (tmp_path / "producer.log").read_text()[-3000:]
    net.cut("w1")  # ip link set eth0 down on worker1's host
    (tmp_path / "cut-done").write_text(str(time.time()))
    assert producer.wait(150) == 0, (tmp_path / "producer.log").read_text()[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())

    # both worker hosts beat before the cut (the metrics heartbeat names the host)
    assert result["hosts_at_start"] == ["worker1", "worker2"]
    # nothing lost: every job ran, every one has its audit row, completed, by a worker host
    jobs = dict(result["jobs"])
    assert set(result["done"]) == set(jobs), f"lost: {sorted(set(jobs) - set(result['done']))}"
    audit = result["audit"]
    for key, message_id in jobs.items():
        row = audit.get(message_id)
        assert row is not None and row["status"] == "completed", (key, row)
        assert row["worker"].split(":")[0] in ("worker1", "worker2")
        if key.startswith("after-"):
            assert row["worker"].startswith("worker2:"), (key, row)  # worker1 is off the network
    assert {row["worker"].split(":")[0] for row in audit.values() if row["worker"]} == {"worker1", "worker2"}
    # workflows: each ends once, in the state its definition leads to; compensations ran
    for run, state in result["workflows"].items():
        assert state["status"] == ("succeeded" if state["good"] else "compensated"), (run, state)
    bad = [run for run, state in result["workflows"].items() if not state["good"]]
    good_runs, bad_runs, width = result["shape"]
    assert len(bad) == bad_runs and len(result["workflows"]) == good_runs + bad_runs
    assert set(result["undo"]) == {f"{run}-{i}" for run in bad for i in range(width)}
    ticks_log = [line for line in (tmp_path / "worker2.log").read_text().splitlines() if "mh_tick" in line]
    assert result["ticks"] >= 3, ((tmp_path / "scheduler.log").read_text()[-2000:], ticks_log[-5:])
    # the cut host's in-flight work finished on the other host within the bound
    in_flight = result["in_flight_at_cut"]
    assert in_flight, "worker1 held nothing at the cut: the recovery was not exercised"
    bound = (HEARTBEAT_TIMEOUT_MS + RECOVERY_INTERVAL_MS) / 1000 + SLACK
    for message_id in in_flight:
        row = audit[message_id]
        if row["completed_at"] is None:  # a workflow step's message: its step completed instead
            continue
        assert row["worker"].startswith("worker2:"), row
        assert row["completed_at"] - result["cut_at"] <= bound, (message_id, row, result["cut_at"])
    recovery = max((audit[m]["completed_at"] or 0) - result["cut_at"] for m in in_flight)
    print(
        f"in flight on worker1 at the cut: {len(in_flight)}; all done on worker2 {recovery:.1f} s"
        f" after the cut (bound {bound - SLACK:.0f} s + {SLACK:.0f} s)"
    )
