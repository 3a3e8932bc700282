"""What tracing costs, deterministically: instructions per message counted by valgrind's callgrind
in a real producer process and real ``dramatiq`` worker processes, for raw Dramatiq, the full
tradeflow stack with tracing off, and the same with tracing on (every span exported over OTLP/HTTP
to a local receiver in another process).

    .venv/bin/python bench/tracing_instructions.py [--messages 1000]
    .venv/bin/python bench/tracing_instructions.py --sides "tracing off,tracing on"  # of the three

CPU time per message (``bench/tracing_overhead.py --full-stack-cpu``) swings between rounds on a
shared 2-core machine; an instruction count does not depend on what else runs, so one run settles
"tracing on versus off".  Counted, per side:

* producer: a process that imports the side's module and sends one warm-up message (and flushes
  its audit writer and tracer provider), then has its counters zeroed; counted from there: N
  sends, the audit writer's flush and the tracer provider's ``force_flush`` (so encoding and
  posting every span, on the export thread, counts: callgrind counts all threads together);
* workers: ``dramatiq MODULE -p 1 -t 2 -Q bench`` (the master and its worker process) boots and
  goes idle with the queue hidden, has its counters zeroed, is handed the N + 1 messages (the
  warm-up one too) at once; counted until the queue is drained and a ``flush_spans`` message sent
  then is processed (tracing on: every worker span exported before the dump, checked with the
  receiver's count).  Idle workers still run (heartbeats, Redis polls, metrics): their
  instructions per second, counted for a few seconds before the hand-over, times the seconds
  counted bound how much of the figure is background work that grows with wall-clock time
  ("idle bound", per message).
* the tracing side exports only at those flushes (see :data:`EXPORT_SCHEDULE_MS`): one post per
  side of the N spans, as under load, where batches are full.

Not counted: the Redis server, the OTLP receiver, the kernel (system calls are one instruction
each to callgrind, the time inside them is not), process boot and imports, worker shutdown.

One run of the three sides with N = 1000 takes about 6 minutes on the 2-core VM (valgrind runs
Python about 50 times slower; a worker's boot alone takes about a minute).  ``--smoke``: the
tracing-on side alone, 20 messages, every step as above but with callgrind instrumenting nothing
(``--instr-atstart=no``): its counts are 0, and it runs in a fraction of the time (instrumenting
even the 20 messages' cold code paths takes a worker a minute).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput
from tracing_overhead import REDIS_URL, _group, _receive

from bench import harness

#: valgrind and its control program (callgrind_control talks to a running callgrind over vgdb).
VALGRIND = "/usr/bin/valgrind"
CALLGRIND_CONTROL = "/usr/bin/callgrind_control"

#: The sides of :func:`throughput.make_sides` measured by default, in order.
SIDES = ("raw dramatiq", "tracing off", "tracing on")

#: Worker processes and threads per process of the ``dramatiq`` command.
PROCESSES, THREADS = 1, 2

#: The one queue the workers consume: every other declared queue's consumer would poll Redis
#: while idle, background work that grows with the drain's wall-clock time, not with messages.
QUEUE = "bench"

#: Seconds the workers may take to boot under valgrind (about a minute on the 2-core VM).
BOOT_TIMEOUT = 600.0

#: Seconds of CPU per second of wall clock below which the worker group counts as idle
#: (idle workers under valgrind still poll Redis and beat their heartbeats).
IDLE_CPU = 0.15

#: Seconds the idle worker group is counted before the hand-over: its instructions per second
#: of doing nothing, to judge what the waits after the drain add.
IDLE_SECONDS = 5.0

#: Seconds the workers get to shut down once counted, before they are killed (``--smoke``: 1).
SHUTDOWN_SECONDS = 300.0

#: The batch span processors' schedule (``OTEL_BSP_SCHEDULE_DELAY``, ms) of the tracing side: in
#: effect never, spans are exported by the flushes (the producer's, and the workers' on a
#: ``flush_spans`` message sent after the drain).  Valgrind runs Python about 50 times slower,
#: so the production schedule (2 s) would post a batch every 40 ms of real time: batches of a few
#: dozen spans, each post (about 1 ms of CPU through the SDK's HTTP client) counted per few dozen
#: messages, where a real worker at 2,000 messages/s posts full batches of 2,048 spans.
EXPORT_SCHEDULE_MS = 3_600_000

#: Sends ``bench_actors.flush_spans`` to the side's queue (a process of its own, not counted).
FLUSH_SCRIPT = """
import importlib, sys
importlib.import_module(sys.argv[1]).flush_spans.send()
"""

#: Producer: imports the side's module, sends one warm-up message and flushes (not counted), says
#: "ready" and waits for a line; sends N messages, flushes the audit writer and the tracer provider
#: (so export counts), says "done" and waits for a line before exiting.
PRODUCER_SCRIPT = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
from bench.producing import flush

broker, count = module.broker, int(sys.argv[2])
module.noop.send()  # the first send connects and loads scripts: not counted
flush(broker)
print('ready', flush=True)
sys.stdin.readline()
for _ in range(count):
    module.noop.send()
flush(broker)
print('done', flush=True)
sys.stdin.readline()
"""


