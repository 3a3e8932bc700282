"""Prometheus counters of workflow runs, steps and compensations, for the saga engine to call.

The counters are created on first use, so in a ``dramatiq`` worker process
they land in the multiprocess directory that ``actors.telemetry.metrics`` set up at
boot and are served on ``/metrics`` with the task metrics.  Elsewhere they
count in memory and cost next to nothing.
"""

from __future__ import annotations

import threading
from typing import Any

_counters: dict[str, Any] = {}
_lock = threading.Lock()

#: name -> (help, labels) of the workflow counters.
COUNTERS = {
    "workflow_runs": ("Workflow runs that reached a status.", ("workflow", "status")),
    "workflow_steps": ("Workflow steps that reached a status.", ("workflow", "step", "status")),
    "workflow_compensations": ("Compensating steps, by outcome.", ("workflow", "step", "status")),
}


def _counter(name: str) -> Any:
    with _lock:
        counter = _counters.get(name)
        if counter is None:
            from prometheus_client import Counter

            documentation, labels = COUNTERS[name]
            counter = _counters[name] = Counter(name, documentation, labels, registry=None)
        return counter


def count_run(*, workflow: str, status: str) -> None:
    """A run of ``workflow`` reached ``status`` (e.g. completed, failed, compensated, compensation_failed)."""
    _counter("workflow_runs").labels(workflow, status).inc()


def count_step(*, workflow: str, step: str, status: str) -> None:
    """A step of ``workflow`` reached ``status``."""
    _counter("workflow_steps").labels(workflow, step, status).inc()


def count_compensation(*, workflow: str, step: str, status: str) -> None:
    """A compensating step of ``workflow`` reached ``status``."""
    _counter("workflow_compensations").labels(workflow, step, status).inc()
