"""Every benchmark in ``bench/`` runs, at smoke size, and leaves no process behind.

Each bench runs as a user runs it (``python bench/NAME.py --smoke``), in a child process whose
``pika`` fails on import (``tests/no_default_broker``): a bench that leans on Dramatiq's implicit
default broker fails here, as it would on a machine with pika installed.  A smoke run's figures
mean nothing; that the bench exits 0 and its figure lines parse (and name what it measures) is
what is checked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from bench import harness
from bench.harness import figure, parse_figures

BENCH = REPO_ROOT / "bench"

#: A ``pika`` that raises on import, first on the benches' path.
NO_DEFAULT_BROKER = Path(__file__).resolve().parent / "no_default_broker"


def bench_scripts() -> set[str]:
    """The benchmark scripts: the modules of ``bench/`` run as ``__main__`` (not their helpers)."""
    return {path.name for path in BENCH.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()}


#: One smoke run per bench: (script, extra arguments, figures it must print among others); in the
#: arguments, ``{tmp}`` is the test's temporary folder and ``{redis_url}`` the tests' Redis.  The
#: other modes of a bench take ``--smoke`` too (``tracing_overhead.py --smoke --full-stack-cpu URL``:
#: about 15 s) but are left out, for the suite's time.
CASES = [
    (
        "api.py",
        [],
        {"lists.args_symbol.p99_ms", "events.pending.p99_ms", "bulk.retries_per_s", "bulk.reads.p99_ms"},
    ),
    (
        "capacity.py",
        [],
        {
            "plain_job.redis_cpu_us",
            "job_with_audit.pg_rows",
            "workflow_step.commands",
            "redis_benchmark.cpu_us_per_request",
            "postgres.batched_rows_per_s",
        },
    ),
    ("core_install.py", [], {"core.site_packages_mb", "core.db_upgrade_ok", "core.send_ping_ok"}),
    ("data_fetch.py", [], {"fetch_empty.rows_per_s", "merge.rows_per_s", "append.rows_per_s"}),
    (
        "ib_batch.py",
        [],
        {"batched.requests_per_s", "one-per-call.requests_per_s", "batched.speedup_distinct"},
    ),
    ("jobs_overhead.py", [], {"raw.drain_per_s", "jobs.drain_per_s", "jobs.admission_check_us"}),
    ("jobs_recovery.py", [], {"tradeflow.recovery_s", "tradeflow.recovered", "dramatiq.recovery_s"}),
    (
        "latency.py",
        [],
        {
            "tradeflow.sparse_p50_ms",
            "dramatiq.sparse_p50_ms",
            "tradeflow.critical_wait_ms",
            "tradeflow.drain_per_s",
            "tradeflow.drain_lanes_per_s",
            "dramatiq.send_many_per_s",
        },
    ),
    ("message_cost.py", [], {"raw_dramatiq.worker_cpu_us", "tradeflow_sqlite_audit.worker_cpu_us"}),
    ("recovery_under_up.py", ["{redis_url}"], {"restart.median_s", "quarantine.median_s"}),
    ("redis_confirm.py", [], {"single.wait_1_per_s", "threaded.no_confirm_per_s", "threaded.ratio"}),
    (
        "strategy.py",
        [],
        {"engine.vectorised.rows_per_s", "sandbox.warm_empty.wall_ms", "e2e.backtest.task_ms"},
    ),
    ("throughput.py", [], {"raw_dramatiq.drain_per_s", "tradeflow_sqlite_audit.latency_p50_ms"}),
    ("tracing_hook_instructions.py", [], {"send.instructions", "process.instructions"}),
    ("tracing_instructions.py", [], {"tracing_on.producer_instructions", "tracing_on.workers_instructions"}),
    (
        "tracing_overhead.py",
        [],
        {"tracing_on.process_cpu_us", "raw_dramatiq.process_per_s", "hooks.sampled_100%_no_export_us"},
    ),
    ("worker_instructions.py", [], {"tracing_off.producer_instructions", "tracing_off.worker_instructions"}),
    ("workflow_engine_cpu.py", [], {"engine.start_cpu_us", "engine.step_cpu_us"}),
    ("workflow_throughput.py", [], {"linear.rate_ratio", "fan.fan_in_latency_ms"}),
]

#: Benches that count instructions with valgrind: where it is missing, skipped with the reason
#: (failed in CI, as a missing server is).
NEEDS_VALGRIND = {"tracing_hook_instructions.py", "tracing_instructions.py", "worker_instructions.py"}


def bench_env() -> dict[str, str]:
    """The environment of a bench run: no ``TRADEFLOW_*`` settings of ours, the failing ``pika``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRADEFLOW_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(NO_DEFAULT_BROKER), str(REPO_ROOT)])
    return env


