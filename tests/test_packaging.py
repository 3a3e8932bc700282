"""Optional dependencies come in extras: a job or command that needs a missing one names it."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import dramatiq
import pytest
from conftest import REPO_ROOT, settings_env
from jobs_support import sqlite_only, wait_for
from test_jobs_control import harness  # noqa: F401  (fixture)

from actors.middleware import EXTRA_OF_MODULE, list_dead_letters
from storage import create_db_engine, get_task


def test_the_core_install_leaves_the_trading_stack_to_extras():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("deltalake", "pandas", "pyarrow", "openai", "ib_async", "grpc", "restrictedpython"):
        assert heavy not in core, heavy
    extras = project["optional-dependencies"]
    assert {"data", "ib", "ai", "strategy", "otlp", "all"} <= set(extras)
    # every module the error names has its extra, which brings it
    for module, extra in EXTRA_OF_MODULE.items():
        wanted = {"RestrictedPython": "restrictedpython", "seccomp": "pyseccomp", "grpc": "otlp-proto-grpc"}
        assert wanted.get(module, module).lower() in " ".join(extras[extra]).lower(), (module, extra)
    for package in ("actors", "saga", "storage", "orchestration", "api"):
        assert (REPO_ROOT / package / "py.typed").exists()


@sqlite_only
@pytest.mark.timeout(60)
def test_an_actor_whose_extra_is_missing_dead_letters_naming_it(harness, settings, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "deltalake", None)  # as if `tradeflow[data]` were not installed

    @dramatiq.actor(broker=harness, max_retries=3)
    def reads_delta():
        import deltalake  # noqa: F401

    message = reads_delta.send()
    harness.start_worker()
    engine = create_db_engine(settings.database_url)
    row = wait_for(
        lambda: (r := get_task(engine, message.message_id)) is not None and r.status == "dead_letter" and r,
        timeout=30,
        what="the dead letter",
    )
    assert row.retry_count == 0  # not retried: installing is the fix
    assert "pip install 'tradeflow[data]'" in row.error_message
    [letter] = list_dead_letters(harness)
    assert "needs the [data] extra" in letter.reason


@sqlite_only
def test_a_command_whose_extra_is_missing_says_which(settings):
    code = "import sys; sys.modules['deltalake'] = None; from api.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "ib", "updates"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs the [data] extra" in done.stderr and "pip install 'tradeflow[data]'" in done.stderr
