"""How big ``pip install tradeflow`` is without extras, and that ``tradeflow send ping`` works with it.

Builds the wheel, installs it into a fresh virtualenv from the package index
(the network is needed), measures the virtualenv's ``site-packages`` and sends
a ping through the Redis at ``TRADEFLOW_REDIS_URL`` (default 127.0.0.1:6379/15)
with a SQLite file in the temporary folder.  It downloads about twenty packages:
run it by hand after changing dependencies:

    python bench/core_install.py            # exits 1 above LIMIT_MB

It also checks that the heavy modules (deltalake, pandas, openai, ib_async, grpc)
are absent from the core install.

``--smoke`` (what the test suite runs) installs no dependency: the wheel alone goes
into a virtualenv made without pip, with no index, and this interpreter's packages
are put on the virtualenv's path; ``db upgrade`` and ``send ping`` run as in the full
run, with the wheel's code.  The size is then tradeflow's own files, and the heavy
modules check sees only them: a smoke run checks the bench, not the core install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

#: The most ``site-packages`` of a core install may weigh, in MB (issue 28).
LIMIT_MB = 150

#: Modules that must come only with extras.
HEAVY = ("deltalake", "pandas", "pyarrow", "openai", "ib_async", "grpc")

#: Seconds a command of the build, the install or the installed package may take.
COMMAND_TIMEOUT = 600

#: What is left out of the copy of the checkout the wheel is built from: a build in the checkout
#: would leave ``build/`` (whose stale files a later build packs) and ``tradeflow.egg-info`` in it.
NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".tradeflow")


def _clean_env() -> dict[str, str]:
    """This environment without settings of ours or a Python path: the checkout on the path
    (its ``tradeflow.egg-info`` after a build) would pass for an installed tradeflow."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TRADEFLOW_") and key not in ("PYTHONPATH", "PYTHONHOME")
    }


def _size_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def _run(command: Sequence[str], **popen) -> subprocess.CompletedProcess:
    """``command`` to its end, as :func:`bench.harness.start`'s child: stopped (its process group
    too) if the bench fails or is interrupted meanwhile; its output captured."""
    process = harness.start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
    return subprocess.CompletedProcess(command, harness.finish(process), stdout, stderr)


def _checked(command: Sequence[str]) -> None:
    result = _run(command, env=_clean_env())
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")


def install(work: Path, *, smoke: bool) -> Path:
    """Build the wheel and install it into a fresh virtualenv in ``work``: its ``site-packages``."""
    sources = work / "sources"
    shutil.copytree(REPO, sources, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=True)
    _checked(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "dist"), str(sources)]
    )
    [wheel] = (work / "dist").glob("tradeflow-*.whl")
    venv = work / "venv"
    if not smoke:
        _checked([sys.executable, "-m", "venv", str(venv)])
        _checked([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)])
        return next((venv / "lib").glob("python*/site-packages"))
    _checked([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    _checked([*pip, "--no-index", "--no-deps", str(wheel)])
    site = next((venv / "lib").glob("python*/site-packages"))
    # The dependencies, from this interpreter (after the wheel on the path: its code is what runs).
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "zz_bench_smoke_dependencies.pth").write_text("".join(f"{path}\n" for path in paths))
    return site


def main() -> int:
    parser = harness.parser(__doc__, raw=True)
    args = harness.parse(parser)
    started = time.monotonic()
    redis_url = os.environ.get("TRADEFLOW_REDIS_URL", "redis://127.0.0.1:6379/15")
    namespace = f"core-install-{os.getpid()}"
    with harness.supervised(), tempfile.TemporaryDirectory(prefix="tradeflow-core-") as temp:
        work = Path(temp)
        site = install(work, smoke=args.smoke)
        size = _size_mb(site)
        present = [name for name in HEAVY if (site / name).exists()]
        # The installed package alone: no TRADEFLOW_* setting of ours, no checkout on the path.
        env = _clean_env() | {
            "TRADEFLOW_REDIS_URL": redis_url,
            "TRADEFLOW_NAMESPACE": namespace,
            "TRADEFLOW_DATABASE_URL": f"sqlite:///{work}/core.db",
        }
        tradeflow = str(work / "venv" / "bin" / "tradeflow")
        try:
            upgraded = _run([tradeflow, "db", "upgrade"], env=env, cwd=work)
            sent = _run([tradeflow, "send", "ping"], env=env, cwd=work)
        finally:
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{namespace}:*", count=1000):
                client.delete(key)
            client.close()
    print(
        f"core install{' (smoke: the wheel alone, no dependency)' if args.smoke else ''}: "
        f"{size:.0f} MB of site-packages (limit {LIMIT_MB}); heavy modules present: {present or 'none'}"
    )
    print(f"db upgrade: exit {upgraded.returncode} {upgraded.stderr.strip()[-300:]}")
    print(f"send ping: exit {sent.returncode} {sent.stdout.strip()} {sent.stderr.strip()[-300:]}")
    seconds = time.monotonic() - started
    print(f"took {seconds:.0f}s")
    harness.figure("core.site_packages_mb", size, "MB")
    harness.figure("core.heavy_modules", len(present))
    harness.figure("core.db_upgrade_ok", upgraded.returncode == 0)
    harness.figure("core.send_ping_ok", sent.returncode == 0)
    harness.figure("core.seconds", seconds, "s")
    ok = size <= LIMIT_MB and not present and upgraded.returncode == 0 and sent.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
