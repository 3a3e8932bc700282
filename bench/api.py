"""The HTTP API under load: list and filter latency on a large tasks table, live-event latency,
bulk retry of dead letters.

Runs a real ``tradeflow api`` (uvicorn, one process) against PostgreSQL (a schema of its own in
``--postgres``) and the Redis of ``--redis``, in a namespace of its own, removed afterwards:

* list/filter: ``--rows`` rows (default 1,000,000) made with ``generate_series`` in the migrated
  tasks table (its indexes, ``args.symbol``'s expression index among them, are the product's),
  then ``--requests`` GETs of a page of 50 per query shape from one client: p50/p99 as the client
  sees them (two shapes match nothing: what a missing index would cost shows there);
* live events: a worker runs ``ping``; each of ``--events`` jobs is submitted over the API while a
  client listens to ``/api/v1/events``: p50/p99 from the job's state change to the client's
  receipt, for ``job.pending`` (from the submission's answer) and ``job.completed`` (from the
  row's ``completed_at``, the worker's clock: same host);
* bulk retry: ``--dead`` dead letters (default 100,000) written straight into a dead-letter queue,
  retried with ``POST /api/v1/dead-letters:retry`` (no rate limit), while another client keeps
  listing jobs: retries a second, the API process's CPU per letter, and that client's p50/p99,
  beside the same client's for 5 s before the operation (the machine's share of the tail).

Usage: ``python bench/api.py [--rows 1000000] [--dead 100000] [--requests 200] [--events 200]
[--only lists|events|bulk] [--bulk-batch N] [--bulk-rate N] [--smoke]``.  ``--only bulk`` fills the
tasks table too (the retries' audit rows go into it); ``--smoke``: 2,000 rows, 500 dead letters, a
few requests and events, a few seconds.  Each figure is also printed as a ``figure:`` line
(``bench.harness``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: the PostgreSQL schema and port helpers

from actors.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402
from storage import create_api_key, create_db_engine, upgrade  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Queue of the dead letters: no worker consumes it, so the retry rate is the API's alone.
DEAD_QUEUE = "bench_dead"

#: Symbols spread over the generated rows (the JSON-path filter's values).
SYMBOLS = [f"S{i:03d}" for i in range(200)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(name: str, millis: list[float], *, figure: str) -> None:
    """Print p50 and p99 of ``millis``, and as the figures ``<figure>.p50_ms`` and ``.p99_ms``."""
    p50, p99 = percentile(millis, 0.5), percentile(millis, 0.99)
    print(f"  {name:<48} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(millis)})")
    harness.figure(f"{figure}.p50_ms", p50, "ms")
    harness.figure(f"{figure}.p99_ms", p99, "ms")


def fill_tasks(url: str, rows: int) -> float:
    """``rows`` audit rows over the last ``rows`` seconds, 3 actors, 4 statuses, 200 symbols."""
    from sqlalchemy import text

    engine = create_db_engine(url)
    started = time.perf_counter()
    symbols = "ARRAY[" + ",".join(f"'{s}'" for s in SYMBOLS) + "]"
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""
                INSERT INTO tasks (task_id, task_type, queue, priority, status, seq, args, user_id,
                                   retry_count, created_at)
                SELECT 'bench-' || g,
                       (ARRAY['ping','fetch_market_data','sync_portfolio'])[1 + g % 3],
                       (ARRAY['system','data_fetcher','portfolio'])[1 + g % 3],
                       (ARRAY['normal','high','low','critical'])[1 + g % 4],
                       (ARRAY['completed','completed','completed','failed','dead_letter','pending'])
                           [1 + g % 6],
                       2,
                       json_build_object('args', json_build_array(),
                                         'kwargs', json_build_object(
                                             'symbol', ({symbols})[1 + g % {len(SYMBOLS)}])),
                       'user' || (g % 1000), 0,
                       now() AT TIME ZONE 'UTC' - make_interval(secs => g)
                FROM generate_series(1, :rows) AS g
                """
            ),
            {"rows": rows},
        )
        connection.execute(text("ANALYZE tasks"))
    engine.dispose()
    return time.perf_counter() - started


