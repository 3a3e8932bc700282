"""Redis Sentinel: a primary, a replica and three sentinels (real processes); the primary is
killed with SIGKILL mid-drain; a worker process, a scheduler process and a producer carry on
with the promoted replica, none restarted.

Just before the kill the replication link drops what is in flight for ``PARTITION`` seconds
(the replica falls behind, as over a congested network): unconfirmed enqueues acknowledged in
that window are lost with the primary (asynchronous replication), critical ones confirmed with
``WAIT`` never are (see docs/deployment.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from broker_support import sqlite_settings, wait_until
from conftest import REPO_ROOT, settings_env
from dramatiq.message import Message
from redis_servers import start_sentinel_group

from actors import build_broker
from actors.broker import ReplicationTimeout
from api.embedded import redis_answers

#: Seconds the producer goes on after the kill (the failover takes about 2 s here).
AFTER_KILL = 6.0

#: Seconds the replication link drops its traffic before the primary is killed.
PARTITION = 0.5


@pytest.fixture
def group(tmp_path):
    group = start_sentinel_group(tmp_path)
    yield group
    group.stop()


@dataclass
class Producer:
    """Sends ``failover_job(i)``, every tenth critical (``WAIT``-confirmed)."""

    broker: object
    sent: dict[int, str] = field(default_factory=dict)  # index -> priority, the send returned
    failed: list[int] = field(default_factory=list)  # the send raised: not acknowledged
    unconfirmed: list[int] = field(default_factory=list)  # stored, replication not confirmed
    pace: float = 0.0  # seconds between two sends (0: as fast as it can: a burst)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            priority = "critical" if index % 10 == 0 else "normal"
            message = Message(
                queue_name="failover",
                actor_name="failover_job",
                args=(index,),
                kwargs={},
                options={"priority": priority},
            )
            try:
                self.broker.enqueue(message)
                self.sent[index] = priority
            except ReplicationTimeout:
                self.unconfirmed.append(index)
            except (redis.ConnectionError, redis.TimeoutError):
                self.failed.append(index)
                time.sleep(0.05)
            index += 1
            time.sleep(self.pace)


def _ran(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


@pytest.mark.timeout(120)
def test_kill_the_primary_mid_drain_everyone_follows_the_new_primary(group, tmp_path):
    settings = sqlite_settings(
        group.url,
        "failover",
        tmp_path,
        audit_enabled=False,
        metrics_enabled=False,
        redis_confirm_replicas=1,
        redis_confirm_timeout_ms=200,
    )
    assert redis_answers(group.url)  # the CLI's check before it imports the broker
    log = tmp_path / "ran.log"
    env = {**settings_env(settings), "FAILOVER_LOG": str(log), "dramatiq_restart_delay": "300"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "tests.failover_actors", "-p", "1", "-t", "4"],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    scheduler = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "jobs_scheduler_proc.py"), "1", "25"],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    producer = Producer(broker=build_broker(settings))
    thread = threading.Thread(target=producer.run, daemon=True)
    try:
        old = group.primary.client
        assert wait_until(lambda: old.hlen("failover:probe.msgs") >= 2, timeout=30), "scheduler silent"
        thread.start()
        # a burst: the worker (200 messages/s) drains a backlog the producer builds faster
        assert wait_until(lambda: len(_ran(log)) >= 100, timeout=30), "the worker does not drain"
        ticks_before = old.hlen("failover:probe.msgs")
        group.link.partition()
        partitioned_from = max(producer.sent) + 1
        time.sleep(PARTITION)
        killed_at = time.monotonic()
        sent_before = max(producer.sent) + 1
        group.primary.kill()
        group.link.cut()
        producer.pace = 0.02  # what the worker can follow, so that the drain ends
        assert wait_until(lambda: group.primary_port() == group.replica.port, timeout=20), "no failover"
        failover_s = time.monotonic() - killed_at
        time.sleep(AFTER_KILL)
        producer.stop.set()
        thread.join(10)

        new = group.replica.client
        # drained: the new primary's lanes are empty and the worker finished what it holds
        lanes = ("failover:failover", "failover:failover:critical")
        assert wait_until(lambda: sum(new.llen(lane) for lane in lanes) == 0, timeout=30), "not drained"
        time.sleep(1.0)
        ran = _ran(log)
        lost = sorted(set(producer.sent) - ran)
        lost_critical = [index for index in lost if producer.sent[index] == "critical"]
        # acked on the old primary while the replica was behind: the worker's reclaim puts them
        # back on the new one (they run again: at-least-once), none stays in an ack set
        stale = sum(new.scard(key) for key in new.scan_iter(match="failover:__acks__.*"))
        print(
            f"stale acks {stale}; failover {failover_s:.1f} s; sent {len(producer.sent)} (critical confirmed"
            f" {sum(p == 'critical' for p in producer.sent.values())}); failed sends {len(producer.failed)};"
            f" unconfirmed {len(producer.unconfirmed)}; lost {len(lost)} (critical {len(lost_critical)})"
        )
        assert new.info("replication")["role"] == "master"
        after = [index for index in producer.sent if index >= sent_before]
        assert sum(producer.sent[index] == "normal" for index in after) > 10, "the producer did not carry on"
        # critical sends in the partition, and after it (the new primary has no replica left),
        # raised ReplicationTimeout: none was acknowledged without a replica having it
        assert producer.unconfirmed and min(producer.unconfirmed) >= partitioned_from - 4
        # the worker (same process, never restarted) drains what the new primary holds
        assert worker.poll() is None and scheduler.poll() is None
        assert lost_critical == [], f"confirmed critical messages lost: {lost_critical}"
        # the window: normal messages acknowledged while the replica was behind, and only those
        assert lost, "nothing was lost: the partition did not open the window this test measures"
        assert partitioned_from - 4 <= min(lost) and max(lost) < sent_before + 4, (lost, partitioned_from)
        # the scheduler kept ticking on the new primary
        assert wait_until(lambda: new.hlen("failover:probe.msgs") >= ticks_before + 2, timeout=10)
    finally:
        producer.stop.set()
        for process in (worker, scheduler):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in (worker, scheduler):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
