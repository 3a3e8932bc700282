"""Helpers of the job-control tests: a fast clock, a cuttable TCP link, queue inspection."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pendulum
import pytest
import redis
from conftest import REPO_ROOT, settings_env
from dramatiq.message import Message
from tcp_proxy import proxied_redis


@dataclass
class FastClock:
    """Virtual time running ``speed`` times faster than the wall clock from ``real_start``."""

    virtual_start: pendulum.DateTime
    real_start: float
    speed: float = 60.0

    def now(self) -> pendulum.DateTime:
        return self.virtual_start.add(seconds=(time.time() - self.real_start) * self.speed)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0) / self.speed)


@dataclass
class FixedClock:
    """A clock the test moves by hand; sleeping does nothing."""

    moment: pendulum.DateTime

    def now(self) -> pendulum.DateTime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        pass


def queued_messages(client: redis.Redis, namespace: str, queue: str) -> list[Message]:
    """Every message stored in ``queue`` (waiting or unacked)."""
    return [Message.decode(data) for data in client.hvals(f"{namespace}:{queue}.msgs")]


def wait_for(
    predicate, *, timeout: float, interval: float = 0.1, what: str | Callable[[], str] = "condition"
):
    """``predicate()`` once true; ``what`` (or, callable, what it returns at the timeout) names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


#: For tests whose subject is Redis-side: run them on SQLite only (the SQL parts run on both elsewhere).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextlib.contextmanager
def cuttable_redis(settings):
    """``(proxy, proxied_settings)``: the test's settings reaching Redis through a cuttable link."""
    link, proxied = proxied_redis(settings.redis_url)
    try:
        yield link, settings.model_copy(update={"redis_url": proxied})
    finally:
        link.close()


class WorkerProcesses:
    """Real ``dramatiq <module> <arguments>`` worker processes, each in its own process group.

    Parameters:
      settings(Settings): What the workers read.
      module(str): Actor module (or modules, space-separated) on the command line.
    """

    def __init__(self, settings, *, module: str = "actors tests.jobs_actors") -> None:
        self.env = settings_env(settings)
        self.module = module.split()
        self.running: list[subprocess.Popen] = []

    def start(self, *arguments: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "dramatiq", *self.module, *arguments]
        process = subprocess.Popen(command, env=self.env, cwd=REPO_ROOT, start_new_session=True)
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(process)
