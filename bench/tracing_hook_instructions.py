"""Instructions per message of the Tracing middleware's hooks alone, counted by valgrind's callgrind.

    .venv/bin/python bench/tracing_hook_instructions.py [--messages 2000]

CPU time of a few µs moves by ±20 % between runs on the 2-core VM, even in a tight loop; an
instruction count is the same to 0.05 % from run to run (``PYTHONHASHSEED`` fixed), so it settles
whether a change to the hooks does less work.  Per hook pair, a child process under callgrind
builds the middleware (every span exported by tradeflow's OTLP/HTTP exporter, sampled 100 %) and N
messages, runs the pair over them, and exits; the same with no message run is subtracted, so
imports, set-up and the first use of every code path (each run first sends N messages, whose
``traceparent`` the process hooks then read) cancel out.  No export runs (the batch processor's
size and delay are set out of reach): encoding is ``bench/tracing_instructions.py``'s part.

* send: ``before_enqueue`` + ``after_enqueue`` of a message sent outside any span;
* process: ``before_process_message`` + ``after_process_message`` of a message carrying a
  ``traceparent`` (the worker's common case).

About a minute on the VM.  ``--smoke``: 20 messages, and callgrind instruments nothing until the
child is about to run the hooks (``--instr-atstart=no``, then ``callgrind_control -i on``), which
spares the minute of instrumenting its imports, and no run with no message is subtracted: the
counts are of the hooks cold, plus the switch's own few instructions.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

#: Batch processor settings under which no export runs while the hooks are counted (the warm-up's
#: and the counted messages' spans stay queued).
QUIET_EXPORT = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "16384",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16384",
    "OTEL_BSP_SCHEDULE_DELAY": "600000",
}

#: Most messages per run: beyond ``MAX_OPEN_SEND_SPANS`` the send side would evict spans.
MAX_MESSAGES = 2000


def _child(hooks: str, count: int, *, smoke: bool) -> None:
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.settings import Settings
    from actors.telemetry import Tracing, tracer_provider_for

    settings = Settings(
        tracing_exporter="otlp-http", tracing_endpoint="http://127.0.0.1:9/v1/traces", audit_enabled=False
    )
    middleware = Tracing(tracer_provider=tracer_provider_for(settings))
    broker = StubBroker()
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="bench_hooks")
    sent = [actor.message() for _ in range(MAX_MESSAGES)]
    for message in sent:  # messages carrying a traceparent, as a worker receives them
        middleware.before_enqueue(broker, message, None)
        middleware.after_enqueue(broker, message, None)
    received = [MessageProxy(dramatiq.Message.decode(message.encode())) for message in sent][:count]
    fresh = [actor.message() for _ in range(MAX_MESSAGES)][:count]
    if smoke:  # from here on, callgrind counts (in the run with no message too: it cancels out)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
    if hooks == "send":
        for message in fresh:
            middleware.before_enqueue(broker, message, None)
            middleware.after_enqueue(broker, message, None)
    else:
        for proxy in received:
            middleware.before_process_message(broker, proxy)
            middleware.after_process_message(broker, proxy)
    os._exit(0)  # no shutdown flush: the export is not what is counted


def _instructions(hooks: str, count: int, *, smoke: bool) -> int:
    output = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            *(["--instr-atstart=no"] if smoke else []),
            sys.executable,
            __file__,
            "--child",
            hooks,
            str(count),
            *(["--smoke"] if smoke else []),
        ],
        env={**os.environ, **QUIET_EXPORT, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=MAX_MESSAGES)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = harness.parse(parser)
    if args.child:
        _child(args.child[0], int(args.child[1]), smoke=args.smoke)
    if args.smoke:
        args.messages = 20
    if not 0 < args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1 and {MAX_MESSAGES}")
    with harness.supervised():
        for hooks in ("send", "process"):
            counted = _instructions(hooks, args.messages, smoke=args.smoke)
            baseline = 0 if args.smoke else _instructions(hooks, 0, smoke=False)
            per_message = (counted - baseline) / args.messages
            print(f"{hooks:8s} hooks: {per_message:8,.0f} instructions per message")
            harness.figure(f"{hooks}.instructions", per_message, "instructions/message")


if __name__ == "__main__":
    main()
