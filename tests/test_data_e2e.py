"""The data_fetcher queue end to end: real dramatiq worker processes, real Redis, Delta in a temp dir."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from conftest import REPO_ROOT, settings_env
from dramatiq.results import ResultFailure, Results

from actors.broker import build_broker
from config import Settings
from storage import create_db_engine, upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: Milliseconds to wait for one result (a cold worker imports pandas and deltalake first).
RESULT_TIMEOUT_MS = 60_000


@pytest.fixture
def data_settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    database_url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
    engine = create_db_engine(database_url)
    upgrade(engine)
    engine.dispose()
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=database_url,
        delta_root=tmp_path / "delta",
        data_synthetic_seed=5,
        data_synthetic_symbols="AAPL,MSFT,GOOG",
    )


@pytest.fixture
def worker(data_settings: Settings) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "data_fetcher"],
        env=settings_env(data_settings),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    # A clean exit also proves the reads did not trip delta-rs #2184 (SIGABRT at exit).
    assert process.returncode == 0, stderr.decode()[-3000:]


class Client:
    """Sends messages to the worker by actor name, as another service would, and waits for results."""

    def __init__(self, settings: Settings):
        self.broker = build_broker(settings.model_copy(update={"audit_enabled": False}))
        self.broker.declare_queue("data_fetcher")
        self.backend = next(m for m in self.broker.middleware if isinstance(m, Results)).backend

    def send(self, actor_name: str, *args, **kwargs) -> dramatiq.Message:
        message = dramatiq.Message(
            queue_name="data_fetcher", actor_name=actor_name, args=args, kwargs=kwargs, options={}
        )
        return self.broker.enqueue(message)

    def call(self, actor_name: str, *args, **kwargs):
        return self.result(self.send(actor_name, *args, **kwargs))

    def result(self, message: dramatiq.Message):
        return self.backend.get_result(message, block=True, timeout=RESULT_TIMEOUT_MS)


def test_fetch_twice_extend_and_per_symbol_errors_through_a_worker(data_settings, worker):
    client = Client(data_settings)
    first = client.call("fetch_market_data", ["AAPL", "MSFT"], "2024-01-01", "2024-03-29")
    assert first["changed"] and first["inserted"] == 2 * 65 and first["errors"] == {}

    again = client.call("fetch_market_data", ["AAPL", "MSFT"], "2024-01-01", "2024-03-29")
    assert not again["changed"] and (again["inserted"], again["updated"]) == (0, 0)
    assert again["version"] == first["version"]

    extended = client.call("fetch_market_data", ["AAPL", "NOPE"], "2024-03-01", "2024-04-30")
    assert extended["inserted"] == 22 and extended["symbols"]["AAPL"]["new_bars"] == 22
    assert "NOPE: not in the synthetic universe" in extended["errors"]["NOPE"]

    # Two batches at once on the worker's two threads: concurrent MERGEs into one table both land.
    batches = [
        client.send("fetch_market_data", [symbol], "2023-01-01", "2023-12-31", "1d")
        for symbol in ("GOOG", "MSFT")
    ]
    results = [client.result(message) for message in batches]
    assert [r["inserted"] for r in results] == [260, 260]

    news = client.call("fetch_news", ["AAPL"], "2024-01-01", "2024-03-31")
    assert news["inserted"] > 0 and news["errors"] == {}
    stats = client.call("update_24h_stats")
    assert stats["series"] == 3 and stats["stats"]["AAPL/1d"]["as_of"].startswith("2024-04-30")


def test_a_bad_batch_fails_at_once_with_the_reason(data_settings, worker):
    client = Client(data_settings)
    with pytest.raises(ResultFailure, match="interval '2d' is unknown"):
        client.call("fetch_market_data", ["AAPL"], "2024-01-01", "2024-02-01", "2d")
    with pytest.raises(ResultFailure, match="start='soon' is not an ISO date"):
        client.call("fetch_market_data", ["AAPL"], "soon", "2024-02-01")
