"""How big ``pip install tradeflow`` is without extras, and that ``tradeflow send ping`` works with it.

Builds the wheel, installs it into a fresh virtualenv from the package index
(the network is needed), measures the virtualenv's ``site-packages`` and sends
a ping through the Redis at ``TRADEFLOW_REDIS_URL`` (default 127.0.0.1:6379/15)
with a SQLite file in the temporary folder.  Not part of the test suite (it
downloads about twenty packages); run it by hand after changing dependencies:

    python bench/core_install.py            # exits 1 above LIMIT_MB

It also checks that the heavy modules (deltalake, pandas, openai, ib_async, grpc)
are absent from the core install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The most ``site-packages`` of a core install may weigh, in MB (issue 28).
LIMIT_MB = 150

#: Modules that must come only with extras.
HEAVY = ("deltalake", "pandas", "pyarrow", "openai", "ib_async", "grpc")

REPO = Path(__file__).resolve().parent.parent


def _size_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tradeflow-core-") as temp:
        work = Path(temp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "-w",
                str(work / "dist"),
                str(REPO),
            ],
            check=True,
        )
        [wheel] = (work / "dist").glob("tradeflow-*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        python = work / "venv" / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True)
        site = next((work / "venv" / "lib").glob("python*/site-packages"))
        size = _size_mb(site)
        present = [name for name in HEAVY if (site / name).exists()]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_")},
            "TRADEFLOW_REDIS_URL": os.environ.get("TRADEFLOW_REDIS_URL", "redis://127.0.0.1:6379/15"),
            "TRADEFLOW_NAMESPACE": f"core-install-{os.getpid()}",
            "TRADEFLOW_DATABASE_URL": f"sqlite:///{work}/core.db",
        }
        tradeflow = str(work / "venv" / "bin" / "tradeflow")
        upgraded = subprocess.run(
            [tradeflow, "db", "upgrade"], env=env, cwd=work, capture_output=True, text=True
        )
        sent = subprocess.run([tradeflow, "send", "ping"], env=env, cwd=work, capture_output=True, text=True)
    print(
        f"core install: {size:.0f} MB of site-packages (limit {LIMIT_MB}); "
        f"heavy modules present: {present or 'none'}"
    )
    print(f"db upgrade: exit {upgraded.returncode} {upgraded.stderr.strip()[-300:]}")
    print(f"send ping: exit {sent.returncode} {sent.stdout.strip()} {sent.stderr.strip()[-300:]}")
    print(f"took {time.monotonic() - started:.0f}s")
    ok = size <= LIMIT_MB and not present and upgraded.returncode == 0 and sent.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
