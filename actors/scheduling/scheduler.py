"""The periodic scheduler: periodiq's, made safe to run twice and to lose Redis.

``periodiq actors`` builds ``periodiq.Scheduler(actors=...)`` and calls
``schedule()`` then ``loop()``.  Importing this module replaces that class by
:class:`Scheduler`, which

* fires each (schedule, tick) once across any number of scheduler processes:
  the sender must win a Redis lease ``SET NX`` on ``<ns>:schedule-lease:<name>:<tick>``,
  and the message id is derived from (schedule, tick) so even a lost lease
  cannot run a tick twice (duplicates are dropped by id, see :mod:`actors.broker.admission`);
* reads enabled flags from SQL every tick and records last/next run;
* after downtime, applies the schedule's catch-up policy (``skip`` the missed
  ticks or ``run_once`` for the latest of them);
* keeps running through Redis or database errors, retrying the current tick
  while it is still worth running.

Minute granularity: sub-minute periodic work must use its own loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import dramatiq
import pendulum
import periodiq
import redis
from dramatiq.logging import get_logger

from actors.broker import event_log_of
from actors.middleware import worker_id
from storage import ScheduleRecord, list_schedules, record_fired, register_schedules

from .cron import cron
from .schedules import SCHEDULE_OPTION, ScheduleControl, schedule_control_of

#: Seconds after its tick that a tick delayed by an outage is still fired as
#: itself (periodiq's worker middleware drops scheduled messages older than 30 s).
TICK_GRACE = 25.0

#: Pause between two attempts while Redis or the database is unreachable, in seconds.
RETRY_PAUSE = 1.0

#: Most missed ticks looked at to find the latest one after downtime.
MAX_CATCH_UP_SCAN = 100_000

#: Namespace of the message ids derived from (schedule, tick).
TICK_ID_NAMESPACE = uuid.UUID("6f1c2a44-6a8e-4f0a-9a57-2d4a3c9b1e01")


class Clock(Protocol):
    """Where the scheduler reads the time and waits (a fake one in tests)."""

    def now(self) -> pendulum.DateTime: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class WallClock:
    """The real time in ``timezone``."""

    timezone: str = "UTC"

    def now(self) -> pendulum.DateTime:
        return pendulum.now(self.timezone)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0))


@dataclass(frozen=True, slots=True)
class Fired:
    """A message the scheduler sent."""

    schedule: str
    tick: datetime
    message_id: str
    catch_up: bool


@dataclass(frozen=True, slots=True)
class _Due:
    """One schedule as a tick sees it: its name, the actor it calls (with which arguments), its
    cron and catch-up policy."""

    name: str
    actor: dramatiq.Actor
    cron: Any
    policy: str
    call: tuple[tuple, dict] = ((), {})


class Scheduler(periodiq.Scheduler):
    """Sends periodic actors' messages, once per tick over all schedulers.

    Parameters:
      actors(list[dramatiq.Actor]): Actors with a ``periodic`` option.
      control(ScheduleControl): Timezone, policies, lease and database; by
        default the middleware of the actors' broker.
      clock(Clock): Time source.  Defaults to the wall clock in the control's timezone.
      scheduler_id(str): Recorded as the lease holder.  Defaults to ``host:pid:random``.
    """

    def __init__(
        self,
        actors: list[dramatiq.Actor],
        *,
        control: ScheduleControl | None = None,
        clock: Clock | None = None,
        scheduler_id: str | None = None,
    ) -> None:
        if not actors:
            raise ValueError("no periodic actors to schedule")
        self.logger = get_logger(__name__, type(self))
        self.actors = {actor.actor_name: actor for actor in actors}
        self.broker = actors[0].broker
        self.control = control or schedule_control_of(self.broker)
        self.clock = clock or WallClock(self.control.timezone)
        self.scheduler_id = scheduler_id or f"{worker_id()}:{uuid.uuid4().hex[:8]}"
        self._states: dict[str, ScheduleRecord] = {}
        self._crons: dict[str, Any] = {}  # run-time specs, parsed once
        self._registered = False
        self._stopping = threading.Event()

    # periodiq's main() calls schedule() once, then loop().
    def schedule(self) -> None:
        pass

    def loop(self) -> None:
        self.run_forever()

    def stop(self) -> None:
        self._stopping.set()

    def run_forever(self) -> None:
        """Run every minute's tick until :meth:`stop`; outages are waited out."""
        self.logger.info("Scheduler %s started: %s", self.scheduler_id, ", ".join(sorted(self.actors)))
        pending = _first_tick(self.clock.now())
        while not self._stopping.is_set():
            try:
                self.run_tick(pending)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if (self.clock.now() - pending).total_seconds() < TICK_GRACE:
                    self.logger.warning("Redis unreachable at tick %s, retrying: %s", pending, exc)
                    self._sleep(RETRY_PAUSE)
                    continue
                self.logger.error("Tick %s dropped, Redis unreachable for too long: %s", pending, exc)
            except Exception:  # a bug must not stop every schedule: log it, go on with the next tick
                self.logger.exception("Tick %s failed.", pending)
            pending = pending.add(minutes=1)
            self._sleep((pending - self.clock.now()).total_seconds())
            pending = max(pending, _first_tick(self.clock.now()))

    def _sleep(self, seconds: float) -> None:
        """Sleep on the clock in short steps, so that :meth:`stop` is honoured quickly."""
        deadline = self.clock.now().add(seconds=seconds)
        while not self._stopping.is_set() and (left := (deadline - self.clock.now()).total_seconds()) > 0:
            self.clock.sleep(min(left, RETRY_PAUSE))

    def run_tick(self, now: datetime) -> list[Fired]:
        """Fire what is due at ``now``'s minute, with catch-up for ticks missed since the last one:
        the code's periodic actors, then the run-time schedules of the table (read every tick, so a
        schedule created, changed or deleted takes effect from the next tick)."""
        minute = _minute(now)
        self._refresh_states()
        fired = []
        for name, actor in self.actors.items():
            state = self._states.get(name)
            if state is not None and not state.enabled:
                continue
            last = _aware(state.last_tick if state else None, minute)
            due = _Due(name, actor, actor.options["periodic"], self.control.policy(actor))
            fired += self._run_schedule(due, minute, last)
        for due, state in self._runtime_schedules():
            fired += self._run_schedule(due, minute, _aware(state.last_tick, minute))
        return fired

    def _runtime_schedules(self) -> list[tuple[_Due, ScheduleRecord]]:
        found = []
        for name, state in self._states.items():
            if state.source != "runtime" or not state.enabled or name in self.actors:
                continue
            actor = self.broker.actors.get(state.actor)
            try:
                spec = self._crons.get(state.spec) or self._crons.setdefault(state.spec, cron(state.spec))
            except ValueError as exc:
                self.logger.warning("Run-time schedule %s has a bad spec %r: %s", name, state.spec, exc)
                continue
            if actor is None:
                self.logger.warning(
                    "Run-time schedule %s calls %r, which is not declared here.", name, state.actor
                )
                continue
            call = (tuple(state.args or ()), dict(state.kwargs or {}))
            found.append((_Due(name, actor, spec, state.catch_up, call), state))
        return found

    def _run_schedule(self, due: _Due, minute: pendulum.DateTime, last) -> list[Fired]:
        if last is not None and last >= minute:
            return []  # another scheduler already fired this tick (or a later one)
        fired = []
        missed = self._latest_missed(due.cron, last, minute) if last is not None else None
        if missed is not None:
            if due.policy == "run_once":
                fired.append(self._fire(due, missed, minute, catch_up=True))
            else:
                self.logger.info("Skipping missed ticks of %s (latest %s).", due.name, missed)
        if due.cron.validate(minute):
            fired.append(self._fire(due, minute, minute, catch_up=False))
        return [item for item in fired if item is not None]

    def _latest_missed(self, cron, last, minute):
        latest, tick = None, cron.next_valid_date(last)
        for _ in range(MAX_CATCH_UP_SCAN):
            if tick >= minute:
                break
            latest, tick = tick, cron.next_valid_date(tick)
        return latest

    def _fire(self, due: _Due, tick, now, *, catch_up: bool) -> Fired | None:
        name, actor = due.name, due.actor
        tick_utc = tick.in_timezone("UTC")
        lease = f"{self.broker.namespace}:schedule-lease:{name}:{tick_utc:%Y%m%dT%H%M}"
        if not self._hold(lease):
            return None
        message_id = str(uuid.uuid5(TICK_ID_NAMESPACE, f"{self.broker.namespace}/{lease}"))
        args, kwargs = due.call
        message = actor.message_with_options(
            args=args,
            kwargs=kwargs,
            scheduled_at=str(now if catch_up else tick),
            schedule_tick=str(tick),
            **{SCHEDULE_OPTION: name},
        ).copy(message_id=message_id)
        self.broker.enqueue(message)
        self.logger.info("Fired %s for tick %s%s.", name, tick, " (catch-up)" if catch_up else "")
        self._record(due, tick_utc, message_id)
        events = event_log_of(self.broker)
        if events is not None:
            events.append(
                "schedule.fired",
                queue=actor.queue_name,
                job=message_id,
                schedule=name,
                tick=str(tick_utc),
                catch_up=catch_up,
            )
        return Fired(schedule=name, tick=tick_utc.naive(), message_id=message_id, catch_up=catch_up)

    def _hold(self, lease: str) -> bool:
        """Win the lease, or find we won it before (a send that failed after it is being retried)."""
        client = self.broker.client
        if client.set(lease, self.scheduler_id, nx=True, px=self.control.lease_ttl):
            return True
        holder = client.get(lease)
        return holder is not None and holder.decode() == self.scheduler_id

    def _record(self, due: _Due, tick_utc, message_id: str) -> None:
        engine = self.control.engine
        if engine is None:
            return
        next_run = due.cron.next_valid_date(tick_utc.in_timezone(self.control.timezone))
        try:
            record_fired(
                engine,
                due.name,
                tick=tick_utc.naive(),
                message_id=message_id,
                next_run_at=next_run.in_timezone("UTC").naive(),
            )
        except Exception as exc:  # the lease already guards the tick: state is best effort
            self.logger.warning("Could not record tick of %s: %s", due.name, exc)

    def _refresh_states(self) -> None:
        engine = self.control.engine
        if engine is None:
            return
        try:
            if not self._registered:
                register_schedules(engine, [self.control.definition(actor) for actor in self.actors.values()])
                self._registered = True
            self._states = {row.name: row for row in list_schedules(engine)}
        except Exception as exc:  # keep scheduling on the last known state
            self.logger.warning("Schedule table unreachable, using the last known state: %s", exc)


def _first_tick(now) -> pendulum.DateTime:
    """The tick to fire next from ``now``: this minute's, unless it is too late for it.

    A message for a tick older than periodiq's 30 s is skipped by the worker
    (a ``cancelled`` row, a ``failed`` count): a scheduler started (or back
    from a pause) late in a minute starts with the next one; a tick missed so
    is caught up by the schedule's policy.
    """
    minute = _minute(now)
    if (pendulum.instance(now) - minute).total_seconds() > TICK_GRACE:
        return minute.add(minutes=1)
    return minute


def _minute(moment) -> pendulum.DateTime:
    return pendulum.instance(moment).replace(second=0, microsecond=0)


def _aware(naive_utc: datetime | None, like: pendulum.DateTime):
    if naive_utc is None:
        return None
    return pendulum.instance(naive_utc, tz="UTC").in_timezone(like.timezone)


# ``periodiq actors`` constructs ``periodiq.Scheduler`` after importing the
# actors package: make that ours.
periodiq.Scheduler = Scheduler  # type: ignore[misc]
