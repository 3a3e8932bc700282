"""Fetch and upsert N symbols x Y years of daily bars (synthetic provider) into Delta Lake.

End to end, as the ``fetch_market_data`` actor runs it (provider, checks, features, one MERGE):
  1. into an empty ``market_bars``;
  2. the same range again: must be a no-op (no new table version), and says so;
  3. an overlapping range one month further: only the new bars are inserted.
Then the write alone, side by side on the same prepared rows, into fresh tables, best of --rounds:
  4. MERGE upsert (ours) vs 5. plain Delta append (the baseline: no dedup), and 6. the MERGE again (no-op).

Usage: python bench/data_fetch.py [--symbols 500] [--years 2] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.compute as pc

from actors.market_data import ingest
from actors.market_data.synthetic import SyntheticProvider
from actors.market_data.tables import MARKET_BARS, append, read_table, upsert
from bench import harness

#: Last day of the benchmark range (fixed, so every run writes the same rows).
END = datetime(2026, 1, 1, tzinfo=UTC)
#: Commit retries (a single writer here).
RETRIES = 5


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def line(label: str, seconds: float, rows: int, note: str = "", *, name: str) -> None:
    print(f"{label:<44} {seconds:7.2f} s {rows / seconds:10,.0f} rows/s  {note}")
    harness.figure(f"{name}.seconds", seconds, "s")
    harness.figure(f"{name}.rows_per_s", rows / seconds, "rows/s")


def main() -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the write-only comparison")
    args = harness.parse(parser)
    if args.smoke:
        args.symbols, args.years, args.rounds = 3, 1, 1
    symbols = [f"S{index:04d}" for index in range(args.symbols)]
    start = END - timedelta(days=365 * args.years)
    root = Path(tempfile.mkdtemp(prefix="tradeflow-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    try:
        no_op = end_to_end(root, SyntheticProvider(seed=1), symbols, start)
        write_only(root, rounds=args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not no_op:
        raise SystemExit("re-running the same range changed the table: the upsert is not idempotent")


def end_to_end(root: Path, provider: SyntheticProvider, symbols: list[str], start: datetime) -> bool:
    def fetch(first: datetime, last: datetime):
        return ingest.fetch_bars(
            provider,
            root / "e2e",
            symbols=symbols,
            start=first,
            end=last,
            interval="1d",
            max_commit_retries=RETRIES,
        )

    first, first_s = timed(lambda: fetch(start, END))
    rows = first.inserted
    days = (END - start).days
    print(f"{len(symbols)} symbols x {days} days = {rows:,} daily bars ({len(first.errors)} errors)")
    line("1. fetch_market_data, empty table", first_s, rows, name="fetch_empty")
    again, again_s = timed(lambda: fetch(start, END))
    no_op = not again.changed and again.inserted == again.updated == 0
    verdict = f"NO-OP (version {again.version} unchanged, 0 inserted, 0 updated)" if no_op else "CHANGED!"
    line("2. same range again", again_s, rows, verdict, name="fetch_again")
    extended, extended_s = timed(lambda: fetch(END - timedelta(days=60), END + timedelta(days=31)))
    line("3. overlapping range, +1 month", extended_s, extended.inserted + extended.updated,
         f"{extended.inserted:,} inserted, {extended.updated} updated", name="fetch_overlap")  # fmt: skip
    return no_op


def write_only(root: Path, *, rounds: int) -> None:
    stored = read_table(root / "e2e", MARKET_BARS)
    rows = stored.filter(pc.less(stored["timestamp"], pa.scalar(END, pa.timestamp("us", tz="UTC"))))
    merge = functools.partial(upsert, spec=MARKET_BARS, rows=rows, max_commit_retries=RETRIES)
    plain = functools.partial(append, spec=MARKET_BARS, rows=rows, max_commit_retries=RETRIES)
    merge_s, append_s, again_s, idempotent = [], [], [], True
    for round_ in range(rounds):
        target = root / f"merge-{round_}"
        merge_s.append(timed(functools.partial(merge, target))[1])
        append_s.append(timed(functools.partial(plain, root / f"append-{round_}"))[1])
        again, seconds = timed(functools.partial(merge, target))
        again_s.append(seconds)
        idempotent &= not again.changed
    best = f"best of {rounds}"
    line(f"4. MERGE upsert only, empty table ({best})", min(merge_s), rows.num_rows, name="merge")
    line(f"5. baseline: plain Delta append ({best})", min(append_s), rows.num_rows, name="append")
    line(
        f"6. MERGE the same rows again ({best})",
        min(again_s),
        rows.num_rows,
        "no-op" if idempotent else "CHANGED!",
        name="merge_again",
    )
    print(f"MERGE / append time: {min(merge_s) / min(append_s):.1f}x; no-op MERGE / first MERGE: "
          f"{min(again_s) / min(merge_s):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
