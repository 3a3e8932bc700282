"""The Redis transport: the waking broker and its Lua dispatch script, priority lanes, ``send_many``,
deferred acks, admission at fetch, ``send_at`` and the outbox relay.
"""

from .acks import ACK_HOLD_ATTRIBUTE, hold_ack
from .admission import (
    ADMISSION_ATTRIBUTE,
    Admission,
    admission_key,
    cancel_channel,
    cancel_key,
    first_delivery,
    forgo_retry,
    postpone,
    readmit,
    withdraw_unstarted,
)
from .batch import ENQUEUE_CHUNK, EnqueueBatch, SendManyError, enqueue_messages, send_many
from .delayed import delay_until, send_at
from .events import EVENTS_KEY, EventLog, entry, event_log_of, events_key
from .hooks import HookTable, implemented_hooks
from .lanes import DEFAULT_LANE, LANES, LanePolicy, lane_of
from .options import (
    ADMISSION_SALT,
    AUDIT_SEQ_BASE,
    DEAD_LETTER_REASON,
    DUPLICATE,
    PRIOR_DELIVERIES,
    SKIP_REASON,
    SKIP_STATUS,
)
from .outbox import OutboxRelay, enqueue_in_transaction
from .redis_broker import (
    DISPATCH_SCRIPT,
    PAUSED_KEY,
    UniqueIds,
    WakeupRedisBroker,
    pause_queue,
    paused_queues,
    resume_queue,
)
from .redis_clients import (
    REDIS_SCHEMES,
    SENTINEL_SCHEME,
    RedisRoutes,
    SentinelAddress,
    check_redis_url,
    dedicated_client,
    parse_sentinel_url,
    queue_client,
    redis_client,
    routes_of,
)
from .replication import ReplicationTimeout

__all__ = [
    "ACK_HOLD_ATTRIBUTE",
    "ADMISSION_ATTRIBUTE",
    "ADMISSION_SALT",
    "AUDIT_SEQ_BASE",
    "DEAD_LETTER_REASON",
    "DEFAULT_LANE",
    "DISPATCH_SCRIPT",
    "DUPLICATE",
    "ENQUEUE_CHUNK",
    "EVENTS_KEY",
    "LANES",
    "PAUSED_KEY",
    "PRIOR_DELIVERIES",
    "REDIS_SCHEMES",
    "SENTINEL_SCHEME",
    "SKIP_REASON",
    "SKIP_STATUS",
    "Admission",
    "EnqueueBatch",
    "EventLog",
    "HookTable",
    "LanePolicy",
    "OutboxRelay",
    "RedisRoutes",
    "ReplicationTimeout",
    "SendManyError",
    "SentinelAddress",
    "UniqueIds",
    "WakeupRedisBroker",
    "admission_key",
    "cancel_channel",
    "cancel_key",
    "check_redis_url",
    "dedicated_client",
    "delay_until",
    "enqueue_in_transaction",
    "enqueue_messages",
    "entry",
    "event_log_of",
    "events_key",
    "first_delivery",
    "forgo_retry",
    "hold_ack",
    "implemented_hooks",
    "lane_of",
    "parse_sentinel_url",
    "pause_queue",
    "paused_queues",
    "postpone",
    "queue_client",
    "readmit",
    "redis_client",
    "resume_queue",
    "routes_of",
    "send_at",
    "send_many",
    "withdraw_unstarted",
]
