"""Per-message policies: the audit trail, retries, dead letters, cancellation, stalled-message
recovery, worker presence and worker inspection/control.
"""

from .audit import DEFAULT_PRIORITY, Audit, worker_id
from .audit_journal import RedisAuditJournal
from .cancellation import CancelState, CancelWatcher, cancel_job, canceller
from .dead_letters import (
    DeadLetter,
    DeadLetterLog,
    Fingerprint,
    UnknownDeadLetter,
    dead_letter_counts,
    find_dead_letter,
    fingerprint,
    iter_dead_letters,
    list_dead_letters,
    page_dead_letters,
    purge_dead_letters,
    purge_letters,
    retry_dead_letter,
    retry_dead_letters,
)
from .errors import EXTRA_OF_MODULE, JobCancelled, NonRetryableError, missing_extra
from .heartbeat import WORKERS_KEY, WorkerPresence, read_workers, workers_alive
from .rate_limits import Limit, RateLimited, RateLimits, limit_usage
from .recovery import (
    StalledRecovery,
    recover_stalled,
    register_process,
    requeue_observed_death,
    worker_processes,
)
from .retries import Retries, backoff_ms
from .workers import WorkerRegistry, list_workers, request_control

__all__ = [
    "DEFAULT_PRIORITY",
    "EXTRA_OF_MODULE",
    "WORKERS_KEY",
    "Audit",
    "CancelState",
    "CancelWatcher",
    "DeadLetter",
    "DeadLetterLog",
    "Fingerprint",
    "JobCancelled",
    "Limit",
    "NonRetryableError",
    "RateLimited",
    "RateLimits",
    "RedisAuditJournal",
    "Retries",
    "StalledRecovery",
    "UnknownDeadLetter",
    "WorkerPresence",
    "WorkerRegistry",
    "backoff_ms",
    "cancel_job",
    "canceller",
    "dead_letter_counts",
    "find_dead_letter",
    "fingerprint",
    "iter_dead_letters",
    "limit_usage",
    "list_dead_letters",
    "list_workers",
    "missing_extra",
    "page_dead_letters",
    "purge_dead_letters",
    "purge_letters",
    "read_workers",
    "recover_stalled",
    "register_process",
    "request_control",
    "requeue_observed_death",
    "retry_dead_letter",
    "retry_dead_letters",
    "worker_id",
    "worker_processes",
    "workers_alive",
]
