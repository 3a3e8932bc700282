"""Drop-in Dramatiq: our broker passes Dramatiq's own Redis broker tests, keeps its ``do_*``
commands, and holds what Dramatiq's white-box tests probe under our own design (deferred acks,
priority lanes, bounded recovery).

Dramatiq's ``tests/test_redis.py`` comes from its sdist at test time (see ``dramatiq_suite``).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dramatiq
import pytest
import redis
from broker_support import running_worker, sqlite_settings, wait_until
from dramatiq import Message
from dramatiq_suite import SKIPS, STOCK_VARIABLE, fetch_suite, lay_out, private_redis, run_suite, suite_tests
from tcp_proxy import TcpProxy, proxied_redis, resp_command

from actors import build_broker
from actors.broker import DEFAULT_LANE, LANES, WakeupRedisBroker
from actors.middleware import recover_stalled

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The slowest test of Dramatiq's suite (16,000 failing messages through a worker, mostly CPU):
#: a child run of its own, beside two that share the rest, which mostly wait (sleeps, worker stops).
SLOW_TEST = "test_redis_dead_lettered_messages_are_cleaned_up"

#: Tests in Dramatiq 2.2's ``tests/test_redis.py``.
SUITE_SIZE = 20


@pytest.fixture(scope="module")
def dramatiq_suite_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    where = cache.mkdir("dramatiq-sdist") if cache is not None else tmp_path_factory.mktemp("dramatiq-sdist")
    try:
        return fetch_suite(Path(where))
    except Exception as exc:  # offline: loud in CI, a skip with the reason on a laptop
        message = f"Dramatiq's test suite is not available ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.timeout(300)
def test_dramatiq_redis_suite_passes_on_our_broker(dramatiq_suite_file, tmp_path):
    """Each test of Dramatiq's suite passes, except the documented skips (which are skipped).

    With ``TRADEFLOW_DRAMATIQ_SUITE_STOCK=1`` the same run on Dramatiq's own broker, without skips."""
    root = lay_out(dramatiq_suite_file, tmp_path / "suite")

    names = suite_tests(dramatiq_suite_file)
    rest = [name for name in names if name != SLOW_TEST]
    parts = [part for part in ([name for name in names if name == SLOW_TEST], rest[0::2], rest[1::2]) if part]

    def run(part: int):
        with private_redis(tmp_path / f"redis-{part}") as url:
            return run_suite(root, parts[part], redis_url=url, repo_root=REPO_ROOT, part=str(part))

    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(run, range(len(parts))))
    outcomes = {name: outcome for result in results for name, outcome in result.outcomes.items()}
    details = {name: text for result in results for name, text in result.details.items()}
    output = "\n".join(result.output for result in results)
    assert len(names) >= SUITE_SIZE, f"{dramatiq_suite_file} has {len(names)} tests"
    assert set(outcomes) == set(names), f"the suite did not run whole:\n{output}"
    assert set(SKIPS) <= set(outcomes), "a skip names a test the suite no longer has"
    skips = {} if os.environ.get(STOCK_VARIABLE) else SKIPS
    expected = {name: "skipped" if name in skips else "passed" for name in outcomes}
    wrong = {name: outcome for name, outcome in outcomes.items() if outcome != expected[name]}
    report = [f"{name}: {outcome}\n{details.get(name, '')}" for name, outcome in wrong.items()]
    assert not wrong, "\n\n".join(report)


