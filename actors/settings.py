from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def user_data_dir() -> Path:
    """The per-user folder of the default SQLite database and Delta tables.

    ``$TRADEFLOW_DATA_DIR`` if set, else ``$XDG_DATA_HOME/tradeflow``, else
    ``~/.local/share/tradeflow`` (``~/Library/Application Support/tradeflow`` on
    macOS): the same whichever folder a command runs from.
    """
    import os
    import sys

    if os.environ.get("TRADEFLOW_DATA_DIR"):
        return Path(os.environ["TRADEFLOW_DATA_DIR"])
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "tradeflow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "tradeflow"
    return Path.home() / ".local" / "share" / "tradeflow"


#: Where tradeflow looks for Redis when no URL is configured.  When nothing
#: answers there, ``tradeflow up`` and ``tradeflow demo`` start an embedded
#: Valkey server instead.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Limits on unless ``rate_limits`` sets the same key: IB's pacing of about 50 messages a second
#: per client, over all workers.
DEFAULT_RATE_LIMITS: dict[str, dict[str, int]] = {"queue:ib_positions": {"rate": 50, "per_ms": 1_000}}

#: Schemes a Redis URL may have (actors.broker.redis_clients builds the clients).
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
_DATABASE_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")


def check_redis_url(url: str) -> str:
    """``url`` if it names a Redis deployment (a server, or Sentinel and a service), else a ``ValueError``."""
    if not url.startswith(_REDIS_SCHEMES):
        raise ValueError(f"must start with one of {', '.join(_REDIS_SCHEMES)} (got {url!r})")
    if url.startswith("redis+sentinel://") and not url.split("://", 1)[1].partition("/")[2].strip("/"):
        raise ValueError(f"a Sentinel URL names its service: redis+sentinel://host/service (got {url!r})")
    return url


