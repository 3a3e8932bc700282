"""The bulk operations' reading ahead: the next batches are read by a thread of their own while
the current one is worked on, in order, with the reader's errors raised where they were due."""

from __future__ import annotations

import threading
import time

import pytest

from api.http.bulk import batches, read_ahead


@pytest.mark.timeout(10)
def test_batches_arrive_in_order_and_complete():
    assert list(read_ahead(batches(range(10), 3))) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.timeout(10)
def test_the_next_batch_is_read_while_the_current_one_is_worked_on():
    read = []

    def chunks():
        for index in range(3):
            read.append(index)
            yield [index]

    ahead = read_ahead(chunks(), depth=2)
    assert next(ahead) == [0]
    deadline = time.monotonic() + 5
    while len(read) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read == [0, 1, 2], "batches 1 and 2 were read before the consumer asked for them"
    assert list(ahead) == [[1], [2]]


@pytest.mark.timeout(10)
def test_a_reading_error_is_raised_where_its_batch_was_due():
    def chunks():
        yield [1]
        raise ConnectionError("Redis went away")

    ahead = read_ahead(chunks())
    assert next(ahead) == [1]
    with pytest.raises(ConnectionError, match="Redis went away"):
        next(ahead)


@pytest.mark.timeout(10)
def test_closing_the_consumer_stops_the_reader():
    produced = []

    def endless():
        while True:
            produced.append(1)
            yield [len(produced)]

    ahead = read_ahead(endless(), depth=1)
    assert next(ahead) == [1]
    ahead.close()
    time.sleep(1.2)  # the reader notices within one 0.5 s offer
    count = len(produced)
    time.sleep(0.6)
    assert len(produced) == count, "the reader went on after the consumer stopped"
    assert not any(t.name == "tradeflow-operation-reader" and t.is_alive() for t in threading.enumerate())
