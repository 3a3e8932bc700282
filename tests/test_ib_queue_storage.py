"""The durable position request queue on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from storage import create_db_engine
from storage.ib_positions import (
    NewRequest,
    claim_requests,
    claimable_count,
    enqueue_requests,
    finish_requests,
    list_requests,
    queue_stats,
    release_requests,
)

pytestmark = pytest.mark.timeout(60)

LEASE = timedelta(seconds=60)


@pytest.fixture
def engine(migrated_url):
    engine = create_db_engine(migrated_url)
    yield engine
    engine.dispose()


def _claim(engine, batch_id, limit=50, lease=LEASE):
    return claim_requests(engine, batch_id=batch_id, worker="w", limit=limit, lease=lease)


def test_duplicates_of_open_requests_coalesce(engine):
    first, dup, other_account, other = enqueue_requests(
        engine,
        [
            NewRequest(conid=1, account="DU1", priority=1),
            NewRequest(conid=1, account="DU1", priority=5),
            NewRequest(conid=1, account="DU2"),
            NewRequest(conid=2, account="DU1"),
        ],
    )
    assert not first.coalesced and dup.coalesced and dup.request_id == first.request_id
    assert len({first.request_id, other_account.request_id, other.request_id}) == 3
    (row,) = [r for r in list_requests(engine) if r.id == first.request_id]
    assert (row.priority, row.coalesced) == (5, 1)
    stats = queue_stats(engine)
    assert (stats.pending, stats.coalesced) == (3, 1)
    # once finished, the same conid queues a new request
    claimed = _claim(engine, "b1")
    finish_requests(engine, batch_id="b1", outcomes={r.request_id: None for r in claimed})
    (again,) = enqueue_requests(engine, [NewRequest(conid=1, account="DU1")])
    assert not again.coalesced and again.request_id != first.request_id


def test_claim_takes_highest_priority_then_oldest_up_to_limit(engine):
    ids = [
        e.request_id
        for e in enqueue_requests(engine, [NewRequest(conid=c, priority=c % 3) for c in range(1, 8)])
    ]
    claimed = _claim(engine, "b1", limit=3)
    # priorities: conid 2,5 -> 2; conid 1,4,7 -> 1
    assert sorted(r.conid for r in claimed) == [1, 2, 5]
    assert all(r.attempts == 1 for r in claimed)
    assert len(_claim(engine, "b2", limit=10)) == 4
    assert _claim(engine, "b3") == []
    assert claimable_count(engine, lease=LEASE) == 0
    assert len(ids) == 7


def test_finish_marks_outcomes_only_for_the_claiming_batch(engine):
    enqueue_requests(engine, [NewRequest(conid=1), NewRequest(conid=2)])
    a, b = _claim(engine, "b1")
    finish_requests(engine, batch_id="other", outcomes={a.request_id: None})
    finish_requests(engine, batch_id="b1", outcomes={a.request_id: None, b.request_id: "conid 2 not held"})
    rows = {r.id: r for r in list_requests(engine)}
    assert rows[a.request_id].status == "success" and rows[a.request_id].reason is None
    assert rows[b.request_id].status == "failed" and rows[b.request_id].reason == "conid 2 not held"
    assert rows[a.request_id].pending_key is None
    stats = queue_stats(engine)
    assert (stats.succeeded, stats.failed, stats.processed) == (1, 1, 2)


def test_release_returns_requests_until_attempts_run_out(engine):
    enqueue_requests(engine, [NewRequest(conid=1)])
    for attempt in (1, 2):
        (claimed,) = _claim(engine, f"b{attempt}")
        assert claimed.attempts == attempt
        released, failed = release_requests(
            engine, batch_id=f"b{attempt}", reason="gateway down", max_attempts=3
        )
        assert (released, failed) == (1, 0)
    (row,) = list_requests(engine)
    assert (row.status, row.reason) == ("pending", "retrying: gateway down")
    _claim(engine, "b3")
    assert release_requests(engine, batch_id="b3", reason="gateway down", max_attempts=3) == (0, 1)
    (row,) = list_requests(engine)
    assert row.status == "failed" and row.reason == "gave up after 3 attempts: gateway down"


def test_abandoned_claims_are_claimed_again_after_the_lease(engine):
    enqueue_requests(engine, [NewRequest(conid=1)])
    assert len(_claim(engine, "dead-worker")) == 1
    assert _claim(engine, "b2") == []
    (reclaimed,) = _claim(engine, "b3", lease=timedelta(seconds=-1))
    assert reclaimed.attempts == 2
    # the dead batch can no longer finish it
    finish_requests(engine, batch_id="dead-worker", outcomes={reclaimed.request_id: "late"})
    (row,) = list_requests(engine)
    assert (row.status, row.batch_id) == ("processing", "b3")


def test_concurrent_claims_never_share_a_request(engine):
    enqueue_requests(engine, [NewRequest(conid=c) for c in range(1, 301)])
    taken: dict[str, list[int]] = {}

    def claimer(name):
        mine = taken.setdefault(name, [])
        while batch := _claim(engine, f"{name}-{len(mine)}", limit=7):
            mine.extend(r.request_id for r in batch)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [rid for ids in taken.values() for rid in ids]
    assert len(every) == 300 and len(set(every)) == 300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conid": 0}, "conid must be a positive integer"),
        ({"conid": "AAPL"}, "conid must be a positive integer"),
        ({"conid": 1, "priority": 5000}, "priority must be an integer in -1000..1000"),
        ({"conid": 1, "account": "x" * 65}, "at most 64 characters"),
    ],
)
def test_bad_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NewRequest(**kwargs)