#: A share, 0 to 1.
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class Settings(BaseSettings):
    """Configuration of a tradeflow process, read from ``TRADEFLOW_*`` variables.

    Parameters:
      redis_url: Redis (or Valkey) URL.  ``None`` means the default address,
        with an embedded server as the fallback for ``tradeflow up``.
        ``redis+sentinel://host:port[,host:port...]/service[/db]`` reaches the
        primary Redis Sentinel names for ``service`` (``docs/deployment.md``).
      redis_queue_urls: Queue name -> the URL of the Redis that queue lives on
        (its messages, acks, delayed and dead letters, admission keys, results);
        JSON in the environment.  Queues not named use ``redis_url``.
      redis_confirm_replicas: Enqueues of ``critical`` priority wait until this
        many replicas have the message (Redis ``WAIT``); 0: never wait.
      redis_confirm_timeout_ms: Longest such a wait; a message not confirmed by
        then raises (it may still be stored: it is not sent twice).
      namespace: Prefix of every Redis key tradeflow writes (queues, results).
      database_url: SQLAlchemy URL of the audit and workflow database.  Defaults to
        ``tradeflow.db`` in :func:`user_data_dir`; a SQLite path you set must be in a folder
        that exists.
      delta_root: Root folder of the Delta Lake tables.  Defaults to ``delta`` in :func:`user_data_dir`.
      result_ttl_ms: How long actor results stay in Redis, in milliseconds.
      max_retries: Default retry budget of an actor.
      min_backoff_ms / max_backoff_ms: Bounds of the exponential retry backoff.
      time_limit_ms: Default time limit of one actor call.
      max_age_ms: Messages older than this are failed unprocessed (``None``: no limit).
      heartbeat_timeout_ms: A worker silent this long is considered dead and
        its unacknowledged messages are requeued.
      maintenance_chance: Per million broker commands, how many run queue maintenance.
      audit_*: The audit trail's buffer bound (events), batch size (events), how
        long the first event of a batch waits for more before the batch is
        committed (``commit_interval``), how long a finished message's ack
        waits for its row to commit (0: never waits), and how long a
        ``running`` event is held so that a quick message costs one write
        (0: written at once), in milliseconds.
      data_*: Market data (``docs/data.md``): the provider (``synthetic``, ``files``,
        ``ib``, ``yfinance``), the synthetic seed and universe (comma-separated; empty:
        any ticker), the folder of the files provider, the IB Gateway of the ``ib``
        provider, commit retries of concurrent Delta writers, vacuum retention in hours.
      analysis_*: The ``ai_analysis`` queue: the analyzer (``offline`` or ``llm``) and the
        OpenAI-compatible endpoint, model, key and timeout (seconds) of the ``llm`` one.
      retry_jitter: Fraction (0..1) by which a retry's backoff is randomly
        stretched or shrunk, so failed jobs do not all come back at once.
      rate_limits: Limits over all workers, by actor name or ``queue:<name>``:
        ``{"rate": starts, "per_ms": window, "concurrency": at once}`` (JSON in the
        environment; ``docs/jobs.md``), added to :data:`DEFAULT_RATE_LIMITS` (IB's
        pacing on ``ib_positions``), see ``effective_rate_limits``.
      rate_limit_max_wait_ms: Longest a message waits in its worker for its limit
        before it fails (and is retried).
      schedules: Overrides of the schedule table, actor name -> cron spec
        (``"*/10 * * * *"``, ``"@daily"``) or ``"off"``; JSON in the environment.
      schedule_catch_up: Per actor name, ``skip`` or ``run_once`` after scheduler downtime.
      schedule_timezone: Timezone the cron specs are read in.
      schedule_lease_ms: How long the Redis lease of one (schedule, tick) is kept.
      max_deliveries: A message whose worker died this many times while running
        it is moved to the dead letters (``worker crashed N times``).
      run_once_ttl_ms: How long a message id is remembered to drop duplicate deliveries.
      cancel_ttl_ms: How long a cancellation is kept (must outlive the longest delay).
      cancel_poll_interval_ms: How often a worker checks its running jobs for cancellation.
      recovery_interval_ms: How often a worker requeues the messages of dead workers
        (after ``heartbeat_timeout_ms`` of silence), on every queue.
      outbox_batch_size / outbox_poll_interval_ms: The outbox relay's batch and idle pause.
      strategy_*: The strategy queue: the seed-compatible result keys (``task_result:{id}``
        prefix and TTL in seconds), the legacy Redis list other languages LPUSH tasks to,
        the sandbox's limits (CPU seconds, MiB of address space, wall seconds, MiB of
        output, seccomp on/off), the default holding period and entry rule of a backtest,
        how many recent bars of each symbol a screening reads, and how many times in all a
        backtest re-runs the strategy on a symbol's bars cut at one of its signal dates to
        detect look-ahead (up to 3 dates a symbol; 0: no check).
      ib_host / ib_port: Address of the IB Gateway (or ``tradeflow ib-sim``).
      ib_client_id_base: Each worker process connects with its own clientId above this.
      ib_account: Account whose portfolio updates (market prices) a connection subscribes to.
      ib_timeout_ms: Connect and request timeout towards the gateway.
      ib_reconnect_max_ms: Upper bound of the reconnect backoff after a drop.
      ib_batch_size / ib_batch_interval_ms: Position requests per batch (50) and the longest a
        request waits for its batch (5 s).
      ib_max_attempts: Batches a request may be tried in before it fails for good.
      ib_lease_ms: A claimed request whose worker went silent this long is claimed again.
      ib_stream_slots: Streaming market-data subscriptions the router may hold (IB's line budget).
      risk_*: Portfolio risk limits (``None``: not checked): position value, concentration in %
        of net liquidation, gross exposure, daily loss (a positive amount).
      workflow_*: Saga engine: how long a running step's claim outlives its worker's
        last heartbeat, after how long a step not picked up is sent again, how often
        that recovery sweep runs, and the lifetime of a concurrency-key lease.
      tracing_exporter: Where OpenTelemetry spans go: ``none`` (default: the tracing
        middleware is not even installed), ``console``, ``otlp-grpc`` or ``otlp-http``.
      tracing_endpoint: OTLP endpoint; default ``http://127.0.0.1:4317`` for gRPC,
        ``http://127.0.0.1:4318/v1/traces`` for HTTP (Jaeger accepts both).
      tracing_service_name: ``service.name`` of the spans this process exports.
      tracing_sample_ratio: Share of new traces recorded (0..1, default 1); a message
        follows the decision of the trace it belongs to.
      tracing_queue_sample_ratios: Share of new traces recorded by the queue of the
        message that starts them, e.g. ``{"ib_positions": 0.05}`` (0..1 each); other
        queues use ``tracing_sample_ratio``.
      metrics_enabled: Collect Prometheus metrics in worker processes.
      metrics_dir: prometheus-client multiprocess directory; default
        ``<tmp>/tradeflow-metrics/<namespace>``.  One per worker master.
      metrics_host / metrics_port: Where the workers' exposition process serves
        ``/metrics``; port 0 serves nothing.  Loopback by default.
      health_max_queue_depth: ``tradeflow health`` is unhealthy above this many
        ready messages in one queue.
      health_scheduler_silence_ms: ...or when a scheduler that ticked once has been
        silent this long.
      health_severities: Severity (``warning``/``critical``) of the SQL alert a failing
        check raises, by check name (JSON); unnamed checks keep their defaults.
      stock_broker: Use Dramatiq's own RedisBroker (polling consumers, no
        priority lanes) instead of tradeflow's waking broker.
      broker_aging_every: Priority lanes: every this many fetches a lower lane
        is served first, so it is never starved (0: strict priority).
      broker_prefetch_scale: Fraction of Dramatiq's prefetch (2 x threads) a
        consumer holds; 0.5 (one per thread) lets urgent lanes start soonest.
      api_host / api_port: Where ``tradeflow api`` (and ``tradeflow up``) serves the HTTP API
        (``docs/api.md``); loopback by default.
      api_read_only: Refuse every action over the API (403), whatever the key's role.
      api_max_payload_bytes: Largest request body, and largest encoded message, a producer
        may send over the API (413 above it).
      api_idempotency_ttl_s: How long an ``Idempotency-Key`` keeps returning its first job or run.
      api_session_ttl_s: Lifetime of a browser session cookie obtained with a key.
      api_bulk_batch / api_bulk_rate: Items a bulk operation handles per batch, and at most
        per second (0: no limit).
      api_operation_orphan_s: Seconds a bulk operation's process may go without a
        heartbeat (renewed every second) before another process resumes the operation.
      api_operations_runner: ``tradeflow api`` runs bulk operations in a child process of its
        own (``tradeflow api-operations``), not in the threads that answer requests.
      events_enabled / events_maxlen: The live-events Redis Stream (``GET /api/v1/events``):
        whether processes append to it, and the approximate length it is capped at.
      dashboard_environment: The badge the web dashboard shows in its header (e.g.
        ``production``, ``staging``), so an operator knows which deployment a page acts on.
      dashboard_jaeger_url: Base URL of the Jaeger UI the dashboard links a job's trace to
        (``None``: no link), e.g. ``http://127.0.0.1:16686``.
      modules: The user's modules with actors and workflows, comma-separated
        (``myapp.actors,myapp.flows``): ``import actors`` imports them, so every
        worker, scheduler, ``tradeflow workflow`` command and the HTTP API knows them.
        The CLI's ``-m/--module`` adds to it.
    """

    model_config = SettingsConfigDict(env_prefix="TRADEFLOW_", extra="ignore")

    redis_url: str | None = None
    redis_queue_urls: dict[str, str] = Field(default_factory=dict)
    redis_confirm_replicas: int = Field(default=0, ge=0)
    redis_confirm_timeout_ms: int = Field(default=1_000, gt=0)
    namespace: str = Field(default="tradeflow", min_length=1)
    database_url: str = Field(default_factory=lambda: f"sqlite:///{user_data_dir() / 'tradeflow.db'}")
    delta_root: Path = Field(default_factory=lambda: user_data_dir() / "delta")

    result_ttl_ms: int = Field(default=86_400_000, gt=0)
    max_retries: int = Field(default=3, ge=0)
    min_backoff_ms: int = Field(default=120_000, ge=0)
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
    audit_commit_interval_ms: int = Field(default=20, ge=0)
    audit_commit_wait_ms: int = Field(default=5_000, ge=0)
    audit_running_delay_ms: int = Field(default=200, ge=0)

    data_provider: Literal["synthetic", "files", "ib", "yfinance"] = "synthetic"
    data_synthetic_seed: int = 7
    data_synthetic_symbols: str = ""
    data_files_dir: Path = Path(".tradeflow/market_files")
    data_ib_host: str = "127.0.0.1"
    data_ib_port: int = Field(default=4002, gt=0, lt=65536)
    data_ib_client_id: int = 17
    data_max_commit_retries: int = Field(default=50, ge=0)
    data_vacuum_retention_hours: int = Field(default=168, ge=0)

    analysis_analyzer: Literal["offline", "llm"] = "offline"
    analysis_llm_base_url: str = "http://127.0.0.1:8000/v1"
    analysis_llm_model: str = "gpt-4o-mini"
    analysis_llm_api_key: str = "not-needed"
    analysis_llm_timeout_s: float = Field(default=30.0, gt=0)

    retry_jitter: float = Field(default=0.1, ge=0, le=1)
    rate_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    rate_limit_max_wait_ms: int = Field(default=60_000, gt=0)
    schedules: dict[str, str] = Field(default_factory=dict)
    schedule_catch_up: dict[str, Literal["skip", "run_once"]] = Field(default_factory=dict)
    schedule_timezone: str = "UTC"
    schedule_lease_ms: int = Field(default=86_400_000, gt=0)
    max_deliveries: int = Field(default=3, ge=1)
    run_once_ttl_ms: int = Field(default=86_400_000, gt=0)
    cancel_ttl_ms: int = Field(default=8 * 86_400_000, gt=0)
    cancel_poll_interval_ms: int = Field(default=500, gt=0)
    recovery_interval_ms: int = Field(default=15_000, gt=0)
    outbox_batch_size: int = Field(default=500, gt=0)
    outbox_poll_interval_ms: int = Field(default=200, gt=0)

    strategy_result_prefix: str = Field(default="task_result:", min_length=1)
    strategy_result_ttl_s: int = Field(default=86_400, gt=0)
    strategy_legacy_queue: str = Field(default="strategy_queue", min_length=1)
    strategy_cpu_seconds: int = Field(default=20, gt=0)
    strategy_memory_mb: int = Field(default=2_048, ge=256)
    strategy_wall_seconds: float = Field(default=30.0, gt=0)
    strategy_output_mb: int = Field(default=16, gt=0)
    strategy_seccomp: bool = True
    strategy_holding_period: int = Field(default=5, ge=1)
    strategy_entry: Literal["next_open", "close"] = "next_open"
    strategy_screen_lookback_bars: int = Field(default=120, ge=1)
    strategy_lookahead_cuts: int = Field(default=24, ge=0, le=10_000)

    ib_host: str = "127.0.0.1"
    ib_port: int = Field(default=4002, gt=0, lt=65536)
    ib_client_id_base: int = Field(default=100, ge=1)
    ib_account: str = ""
    ib_timeout_ms: int = Field(default=10_000, gt=0)
    ib_reconnect_max_ms: int = Field(default=30_000, gt=0)
    ib_batch_size: int = Field(default=50, gt=0, le=10_000)
    ib_batch_interval_ms: int = Field(default=5_000, ge=0)
    ib_max_attempts: int = Field(default=10, gt=0)
    ib_lease_ms: int = Field(default=60_000, gt=0)
    ib_stream_slots: int = Field(default=100, ge=0)
    risk_max_position_value: float | None = Field(default=None, gt=0)
    risk_max_concentration_pct: float | None = Field(default=None, gt=0, le=100)
    risk_max_gross_exposure: float | None = Field(default=None, gt=0)
    risk_max_daily_loss: float | None = Field(default=None, gt=0)

    workflow_lease_ms: int = Field(default=60_000, gt=0)
    workflow_recovery_after_ms: int = Field(default=60_000, gt=0)
    workflow_recovery_interval_ms: int = Field(default=10_000, gt=0)
    workflow_concurrency_lease_ms: int = Field(default=600_000, gt=0)

    tracing_exporter: Literal["none", "console", "otlp-grpc", "otlp-http"] = "none"
    tracing_endpoint: str | None = None
    tracing_service_name: str = Field(default="tradeflow", min_length=1)
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    tracing_queue_sample_ratios: dict[str, Ratio] = Field(default_factory=dict)

    metrics_enabled: bool = True
    metrics_dir: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9191, ge=0, le=65_535)

    health_max_queue_depth: int = Field(default=10_000, gt=0)
    health_scheduler_silence_ms: int = Field(default=300_000, gt=0)
    health_severities: dict[str, Literal["warning", "critical"]] = {}

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, gt=0, le=65_535)
    api_read_only: bool = False
    api_max_payload_bytes: int = Field(default=1_048_576, ge=1_024)
    api_idempotency_ttl_s: int = Field(default=86_400, gt=0)
    api_session_ttl_s: int = Field(default=43_200, gt=0)
    api_bulk_batch: int = Field(default=2_000, gt=0, le=10_000)
    api_bulk_rate: int = Field(default=10_000, ge=0)
    api_operation_orphan_s: float = Field(default=15.0, ge=2.0)
    api_operations_runner: bool = True
    events_enabled: bool = True
    events_maxlen: int = Field(default=100_000, gt=0)
    dashboard_environment: str = Field(default="development", min_length=1, max_length=40)
    dashboard_jaeger_url: str | None = None
    modules: str = ""

    worker_processes: int = Field(default=2, gt=0)
    worker_threads: int = Field(default=8, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value) if value else None

    @field_validator("redis_queue_urls")
    @classmethod
    def _check_queue_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for queue, url in value.items():
            if not queue:
                raise ValueError("a queue name must not be empty")
            check_redis_url(url)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(_DATABASE_SCHEMES):
            raise ValueError(f"must be a sqlite:// or postgresql:// URL (got {value!r})")
        if value.startswith("sqlite:///"):
            # a set path is used as given: a typo must not create folders somewhere (the default's are made)
            path = value[len("sqlite:///") :].split("?", 1)[0]
            folder = Path(path).parent
            if (
                path
                and path != ":memory:"
                and not folder.is_dir()
                and not folder.is_relative_to(user_data_dir())
            ):
                raise ValueError(
                    f"the folder {str(folder)!r} of the SQLite file does not exist: create it first"
                )
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for key, spec in value.items():
            unknown = set(spec) - {"rate", "per_ms", "concurrency"}
            if unknown:
                raise ValueError(f"{key}: unknown fields {sorted(unknown)}; use rate, per_ms, concurrency")
            if spec.get("per_ms", 1_000) <= 0 or not (
                spec.get("rate", 0) > 0 or spec.get("concurrency", 0) > 0
            ):
                raise ValueError(f"{key}: give rate (> 0, per per_ms > 0 ms) and/or concurrency (> 0)")
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name like 'Europe/Paris'") from None
        return value

    @property
    def effective_metrics_dir(self) -> Path:
        """The multiprocess metrics directory: the configured one or one per namespace."""
        return self.metrics_dir or Path(tempfile.gettempdir()) / "tradeflow-metrics" / self.namespace

    @property
    def effective_rate_limits(self) -> dict[str, dict[str, int]]:
        """The limits in force: the defaults, and the configured ones over them."""
        return {**DEFAULT_RATE_LIMITS, **self.rate_limits}

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL to connect to: the configured one or the default address."""
        return self.redis_url or DEFAULT_REDIS_URL
