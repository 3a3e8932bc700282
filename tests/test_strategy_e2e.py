"""End to end: `redis-cli LPUSH strategy_queue` -> relay -> worker process -> `GET task_result:{id}`.

Bars come from a real Delta ``market_bars`` table; the strategy runs in the
real sandbox inside a real ``dramatiq`` worker process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from strategy_fixtures import GAP_UP, synthetic_bars, write_market_bars
from test_strategy_relay import redis_cli

from actors.settings import Settings
from storage import create_db_engine, upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SYMBOLS = [f"T{i:02d}" for i in range(12)]
SCORED = GAP_UP.replace('"signal": True,', '"signal": True, "score": float(row.gap_pct),')


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A migrated SQLite audit trail, a Delta table of bars, a worker and a relay process."""
    import uuid

    import redis

    root = tmp_path_factory.mktemp("strategy-e2e")
    namespace = f"tftest-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=f"sqlite:///{root / 'tradeflow.db'}",
        delta_root=root / "delta",
        strategy_result_prefix=f"{namespace}-task_result:",
        strategy_legacy_queue=f"{namespace}-strategy_queue",
        strategy_cpu_seconds=3,
        strategy_memory_mb=1024,
        max_retries=0,
    )
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    write_market_bars(settings.delta_root, synthetic_bars(SYMBOLS, days=300, seed=21))
    env = settings_env(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "strategy"],
        env=env,
        cwd=REPO_ROOT,
    )
    relay = subprocess.Popen([sys.executable, "-m", "api.cli", "strategy-relay"], env=env, cwd=REPO_ROOT)
    try:
        yield settings
    finally:
        for process in (relay, worker):
            process.terminate()
        for process in (relay, worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)


def push(settings: Settings, document: dict) -> None:
    redis_cli(settings.effective_redis_url, "LPUSH", settings.strategy_legacy_queue, json.dumps(document))


def wait_for(settings: Settings, task_id: str, *, timeout: float = 90) -> dict:
    """Poll ``GET task_result:{id}`` with redis-cli until the task is finished."""
    deadline = time.monotonic() + timeout
    key = f"{settings.strategy_result_prefix}{task_id}"
    while time.monotonic() < deadline:
        raw = redis_cli(settings.effective_redis_url, "GET", key)
        if raw:
            document = json.loads(raw)
            if document["status"] != "running":
                ttl = int(redis_cli(settings.effective_redis_url, "TTL", key))
                assert 0 < ttl <= settings.strategy_result_ttl_s
                return document
        time.sleep(0.2)
    raise AssertionError(f"no finished result for {task_id} within {timeout}s")


def test_backtest_and_screening_through_the_legacy_list(stack: Settings) -> None:
    push(
        stack,
        {
            "task_id": "e2e-bt",
            "task_type": "backtest",
            "args": {
                "strategy_code": GAP_UP,
                "symbols": [*SYMBOLS, "NOPE"],
                "start_date": "2023-01-01",
                "end_date": "2023-12-31",
            },
        },
    )
    push(
        stack,
        {
            "task_id": "e2e-sc",
            "task_type": "screening",
            "args": {"strategy_code": SCORED, "universe": SYMBOLS, "limit": 3},
        },
    )

    backtest = wait_for(stack, "e2e-bt")
    assert backtest["status"] == "completed", backtest
    assert set(backtest) == {"status", "data", "updated_at"}
    data = backtest["data"]
    bars = synthetic_bars(SYMBOLS, days=300, seed=21)
    in_range = bars[bars["date"] <= "2023-12-31"]
    expected = in_range[(in_range["gap_pct"] > 3) & (in_range["volume_ratio"] > 1.5)]
    assert data["summary"]["total_instances"] == data["summary"]["positive_signals"] == len(expected) > 0
    assert sorted((i["ticker"], i["date"]) for i in data["instances"]) == sorted(
        zip(expected["ticker"], expected["date"].dt.strftime("%Y-%m-%d"), strict=True)
    )
    assert data["summary"]["symbols_processed"] == len(SYMBOLS)
    assert data["summary"]["symbols_missing"] == ["NOPE"]
    assert data["summary"]["data_shape"] == [len(in_range), 9]
    assert data["summary"]["date_range"] == {"start": "2023-01-02", "end": "2023-12-29"}
    metrics = data["performance_metrics"]
    assert {
        "total_return",
        "win_rate",
        "avg_return",
        "sharpe",
        "max_drawdown",
        "number_of_trades",
        "exposure",
    } <= set(metrics)
    assert sum(row["trades"] for row in metrics["per_symbol"].values()) == metrics["number_of_trades"] > 0
    assert data["execution_time_ms"] > 0 and data["worker_id"] and data["completed_at"]

    screening = wait_for(stack, "e2e-sc")
    assert screening["status"] == "completed", screening
    ranked = screening["data"]["ranked_results"]
    assert screening["data"]["results_returned"] == len(ranked) == 3
    assert screening["data"]["universe_size"] == len(SYMBOLS)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert all(r["score"] > 3 and r["signal"] is True and r["message"].startswith("gap") for r in ranked)


