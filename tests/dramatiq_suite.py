"""Dramatiq's own Redis broker tests, run against :class:`~actors.broker.WakeupRedisBroker`.

The tests (``tests/test_redis.py`` of the installed Dramatiq version) come
from Dramatiq's sdist on the package index at test time; the wheel ships no
tests and nothing of them is copied into this repository.  The sdist lacks
upstream's ``conftest.py`` and ``common.py`` as well, so this module stands
in for both: its fixtures build our broker where upstream builds
``RedisBroker()``, on a private ``redis-server`` (the tests hard-code the
``dramatiq`` namespace and flush the whole server between tests).

The suite runs in a child pytest (Dramatiq's tests set the global broker and
declare actors at module level; our own suite must not inherit that).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from xml.etree import ElementTree

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from actors.broker import WakeupRedisBroker

#: The Dramatiq test module that is run, as a path inside the sdist.
SUITE_FILE = "tests/test_redis.py"

#: Environment variable naming the private Redis the child run's fixtures use.
REDIS_URL_VARIABLE = "TRADEFLOW_DRAMATIQ_SUITE_REDIS_URL"

#: Set (to anything) to run the suite on Dramatiq's own broker instead, to compare.
STOCK_VARIABLE = "TRADEFLOW_DRAMATIQ_SUITE_STOCK"

#: Tests of the suite that probe an internal detail we changed on purpose, with why, and the
#: test of ours that covers the same behaviour black-box.
SKIPS: dict[str, str] = {
    "test_redis_consumer_ack_can_retry_on_connection_error": (
        "acks are deferred: the consumer sends them with its next fetch (one script call per batch), "
        "never through do_ack, so a patched do_ack is never called. Same behaviour, black-box: "
        "tests/test_dramatiq_compat.py::test_connection_cut_while_acks_are_flushed"
    ),
}

#: Tests of the suite that race a worker thread against the consumer thread's ack, with why: they
#: get two more tries, so a loaded machine does not fail them while a real break still does.
RACY: dict[str, str] = {
    "test_redis_join_race_condition": (
        "counts the queue from the next message's actor right after the previous one finished; the "
        "consumer thread sends that ack (Dramatiq's too, through its acks queue), and on a loaded "
        "machine the next message can start first: 4 counted instead of 2"
    ),
}

#: Where upstream's ``tests/common.py`` would be: the one helper test_redis.py imports.
COMMON_MODULE = (
    '"""Stand-in for upstream\'s tests/common.py."""\nfrom dramatiq_suite import worker  # noqa: F401\n'
)

#: The child run's conftest: the fixtures and skip list of this module.
CONFTEST_MODULE = (
    '"""Fixtures building tradeflow\'s broker (see tests/dramatiq_suite.py)."""\n'
    "from dramatiq_suite import pytest_collection_modifyitems, redis_broker, redis_worker  # noqa: F401\n"
)

#: The child run's own ini file, so the repository's pytest options do not apply to it.
PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\ntimeout = 200\n"


# --- fixtures of the child run (upstream's conftest.py, with our broker) -------------------------


@contextmanager
def worker(*args, **kwargs) -> Iterator[Worker]:
    """Upstream's helper: a started worker, stopped on exit."""
    running = Worker(*args, **kwargs)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def redis_broker() -> Iterator[WakeupRedisBroker]:
    """Our broker where upstream builds ``RedisBroker()``: default namespace, default middleware."""
    broker_class = RedisBroker if os.environ.get(STOCK_VARIABLE) else WakeupRedisBroker
    broker = broker_class(url=os.environ[REDIS_URL_VARIABLE])
    broker.client.flushall()  # the private server of this run, never the shared one
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.client.flushall()
    broker.close()


@pytest.fixture
def redis_worker(redis_broker: WakeupRedisBroker) -> Iterator[Worker]:
    running = Worker(redis_broker, worker_threads=32)
    running.start()
    yield running
    running.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get(STOCK_VARIABLE):
        return
    for item in items:
        name = item.originalname if isinstance(item, pytest.Function) else item.name
        if name in SKIPS:
            item.add_marker(pytest.mark.skip(reason=SKIPS[name]))
        if name in RACY:
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=1))


# --- the parent side: fetch, lay out and run the suite --------------------------------------------


@dataclass
class SuiteResult:
    """Outcome of one child run: test name -> "passed", "failed", "error" or "skipped"."""

    outcomes: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    output: str = ""
    seconds: float = 0.0


def fetch_suite(cache: Path) -> Path:
    """``test_redis.py`` of the installed Dramatiq version, from its sdist (downloaded once to ``cache``)."""
    release = version("dramatiq")
    target = cache / f"dramatiq-{release}" / "test_redis.py"
    if target.exists():
        return target
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--dest", str(download), f"dramatiq=={release}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    sdist = download / f"dramatiq-{release}.tar.gz"
    if run.returncode or not sdist.exists():
        raise RuntimeError(f"could not download Dramatiq {release}'s sdist: {run.stderr.strip()[-600:]}")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"dramatiq-{release}/{SUITE_FILE}")
        if member is None:
            raise RuntimeError(f"Dramatiq {release}'s sdist has no {SUITE_FILE}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(member.read())
    return target


def lay_out(suite_file: Path, where: Path) -> Path:
    """A package ``dramatiq_tests`` holding the suite, our conftest and common; returns its root."""
    package = where / "dramatiq_tests"
    shutil.rmtree(where, ignore_errors=True)
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "common.py").write_text(COMMON_MODULE)
    (package / "conftest.py").write_text(CONFTEST_MODULE)
    shutil.copyfile(suite_file, package / "test_redis.py")
    (where / "pytest.ini").write_text(PYTEST_INI)
    return where


def suite_tests(suite_file: Path) -> list[str]:
    """Names of the test functions of ``suite_file``, in file order."""
    return re.findall(r"^def (test_\w+)\(", suite_file.read_text(), flags=re.MULTILINE)


def run_suite(
    root: Path, tests: list[str], *, redis_url: str, repo_root: Path, part: str = "all", timeout: float = 280
) -> SuiteResult:
    """Run ``tests`` of the laid-out suite in a child pytest; their outcomes."""
    report = root / f"report-{part}.xml"
    env = {
        **os.environ,
        REDIS_URL_VARIABLE: redis_url,
        "PYTHONPATH": os.pathsep.join([str(repo_root), str(repo_root / "tests")]),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-c", str(root / "pytest.ini"), "--rootdir", str(root)]
    command += [f"--junitxml={report}", *(f"dramatiq_tests/test_redis.py::{name}" for name in tests)]
    started = time.monotonic()
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    result = SuiteResult(output=run.stdout[-6000:] + run.stderr[-2000:], seconds=time.monotonic() - started)
    if not report.exists():
        return result
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                result.details[name] = (child.get("message") or "") + "\n" + (child.text or "")[-3000:]
                break
        result.outcomes[name] = outcome
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A ``redis-server`` of the caller alone, on a free loopback port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(workdir)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"private redis-server on port {port} did not start")
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
