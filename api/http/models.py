"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: A time; the database's naive UTC times leave as RFC 3339 with ``Z`` (a naive input is UTC).
Time = Annotated[datetime, AfterValidator(_utc)]

Priority = Literal["critical", "high", "normal", "low"]
Role = Literal["viewer", "operator", "admin"]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# -- producers ---------------------------------------------------------------------------------


class JobSubmission(BaseModel):
    """One job: an actor call, optionally delayed (``delay_ms`` or ``run_at``, not both)."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200, examples=["ping"])
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    delay_ms: int | None = Field(default=None, ge=0, le=7 * 86_400_000)  # the broker's longest
    run_at: Time | None = None
    user_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_delay(self) -> JobSubmission:
        if self.delay_ms is not None and self.run_at is not None:
            raise ValueError("give delay_ms or run_at, not both")
        return self


class JobAccepted(BaseModel):
    job_id: str
    actor: str
    queue: str
    priority: Priority
    replayed: bool = Field(
        description="True when the Idempotency-Key was used before: this is the first job."
    )


class JobBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSubmission] = Field(min_length=1, max_length=10_000)


class JobBatchAccepted(BaseModel):
    job_ids: list[str]


class Job(BaseModel):
    """A job as the audit trail records it."""

    job_id: str
    actor: str
    queue: str
    status: str
    priority: str | None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    user_id: str | None = None
    retry_count: int = 0
    max_retries: int | None = None
    error: str | None = None
    created_at: Time | None = None
    started_at: Time | None = None
    completed_at: Time | None = None
    processing_time_ms: float | None = None
    worker_id: str | None = None


class JobAttempt(BaseModel):
    """One attempt (a delivery that ran) of a job."""

    number: int = Field(description="1 for the first attempt, then one more per attempt.")
    retry_count: int = Field(
        description="Retries spent before this attempt (a dead-letter retry starts at 0)."
    )
    status: str = Field(
        description="running; or how the attempt ended, as the job's status then: completed, retrying "
        "(failed, retried), dead_letter, failed (an expected error), cancelled."
    )
    started_at: Time | None = None
    finished_at: Time | None = None
    duration_ms: float | None = None
    worker_id: str | None = Field(default=None, description="host:pid of the worker process.")
    worker_host: str | None = None
    worker_pid: int | None = None
    error_type: str | None = None
    error: str | None = Field(default=None, description="Type: message.")
    traceback: str | None = Field(
        default=None, description="Its end (innermost frames), at most 8,000 characters."
    )
    trace_id: str | None = Field(default=None, description="OpenTelemetry trace id (32 hex digits).")


class JobDetail(Job):
    """A job with every attempt, and what the broker still holds: its dead letter, if any."""

    timeout_ms: int | None = None
    ip_address: str | None = None
    attempts: list[JobAttempt] = Field(
        default_factory=list, description="Every attempt, first first (at most the last 100)."
    )
    dead_letter: DeadLetter | None = None


class JobRetry(BaseModel):
    """Optional replacement arguments of a retried job."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


class JobAction(BaseModel):
    job_id: str
    outcome: str
    detail: str | None = None


class ActorInfo(BaseModel):
    name: str
    queue: str
    max_retries: int | None
    time_limit_ms: int | None
    priority: int
    periodic: str | None = None


class WorkflowInfo(BaseModel):
    name: str
    version: str = Field(description="Digest of the definition: it changes whenever the steps change.")
    steps: list[str]
    events: list[str]


class Catalog(BaseModel):
    actors: list[ActorInfo]
    workflows: list[WorkflowInfo]


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Any = None
    deadline_s: float | None = Field(default=None, gt=0)


class RunStarted(BaseModel):
    run_id: str
    workflow: str
    replayed: bool


class InlineStep(BaseModel):
    """A step of an ad-hoc workflow: a registered actor, its arguments and its place in the graph."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    actor: str = Field(min_length=1, max_length=200)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    compensate_with: str | None = None
    group: str | None = None
    group_limit: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0)
    time_limit_ms: int | None = Field(default=None, gt=0)


class InlineWorkflow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="adhoc", min_length=1, max_length=200)
    steps: list[InlineStep] = Field(min_length=1, max_length=1_000)
    on_failure: Literal["finish", "cancel"] = "finish"
    inputs: Any = None
    deadline_s: float | None = Field(default=None, gt=0)


class StrategySubmission(BaseModel):
    """A user strategy task in the seed's format (see docs/strategy.md)."""

    model_config = ConfigDict(extra="allow")

    strategy_code: str = Field(min_length=1)
    symbols: list[str] = Field(min_length=1)


class StrategyAccepted(BaseModel):
    task_id: str
    task_type: Literal["backtest", "screening"]


class StrategyResult(BaseModel):
    task_id: str
    status: str
    data: dict[str, Any]


# -- reads ------------------------------------------------------------------------------------


class DeadLetter(BaseModel):
    job_id: str
    actor: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    error: str
    fingerprint: str
    failed_at: Time
    attempts: int
    traceback: str | None = None


class DeadLetterGroup(BaseModel):
    fingerprint: str
    exception: str
    top_frame: str | None
    count: int
    queues: list[str]
    example_job_id: str
    last_failed_at: Time


class Schedule(BaseModel):
    name: str
    spec: str
    description: str
    queue: str
    timezone: str
    enabled: bool
    source: Literal["code", "runtime"] = Field(
        description="code: a periodic actor; runtime: made over the API/CLI"
    )
    actor: str
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    catch_up: str
    last_run_at: Time | None = None
    last_status: str | None = None
    next_run_at: Time | None = None