@dataclass
class Result:
    """Instructions per message of one side, and what its receivers got (``None``: not tracing)."""

    name: str
    producer: float
    workers: float
    idle_per_s: float
    drain_s: float
    after_s: float
    producer_spans: int | None
    worker_spans: int | None

    @property
    def total(self) -> float:
        return self.producer + self.workers

    def idle_bound(self, messages: int) -> float:
        """Workers' instructions per message that background work at the idle rate would make over
        the whole counted window: a bound on the part that depends on wall-clock time."""
        return self.idle_per_s * (self.drain_s + self.after_s) / (messages + 1)


class Receiver:
    """bench/tracing_overhead.py's OTLP/HTTP receiver in a process of its own."""

    def __init__(self) -> None:
        self._pipe, child = multiprocessing.Pipe()
        self._stop = multiprocessing.Event()
        self._process = multiprocessing.Process(target=_receive, args=(child, self._stop), daemon=True)
        self._process.start()
        self.url: str = self._pipe.recv()

    def close(self) -> int:
        """Stop receiving; the spans received."""
        self._stop.set()
        count = self._pipe.recv()
        self._process.join(10)
        return count


#: Whether callgrind instruments nothing (``--smoke``: the pipeline runs, the counts are 0).
INSTRUMENT_NOTHING = False


def _callgrind(out: Path, *command: str) -> list[str]:
    """``command`` under callgrind, one profile file per process (``%p``: its pid), its children
    too when they ``exec``."""
    return [
        VALGRIND,
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}.%p.out",
        *(["--instr-atstart=no"] if INSTRUMENT_NOTHING else []),
        *command,
    ]


def _zero(pid: int) -> None:
    """Zero ``pid``'s counters."""
    _control("-z", str(pid))


def _control(*args: str) -> str:
    return subprocess.run([CALLGRIND_CONTROL, *args], check=True, capture_output=True, text=True).stdout


def _callgrind_pids() -> set[int]:
    """Pids of the active callgrind runs of this user."""
    return {int(pid) for pid in re.findall(r"^PID (\d+)", _control(), re.MULTILINE)}