def test_dramatiq_commands_keep_their_signatures_and_meaning(redis_url, namespace):
    """``do_enqueue``, ``do_fetch``, ``do_ack``, ``do_nack``, ``do_requeue``, ``do_qsize`` and
    ``do_purge`` called as Dramatiq defines them; a stored priority picks the lane."""
    broker = WakeupRedisBroker(url=redis_url, namespace=namespace)
    client = redis.Redis.from_url(redis_url)
    queue = "compat"

    def data(priority: str | None) -> bytes:
        options = {"priority": priority} if priority else {}
        return Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options=options).encode()

    stored = [data(priority) for priority in (None, "low", "critical", None)]
    for number, message_data in enumerate(stored):
        assert broker.do_enqueue(queue, f"m{number}", message_data) is None
    assert client.llen(f"{namespace}:{queue}:critical") == 1  # the lane its own priority names
    assert broker.do_qsize(queue) == 4
    # (queue_name, prefetch): the data of up to prefetch messages, most urgent lane first
    assert broker.do_fetch(queue, 3) == [stored[2], stored[0], stored[3]]
    assert broker.do_qsize(queue) == 7  # as Dramatiq counts: stored messages, plus unacked ones
    acks = f"{namespace}:__acks__.{broker.broker_id}.{queue}"
    assert client.smembers(acks) == {b"m2", b"m0", b"m3"}
    assert broker.do_ack(queue, "m2") is None
    assert broker.do_nack(queue, "m0") is None
    assert client.zrange(f"{namespace}:{queue}.XQ", 0, -1) == [b"m0"]  # dead-lettered
    assert broker.do_requeue(queue, "m3") is None
    assert client.smembers(acks) == set()
    assert broker.do_qsize(queue) == 2  # m1 (low) and m3, back on its lane
    assert client.lrange(f"{namespace}:{queue}", 0, -1) == [b"m3"]
    assert broker.do_fetch(queue, 5) == [stored[3], stored[1]]  # m3, then the low lane
    broker.do_purge(queue)
    assert broker.do_qsize(queue) == 0
    assert not list(client.scan_iter(match=f"{namespace}:{queue}*"))


def lane_key(namespace: str, queue: str, lane: str) -> str:
    """The Redis list of a queue's lane (the normal lane is the list Dramatiq uses)."""
    return f"{namespace}:{queue}" + ("" if lane == DEFAULT_LANE else f":{lane}")


def _drops_flush_of(namespace: str, queue: str):
    """A predicate on a request: the fetch of ``queue`` that carries acks and takes messages."""

    def predicate(data: bytes) -> bool:
        parts = resp_command(data)
        # EVALSHA sha 1 namespace | command timestamp queue ... | prefetch ttl max_deliveries n_acks
        if not parts or parts[0].upper() != b"EVALSHA" or len(parts) < 16:
            return False
        if parts[3:5] != [namespace.encode(), b"fetch"] or parts[6] != queue.encode():
            return False
        return int(parts[12]) > 0 and int(parts[15]) > 0

    return predicate


@pytest.mark.timeout(60)
def test_connection_cut_while_acks_are_flushed(redis_url, namespace, tmp_path):
    """The reply of a fetch carrying acks is lost (Redis ran it: the acks took effect and it took
    more messages): every message is acked, none runs twice, none is lost.  The consumer sees
    the error and reclaims what the lost call took."""
    link, proxied = proxied_redis(redis_url)
    broker = build_broker(sqlite_settings(proxied, namespace, tmp_path, audit_enabled=False))
    try:
        _runs_every_message_once_through_a_lost_flush(broker, link, redis_url, namespace)
    finally:
        link.close()


@pytest.mark.timeout(60)
def test_reply_lost_while_acks_are_flushed_and_retried_by_the_client(redis_url, namespace):
    """The same, on a client that retries the call on its own (redis-py's default for
    ``host=``/``port=`` parameters): the consumer never sees an error, its periodic reclaim
    puts back what the first, lost, run of the call took."""
    link, proxied = proxied_redis(redis_url)
    address, db = proxied.split("//")[1].rsplit("/", 1)
    host, port = address.split(":")
    broker = WakeupRedisBroker(
        host=host, port=int(port), db=int(db), namespace=namespace, reclaim_interval=0.5
    )
    assert broker.client.get_retry().get_retries() > 0, "this client does not retry: the test proves nothing"
    try:
        _runs_every_message_once_through_a_lost_flush(broker, link, redis_url, namespace)
    finally:
        link.close()


