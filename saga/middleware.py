"""The saga middleware: claims step deliveries, records their outcome, keeps claims alive
and sends again what a crash lost."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from dramatiq import Broker, Middleware
from dramatiq.errors import Retry
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError, Retries, SkipMessage
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF
from dramatiq.threading import raise_thread_exception
from sqlalchemy import Engine

from .context import StepContext, current_step, enter
from .engine import COMPENSATE, SAGA_OPTION, STEP, Claim, Readmit, SagaEngine, SendMany, Withdraw, describe

#: Attempts at recording a step's outcome while the database does not answer.
RECORD_ATTEMPTS = 5

#: Pause before the first repeated attempt, in seconds; it doubles each time.
RECORD_BACKOFF = 0.2

#: Milliseconds added to a postponed redelivery's wait, so it arrives after the lease ended.
POSTPONE_MARGIN_MS = 250

#: Error of a step whose message was dead-lettered before it ran.
QUARANTINED = "its message was dead-lettered before it ran (its worker died too often, or it expired)"

#: Postpones a delivered message: ``postpone(broker, message, delay_ms)`` sends it again as a
#: copy of its own and marks this delivery unrecorded (``actors.broker.admission.postpone``).
Postpone = Callable[[Broker, Message, int], None]

#: Largest exponent ``dramatiq.common.compute_backoff`` uses.
MAX_BACKOFF_EXPONENT = 32

_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class StepStateUnavailable(MiddlewareError):
    """The step's state could not be read; the message is retried like a failed one."""


class StepAborted(Exception):
    """Raised inside a running step whose run was cancelled or failed with ``on_failure="cancel"``.

    It is raised in the step's thread as a class (``raise_thread_exception``), so its
    message is the default one.
    """

    #: The message of an abort (the run's own error says why it stopped).
    MESSAGE = "aborted: the run is stopping (cancelled, failed or past its deadline)"

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


