"""README.md's "write your own actor and workflow" runs as written, against real Redis and a real worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, settings_env
from jobs_support import sqlite_only

pytestmark = [pytest.mark.e2e, sqlite_only]


def readme_files() -> dict[str, str]:
    """The code blocks README.md marks with ``<!-- readme-test: NAME -->``, by name."""
    text = (REPO_ROOT / "README.md").read_text()
    pattern = r"<!-- readme-test: (\S+) -->\n```\w*\n(.*?)```"
    return {name: body for name, body in re.findall(pattern, text, flags=re.DOTALL)}


@pytest.mark.timeout(150)
def test_the_write_your_own_section_runs_as_written(settings, tmp_path):
    files = readme_files()
    assert set(files) == {"myjobs.py", "run.sh"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    # `.venv/bin/...` as in the README: the folder's .venv is the project's
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    done = subprocess.run(
        ["bash", "-e", "run.sh"],
        cwd=tmp_path,
        env=settings_env(settings) | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "completed" in done.stdout and "190.0" in done.stdout
    assert re.search(r"quote .*succeeded", done.stdout) and re.search(r"double .*succeeded", done.stdout)