def test_figure_lines_read_back_and_a_malformed_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    figure("tradeflow.drain_per_s", 1234.5, "msg/s")
    figure("jobs.recovered", True)
    printed = capsys.readouterr().out
    assert parse_figures(f"a report line\n{printed}") == {
        "tradeflow.drain_per_s": 1234.5,
        "jobs.recovered": 1.0,
    }
    for malformed in (
        "figure: a b = 1",
        "figure: x = nan ms",
        "figure: x = fast",
        "figure: x = 1\nfigure: x = 2",
    ):
        with pytest.raises(ValueError):
            parse_figures(malformed)
    with pytest.raises(ValueError):
        figure("two words", 1.0)


def test_children_serve_no_metrics_unless_the_bench_measures_them() -> None:
    """A bench beside a stack: its workers must not bind the stack's metrics port."""
    show = [sys.executable, "-c", "import os; print(os.environ['TRADEFLOW_METRICS_PORT'])"]
    env = {**os.environ, "TRADEFLOW_METRICS_PORT": "9191"}
    ports = []
    for metrics in (False, True):
        child = harness.start(show, metrics=metrics, env=env, stdout=subprocess.PIPE, text=True)
        ports.append(child.communicate(timeout=10)[0].strip())
        harness.finish(child)
    assert ports == ["0", "9191"]


def test_every_bench_has_a_smoke_case() -> None:
    assert bench_scripts() == {script for script, _, _ in CASES}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    CASES,
    ids=[
        " ".join([script, *arguments]).replace("{tmp}", "").replace(" {redis_url}", "")
        for script, arguments, _ in CASES
    ],
)
def test_bench_runs_in_smoke_mode(
    script: str, arguments: list[str], expected: set[str], redis_url: str, tmp_path: Path
) -> None:
    if script in NEEDS_VALGRIND and shutil.which("valgrind") is None:
        message = "valgrind is not installed (apt-get install valgrind; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [sys.executable, str(BENCH / script), "--smoke"]
    command += [argument.format(tmp=tmp_path, redis_url=redis_url) for argument in arguments]
    result = subprocess.run(
        command, env=bench_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    figures = parse_figures(result.stdout)
    assert expected <= figures.keys(), f"missing figures {expected - figures.keys()} in {sorted(figures)}"


def _alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (and not a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == started


def _descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid``, with their start times (to tell a reused pid)."""
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                found[child] = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19]
            except OSError:
                continue
            todo.append(child)
    return found


#: Interrupted benches: (script, extra arguments, signal).  ``latency.py`` runs a Redis server, a
#: worker master and its worker, each leading a group; ``recovery_under_up.py`` runs ``tradeflow up``,
#: whose worker master leads a group of its own, which ``up`` alone stops.
INTERRUPTED = [
    ("latency.py", [], signal.SIGINT),
    ("latency.py", [], signal.SIGTERM),
    ("recovery_under_up.py", ["{redis_url}"], signal.SIGTERM),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("script", "arguments", "number"),
    INTERRUPTED,
    ids=[f"{script}-{signal.Signals(number).name}" for script, _, number in INTERRUPTED],
)
def test_an_interrupted_bench_leaves_no_process_behind(
    script: str, arguments: list[str], number: int, redis_url: str
) -> None:
    """A bench stopped once three processes of its run (children and theirs): every process it
    started, and every process they started, is gone when it has exited."""
    bench = subprocess.Popen(
        [sys.executable, str(BENCH / script), "--smoke", *[a.format(redis_url=redis_url) for a in arguments]],
        env=bench_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to the bench alone, not to a terminal's group
    )
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen |= _descendants(bench.pid)
            if len(_descendants(bench.pid)) >= 3:  # e.g. redis-server, the worker master, its worker
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the bench started {len(seen)} processes in a minute")
        time.sleep(0.5)
        seen |= _descendants(bench.pid)
        bench.send_signal(number)
        _, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode != 0, "an interrupted bench reported success"
    assert "KeyboardInterrupt" in stderr, stderr[-3000:]
    deadline = time.monotonic() + 5
    while (
        left := [pid for pid, started in seen.items() if _alive(pid, started)]
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes outlived the interrupted bench: {left}"


#: A bench body that starts a child leading a group whose other member ignores SIGTERM, then fails.
FAILING_BENCH = textwrap.dedent(
    """
    import subprocess, sys
    from bench import harness

    STUBBORN = (
        "import signal, subprocess, sys, time\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "time.sleep(120)\\n"
    )
    LEADER = (
        "import subprocess, sys, time\\n"
        f"child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}])\\n"
        "print(child.pid, flush=True)\\n"
        "time.sleep(120)\\n"
    )
    with harness.supervised():
        leader = harness.start([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True)
        print(leader.pid, leader.stdout.readline().strip(), flush=True)
        raise RuntimeError("the bench failed")
    """
)


@pytest.mark.timeout(60)
def test_a_failing_bench_stops_its_children_and_what_they_left_behind() -> None:
    """The leader exits on SIGTERM, its own child ignores it: both are gone after the failure."""
    result = subprocess.run(
        [sys.executable, "-c", FAILING_BENCH],
        env=bench_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 1 and "the bench failed" in result.stderr, result.stderr[-3000:]
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