class Saga(Middleware):
    """Runs workflow steps exactly as the durable state allows.

    A message that carries the ``saga`` option is claimed before it runs
    (a duplicate, stale or superseded delivery is skipped), and its result or
    error is recorded after it ran, which advances the run.  Must come before
    ``Retries`` in the middleware list: ``after_*`` hooks run in reverse
    order, and this one needs the retry decision.

    A worker thread renews the leases of the steps this process runs, aborts
    those whose run was cancelled, and (one worker at a time, through a Redis
    lock) runs the engine's recovery sweep.

    Parameters:
      database(Engine): Where workflow state lives.
      lease_ms(int): How long a claim outlives its worker's last heartbeat, in
        milliseconds.  Heartbeats come every third of it.  Defaults to 60 s.
      recovery_after_ms(int): Age after which a step not picked up is sent
        again, in milliseconds.  Defaults to 60 s.
      recovery_interval_ms(int): How often the sweep runs, in milliseconds.
        Defaults to 10 s.
      concurrency_lease_ms(int): Lifetime of a concurrency-key lease without
        activity of its run, in milliseconds.  Defaults to 10 minutes.
      send_many(callable): ``send_many(broker, messages)``: how a fan-out's
        messages are sent in one go (``actors.broker.batch.enqueue_messages``, given by
        ``actors.current_broker``).  Defaults to None: one enqueue per message.
      tracer_provider(TracerProvider): Where runs' root spans go.  Defaults to
        None: the global provider.
      first_delivery(callable): ``first_delivery(message)``: True if the broker
        counted this delivery as the message's first, False if not, None if it
        cannot tell (``actors.broker.admission.first_delivery``, given by
        ``actors.current_broker``).  A first delivery of a step claimed at its dispatch
        runs without a claim of its own.  Defaults to None: every delivery claims.
      withdraw(callable): ``withdraw(broker, message_ids)`` cancels queued
        messages no worker took (``actors.broker.admission.withdraw_unstarted``, given by
        ``actors.current_broker``): a stopping run cancels its dispatched steps at once.
        Defaults to None: they are settled when delivered.
      on_run_status(callable): ``on_run_status(run_id, workflow, status, error)``, told of
        each committed change of a run's status (``actors.events``, given by ``actors.broker``).
        Defaults to None.
      postpone(callable): ``postpone(broker, message, delay_ms)``: see :data:`Postpone`.
        A delivery refused because a live claim holds its step (a redelivery of a
        worker that died mid-step, inside the lease) is postponed until the claim
        runs out instead of acked away.  Defaults to None: it is acked, and the
        recovery sweep sends the step again once the lease ran out.
      readmit(callable): What the recovery sweep sends again goes through it
        (see :data:`saga.engine.Readmit`).  Defaults to None.
      forgo_retry(callable): ``forgo_retry(broker, message)`` makes the broker drop,
        unrecorded, the retry ``Retries`` just sent of ``message``
        (``actors.broker.admission.forgo_retry``): a step that failed with retries left
        while its run stopped failed for good.  Defaults to None: the retry is
        delivered, refused, and recorded ``cancelled``.
    """

    def __init__(
        self,
        *,
        database: Engine,
        lease_ms: int = 60_000,
        recovery_after_ms: int = 60_000,
        recovery_interval_ms: int = 10_000,
        concurrency_lease_ms: int = 600_000,
        send_many: SendMany | None = None,
        tracer_provider=None,
        first_delivery: Callable[[Message], bool | None] | None = None,
        withdraw: Withdraw | None = None,
        on_run_status=None,
        postpone: Postpone | None = None,
        readmit: Readmit | None = None,
        forgo_retry: Callable[[Broker, Message], None] | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.database = database
        self.on_run_status = on_run_status
        self.send_many = send_many
        self.tracer_provider = tracer_provider
        self.first_delivery = first_delivery
        self.withdraw = withdraw
        self.postpone = postpone
        self.readmit = readmit
        self.forgo_retry = forgo_retry
        self.lease_ms = lease_ms
        self.recovery_after_ms = recovery_after_ms
        self.recovery_interval_ms = recovery_interval_ms
        self.concurrency_lease_ms = concurrency_lease_ms
        self._engine: SagaEngine | None = None
        self._engine_lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None

    def engine(self, broker: Broker) -> SagaEngine:
        """The engine that sends through ``broker`` (built on first use)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = SagaEngine(
                        database=self.database,
                        broker=broker,
                        lease_ms=self.lease_ms,
                        recovery_after_ms=self.recovery_after_ms,
                        concurrency_lease_ms=self.concurrency_lease_ms,
                        send_many=self.send_many,
                        tracer_provider=self.tracer_provider,
                        withdraw=self.withdraw,
                        on_run_status=self.on_run_status,
                        readmit=self.readmit,
                    )
        return self._engine

    def before_process_message(self, broker: Broker, message: Message) -> None:
        marker = message.options.get(SAGA_OPTION)
        if not marker:
            return
        enter(None)
        engine = self.engine(broker)
        if not _well_formed(marker):
            self.logger.error(
                "Message %s has a malformed %r option %r; failing it.", message, SAGA_OPTION, marker
            )
            message.fail()
            raise SkipMessage(f"malformed {SAGA_OPTION!r} option")
        try:
            claim = engine.claim(
                run_id=marker["run"],
                step=marker["step"],
                kind=marker["kind"],
                epoch=marker["epoch"],
                retry=message.options.get("retries", 0),
                worker=_WORKER_ID,
                concurrency_key=marker.get("key"),
                dispatch=marker.get("token"),
                first_delivery=self.first_delivery(message) if self.first_delivery else None,
            )
        except Exception as exc:
            raise StepStateUnavailable(f"cannot claim step {marker['step']!r}: {describe(exc)}") from exc
        if claim is None:
            self._postpone_if_held(broker, engine, message, marker)
            raise SkipMessage(f"step {marker['step']!r} of run {marker['run']} is not due")
        with self._held_lock:
            self._held[claim.token] = threading.get_ident()
        enter(StepContext(claim, engine, claim.checkpoint, claim.progress, epoch=marker["epoch"]))

    def _postpone_if_held(self, broker: Broker, engine: SagaEngine, message: Message, marker: dict) -> None:
        """A live claim holds the step: maybe a dead worker's, whose message came back before
        its lease ran out.  Acked now, the step would be lost; it is sent again for then."""
        if self.postpone is None:
            return
        try:
            left = engine.lease_left_ms(
                run_id=marker["run"], step=marker["step"], kind=marker["kind"], epoch=marker["epoch"]
            )
        except Exception as exc:
            raise StepStateUnavailable(f"cannot read step {marker['step']!r}: {describe(exc)}") from exc
        if left is not None:
            self.logger.info(
                "Step %r of run %s is held by a live claim; trying again in %d ms.",
                marker["step"],
                marker["run"],
                left + POSTPONE_MARGIN_MS,
            )
            self.postpone(broker, message, left + POSTPONE_MARGIN_MS)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        context = self._leave()
        if context is None:
            return
        engine, claim = context.engine, context.claim
        if exception is None:
            self._record(claim, engine.succeeded, claim, result)
            return
        aborted = isinstance(exception, StepAborted)
        if message.failed or aborted:
            self._record(claim, engine.failed, claim, describe(exception), retry=None, aborted=aborted)
            return
        retry, delay = message.options["retries"], longest_retry_delay(broker, message, exception)
        if self._record(claim, engine.failed, claim, describe(exception), retry=retry, retry_delay_ms=delay):
            # The run stopped: the step failed for good.  Say so (the audit trail records the
            # message failed, not retrying) and drop the retry ``Retries`` sent, unrecorded.
            message.fail()
            if self.forgo_retry is not None:
                self.forgo_retry(broker, message)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        context = self._leave()
        if context is not None:
            self._record(context.claim, context.engine.release, context.claim)
            return
        marker = message.options.get(SAGA_OPTION)
        if message.failed and _well_formed(marker):
            # Dead-lettered before it ran (admission's poison quarantine, an age limit): the
            # step failed for good; left alone, recovery would send it again and again.
            run_id, step, kind = marker["run"], marker["step"], marker["kind"]
            self._record(
                Claim(run_id, step, kind, "", 0, None, None),
                self.engine(broker).quarantined,
                run_id=run_id,
                step=step,
                kind=kind,
                epoch=marker["epoch"],
                error=QUARANTINED,
            )

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self._stopping.clear()
        self._maintenance = threading.Thread(
            target=self._maintain, args=(broker,), name="tradeflow-saga", daemon=True
        )
        self._maintenance.start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stopping.set()
        if self._maintenance is not None:
            self._maintenance.join(self.lease_ms / 1000)

    def _leave(self) -> StepContext | None:
        context = current_step()
        enter(None)
        if context is not None:
            with self._held_lock:
                self._held.pop(context.claim.token, None)
        return context

    def _record(self, claim: Claim, record, *args, **kwargs):
        """``record(*args, **kwargs)``, tried again while the database fails: what it returned
        (None if it never succeeded)."""
        backoff = RECORD_BACKOFF
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                return record(*args, **kwargs)
            except Exception as exc:
                if attempt == RECORD_ATTEMPTS:
                    # The claim's lease runs out and recovery runs the step again.
                    self.logger.error("Outcome of step %r not recorded: %s", claim.step, describe(exc))
                    return None
                time.sleep(backoff)
                backoff *= 2
        return None

    def _maintain(self, broker: Broker) -> None:
        interval = self.lease_ms / 3000
        next_sweep = 0.0
        while not self._stopping.wait(interval):
            engine = self.engine(broker)
            try:
                self._heartbeat(engine)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.recovery_interval_ms / 1000
                    if self._sweep_is_mine(broker):
                        engine.recover()
            except Exception as exc:
                self.logger.error("Workflow maintenance failed, will retry: %s", describe(exc))

    def _heartbeat(self, engine: SagaEngine) -> None:
        with self._held_lock:
            tokens = list(self._held)
        for token in engine.renew(tokens):
            # Under the lock, so the step cannot finish (and its thread move on to
            # another message) between the check and the raise.  The claim stops
            # being renewed: if the exception lands late and the outcome is lost,
            # the lease runs out and recovery settles the step.
            with self._held_lock:
                thread_id = self._held.pop(token, None)
                if thread_id is not None:
                    self.logger.info("Aborting a step whose run is stopping.")
                    raise_thread_exception(thread_id, StepAborted)

    def _sweep_is_mine(self, broker: Broker) -> bool:
        """One recovery sweep per interval across all workers."""
        key = f"{broker.namespace}:saga-recovery"
        return bool(broker.client.set(key, _WORKER_ID, nx=True, px=self.recovery_interval_ms))


def _well_formed(marker: object) -> bool:
    return (
        isinstance(marker, dict)
        and all(isinstance(marker.get(key), str) for key in ("run", "step"))
        and marker.get("kind") in (STEP, COMPENSATE)
        and isinstance(marker.get("epoch"), int)
        and isinstance(marker.get("token", ""), str)
    )


def longest_retry_delay(broker: Broker, message: Message, exception: BaseException) -> int:
    """The longest backoff ``Retries`` can have given the retry it just scheduled, in
    milliseconds, so recovery does not send the step again before its retry is due."""
    if isinstance(exception, Retry) and exception.delay is not None:
        return exception.delay
    retries = next((m for m in broker.middleware if isinstance(m, Retries)), None)
    actor_options = broker.get_actor(message.actor_name).options
    options = message.options

    def option(name: str, default: int) -> int:
        return options.get(name, actor_options.get(name, getattr(retries, name, default)))

    min_backoff = option("min_backoff", DEFAULT_MIN_BACKOFF)
    max_backoff = min(option("max_backoff", DEFAULT_MAX_BACKOFF), DEFAULT_MAX_BACKOFF)
    attempts = min(options["retries"] - 1, MAX_BACKOFF_EXPONENT)
    # compute_backoff's jitter doubles at most: factor * 2 ** attempts * 2.
    return min(2 * min_backoff * 2**attempts, max_backoff)


def engine_of(broker: Broker) -> SagaEngine:
    """The saga engine of a broker built with the :class:`Saga` middleware."""
    for middleware in broker.middleware:
        if isinstance(middleware, Saga):
            return middleware.engine(broker)
    raise LookupError("this broker has no Saga middleware: workflows need it (see actors.current_broker)")
