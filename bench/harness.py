"""What every benchmark shares: the ``--smoke`` flag, figure lines a test can parse, and child
processes that never outlive the benchmark.

* ``--smoke``: tiny sizes and one round, a few seconds: the test suite runs every bench this way
  (``tests/test_bench_smoke.py``), so a change that breaks a bench fails CI.  Its figures mean
  nothing; that they are printed and parse is what is checked.
* :func:`figure`: one ``figure: NAME = VALUE UNIT`` line per measured figure, besides the bench's
  own human-readable report; :func:`parse_figures` reads them back.
* :func:`start` and :func:`supervised`: every child a bench starts leads a process group of its
  own and is registered; when the bench ends, fails, or gets SIGINT or SIGTERM, every registered
  child still running is stopped (SIGTERM, then SIGKILL to what is left of its group).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.stack import interrupted_by_stop_signals, stop  # noqa: E402

logger = logging.getLogger(__name__)

#: How a figure line starts.
FIGURE_PREFIX = "figure:"

#: A figure's name: dotted words, no spaces (``tradeflow.drain_per_s``).
FIGURE_NAME = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")

#: A whole figure line: ``figure: NAME = VALUE`` and an optional unit.
FIGURE_LINE = re.compile(rf"^{FIGURE_PREFIX} (?P<name>\S+) = (?P<value>\S+)(?: (?P<unit>.+))?$")

#: Seconds a child gets to stop after SIGTERM before its process group is killed.
STOP_TIMEOUT = 30.0

#: The same in a ``--smoke`` run, whose figures do not count but whose time does: a ``dramatiq``
#: worker takes about 3 s to stop, and a smoke run of a bench starts several.
SMOKE_STOP_TIMEOUT = 1.0

_stop_timeout = STOP_TIMEOUT

#: Seconds the processes of a stopped child's group get to exit after it, before they are killed.
LEFT_BEHIND_GRACE = 2.0

#: The setting of the workers' metrics exposition port, set to 0 in :func:`start`'s children.
METRICS_PORT_VARIABLE = "TRADEFLOW_METRICS_PORT"

#: Children started by :func:`start`, still to be stopped.
_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()


def parser(description: str, *, raw: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the ``--smoke`` flag every bench takes."""
    result = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )
    result.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one round, a few seconds: checks the bench runs"
    )
    return result


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser.parse_args()``; with ``--smoke``, children get :data:`SMOKE_STOP_TIMEOUT` to stop."""
    global _stop_timeout
    args = parser.parse_args()
    _stop_timeout = SMOKE_STOP_TIMEOUT if args.smoke else STOP_TIMEOUT
    return args


def slug(text: str) -> str:
    """``text`` as a part of a figure name: ``"raw dramatiq"`` -> ``raw_dramatiq``."""
    return re.sub(r"[^A-Za-z0-9_%+-]+", "_", text.strip()).strip("_")


def figure(name: str, value: float, unit: str = "") -> None:
    """Print one figure line; a name that would not parse is a bug of the bench."""
    if not FIGURE_NAME.fullmatch(name):
        raise ValueError(f"figure name {name!r} is not dotted words")
    print(f"{FIGURE_PREFIX} {name} = {float(value):.6g} {unit}".rstrip(), flush=True)


def parse_figures(text: str) -> dict[str, float]:
    """The figures of a bench's output, by name; a malformed figure line raises ``ValueError``."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(FIGURE_PREFIX):
            continue
        match = FIGURE_LINE.match(line)
        if match is None or not FIGURE_NAME.fullmatch(match["name"]):
            raise ValueError(f"malformed figure line: {line!r}")
        value = float(match["value"])
        if not math.isfinite(value):
            raise ValueError(f"figure {match['name']} is not a finite number: {line!r}")
        if match["name"] in figures:
            raise ValueError(f"figure {match['name']} printed twice")
        figures[match["name"]] = value
    return figures


#: The PostgreSQL server the benches use (its ``test`` database); ``BENCH_POSTGRES_URL`` overrides.
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_schema(prefix: str, *, url: str = POSTGRES_URL, query: str = "") -> Iterator[str]:
    """The URL of a PostgreSQL schema of this run alone (``query``: more URL parameters), dropped
    afterwards: a bench never migrates a schema that tests or other runs share.  Stop the
    processes using it first, or their connections hold the drop."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{os.urandom(4).hex()}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}?options=-csearch_path%3D{schema}{'&' + query if query else ''}"
    finally:
        with admin.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))  # a straggler's lock: say so
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def start(command: Sequence[str], *, metrics: bool = False, **popen: object) -> subprocess.Popen:
    """``subprocess.Popen(command, **popen)`` leading a process group of its own (a terminal's
    Ctrl-C reaches only the bench, which stops it), registered to be stopped by :func:`supervised`.

    Its environment (``env``, by default this process's) gets ``TRADEFLOW_METRICS_PORT=0``:
    ``dramatiq`` workers then start no metrics exposition, so a bench run beside a stack that
    serves on the default port logs no "Address already in use".  A bench that measures the
    exposition passes ``metrics=True`` and keeps the port its ``env`` names."""
    given = popen.pop("env", None)
    env = dict(os.environ if given is None else given)
    if not metrics:
        env[METRICS_PORT_VARIABLE] = "0"
    process = subprocess.Popen(list(command), start_new_session=True, env=env, **popen)
    with _children_lock:
        _children.append(process)
    return process


def finish(process: subprocess.Popen, *, timeout: float | None = None) -> int:
    """Stop ``process`` and what is left of its process group now (SIGKILL after ``timeout``
    seconds, by default :data:`STOP_TIMEOUT`); its return code."""
    with _children_lock:
        if process in _children:
            _children.remove(process)
    return _stop_groups([process], timeout=_stop_timeout if timeout is None else timeout)[0]


@contextmanager
def supervised() -> Iterator[None]:
    """Run a bench's body: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in it, and on the way
    out, however it ends, every child started by :func:`start` and still running is stopped."""
    with interrupted_by_stop_signals() as stopping:
        try:
            yield
        finally:
            stopping()  # a second signal must not cut the children's stop short
            with _children_lock:
                running, _children[:] = list(reversed(_children)), []
            if running:
                _stop_groups(running, timeout=_stop_timeout)


def _stop_groups(processes: list[subprocess.Popen], *, timeout: float) -> list[int]:
    """:func:`api.stack.stop`, then SIGKILL to every process that was in one of their groups
    before the stop and still is (a leader that exited may have left its children behind)."""
    members = [(pid, process.pid) for process in processes for pid in _group_members(process.pid)]
    codes = stop(processes, timeout=timeout)
    deadline = time.monotonic() + LEFT_BEHIND_GRACE  # a group just killed takes a moment to go
    while members:
        members = [(pid, pgid) for pid, pgid in members if _group_of(pid) == pgid]
        if not members or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid, pgid in members:
        logger.warning("killing %d, left behind in process group %d", pid, pgid)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return codes


def _group_of(pid: int) -> int | None:
    """Process group of a live ``pid`` (``None``: gone, or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``, the leader excepted."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pgid and _group_of(int(entry.name)) == pgid:
            pids.append(int(entry.name))
    return pids