@pytest.mark.timeout(60)
def test_delayed_message_held_in_memory_survives_a_redis_outage(redis_url, namespace, tmp_path):
    """Dramatiq's consumer thread drops the delayed messages it holds in memory when its
    connection breaks, leaving them in the worker's ack set; the next delay-queue consumer
    reclaims them, so the message still runs, once."""
    link, proxied = proxied_redis(redis_url)
    broker = build_broker(sqlite_settings(proxied, namespace, tmp_path, audit_enabled=False))
    client = redis.Redis.from_url(redis_url)
    runs: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="later", max_retries=0)
    def later(i: int) -> None:
        runs.append(i)

    try:
        with running_worker(broker, threads=2):
            later.send_with_options(args=(1,), delay=2_000)
            held = f"{namespace}:__acks__.{broker.broker_id}.later.DQ"
            assert wait_until(lambda: client.scard(held) == 1, timeout=5), "the delayed message is not held"
            link.cut()
            time.sleep(1.5)  # both consumers fail; Dramatiq drops the delay queue it held
            link.restore()
            assert wait_until(lambda: runs == [1], timeout=15), "the delayed message never ran"
            time.sleep(0.5)
        assert runs == [1], "it ran twice"
    finally:
        link.close()


def _runs_every_message_once_through_a_lost_flush(
    broker: WakeupRedisBroker, link: TcpProxy, redis_url: str, namespace: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    runs: list[int] = []
    lock = threading.Lock()
    count = 40

    @dramatiq.actor(broker=broker, queue_name="flushed", max_retries=0)
    def flushed(i: int) -> None:
        time.sleep(0.005)
        with lock:
            runs.append(i)

    for i in range(count):
        flushed.send(i)
    dropped = link.drop_reply_once(_drops_flush_of(namespace, "flushed"))
    with running_worker(broker, threads=2):
        assert dropped.wait(10), "no fetch carried acks"
        assert wait_until(lambda: len(runs) >= count, timeout=20), f"lost: {set(range(count)) - {*runs}}"
        time.sleep(0.3)  # a duplicate run would show up now
        assert wait_until(lambda: not list(client.scan_iter(match=f"{namespace}:__acks__.*")), timeout=5)
    assert sorted(runs) == list(range(count)), "a message ran twice"
    assert client.hlen(f"{namespace}:flushed.msgs") == 0, "a message was not acked"
    assert all(client.llen(lane_key(namespace, "flushed", lane)) == 0 for lane in LANES)


@pytest.mark.timeout(60)
def test_dead_worker_holding_20000_messages_across_lanes_is_recovered_whole(redis_url, namespace):
    """20,000 unacked messages (beyond Lua's unpack limit) of a dead worker, on all four lanes,
    are each back on their own lane, once, by our bounded recovery."""
    queue, per_lane = "recovered", 5_000
    dead = WakeupRedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=60_000)
    sent: dict[str, set[bytes]] = {}
    for lane in LANES:
        messages = [
            Message(queue_name=queue, actor_name="a", args=(i,), kwargs={}, options={"priority": lane})
            for i in range(per_lane)
        ]
        stored = dead.enqueue_many(messages)
        sent[lane] = {message.options["redis_message_id"].encode() for message in stored}
    taken = 0
    while batch := dead.do_fetch(queue, 20_000):  # the dead worker took everything
        taken += len(batch)
    client = redis.Redis.from_url(redis_url)
    acks = f"{namespace}:__acks__.{dead.broker_id}.{queue}"
    assert taken == client.scard(acks) == len(LANES) * per_lane

    survivor = WakeupRedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=200)
    time.sleep(0.3)  # the dead worker's last heartbeat is now older than the timeout
    assert recover_stalled(survivor) == {queue: len(LANES) * per_lane}

    assert not client.exists(acks)
    assert client.zscore(f"{namespace}:__heartbeats__", dead.broker_id) is None
    for lane in LANES:
        ids = client.lrange(lane_key(namespace, queue, lane), 0, -1)
        assert len(ids) == per_lane and set(ids) == sent[lane], f"lane {lane} not recovered whole"
    assert client.hlen(f"{namespace}:{queue}.msgs") == len(LANES) * per_lane
