"""The operations runner: the process that runs the bulk operations the API accepts.

``tradeflow api`` starts one beside itself (``tradeflow api-operations``) and restarts it if
it dies; the API only queues an operation (:class:`~api.http.bulk.Operations` with
``runs=False``), the runner takes it from the queue, runs it in a thread, heart-beats it and
adopts the operations of runners that stopped.  Retrying 100,000 dead letters then costs the
API's requests no interpreter time: they share the machine, not a lock.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.settings import Settings

from .. import stack

#: Seconds between two looks at the queue (and at whether the parent process lives).
TAKE_TIMEOUT_S = 1.0

#: Seconds a runner gets to finish after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0

logger = logging.getLogger(__name__)


def run_operations(settings: Settings, *, broker: Any, workflows: Any, parent_pid: int | None = None) -> None:
    """Take and run queued operations until SIGINT/SIGTERM, or until ``parent_pid`` (the API
    that started this runner) is gone: a runner outliving its API would be supervised by no one."""
    from .bulk import operations_of
    from .context import ApiContext

    context = ApiContext.build(settings, broker=broker, workflows=workflows, serves_requests=False)
    operations = operations_of(context)
    operations.watch()
    logger.info("Operations runner %s taking operations.", operations.owner)
    try:
        while parent_pid is None or os.getppid() == parent_pid:
            try:
                operations.take(timeout=TAKE_TIMEOUT_S)
            except Exception as exc:  # Redis away: the next round tries again
                logger.warning("Operations runner: %s", exc)
                time.sleep(TAKE_TIMEOUT_S)
    except KeyboardInterrupt:
        pass
    finally:
        operations.stop()
    if parent_pid is not None and os.getppid() != parent_pid:
        # the work in flight is left to the heartbeat: another runner adopts it
        logger.warning("Operations runner: the API process %s is gone; stopping.", parent_pid)
        os._exit(1)


class RunnerProcess:
    """Keeps one operations runner child alive while the API serves, with the supervisor
    ``tradeflow up`` uses (:class:`api.stack.Supervisor`: restarted after a backoff of 0.5 s
    doubling to 30 s), polled by a thread of its own; stopped by :meth:`stop`.

    Parameters:
      command: The runner's command line (``tradeflow api-operations``), to which
        ``--parent-pid <this process>`` is added.
      log: ``log(line)`` for restarts.  Defaults to the module logger.
    """

    def __init__(self, *, command: list[str], log: Callable[[str], None] | None = None) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.command = [*command, "--parent-pid", str(os.getpid())]
        self.log = log or self.logger.warning
        self.supervisor: stack.Supervisor | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        env = dict(os.environ)
        process = subprocess.Popen(self.command, env=env, start_new_session=True)  # the API's stdout
        self.supervisor = stack.Supervisor(
            processes=[process], names=["operations runner"], env=env, log=self.log
        )
        self._thread = threading.Thread(target=self._watch, name="tradeflow-operations-runner", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(stack.POLL_INTERVAL):
            self.supervisor.poll()

    def stop(self) -> None:
        """SIGTERM to the runner, SIGKILL after :data:`STOP_TIMEOUT_S` seconds."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(stack.POLL_INTERVAL * 4)
        if self.supervisor is not None:
            stack.stop(self.supervisor.processes, timeout=STOP_TIMEOUT_S)
