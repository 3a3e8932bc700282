"""Retries with backoff, dead letters, cancellation, delayed jobs run once (in-process workers)."""

from __future__ import annotations

import itertools
import random
import threading
import time

import dramatiq
import pytest
from conftest import run_cli, settings_env
from dramatiq.common import dq_name
from jobs_support import sqlite_only, wait_for

from actors import audit_writer_of, build_broker
from actors.middleware import (
    CancelState,
    NonRetryableError,
    Retries,
    backoff_ms,
    cancel_job,
    canceller,
    list_dead_letters,
    purge_dead_letters,
)
from actors.settings import Settings
from storage import create_db_engine, get_task


class ValidationError(NonRetryableError):
    pass


def test_seed_backoff_is_2_4_8_minutes_with_jitter_capped_at_an_hour():
    rng = random.Random(7)
    for attempt, minutes in enumerate((2, 4, 8)):
        exact = backoff_ms(attempt, min_backoff=120_000, max_backoff=3_600_000, jitter=0)
        assert exact == minutes * 60_000
        jittered = [
            backoff_ms(attempt, min_backoff=120_000, max_backoff=3_600_000, jitter=0.1, rng=rng)
            for _ in range(200)
        ]
        assert min(jittered) >= exact * 0.9 and max(jittered) <= exact * 1.1
        assert len(set(jittered)) > 100  # really spread out
    assert backoff_ms(10, min_backoff=120_000, max_backoff=3_600_000, jitter=0.1, rng=rng) <= 3_600_000


def test_default_settings_give_the_seed_retry_policy():
    from actors.runtime import build_middleware

    retries = next(m for m in build_middleware(Settings(), audit_writer=None) if isinstance(m, Retries))
    assert (retries.max_retries, retries.min_backoff, retries.max_backoff) == (3, 120_000, 3_600_000)


@pytest.fixture
def harness(settings):
    """A broker for the test's actors; ``start()`` runs a real in-process worker on it."""
    broker = build_broker(settings)
    workers = []

    def start(threads: int = 2) -> dramatiq.Worker:
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    broker.start_worker = start
    yield broker
    for worker in workers:
        worker.stop(timeout=10_000)
    audit_writer_of(broker).close(5)


def _row(settings, message_id, *, status, timeout=20):
    engine = create_db_engine(settings.database_url)
    return wait_for(
        lambda: (row := get_task(engine, message_id)) is not None and row.status == status and row,
        timeout=timeout,
        what=f"task {message_id} to be {status}",
    )


@sqlite_only
def test_backoff_between_attempts_then_dead_letter_with_reason(harness, settings):
    attempts = []

    @dramatiq.actor(broker=harness, max_retries=2, min_backoff=300, max_backoff=10_000, jitter=0)
    def always_fails():
        attempts.append(time.monotonic())
        raise RuntimeError("boom")

    message = always_fails.send()
    harness.start_worker()
    row = _row(settings, message.message_id, status="dead_letter")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 3
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # 300 ms, then doubled
    assert row.retry_count == 2 and "RuntimeError: boom" in row.error_message
    [letter] = wait_for(lambda: list_dead_letters(harness), timeout=10, what="the dead letter")
    assert letter.message_id == message.message_id
    assert letter.reason == "failed 3 attempts, last: RuntimeError: boom" and letter.attempts == 3


@sqlite_only
def test_non_retryable_error_goes_straight_to_dead_letters(harness, settings):
    calls = []

    @dramatiq.actor(broker=harness, max_retries=3, min_backoff=10)
    def validate(amount):
        calls.append(amount)
        raise ValidationError(f"amount must be positive, got {amount}")

    @dramatiq.actor(broker=harness, max_retries=3, min_backoff=10, non_retryable=(KeyError,))
    def lookup():
        calls.append("lookup")
        raise KeyError("symbol")

    first, second = validate.send(-5), lookup.send()
    harness.start_worker()
    row = _row(settings, first.message_id, status="dead_letter")
    _row(settings, second.message_id, status="dead_letter")
    assert calls.count(-5) == 1 and calls.count("lookup") == 1 and row.retry_count == 0
    reasons = {letter.message_id: letter.reason for letter in list_dead_letters(harness)}
    assert reasons[first.message_id] == "non-retryable ValidationError: amount must be positive, got -5"
    assert reasons[second.message_id] == "non-retryable KeyError: 'symbol'"