def _dump(out: Path, pid: int) -> int:
    """Dump ``pid``'s counters since they were last zeroed; its instructions."""
    pattern = f"{out.name}.{pid}.out.*"
    before = set(out.parent.glob(pattern))
    _control("-d", str(pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in set(out.parent.glob(pattern)) - before:
            for line in path.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump for {pid}")


def _expect(stream: IO[str], word: str) -> None:
    line = stream.readline().strip()
    if line != word:
        raise RuntimeError(f"producer said {line!r}, expected {word!r}")


def produce(side: throughput.Side, messages: int, out: Path) -> int:
    """Instructions of the producer process from its first counted send to its last span exported."""
    with open(f"{out}.log", "w") as log:  # valgrind's own output
        process = subprocess.Popen(
            _callgrind(out, sys.executable, "-c", PRODUCER_SCRIPT, side.module, str(messages)),
            env=side.env,
            cwd=throughput.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        _expect(process.stdout, "ready")
        _zero(process.pid)
        process.stdin.write("go\n")
        process.stdin.flush()
        _expect(process.stdout, "done")
        instructions = _dump(out, process.pid)
        process.stdin.write("exit\n")
        process.stdin.close()
        if process.wait(120):
            raise RuntimeError(f"producer failed, see {out}.log")
        return instructions
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _group_pids(pgid: int) -> set[int]:
    """Pids of the live processes of process group ``pgid``."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.add(int(stat.parent.name))
    return pids


def _wait_idle(pgid: int, processes: int, timeout: float) -> None:
    """Wait until process group ``pgid`` has more than ``processes`` processes and is idle."""
    deadline = time.monotonic() + timeout
    last = _group(pgid)[1]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        size, now = _group(pgid)
        if size > processes and now - last < IDLE_CPU:
            return
        last = now
    raise RuntimeError(f"worker processes not idle within {timeout:.0f} s")


def consume(side: throughput.Side, client: redis.Redis, out: Path) -> tuple[int, float, float, float]:
    """The worker group's instructions while it drains the queue (and exports), its idle
    instructions per second, the seconds the drain took and the seconds counted after it."""
    queue = f"{side.namespace}:bench"
    client.rename(queue, f"{queue}-held")  # hidden while the workers boot
    # Spawned, not forked: valgrind's gdbserver, which callgrind_control talks to, does not run in
    # a forked child, so only a process started afresh can be zeroed and dumped while it runs.
    command = ["-m", "dramatiq", "--use-spawn", side.module, "-p", str(PROCESSES), "-t", str(THREADS)]
    command += ["-Q", QUEUE]
    with open(f"{out}.log", "w") as log:  # valgrind's output and the workers' logs
        workers = harness.start(
            _callgrind(out, sys.executable, *command),
            env=side.env,
            cwd=throughput.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_idle(workers.pid, PROCESSES, BOOT_TIMEOUT)
        pids = _group_pids(workers.pid) & _callgrind_pids()
        if len(pids) <= PROCESSES:
            raise RuntimeError(f"callgrind controls {len(pids)} of the worker group's processes")
        print(f"    counting {len(pids)} worker-group processes under callgrind", flush=True)
        for pid in pids:
            _zero(pid)
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle = sum(_dump(out, pid) for pid in pids) / (time.monotonic() - started)
        for pid in pids:
            _control("-z", str(pid))
        started = time.monotonic()
        client.rename(f"{queue}-held", queue)
        _wait_drained(client, side)
        drained = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", FLUSH_SCRIPT, side.module], env=side.env, cwd=throughput.ROOT, check=True
        )
        _wait_drained(client, side)
        _wait_idle(workers.pid, PROCESSES, 120)
        instructions = sum(_dump(out, pid) for pid in pids)
        after = time.monotonic() - drained
        harness.finish(
            workers, timeout=SHUTDOWN_SECONDS
        )  # SIGTERM to the master only: workers shut down once
        return instructions, idle, drained - started, after
    finally:
        if workers.poll() is None or _group(workers.pid)[0]:  # on error: nothing left running
            os.killpg(workers.pid, signal.SIGKILL)
        harness.finish(workers)


def _wait_drained(client: redis.Redis, side: throughput.Side) -> None:
    queue = f"{side.namespace}:bench"
    while client.llen(queue) or throughput.unacked(client, side.namespace):
        time.sleep(0.05)


def measure(side: throughput.Side, client: redis.Redis, messages: int, directory: Path) -> Result:
    """One side: producer, then workers, each with a receiver of its own when tracing."""
    tracing = "TRADEFLOW_TRACING_EXPORTER" in side.env
    slug = side.name.replace(" ", "-")
    spans: list[int | None] = [None, None]
    for index in range(2):
        receiver = Receiver() if tracing else None
        if receiver is not None:
            side.env["TRADEFLOW_TRACING_ENDPOINT"] = receiver.url
        try:
            if index == 0:
                producer = produce(side, messages, directory / f"{slug}-producer") / messages
            else:
                instructions, idle, drain, after = consume(side, client, directory / f"{slug}-workers")
        finally:
            if receiver is not None:
                spans[index] = receiver.close()  # workers: before their shutdown, so only spans counted
    # the producer's warm-up message is drained too
    return Result(side.name, producer, instructions / (messages + 1), idle, drain, after, *spans)


def report(results: list[Result], messages: int) -> None:
    print(
        f"\n{messages} no-op messages, workers {PROCESSES} process x {THREADS} threads; "
        "instructions per message:"
    )
    print(
        f"{'side':>12} {'producer':>10} {'workers':>10} {'total':>10} "
        f"{'drain s':>7} {'after s':>7} {'idle/s':>10} {'idle bound':>10} {'spans (producer, workers)':>26}"
    )
    for result in results:
        spans = (
            f"{result.producer_spans}, {result.worker_spans}" if result.producer_spans is not None else "-"
        )
        print(
            f"{result.name:>12} {result.producer:10.0f} {result.workers:10.0f} {result.total:10.0f} "
            f"{result.drain_s:7.1f} {result.after_s:7.1f} {result.idle_per_s:10.0f} "
            f"{result.idle_bound(messages):10.0f} {spans:>26}"
        )
    by_name = {result.name: result for result in results}
    for on, off in (("tracing on", "tracing off"), ("tracing off", "raw dramatiq")):
        if on in by_name and off in by_name:
            a, b = by_name[on], by_name[off]
            print(
                f"{on} vs {off}: {a.total / b.total - 1:+.1%} (producer {a.producer / b.producer - 1:+.1%}, "
                f"workers {a.workers / b.workers - 1:+.1%})"
            )
    if "tracing on" in by_name:
        print(
            f"spans expected: producer {messages + 1} (warm-up included), workers {messages + 1} "
            "(all exported before the dump)"
        )


def main() -> None:
    global INSTRUMENT_NOTHING, IDLE_SECONDS, SHUTDOWN_SECONDS
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated, of: " + ", ".join(SIDES))
    args = harness.parse(parser)
    if args.smoke:
        args.messages, INSTRUMENT_NOTHING, IDLE_SECONDS, SHUTDOWN_SECONDS = 20, True, 0.5, 1.0
        if args.sides == ",".join(SIDES):
            args.sides = "tracing on"
    chosen = [name.strip() for name in args.sides.split(",")]
    unknown = set(chosen) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    with harness.supervised(), tempfile.TemporaryDirectory(prefix="tradeflow-bench-instr-") as tmp:
        directory = Path(tmp)
        database_url = f"sqlite:///{directory}/bench.db"
        throughput.prepare_database(database_url)
        # the endpoint is set per receiver (measure); the variant exists for the other settings
        throughput.VARIANTS = [
            (
                "tracing on",
                {
                    "TRADEFLOW_TRACING_EXPORTER": "otlp-http",
                    "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_SCHEDULE_MS),
                },
            )
        ]
        sides = {}
        for side in throughput.make_sides(REDIS_URL, [database_url]):
            side.name = "tracing off" if side.name.startswith("tradeflow") else side.name
            side.env.update(TRADEFLOW_METRICS_PORT="0", PYTHONHASHSEED="0")
            sides[side.name] = side
        client = redis.Redis.from_url(REDIS_URL)
        results = []
        try:
            for name in chosen:
                results.append(measure(sides[name], client, args.messages, directory))
                print(
                    f"  {name:12s} producer {results[-1].producer:10.0f}, workers "
                    f"{results[-1].workers:10.0f} instructions per message",
                    flush=True,
                )
        finally:
            for side in sides.values():
                throughput.cleanup(client, side.namespace)
    report(results, args.messages)
    print(f"run time: {time.monotonic() - started:.0f} s")
    for result in results:
        name = harness.slug(result.name)
        harness.figure(f"{name}.producer_instructions", result.producer, "instructions/message")
        harness.figure(f"{name}.workers_instructions", result.workers, "instructions/message")
        harness.figure(f"{name}.idle_bound", result.idle_bound(args.messages), "instructions/message")


if __name__ == "__main__":
    main()