class WorkflowRunSummary(BaseModel):
    run_id: str
    workflow: str
    status: str
    inputs: Any = None
    open_steps: int
    error: str | None = None
    forked_from: str | None = None
    created_at: Time
    finished_at: Time | None = None


class WorkflowStepView(BaseModel):
    name: str
    actor: str
    status: str
    attempts: int
    depends_on: list[str]
    compensate_with: str | None = None
    group: str | None = None
    progress: float | None = None
    checkpoint: Any = None
    error: str | None = None
    compensation_error: str | None = None
    worker_id: str | None = None
    started_at: Time | None = None
    finished_at: Time | None = None


class Edge(BaseModel):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    model_config = ConfigDict(populate_by_name=True)


class TimelineEntry(BaseModel):
    at: Time
    step: str | None
    event: str


class HistoryEntry(BaseModel):
    """One entry of a run's ordered history (``storage.get_history``)."""

    at: Time
    kind: str
    step: str | None
    attempt: int | None
    detail: str | None


class SignalSent(BaseModel):
    """A signal delivered to a run: how many waiting steps it woke (0: kept for later)."""

    run_id: str
    signal: str
    woke: int


class SignalBody(BaseModel):
    payload: Any = None


class WorkflowRunDetail(WorkflowRunSummary):
    steps: list[WorkflowStepView]
    edges: list[Edge]
    compensation_edges: list[Edge] = Field(
        description="Compensation order: each compensation runs after those of the steps completed later."
    )
    timeline: list[TimelineEntry]


class CompensationPreview(BaseModel):
    run_id: str
    compensations: list[dict[str, Any]] = Field(description="In the order a cancel would run them now.")


class QueueStats(BaseModel):
    name: str
    ready: dict[str, int] = Field(description="Ready messages per priority lane.")
    delayed: int
    in_flight: int
    dead: int
    oldest_age_s: float | None
    enqueued_last_minute: int | None = None
    paused: bool


class Worker(BaseModel):
    id: str
    host: str
    pid: int | None
    queues: list[str] = Field(default_factory=list, description="Queues it consumes.")
    in_flight: int = Field(default=0, description="Messages it has taken and not acked yet.")
    last_heartbeat: Time
    alive: bool


class Alert(BaseModel):
    id: int
    check: str
    severity: str
    message: str
    raised_at: Time
    resolved_at: Time | None
    open: bool


# -- access -----------------------------------------------------------------------------------


class ApiKeyView(BaseModel):
    key_id: str
    name: str
    role: Role
    created_at: Time
    expires_at: Time | None = None
    revoked_at: Time | None = None
    last_used_at: Time | None = None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: Role
    expires_at: Time | None = None


class ApiKeyCreated(ApiKeyView):
    token: str = Field(description="Shown once: store it now.")


class SessionInfo(BaseModel):
    key_id: str
    key_name: str
    role: Role
    expires_in_s: int


class OperatorActionView(BaseModel):
    id: int
    at: Time
    key_id: str | None
    key_name: str | None
    role: str | None
    action: str
    target: str | None
    address: str | None
    status_code: int
    detail: dict[str, Any] | None = None


class QueueAction(BaseModel):
    queue: str
    paused: bool


class Count(BaseModel):
    count: int


JobDetail.model_rebuild()


class DeadLetterSelection(BaseModel):
    """Dead letters to act on: these ids, or every one matching the filters (``dry_run``: count only)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, max_length=100_000)
    queue: str | None = None
    fingerprint: str | None = None
    dry_run: bool = False


class BulkAccepted(BaseModel):
    """A dry run's count, or the operation that carries the action out."""

    dry_run: bool
    count: int | None = Field(default=None, description="Dry run: how many the action would touch.")
    operation_id: str | None = None


class Operation(BaseModel):
    """A bulk operation.  ``interrupted``: the API process running it stopped and it could not
    be resumed (``error`` says how far it got); a resumable one goes on in another API process."""

    id: str
    kind: str
    status: Literal["running", "succeeded", "failed", "interrupted"]
    total: int | None = Field(description="Items selected (null until counted).")
    done: int
    skipped: int = Field(description="Selected but not acted on (taken by someone else meanwhile).")
    requested_by: str
    started_at: Time
    finished_at: Time | None = None
    error: str | None = None
    owner: str | None = Field(default=None, description="host:pid:instance of the API process running it.")
    heartbeat_at: Time | None = Field(default=None, description="The owner's last heartbeat (every second).")
    resumed: int = Field(
        default=0, description="Times another API process resumed it after its owner stopped."
    )


class ScheduleCreate(BaseModel):
    """A run-time schedule: call ``actor`` on every tick of ``cron`` (in the schedulers' timezone)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    actor: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200, examples=["*/15 * * * *", "@daily", "30 9 * * mon-fri"])
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "run_once"] = "skip"
    enabled: bool = True


class ScheduleChange(BaseModel):
    """What to change in a run-time schedule; fields left out keep their values."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(default=None, min_length=1, max_length=200)
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    catch_up: Literal["skip", "run_once"] | None = None
    enabled: bool | None = None


class JobSelection(BaseModel):
    """Jobs to act on: these ids, or every one matching the list's filters (``dry_run``: count only).
    Only jobs that may still run (pending, running, retrying) are selected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ids: list[str] | None = Field(default=None, max_length=100_000)
    status: Literal["pending", "running", "retrying"] | None = None
    actor: str | None = None
    queue: str | None = None
    priority: Priority | None = None
    user: str | None = None
    created_from: Time | None = Field(default=None, alias="from")
    created_to: Time | None = Field(default=None, alias="to")
    args: dict[str, str] = Field(default_factory=dict, description="Keyword argument equal to a string.")
    dry_run: bool = False