@sqlite_only
def test_a_dead_letter_is_never_visible_without_its_reason(harness, settings, monkeypatch):
    """The reason is kept before the nack moves the message: a reader between the two
    steps (``dlq list``, the API) must not see "unknown"."""
    seen_at_nack = []
    consumer_class = type(harness.consume("default"))
    original_nack = consumer_class.nack

    def nack(self, message):
        original_nack(self, message)
        seen_at_nack.extend(letter.reason for letter in list_dead_letters(harness))

    monkeypatch.setattr(consumer_class, "nack", nack)

    @dramatiq.actor(broker=harness, max_retries=0)
    def fails_once():
        raise RuntimeError("no quote")

    message = fails_once.send()
    harness.start_worker()
    _row(settings, message.message_id, status="dead_letter")
    assert seen_at_nack == ["failed 1 attempts, last: RuntimeError: no quote"]


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_dlq_cli_lists_shows_retries_and_purges(harness, settings):
    failing = {"on": True}

    @dramatiq.actor(broker=harness, max_retries=0)
    def flaky(n):
        if failing["on"]:
            raise RuntimeError(f"down {n}")
        return n

    first, second = flaky.send(1), flaky.send(2)
    harness.start_worker()
    _row(settings, first.message_id, status="dead_letter")
    _row(settings, second.message_id, status="dead_letter")
    wait_for(lambda: len(list_dead_letters(harness)) == 2, timeout=10, what="two dead letters")
    env = {**settings_env(settings), "COLUMNS": "250"}

    listed = run_cli("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert (
        first.message_id in listed.stdout
        and "RuntimeError: down 1" in listed.stdout
        and "flaky" in listed.stdout
    )
    shown = run_cli("dlq", "show", first.message_id, env=env)
    assert (shown.returncode == 0 and "Traceback" in shown.stdout) or "down 1" in shown.stdout

    failing["on"] = False
    retried = run_cli("dlq", "retry", first.message_id, env=env)
    assert retried.returncode == 0, retried.stderr
    row = _row(settings, first.message_id, status="completed")
    assert row.retry_count == 0 and row.error_message is not None  # the row kept its history
    assert [letter.message_id for letter in list_dead_letters(harness)] == [second.message_id]

    purged = run_cli("dlq", "purge", env=env)
    assert "purged 1" in purged.stdout and list_dead_letters(harness) == []
    assert get_task(create_db_engine(settings.database_url), second.message_id).status == "dead_letter"

    result = run_cli("dlq", "show", "nope", env=env)
    assert result.returncode == 1 and "no dead letter with message id 'nope'" in result.stderr, result.stderr


@sqlite_only
def test_dead_letter_retry_all_and_purge_by_age(harness, settings):
    @dramatiq.actor(broker=harness, max_retries=0)
    def dies():
        raise RuntimeError("x")

    ids = [dies.send().message_id for _ in range(3)]
    harness.start_worker()
    wait_for(lambda: len(list_dead_letters(harness)) == 3, timeout=20, what="three dead letters")
    assert purge_dead_letters(harness, older_than_ms=3_600_000) == 0
    assert sorted(letter.message_id for letter in list_dead_letters(harness)) == sorted(ids)


def test_cancel_delayed_job_never_starts(harness, settings):
    runs = []

    @dramatiq.actor(broker=harness)
    def later():
        runs.append(1)

    message = later.send_with_options(delay=1500)
    _row(settings, message.message_id, status="pending")
    engine = create_db_engine(settings.database_url)
    outcome = canceller(harness, engine=engine)(message.message_id)  # as the saga engine calls it
    assert outcome.state is CancelState.CANCELLED
    assert get_task(engine, message.message_id).status == "cancelled"
    harness.start_worker()
    time.sleep(3)  # the delay has passed: the worker saw it and skipped it
    harness.join(dq_name(later.queue_name), timeout=10_000)
    harness.join(later.queue_name, timeout=10_000)
    assert runs == []
    assert get_task(engine, message.message_id).status == "cancelled"
    assert cancel_job(harness, message.message_id, engine=engine).state is CancelState.FINISHED


