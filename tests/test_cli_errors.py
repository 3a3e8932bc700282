"""Every command with every broken setting: one line on stderr, no traceback, a non-zero exit."""

from __future__ import annotations

import http.server
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import run_cli, settings_env
from jobs_support import sqlite_only

#: Commands that read the settings; those in ``NEEDS_REDIS`` also talk to Redis.
COMMANDS = (
    ("send", "ping"),
    ("jobs", "list"),
    ("jobs", "cancel", "no-such-id"),
    ("dlq", "list"),
    ("schedules", "list"),
    ("workflow", "start", "system_check"),
    ("health",),
    ("scheduler",),  # with broken settings only: with good ones it runs
)
NEEDS_REDIS = {"send", "jobs cancel", "dlq", "schedules", "workflow start", "health"}


def _needs_redis(command: tuple[str, ...]) -> bool:
    return command[0] in NEEDS_REDIS or " ".join(command[:2]) in NEEDS_REDIS


@pytest.fixture
def http_server():
    """Something that is not Redis listening on a port: an HTTP server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    server.shutdown()


@sqlite_only
@pytest.mark.timeout(170)
def test_each_command_with_each_broken_setting_fails_in_one_line(settings, tmp_path, http_server):
    good = settings_env(settings) | {"COLUMNS": "80"}
    broken = {
        "schedules not JSON": ({"TRADEFLOW_SCHEDULES": "{bad"}, "TRADEFLOW_SCHEDULES"),
        "SQLite folder missing": (
            {"TRADEFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/no/such/folder/x.db"},
            "does not exist",
        ),
        "Redis down": ({"TRADEFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}, "Redis"),
        "Redis URL is an HTTP server": ({"TRADEFLOW_REDIS_URL": http_server}, "Redis"),
    }
    cases = []
    for setting, (overrides, says) in broken.items():
        for command in COMMANDS:
            if setting.startswith("Redis") and not _needs_redis(command):
                continue
            cases.append((setting, says, command, good | overrides))
    # with good settings, an id nobody knows
    for command in (
        ("jobs", "show", "no-such-id"),
        ("jobs", "cancel", "no-such-id"),
        ("dlq", "show", "nope"),
    ):
        cases.append(("unknown id", "no-such-id" if "no-such-id" in command else "nope", command, good))

    def run(case):
        command, env = case[2], case[3]
        return case, run_cli(*command, env=env, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, cases))
    problems = []
    for (setting, says, command, _), done in results:
        what = f"{' '.join(command)} with {setting}"
        output = done.stdout + done.stderr
        if "Traceback" in output:
            problems.append(f"{what}: traceback\n{output[-800:]}")
        elif done.returncode == 0:
            problems.append(f"{what}: exit code 0\n{output[-300:]}")
        elif done.stderr.strip() and (len(done.stderr.strip().splitlines()) != 1 or says not in done.stderr):
            problems.append(f"{what}: stderr is not one line saying {says!r}: {done.stderr!r}")
    assert not problems, "\n".join(problems)
    # a wrong path creates nothing
    assert not (tmp_path / "no").exists()