def test_bad_strategies_end_in_error_and_the_worker_keeps_working(stack: Settings) -> None:
    base = {"symbols": SYMBOLS[:2], "start_date": "2023-01-01", "end_date": "2023-03-31"}
    bad = {
        "e2e-escape": (
            "def s(df):\n    return [{'m': '{0.__class__}'.format(df)}]",
            "Security validation failed: ",
        ),
        "e2e-import": (
            "import os\ndef s(df):\n    return []",
            "Security validation failed: Line 1: import of 'os'",
        ),
        "e2e-loop": (
            "def s(df):\n    while True:\n        pass",
            "Sandbox error: strategy exceeded the CPU limit",
        ),
        "e2e-bomb": (
            "def s(df):\n    return [0] * (10**10)",
            "Sandbox error: strategy ran out of memory",
        ),
        "e2e-type": ("def s(df):\n    return 'no'", "Strategy error: TypeError: s() returned str"),
    }
    for task_id, (code, _) in bad.items():
        push(stack, {"task_id": task_id, "task_type": "backtest", "args": {"strategy_code": code, **base}})
    no_data = {**base, "symbols": ["NOPE"]}
    push(
        stack,
        {"task_id": "e2e-nodata", "task_type": "backtest", "args": {"strategy_code": GAP_UP, **no_data}},
    )
    push(stack, {"task_id": "e2e-after", "task_type": "backtest", "args": {"strategy_code": GAP_UP, **base}})
    for task_id, (_, reason) in bad.items():
        document = wait_for(stack, task_id)
        assert document["status"] == "error"
        assert document["data"]["error"].startswith(reason), document
    document = wait_for(stack, "e2e-nodata")
    assert document["data"]["error"] == "no market data for NOPE between 2023-01-01 and 2023-03-31"
    assert wait_for(stack, "e2e-after")["status"] == "completed"


def test_cli_backtest_and_screen_print_their_tables(stack: Settings, tmp_path: Path) -> None:
    strategy = tmp_path / "gap_up.py"
    strategy.write_text(SCORED)
    env = settings_env(stack)
    done = run_cli(
        "backtest",
        str(strategy),
        "--symbols",
        ",".join(SYMBOLS[:4]),
        "--start",
        "2023-01-01",
        "--end",
        "2023-12-31",
        "--holding-period",
        "3",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "total_return" in done.stdout and "holding_period" in done.stdout and "per symbol" in done.stdout
    assert "trades (first" in done.stdout and "slippage" in done.stdout
    done = run_cli(
        "backtest", str(strategy), "--symbols", ",".join(SYMBOLS[:4]), "--start", "2023-01-01",
        "--end", "2023-12-31", "--commission-bps", "2", "--slippage-bps", "5", "--json", env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["trades_total"] == data["performance_metrics"]["number_of_trades"] == len(data["trades"]) > 0
    assert set(data["trades"][0]) == {
        "symbol", "signal_date", "entry_date", "entry_price", "exit_date", "exit_price", "return",
        "holding_bars",
    }  # fmt: skip
    assumptions = data["assumptions"]
    assert (assumptions["entry"], assumptions["commission_bps"], assumptions["slippage_bps"]) == (
        "next_open",
        2,
        5,
    )
    assert assumptions["interval"] == "1d" and "sizing" in assumptions and "missing_bars" in assumptions
    done = run_cli(
        "screen", str(strategy), "--universe", ",".join(SYMBOLS), "--limit", "2", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "screening: 2 of 12" in done.stdout
    done = run_cli(
        "backtest", str(strategy), "--symbols", "T00", "--start", "2024-02-01", "--end", "2024-01-01", env=env
    )
    assert done.returncode == 1
    assert "Invalid task: start_date 2024-02-01 is after end_date 2024-01-01" in done.stderr
    done = run_cli("screen", str(tmp_path / "missing.py"), "--universe", "T00", env=env)
    assert done.returncode == 1 and "cannot read" in done.stderr
    strategy.write_text("import os\ndef s(df):\n    return []")
    done = run_cli("screen", str(strategy), "--universe", "T00", env=env, timeout=120)
    assert done.returncode == 1
    assert "Security validation failed: Line 1: import of 'os' is not allowed" in done.stderr


@pytest.fixture(scope="module")
def node_producer() -> Path:
    """The Node.js producer with the `redis` npm package installed (cached in .tradeflow/)."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node.js producer")
    folder = REPO_ROOT / ".tradeflow" / "node-producer"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "node_producer.mjs"
    shutil.copy(Path(__file__).parent / "producers" / "node_producer.mjs", script)
    if not (folder / "node_modules" / "redis").exists():
        install = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder), "redis@4"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if install.returncode != 0:
            pytest.skip(f"npm could not install the redis package: {install.stderr.strip()[-300:]}")
    return script


def test_a_node_producer_gets_its_result(stack: Settings, node_producer: Path) -> None:
    task = {
        "task_id": "e2e-node",
        "task_type": "screening",
        "args": {"strategy_code": SCORED, "universe": SYMBOLS, "limit": 4},
    }
    done = subprocess.run(
        [
            "node",
            str(node_producer),
            stack.effective_redis_url,
            stack.strategy_legacy_queue,
            stack.strategy_result_prefix,
            json.dumps(task),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["status"] == "completed"
    assert document["data"]["results_returned"] == 4
    assert [r["rank"] for r in document["data"]["ranked_results"]] == [1, 2, 3, 4]


def test_the_actor_result_is_in_the_dramatiq_results_backend_too(stack: Settings) -> None:
    from dramatiq import Message
    from dramatiq.results import Results

    from actors.runtime import build_broker

    broker = build_broker(stack.model_copy(update={"audit_enabled": False}))
    backend = next(m for m in broker.middleware if isinstance(m, Results)).backend
    args = {"strategy_code": SCORED, "universe": SYMBOLS, "limit": 2}
    message = broker.enqueue(
        Message(
            queue_name="strategy",
            actor_name="run_screening",
            args=("e2e-results", args),
            kwargs={},
            options={},
        )
    )
    try:
        result = message.get_result(backend=backend, block=True, timeout=90_000)
    finally:
        broker.close()
    assert result == wait_for(stack, "e2e-results")["data"]
    assert result["results_returned"] == 2