@sqlite_only
def test_cancel_running_job_interrupts_it_without_retry(harness, settings):
    started, finished = threading.Event(), []

    @dramatiq.actor(broker=harness, max_retries=3, min_backoff=10)
    def long_job():
        started.set()
        for _ in range(600):
            time.sleep(0.05)
        finished.append(1)

    message = long_job.send()
    harness.start_worker()
    assert started.wait(20)
    engine = create_db_engine(settings.database_url)
    _row(settings, message.message_id, status="running")
    assert cancel_job(harness, message.message_id, engine=engine).state is CancelState.CANCELLING
    row = _row(settings, message.message_id, status="cancelled")
    time.sleep(1)  # would be enough for a retry with 10 ms backoff
    assert finished == [] and get_task(engine, message.message_id).status == "cancelled"
    assert row.retry_count == 0 and list_dead_letters(harness) == []


@sqlite_only
@pytest.mark.e2e
def test_cancel_cli(harness, settings):
    @dramatiq.actor(broker=harness)
    def waits():
        pass

    message = waits.send_with_options(delay=60_000)
    _row(settings, message.message_id, status="pending")
    env = settings_env(settings)
    result = run_cli("jobs", "cancel", message.message_id, env=env)
    assert result.returncode == 0 and "cancelled (was pending)" in result.stdout, result.stderr
    again = run_cli("jobs", "cancel", message.message_id, env=env)
    assert "finished (was cancelled)" in again.stdout


@sqlite_only
def test_delayed_job_duplicated_by_the_delay_move_runs_once(harness, settings):
    runs = []

    @dramatiq.actor(broker=harness)
    def once(n):
        runs.append(n)

    # A worker dying between Dramatiq's enqueue of the due message and the ack
    # of its delay-queue entry leaves two entries of one message: make them.
    message = once.message(1)
    harness.enqueue(message, delay=300)
    harness.enqueue(message, delay=300)
    harness.start_worker()
    wait_for(lambda: runs, timeout=20, what="the delayed run")
    harness.join(once.queue_name, timeout=10_000)
    time.sleep(0.5)
    assert runs == [1]
    assert _row(settings, message.message_id, status="completed").retry_count == 0


@sqlite_only
def test_a_retried_message_is_not_mistaken_for_a_duplicate(harness, settings):
    runs = []

    @dramatiq.actor(broker=harness, max_retries=2, min_backoff=10, max_backoff=20)
    def second_time_lucky():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first attempt fails")

    message = second_time_lucky.send()
    harness.start_worker()
    assert _row(settings, message.message_id, status="completed").retry_count == 1
    assert len(runs) == 2


def test_durations_parse_or_say_what_is_expected():
    from api.cli.jobs import CliError, parse_duration_ms

    assert parse_duration_ms("90s") == 90_000 and parse_duration_ms("7d") == 7 * 86_400_000
    for bad in ("soon", "7", "d", "1.5h"):
        with pytest.raises(CliError):
            parse_duration_ms(bad)


def test_eta_must_be_aware_and_within_seven_days():
    from datetime import UTC, datetime, timedelta

    from actors.broker import delay_until

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert delay_until(now + timedelta(seconds=90), now=now) == 90_000
    assert delay_until(now - timedelta(hours=1), now=now) == 0
    with pytest.raises(ValueError, match="has no timezone"):
        delay_until(datetime(2026, 11, 23, 12, 0), now=now)
    with pytest.raises(ValueError, match="more than 7 days ahead"):
        delay_until(now + timedelta(days=8), now=now)


@sqlite_only
def test_job_sent_for_an_eta_runs_once_at_or_after_it(harness, settings):
    from datetime import UTC, datetime, timedelta

    from actors.broker import send_at

    ran_at = []

    @dramatiq.actor(broker=harness)
    def at_eta():
        ran_at.append(datetime.now(UTC))

    eta = datetime.now(UTC) + timedelta(seconds=1)
    message = send_at(at_eta, eta)
    harness.start_worker()
    _row(settings, message.message_id, status="completed")
    assert len(ran_at) == 1 and ran_at[0] >= eta
