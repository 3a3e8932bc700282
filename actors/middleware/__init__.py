"""Per-message policies: the audit trail, retries, dead letters, cancellation, stalled-message
recovery and worker heartbeats.
"""

from .audit import DEFAULT_PRIORITY, Audit, worker_id
from .cancellation import CancelState, CancelWatcher, cancel_job, canceller
from .dead_letters import (
    DeadLetterLog,
    UnknownDeadLetter,
    find_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    retry_dead_letter,
)
from .errors import JobCancelled, NonRetryableError
from .heartbeat import WORKERS_KEY, WorkerHeartbeat, workers_alive
from .recovery import StalledRecovery, recover_stalled
from .retries import Retries, backoff_ms

__all__ = [
    "DEFAULT_PRIORITY",
    "WORKERS_KEY",
    "Audit",
    "CancelState",
    "CancelWatcher",
    "DeadLetterLog",
    "JobCancelled",
    "NonRetryableError",
    "Retries",
    "StalledRecovery",
    "UnknownDeadLetter",
    "WorkerHeartbeat",
    "backoff_ms",
    "cancel_job",
    "canceller",
    "find_dead_letter",
    "list_dead_letters",
    "purge_dead_letters",
    "recover_stalled",
    "retry_dead_letter",
    "worker_id",
    "workers_alive",
]
