"""HookTable calls the same hooks as Dramatiq's broker, in the same order, minus the no-ops;
UniqueIds never repeats, also across a fork."""

from __future__ import annotations

import os

import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

from actors.broker import HookTable, UniqueIds, implemented_hooks


class Recorder(Middleware):
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def before_process_message(self, broker, message):
        self.calls.append(("before", self.name))

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self.calls.append(("after", self.name))


class Failing(Middleware):
    def before_process_message(self, broker, message):
        raise RuntimeError("boom")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        raise RuntimeError("boom")


class Skipping(Middleware):
    def before_process_message(self, broker, message):
        raise SkipMessage("skip")


class TableBroker(HookTable, StubBroker):
    pass


def brokers(calls: list) -> tuple[StubBroker, TableBroker]:
    plain, table = StubBroker(middleware=[]), TableBroker(middleware=[])
    for broker in (plain, table):
        broker.add_middleware(Recorder("a", calls))
        broker.add_middleware(Middleware())
        broker.add_middleware(Failing())
        broker.add_middleware(Recorder("b", calls))
    return plain, table


def test_same_hooks_in_the_same_order_as_dramatiq_and_errors_are_contained():
    plain_calls, table_calls = [], []
    plain, _ = brokers(plain_calls)
    _, table = brokers(table_calls)
    for broker in (plain, table):
        broker.emit_before("process_message", None)
        broker.emit_after("process_message", None)
    assert table_calls == plain_calls == [("before", "a"), ("before", "b"), ("after", "b"), ("after", "a")]


def test_only_implemented_hooks_are_called_and_added_middleware_is_picked_up():
    calls = []
    table = TableBroker(middleware=[Middleware(), Recorder("a", calls)])
    assert [hook.__self__ for hook in implemented_hooks(table.middleware, "before_process_message")] == [
        table.middleware[1]
    ]
    table.emit_before("process_message", None)
    table.add_middleware(Recorder("late", calls))
    table.emit_before("process_message", None)
    assert calls == [("before", "a"), ("before", "a"), ("before", "late")]


def test_middleware_errors_still_propagate():
    table = TableBroker(middleware=[Skipping()])
    with pytest.raises(SkipMessage):
        table.emit_before("process_message", None)


def test_unique_ids_do_not_repeat_in_a_process_or_a_forked_child():
    ids = UniqueIds()
    mine = {ids.next() for _ in range(10_000)}
    assert len(mine) == 10_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not collide with the parent's
        os.write(write, "\n".join(ids.next() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    assert len(child) == 100 and not child & mine
    assert not child & {ids.next() for _ in range(100)}