@contextmanager
def api_server(settings: Settings, log: Path, *, bulk_batch: int, bulk_rate: int):
    """A ``tradeflow api`` and a one-process ``system`` worker; the API's URL, settings and pid."""
    from obs_support import free_port  # tests/ helper

    settings = settings.model_copy(
        update={
            "api_port": free_port(),
            "api_bulk_batch": bulk_batch,
            "api_bulk_rate": bulk_rate,
            "metrics_port": 0,
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TRADEFLOW_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    with open(log, "w") as out:
        process = harness.start([tradeflow, "api"], env=env, cwd=ROOT, stdout=out, stderr=out)
        worker = harness.start(
            [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "8", "-Q", "system"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the API did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url, settings, process.pid
    finally:
        harness.finish(worker)
        harness.finish(process)


def bench_lists(client: httpx.Client, requests: int) -> None:
    print(f"list and filter, page of 50 ({requests} requests each):")
    shapes = {
        ("newest", "newest"): {},
        ("status=failed", "status"): {"status": "failed"},
        ("actor=ping&status=completed", "actor_status"): {"actor": "ping", "status": "completed"},
        ("queue=portfolio", "queue"): {"queue": "portfolio"},
        ("args.symbol=S042 (JSON path, indexed)", "args_symbol"): {"args.symbol": "S042"},
        ("user=user7", "user"): {"user": "user7"},
        # filters that match nothing: an index in the list's order answers at once, a scan reads all
        ("actor=sync_portfolio&status=dead_letter (none)", "actor_status_none"): {
            "actor": "sync_portfolio",
            "status": "dead_letter",
        },
        ("args.symbol=NONE (none)", "args_symbol_none"): {"args.symbol": "NONE"},
    }
    for (name, slug), params in shapes.items():
        millis = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get("/api/v1/jobs", params={**params, "limit": 50})
            millis.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text[:300]
            assert bool(response.json()["items"]) != name.endswith("(none)"), response.text[:300]
        report(name, millis, figure=f"lists.{slug}")
    millis, cursor = [], None
    for _ in range(requests):  # deep pages: follow the cursor
        started = time.perf_counter()
        page = client.get(
            "/api/v1/jobs", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
        ).json()
        millis.append((time.perf_counter() - started) * 1000)
        cursor = page["next_cursor"]
    report(f"cursor walk, pages 1..{requests}", millis, figure="lists.cursor_walk")


def bench_events(url: str, token: str, count: int):
    print(f"live events ({count} ping jobs, one at a time):")
    headers = {"Authorization": f"Bearer {token}"}
    received: dict[tuple[str, str], float] = {}
    ready = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=url, headers=headers, timeout=None) as client,
            client.stream(
                "GET", "/api/v1/events", params={"kind": "job.pending,job.completed", "queue": "system"}
            ) as stream,
        ):
            event = None
            for line in stream.iter_lines():
                if line == ": connected":
                    ready.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    received[(event, json.loads(line[6:])["job"])] = time.time()
                    if len(received) >= 2 * count:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(30)
    submitted: dict[str, float] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for i in range(count):
            response = client.post("/api/v1/jobs", json={"actor": "ping", "args": [i]})
            submitted[response.json()["job_id"]] = time.time()
            time.sleep(0.02)
    listener.join(60)
    pending = [
        (received[("job.pending", job)] - at) * 1000
        for job, at in submitted.items()
        if ("job.pending", job) in received
    ]
    report("submitted -> job.pending received", pending, figure="events.pending")
    return submitted, received


def completed_latency(database_url: str, submitted, received) -> None:
    from sqlalchemy import text

    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT task_id, completed_at FROM tasks WHERE task_id = ANY(:ids)"),
            {"ids": list(submitted)},
        ).all()
    engine.dispose()
    millis = []
    for job, completed_at in rows:
        if completed_at is not None and ("job.completed", job) in received:
            finished = completed_at.replace(tzinfo=__import__("datetime").UTC).timestamp()
            millis.append((received[("job.completed", job)] - finished) * 1000)
    report("completed (row's completed_at) -> received", millis, figure="events.completed")


def fill_dead_letters(client: redis.Redis, namespace: str, count: int) -> None:
    from dramatiq.message import Message

    xq = f"{namespace}:{DEAD_QUEUE}.XQ"
    now = time.time() * 1000
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            redis_id = uuid.uuid4().hex
            message = Message(
                queue_name=DEAD_QUEUE,
                actor_name="ping",
                args=(i,),
                kwargs={},
                options={"redis_message_id": redis_id},
                message_id=str(uuid.uuid4()),
            )
            pipe.hset(f"{xq}.msgs", redis_id, message.encode())
            pipe.zadd(xq, {redis_id: now - count + i})
            if i % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runner_of(api_pid: int) -> int:
    """The operations runner child of the API process ``api_pid``."""
    children = Path(f"/proc/{api_pid}/task/{api_pid}/children").read_text().split()
    if len(children) != 1:
        raise SystemExit(f"expected one operations runner under the API, found {children}")
    return int(children[0])


def list_jobs_for(url: str, headers: dict[str, str], reads: list[float], stop: threading.Event) -> None:
    """GET a page of failed jobs again and again until ``stop``; each request's milliseconds."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        while not stop.is_set():
            started = time.perf_counter()
            api.get("/api/v1/jobs", params={"limit": 50, "status": "failed"})
            reads.append((time.perf_counter() - started) * 1000)


def bench_bulk_retry(
    url: str, token: str, settings: Settings, dead: int, *, api_pid: int, idle_s: float
) -> None:
    rate = f"at most {settings.api_bulk_rate:,}/s" if settings.api_bulk_rate else "no rate limit"
    print(
        f"bulk retry of {dead:,} dead letters (batches of {settings.api_bulk_batch}, {rate}),"
        " a reader listing jobs meanwhile:"
    )
    client = redis.Redis.from_url(settings.redis_url)
    fill_dead_letters(client, settings.namespace, dead)
    client.close()
    headers = {"Authorization": f"Bearer {token}"}
    # the same reader without the operation first: on a loaded machine its tail is the machine's
    stop, idle = threading.Event(), []
    thread = threading.Thread(target=list_jobs_for, args=(url, headers, idle, stop), daemon=True)
    thread.start()
    time.sleep(idle_s)
    stop.set()
    thread.join(30)
    report(f"GET /jobs before, {idle_s:.0f} s without it", idle, figure="bulk.reads_before")
    stop, reads = threading.Event(), []
    thread = threading.Thread(target=list_jobs_for, args=(url, headers, reads, stop), daemon=True)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as api:
        thread.start()
        runner = runner_of(api_pid)
        cpu, runner_cpu = cpu_seconds(api_pid), cpu_seconds(runner)
        started = time.perf_counter()
        operation = api.post("/api/v1/dead-letters:retry", json={"queue": DEAD_QUEUE}).json()["operation_id"]
        while (state := api.get(f"/api/v1/operations/{operation}").json())["status"] == "running":
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        cpu, runner_cpu = cpu_seconds(api_pid) - cpu, cpu_seconds(runner) - runner_cpu
    stop.set()
    thread.join(30)
    print(
        f"  {state['done']:,} retried in {elapsed:.2f} s: {state['done'] / elapsed:,.0f} retries/s"
        f" ({state['status']}); CPU of the operations runner {runner_cpu:.1f} s"
        f" ({runner_cpu / max(state['done'], 1) * 1e6:.0f} µs a letter), of the API process"
        f" {cpu:.1f} s (the reader's requests)"
    )
    if state["status"] != "succeeded" or state["done"] != dead:
        raise SystemExit(f"the bulk retry did not retry every letter: {state}")
    harness.figure("bulk.retries_per_s", state["done"] / elapsed, "/s")
    harness.figure("bulk.runner_cpu_us_per_letter", runner_cpu / state["done"] * 1e6, "us")
    report("GET /jobs meanwhile", reads, figure="bulk.reads")


def main() -> None:
    parser = harness.parser(__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument(
        "--bulk-batch", type=int, default=Settings().api_bulk_batch, help="Letters per batch."
    )
    parser.add_argument("--bulk-rate", type=int, default=0, help="Most retries a second (0: no limit).")
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--only", choices=["lists", "events", "bulk"], help="Run one part only.")
    args = harness.parse(parser)
    if args.smoke:
        args.rows, args.dead, args.requests, args.events = 2_000, 500, 5, 5
    with harness.supervised():
        run(args)


def run(args) -> None:
    namespace = f"bench-api-{uuid.uuid4().hex[:8]}"
    from conftest import _postgres_schema_url  # a schema of its own, dropped afterwards

    with contextmanager(_postgres_schema_url)(args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(url)
        upgrade(engine)
        _, token = create_api_key(engine, name="bench", role="admin")
        engine.dispose()
        if args.only in (None, "lists", "bulk"):
            print(f"filled {args.rows:,} task rows in {fill_tasks(url, args.rows):.1f} s")
        settings = Settings(
            redis_url=args.redis, namespace=namespace, database_url=url, metrics_dir=Path(tmp) / "m"
        )
        try:
            with api_server(
                settings, Path(tmp) / "api.log", bulk_batch=args.bulk_batch, bulk_rate=args.bulk_rate
            ) as (base, running, api_pid):
                if args.only in (None, "lists"):
                    headers = {"Authorization": f"Bearer {token}"}
                    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                        client.get("/api/v1/jobs")  # warm the pool
                        bench_lists(client, args.requests)
                if args.only in (None, "events"):
                    submitted, received = bench_events(base, token, args.events)
                    completed_latency(url, submitted, received)
                if args.only in (None, "bulk"):
                    idle_s = 1 if args.smoke else 5
                    bench_bulk_retry(base, token, running, args.dead, api_pid=api_pid, idle_s=idle_s)
        finally:
            client = redis.Redis.from_url(args.redis)
            for key in client.scan_iter(match=f"{namespace}*", count=1000):
                client.delete(key)
            client.close()


if __name__ == "__main__":
    main()
