from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where tradeflow looks for Redis when no URL is configured.  When nothing
#: answers there, ``tradeflow up`` and ``tradeflow demo`` start an embedded
#: Valkey server instead.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_DATABASE_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")


class Settings(BaseSettings):
    """Configuration of a tradeflow process, read from ``TRADEFLOW_*`` variables.

    Parameters:
      redis_url: Redis (or Valkey) URL.  ``None`` means the default address,
        with an embedded server as the fallback for ``tradeflow up``.
      namespace: Prefix of every Redis key tradeflow writes (queues, results).
      database_url: SQLAlchemy URL of the audit and workflow database.
      delta_root: Root folder of the Delta Lake tables.
      result_ttl_ms: How long actor results stay in Redis, in milliseconds.
      max_retries: Default retry budget of an actor.
      min_backoff_ms / max_backoff_ms: Bounds of the exponential retry backoff.
      time_limit_ms: Default time limit of one actor call.
      max_age_ms: Messages older than this are failed unprocessed (``None``: no limit).
      heartbeat_timeout_ms: A worker silent this long is considered dead and
        its unacknowledged messages are requeued.
      maintenance_chance: Per million broker commands, how many run queue maintenance.
      stock_broker: Use Dramatiq's own RedisBroker (polling consumers, no
        priority lanes) instead of tradeflow's waking broker.
      broker_aging_every: Priority lanes: every this many fetches a lower lane
        is served first, so it is never starved (0: strict priority).
      broker_prefetch_scale: Fraction of Dramatiq's prefetch (2 x threads) a
        consumer holds; 0.5 (one per thread) lets urgent lanes start soonest.
      audit_*: The audit trail's buffer bound, batch size, flush interval and how
        long a finished message waits for its audit row to commit before it is acked.
    """

    model_config = SettingsConfigDict(env_prefix="TRADEFLOW_", extra="ignore")

    redis_url: str | None = None
    namespace: str = Field(default="tradeflow", min_length=1)
    database_url: str = "sqlite:///.tradeflow/tradeflow.db"
    delta_root: Path = Path(".tradeflow/delta")

    result_ttl_ms: int = Field(default=86_400_000, gt=0)
    max_retries: int = Field(default=3, ge=0)
    min_backoff_ms: int = Field(default=15_000, ge=0)
    max_backoff_ms: int = Field(default=3_600_000, ge=0)
    time_limit_ms: int = Field(default=600_000, gt=0)
    max_age_ms: int | None = Field(default=None, gt=0)
    heartbeat_timeout_ms: int = Field(default=60_000, gt=0)
    maintenance_chance: int = Field(default=1_000, ge=0, le=1_000_000)

    stock_broker: bool = False
    broker_aging_every: int = Field(default=8, ge=0)
    broker_prefetch_scale: float = Field(default=0.5, gt=0, le=1)

    audit_enabled: bool = True
    audit_buffer_size: int = Field(default=100_000, gt=0)
    audit_batch_size: int = Field(default=500, gt=0)
    audit_flush_interval_ms: int = Field(default=10, ge=0)
    audit_commit_wait_ms: int = Field(default=5_000, ge=0)

    worker_processes: int = Field(default=2, gt=0)
    worker_threads: int = Field(default=8, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(_REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(_REDIS_SCHEMES)} (got {value!r})")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(_DATABASE_SCHEMES):
            raise ValueError(f"must be a sqlite:// or postgresql:// URL (got {value!r})")
        return value

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL to connect to: the configured one or the default address."""
        return self.redis_url or DEFAULT_REDIS_URL
