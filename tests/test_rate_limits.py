"""Rate and concurrency limits hold over several worker processes together."""

from __future__ import annotations

import json
import subprocess
import sys

import dramatiq
import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from jobs_support import sqlite_only, wait_for
from test_e2e import stop_worker

from actors import audit_writer_of, build_broker
from actors.settings import Settings

#: At most 2 running at once and 4 starts in any second, over all workers.
LIMITS = {"timed_marker": {"rate": 4, "per_ms": 1_000, "concurrency": 2}}


def test_limits_are_validated():
    with pytest.raises(ValueError, match="unknown fields"):
        Settings(rate_limits={"x": {"rate": 1, "burst": 2}})
    with pytest.raises(ValueError, match="give rate"):
        Settings(rate_limits={"x": {"per_ms": 1000}})


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_four_worker_processes_together_never_exceed_the_limits(settings, tmp_path):
    settings = settings.model_copy(update={"rate_limits": LIMITS})
    env = settings_env(settings)
    env["TRADEFLOW_RATE_LIMITS"] = json.dumps(LIMITS)
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "tests.e2e_actors", "-p", "4", "-t", "3", "-Q", "e2e"],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    producer = build_broker(settings)
    marker = dramatiq.actor(
        lambda folder, seconds: None, broker=producer, queue_name="e2e", actor_name="timed_marker"
    )
    try:
        for _ in range(12):
            marker.send(str(tmp_path), 0.3)
        runs_file = tmp_path / "runs"
        wait_for(
            lambda: runs_file.exists() and len(runs_file.read_text().splitlines()) == 12,
            timeout=90,
            what="the 12 limited runs",
        )
        health = run_cli("health", "--json", env=env)
    finally:
        stop_worker(workers)
        audit_writer_of(producer).close(5)
    runs = sorted(tuple(map(float, line.split())) for line in runs_file.read_text().splitlines())
    starts = [start for start, _ in runs]
    # at most 2 at once: at each start, count the runs in progress
    for start in starts:
        assert sum(1 for s, e in runs if s <= start < e) <= 2, runs
    # at most 4 starts in any window of 1 s, less the 0.2 s a start may lag its slot (the
    # limit is taken before the other middleware run, the actor records its start after)
    for start in starts:
        assert sum(1 for s in starts if start <= s < start + 0.8) <= 4, starts
    # 12 runs at 4 a second take at least 2 s: the limit was what paced them
    assert starts[-1] - starts[0] >= 2.0
    report = json.loads(health.stdout)
    limits = {row["key"]: row for row in report["rate_limits"]}
    assert limits["timed_marker"]["limit"] == "4 per 1s, 2 at once" and limits["timed_marker"]["running"] == 0
    assert limits["queue:ib_positions"]["limit"] == "50 per 1s"  # IB's pacing, on by default
