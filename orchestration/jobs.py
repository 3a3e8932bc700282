"""Submitting jobs: what ``tradeflow send`` and ``POST /api/v1/jobs`` share.

A submission is checked before anything reaches Redis: the actor must be
registered, the arguments must fit its function's signature, the priority must
be a lane, and the encoded message must fit the size limit.  A refused
submission raises :class:`SubmissionError` (one subclass per reason) and
enqueues nothing.  An ``Idempotency-Key`` makes a submission happen once: the
first one within the key's lifetime is sent, later ones return its job.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq import Actor, Broker
from dramatiq.message import Message

#: Redis key (under the namespace) of an idempotency key: ``<ns>:idempotency:<scope>:<key>``.
IDEMPOTENCY_KEY = "{namespace}:idempotency:{scope}:{key}"

#: Longest idempotency key accepted, in characters.
MAX_IDEMPOTENCY_KEY = 200


class SubmissionError(ValueError):
    """A submission refused before anything was enqueued."""


class UnknownActor(SubmissionError):
    """No actor is registered under the name."""


class BadArguments(SubmissionError):
    """The arguments do not fit the actor's function, or are not JSON."""


class PayloadTooLarge(SubmissionError):
    """The encoded message is over the size limit."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job to submit.

    Parameters:
      actor: Registered actor name.
      args / kwargs: The call's arguments (JSON values).
      priority: Lane: critical, high, normal (default) or low.
      delay_ms: Milliseconds to wait before it may run (``None``: now).
      options: Further message options (``user_id``, ``ip_address``, ...).
    """

    actor: str
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] | None = None
    priority: str = "normal"
    delay_ms: int | None = None
    options: dict[str, Any] | None = None


def find_actor(broker: Broker, name: str) -> Actor:
    actor = broker.actors.get(name)
    if actor is None:
        known = ", ".join(sorted(broker.actors))
        raise UnknownActor(f"unknown actor {name!r}; known actors: {known}")
    return actor


def build_message(broker: Broker, request: JobRequest, *, max_bytes: int | None = None) -> Message:
    """The message of ``request``, checked (actor, arguments, priority, size); nothing is sent."""
    from actors.broker import LANES  # the caller's process configured its broker already

    actor = find_actor(broker, request.actor)
    kwargs = dict(request.kwargs or {})
    try:
        inspect.signature(actor.fn).bind(*request.args, **kwargs)
    except TypeError as exc:
        raise BadArguments(
            f"arguments do not fit {request.actor}{inspect.signature(actor.fn)}: {exc}"
        ) from None
    if request.priority not in LANES:
        raise BadArguments(f"priority must be one of {', '.join(LANES)} (got {request.priority!r})")
    options = dict(request.options or {})
    if request.priority != "normal":
        options["priority"] = request.priority
    message = actor.message_with_options(args=tuple(request.args), kwargs=kwargs, **options)
    try:
        size = len(message.encode())
    except (TypeError, ValueError) as exc:
        raise BadArguments(f"arguments are not JSON: {exc}") from None
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooLarge(f"the message is {size} bytes; the limit is {max_bytes}")
    return message


def submit_job(broker: Broker, request: JobRequest, *, max_bytes: int | None = None) -> Message:
    """Check and enqueue one job; the enqueued message."""
    message = build_message(broker, request, max_bytes=max_bytes)
    return broker.enqueue(message, delay=request.delay_ms)


def submit_jobs(
    broker: Broker, requests: Sequence[JobRequest], *, max_bytes: int | None = None
) -> list[Message]:
    """Check every job first (one refused: none sent), then enqueue them in one round trip per delay."""
    from actors.broker import enqueue_messages  # the process's broker exists by now

    messages = [build_message(broker, request, max_bytes=max_bytes) for request in requests]
    enqueued: list[Message] = []
    by_delay: dict[int | None, list[Message]] = {}
    for request, message in zip(requests, messages, strict=True):
        by_delay.setdefault(request.delay_ms, []).append(message)
    for delay, batch in by_delay.items():
        enqueued += enqueue_messages(broker, batch, delay=delay)
    order = {message.message_id: index for index, message in enumerate(messages)}
    return sorted(enqueued, key=lambda message: order[message.message_id])


