"""Group commit of the saga engine's transactions, and SQLite's fair write lock, on real databases."""

from __future__ import annotations

import multiprocessing
import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from saga.group_commit import GroupCommit
from storage import SQLiteWriteLock, create_db_engine

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def database(database_url):
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE items (name VARCHAR(20) PRIMARY KEY)"))
    yield engine
    engine.dispose()


def _group(database, **options) -> GroupCommit:
    @contextmanager
    def transaction():
        with database.begin() as connection:
            yield connection

    return GroupCommit(transaction=transaction, **options)


def _insert(name: str, *, before=None, sends: bool = False):
    def operation(connection):
        if before is not None:
            before()
        connection.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
        return (f"inserted {name}", [f"message of {name}"]) if sends else f"inserted {name}"

    return operation


def _names(database) -> set[str]:
    with database.connect() as connection:
        return set(connection.execute(text("SELECT name FROM items")).scalars())


def _while_leading(group: GroupCommit, database, others: list, *, sends: bool = False) -> dict[str, object]:
    """Run ``others`` (operations) from threads of their own while a first operation holds the
    leadership; each thread's outcome (its value or the exception it got), by operation index."""
    inside, release = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def call(key: str, operation) -> None:
        try:
            outcomes[key] = group.run(operation, sends=sends)
        except Exception as exc:
            outcomes[key] = exc

    # generous waits: on a loaded machine the other threads may take seconds to queue
    lead = _insert("first", before=lambda: (inside.set(), release.wait(60)), sends=sends)
    first = threading.Thread(target=call, args=("first", lead))
    first.start()
    assert inside.wait(5)
    threads = [threading.Thread(target=call, args=(str(i), op)) for i, op in enumerate(others)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(group._queue) < len(others):  # every other operation is queued behind the leader
        assert time.monotonic() < deadline, "the other operations never queued"
        time.sleep(0.005)
    release.set()
    for thread in [first, *threads]:
        thread.join(60)
    return outcomes


def test_operations_that_wait_together_share_one_transaction(database) -> None:
    group = _group(database)
    outcomes = _while_leading(group, database, [_insert(f"n{i}") for i in range(5)])
    assert outcomes == {"first": "inserted first", **{str(i): f"inserted n{i}" for i in range(5)}}
    assert (group.batches, group.operations) == (2, 6), "the five waiting ones went in one transaction"
    assert _names(database) == {"first", *(f"n{i}" for i in range(5))}


def test_a_failing_operation_fails_alone_and_its_neighbours_are_committed(database) -> None:
    group = _group(database)

    def half_then_fail(connection):
        connection.execute(text("INSERT INTO items (name) VALUES ('half')"))
        raise ValueError("bad input for this one")

    outcomes = _while_leading(group, database, [_insert("a"), half_then_fail, _insert("b")])
    assert isinstance(outcomes["1"], ValueError) and str(outcomes["1"]) == "bad input for this one"
    assert (outcomes["0"], outcomes["2"]) == ("inserted a", "inserted b")
    assert _names(database) == {"first", "a", "b"}, "nothing of the failed operation is committed"


def test_the_messages_of_committed_operations_go_out_together_after_the_commit(database) -> None:
    sent: list[tuple[list[str], set[str]]] = []
    # what another connection sees when the messages go out: they must follow the commit
    group = _group(database, dispatch=lambda messages: sent.append((messages, _names(database))))

    def fail(connection):
        connection.execute(text("INSERT INTO items (name) VALUES ('half')"))
        raise ValueError("bad input for this one")

    others = [_insert("a", sends=True), fail, _insert("b", sends=True)]
    outcomes = _while_leading(group, database, others, sends=True)
    assert (outcomes["first"], outcomes["0"], outcomes["2"]) == ("inserted first", "inserted a", "inserted b")
    assert isinstance(outcomes["1"], ValueError)
    # each batch's leader sends outside the leader's lock (the next batch need not wait for
    # Redis), so the two calls may come in either order; each follows its own commit
    seen = {tuple(messages): names for messages, names in sent}
    assert len(sent) == 2 and set(seen) == {("message of first",), ("message of a", "message of b")}
    assert seen[("message of a", "message of b")] == {"first", "a", "b"}  # one call; none of the failed one
    first_seen = seen[("message of first",)]
    assert "first" in first_seen and first_seen <= {"first", "a", "b"}


def test_a_failing_dispatch_is_logged_and_the_commit_stands(database, caplog) -> None:
    def dispatch(messages):
        raise ConnectionError("redis went away")

    group = _group(database, dispatch=dispatch)
    assert group.run(_insert("kept", sends=True), sends=True) == "inserted kept"
    assert _names(database) == {"kept"}
    assert "Sending 1 message(s) failed; recovery will resend." in caplog.text


def test_an_operation_that_starts_another_is_refused_clearly(database) -> None:
    group = _group(database)
    with pytest.raises(RuntimeError, match="would wait for itself"):
        group.run(lambda connection: group.run(_insert("inner")))
    assert group.run(_insert("after")) == "inserted after", "the group still works"


def test_an_interrupted_leader_leaves_the_waiting_operations_to_the_next(database) -> None:
    group = _group(database)

    class Interrupt(BaseException):
        pass

    def interrupted(connection):
        raise Interrupt

    outcomes = _while_leading(group, database, [_insert("x")])
    assert outcomes["0"] == "inserted x"
    # A leader whose batch is cut by a BaseException requeues the others' operations.
    inside, release = threading.Event(), threading.Event()
    results = {}

    def leader():
        try:
            group.run(lambda connection: (inside.set(), release.wait(5), interrupted(connection)))
        except Interrupt:
            results["leader"] = "interrupted"

    def follower():
        results["follower"] = group.run(_insert("y"))

    threads = [threading.Thread(target=leader)]
    threads[0].start()
    assert inside.wait(5)
    threads.append(threading.Thread(target=follower))
    threads[1].start()
    while not group._queue:
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == {"leader": "interrupted", "follower": "inserted y"}
    assert "y" in _names(database)


def _hold_lock(path: str, held: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with SQLiteWriteLock(path):
        held.set()
        release.wait(10)


def test_the_sqlite_write_lock_excludes_other_processes_and_is_reentrant(tmp_path) -> None:
    path = str(tmp_path / "db.sqlite")
    lock = SQLiteWriteLock(path)
    with lock, lock:  # reentrant in one thread
        pass
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    other = context.Process(target=_hold_lock, args=(path, held, release))
    other.start()
    try:
        assert held.wait(10)
        acquired = threading.Event()
        waiter = threading.Thread(target=lambda: (lock.__enter__(), acquired.set(), lock.__exit__()))
        waiter.start()
        assert not acquired.wait(0.3), "another process holds the lock"
        release.set()
        assert acquired.wait(5), "released by the other process, taken here"
        waiter.join(5)
    finally:
        release.set()
        other.join(10)


def test_a_shared_transaction_runs_its_operations_in_key_order(database) -> None:
    """So the batches of two processes lock rows (runs) in one order and cannot deadlock."""
    group, ran = _group(database), []

    def record(name: str):
        def operation(connection) -> str:
            ran.append(name)
            return _insert(name)(connection)

        return operation

    inside, release = threading.Event(), threading.Event()
    first = threading.Thread(
        target=group.run, args=(_insert("zz", before=lambda: (inside.set(), release.wait(5))),)
    )
    first.start()
    assert inside.wait(5)
    outcomes = {}
    threads = [
        threading.Thread(target=lambda n=name: outcomes.setdefault(n, group.run(record(n), order=n)))
        for name in ("run-c", "run-a", "run-b")
    ]
    for thread in threads:
        thread.start()
        while len(group._queue) < threads.index(thread) + 1:  # queued in this order
            time.sleep(0.005)
    release.set()
    for thread in [first, *threads]:
        thread.join(5)
    assert ran == ["run-a", "run-b", "run-c"]
    assert outcomes == {name: f"inserted {name}" for name in ("run-a", "run-b", "run-c")}
    assert (group.batches, group.operations) == (2, 4)
