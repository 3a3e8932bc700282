"""Actors for the end-to-end tests, run by real ``dramatiq actors tests.e2e_actors`` processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq

import actors  # noqa: F401  (configures the broker from the environment)

#: Queue of the end-to-end actors.
QUEUE = "e2e"


@dramatiq.actor(queue_name=QUEUE)
def add(x: int, y: int) -> int:
    return x + y


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow_marker(folder: str, seconds: float, later_seconds: float | None = None) -> None:
    """Append this process's pid to ``starts`` then, after ``seconds`` (``later_seconds`` on
    any start but the first, if given), to ``finishes``."""
    path = Path(folder)
    first = not (path / "starts").exists()
    with open(path / "starts", "a") as file:
        file.write(f"{os.getpid()}\n")
    time.sleep(seconds if first or later_seconds is None else later_seconds)
    with open(path / "finishes", "a") as file:
        file.write(f"{os.getpid()}\n")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def timed_marker(folder: str, seconds: float) -> None:
    """Append ``start end`` (epoch seconds) of this run to ``runs`` in ``folder``."""
    started = time.time()
    time.sleep(seconds)
    with open(Path(folder) / "runs", "a") as file:
        file.write(f"{started} {time.time()}\n")
