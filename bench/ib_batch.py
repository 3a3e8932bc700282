"""Position requests drained through the simulator to Delta Lake: batches vs one request per call.

    python bench/ib_batch.py [--contracts 500] [--accounts 1] [--duplicates 20] [--batch-size 50]
                             [--workers 2] [--baseline-sample 100] [--smoke]

Both runs use the same code path and real parts: the simulator (``tradeflow ib-sim``) in its
own process, ``dramatiq actors`` worker processes, real Redis, SQLite, Delta Lake.
- The gateway holds ``--contracts`` contracts in each of ``--accounts`` accounts.
- batched: every (account, contract) is requested ``--duplicates`` times, all queued before
  the batches start (default: 10,000 requests for 500 held contracts); duplicates of an open
  request coalesce, each distinct request gets its row.  ``--batch-size`` per batch.
- baseline: one request per call (batch size 1: one reqPositions, one Delta commit and one SQL
  update per request), on ``--baseline-sample`` distinct requests, extrapolated.
Worker start-up and the first gateway connection are warmed up before the clock starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from actors.ib import (  # noqa: E402
    BatchScheduler,
    Scenario,
    SimPosition,
)
from actors.runtime import build_broker  # noqa: E402
from actors.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402
from storage import create_db_engine, upgrade  # noqa: E402
from storage.ib_positions import NewRequest, enqueue_requests, queue_stats  # noqa: E402

#: First conid of the simulated holdings.
FIRST_CONID = 10_000

#: Requests per enqueue transaction.
ENQUEUE_CHUNK = 1_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accounts(count: int) -> list[str]:
    return [f"DU{i:03d}" for i in range(count)]


def _scenario(contracts: int, accounts: int) -> Scenario:
    positions = [
        SimPosition(account=account, conid=FIRST_CONID + i, symbol=f"S{i}", position=i + 1,
                    avg_cost=10.0 + i, market_price=11.0 + i)
        for account in _accounts(accounts)
        for i in range(contracts)
    ]  # fmt: skip
    return Scenario(accounts=_accounts(accounts), positions=positions)


def _requests(contracts: int, accounts: int, duplicates: int) -> list[NewRequest]:
    """Each (account, contract) ``duplicates`` times, interleaved as independent requesters would."""
    pairs = [(a, FIRST_CONID + i) for a in _accounts(accounts) for i in range(contracts)]
    return [
        NewRequest(conid=conid, account=account, requested_by=f"strategy-{d}")
        for d in range(duplicates)
        for account, conid in pairs
    ]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_")}
    env.update({f"TRADEFLOW_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def run(*, label: str, requests: list[NewRequest], batch_size: int, workers: int, port: int, work: Path,
        redis_url: str) -> dict:  # fmt: skip
    """Drain ``requests`` with ``workers`` processes; returns the figures."""
    namespace = f"bench-ib-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=f"sqlite:///{work / label}.db",
        delta_root=work / f"{label}-delta",
        ib_port=port,
        ib_batch_size=batch_size,
        audit_enabled=False,
        ib_timeout_ms=60_000,
    )
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    broker = build_broker(settings)
    scheduler = BatchScheduler(broker=broker, namespace=namespace, interval=60.0, batch_size=batch_size)
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "-p",
        str(workers),
        "-t",
        "1",
        "-Q",
        "ib_positions",
    ]
    process = harness.start(command, env=_env(settings), cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    try:
        # warm-up: every worker process connects to the gateway before the clock starts
        warm = [NewRequest(conid=FIRST_CONID + i, account="WARM") for i in range(workers * 2)]
        enqueue_requests(engine, warm)
        for _ in range(workers * 2):
            scheduler.send_batch()
        _wait(lambda: queue_stats(engine).processed >= len(warm), 120, "the warm-up")
        time.sleep(1)
        warm_stats = queue_stats(engine)
        warm_commits = _commits(settings.delta_root)

        started = time.perf_counter()
        for start in range(0, len(requests), ENQUEUE_CHUNK):
            enqueue_requests(engine, requests[start : start + ENQUEUE_CHUNK])
        enqueued = time.perf_counter() - started
        for _ in range(workers):  # one chain per worker process
            scheduler.send_batch()
        distinct = len({r.pending_key for r in requests})
        total = len(warm) + distinct
        _wait(lambda: queue_stats(engine).processed >= total, 1_800, f"{distinct} distinct requests")
        elapsed = time.perf_counter() - started
    finally:
        harness.finish(process)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{namespace}*"):
            client.delete(key)
    stats = queue_stats(engine)
    from storage.position_updates import read_position_updates

    rows = len(read_position_updates(settings.delta_root)) - len(warm)
    batches = stats.batches - warm_stats.batches
    commits = _commits(settings.delta_root) - warm_commits
    return {
        "label": label,
        "requests": len(requests),
        "distinct": distinct,
        "succeeded": stats.succeeded - warm_stats.succeeded,
        "failed": stats.failed - warm_stats.failed,
        "rows": rows,
        "seconds": elapsed,
        "enqueue_seconds": enqueued,
        "batches": batches,
        "commits": commits,
    }


def _commits(delta_root: Path) -> int:
    """Commits of the table so far (one JSON file per version in its log; no deltalake needed)."""
    from storage.position_updates import table_path

    return len(list((table_path(delta_root) / "_delta_log").glob("*.json")))


def main() -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--contracts", type=int, default=500)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--duplicates", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-sample", type=int, default=100)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = harness.parse(parser)
    if args.smoke:
        args.contracts, args.duplicates, args.batch_size, args.workers, args.baseline_sample = 6, 2, 3, 1, 3
    with harness.supervised():
        batched, single = _measure(args)
    _report(args, batched, single)


def _measure(args) -> tuple[dict, dict]:
    """The batched run and the one-per-call run, on a simulator of their own."""
    requests = _requests(args.contracts, args.accounts, args.duplicates)
    with tempfile.TemporaryDirectory(prefix="bench-ib-") as tmp:
        work = Path(tmp)
        scenario_file = work / "scenario.json"
        scenario = _scenario(args.contracts, args.accounts)
        scenario.accounts.append("WARM")
        scenario.positions += [
            SimPosition(account="WARM", conid=FIRST_CONID + i, symbol=f"S{i}", position=1, avg_cost=1.0)
            for i in range(args.workers * 2)
        ]
        scenario_file.write_text(json.dumps(scenario.to_dict()))
        port = _free_port()
        command = ["ib-sim", "--scenario", str(scenario_file), "--port", str(port)]
        simulator = harness.start(
            [sys.executable, "-m", "api.cli", *command],
            cwd=REPO_ROOT, env=_env(Settings()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(lambda: _port_open(port), 30, "the simulator")
            common = dict(port=port, work=work, redis_url=args.redis_url, workers=args.workers)
            batched = run(label="batched", requests=requests, batch_size=args.batch_size, **common)
            sample = _requests(args.contracts, args.accounts, 1)[: args.baseline_sample]
            single = run(label="one-per-call", requests=sample, batch_size=1, **common)
        finally:
            harness.finish(simulator)
    return batched, single


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _report(args, batched: dict, single: dict) -> None:
    positions = args.contracts * args.accounts
    print(f"gateway holds {positions} positions ({args.contracts} contracts x {args.accounts} accounts); "
          f"{args.workers} worker processes")  # fmt: skip
    for run_ in (batched, single):
        rate = run_["requests"] / run_["seconds"]
        print(
            f"{run_['label']:>13}: {run_['requests']:>6} requests ({run_['distinct']} distinct) in "
            f"{run_['seconds']:7.2f}s ({rate:8.1f} req/s, {run_['rows'] / run_['seconds']:8.1f} rows/s), "
            f"{run_['succeeded']} ok / {run_['failed']} failed, {run_['batches']} batches, "
            f"{run_['commits']} Delta commits ({run_['commits'] / max(run_['batches'], 1):.2f} per batch), "
            f"enqueue {run_['enqueue_seconds']:.2f}s"
        )
    per_request = single["seconds"] / single["requests"]
    for what, count in (("distinct", batched["distinct"]), ("submitted", batched["requests"])):
        projected = per_request * count
        print(f"one-per-call projected for the {count} {what} requests: {projected:.1f}s "
              f"-> batches are x{projected / batched['seconds']:.1f} faster")  # fmt: skip
        harness.figure(f"batched.speedup_{what}", projected / batched["seconds"], "x")
    for run_ in (batched, single):
        name = harness.slug(run_["label"])
        harness.figure(f"{name}.requests_per_s", run_["requests"] / run_["seconds"], "req/s")
        harness.figure(f"{name}.rows_per_s", run_["rows"] / run_["seconds"], "rows/s")
        harness.figure(f"{name}.commits_per_batch", run_["commits"] / max(run_["batches"], 1))


if __name__ == "__main__":
    main()