@dataclass(frozen=True, slots=True)
class Claimed:
    """The outcome of claiming an idempotency key: the id it stands for, and whether it was ours."""

    value: str
    first: bool


class IdempotencyKeys:
    """Idempotency keys in Redis: the first claim of a key within ``ttl`` wins, later ones see its value.

    Parameters:
      client: The broker's Redis.
      namespace: The broker's key prefix.
      ttl: Seconds a key is remembered (the API's default: 24 h).
    """

    def __init__(self, *, client, namespace: str, ttl: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl = ttl

    def key(self, scope: str, key: str) -> str:
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise SubmissionError(f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters")
        return IDEMPOTENCY_KEY.format(namespace=self.namespace, scope=scope, key=key)

    def claim(self, scope: str, key: str, value: str) -> Claimed:
        """Store ``value`` under the key unless one is there; what the key stands for now."""
        name = self.key(scope, key)
        if self.client.set(name, value, nx=True, ex=self.ttl):
            return Claimed(value, True)
        existing = self.client.get(name)
        return Claimed(existing.decode() if existing is not None else value, existing is None)

    def release(self, scope: str, key: str, value: str) -> None:
        """Forget the key if it still stands for ``value`` (the submission it guarded failed)."""
        name = self.key(scope, key)
        if (self.client.get(name) or b"").decode() == value:
            self.client.delete(name)


def submit_once(
    broker: Broker,
    request: JobRequest,
    *,
    keys: IdempotencyKeys,
    idempotency_key: str | None,
    max_bytes: int | None = None,
) -> tuple[str, bool]:
    """Submit ``request`` unless ``idempotency_key`` was used: ``(message id, sent now)``.

    The message is checked first (a refused one claims no key), its id claimed
    under the key, then sent; a send that fails releases the key.
    """
    message = build_message(broker, request, max_bytes=max_bytes)
    if idempotency_key is None:
        return broker.enqueue(message, delay=request.delay_ms).message_id, True
    claimed = keys.claim("jobs", idempotency_key, message.message_id)
    if not claimed.first:
        return claimed.value, False
    try:
        broker.enqueue(message, delay=request.delay_ms)
    except Exception:
        keys.release("jobs", idempotency_key, message.message_id)
        raise
    return message.message_id, True


#: Audit statuses a job may be retried from without being in the dead letters.
RETRYABLE_STATUSES = frozenset({"failed", "cancelled", "dead_letter"})


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """The job that will run: the same id (``dead_letter``: taken out of the dead letters) or a new one."""

    job_id: str
    how: str


def retry_job(
    broker: Broker,
    row: Any,
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    max_bytes: int | None = None,
) -> RetryOutcome:
    """Run a finished job again, optionally with new arguments.

    A job still in the dead letters is taken out and enqueued under its own id
    with a fresh retry budget (``dlq retry``); a failed or cancelled one (or a
    dead one already purged) is sent as a new job of the same actor and
    arguments.  ``LookupError`` when the job's status allows no retry.
    """
    from dataclasses import replace

    from actors.middleware import UnknownDeadLetter, find_dead_letter, retry_dead_letter

    if row.status not in RETRYABLE_STATUSES:
        raise LookupError(
            f"job {row.task_id} is {row.status}: only failed, cancelled or dead jobs are retried"
        )
    stored = row.args or {}
    new_args = list(stored.get("args") or []) if args is None else list(args)
    new_kwargs = dict(stored.get("kwargs") or {}) if kwargs is None else dict(kwargs)
    request = JobRequest(
        actor=row.task_type, args=new_args, kwargs=new_kwargs, priority=row.priority or "normal"
    )
    message = build_message(broker, request, max_bytes=max_bytes)  # checks edited arguments too
    if row.status == "dead_letter":
        try:
            letter = find_dead_letter(broker, row.task_id)
        except UnknownDeadLetter:
            letter = None
        if letter is not None:
            if args is not None or kwargs is not None:
                letter = replace(letter, message=letter.message.copy(args=tuple(new_args), kwargs=new_kwargs))
            if retry_dead_letter(broker, letter) is None:
                raise LookupError(f"job {row.task_id} was taken out of the dead letters meanwhile")
            return RetryOutcome(row.task_id, "dead_letter_retried")
    return RetryOutcome(broker.enqueue(message).message_id, "resent")
