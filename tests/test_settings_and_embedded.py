"""Settings from the environment, and the embedded server fallback."""

from __future__ import annotations

import pytest
from conftest import settings_env
from pydantic import ValidationError

from actors.settings import DEFAULT_REDIS_URL, Settings
from api.embedded import redis_answers, redis_for

#: An address where nothing listens.
NOWHERE = "redis://127.0.0.1:1/0"


def test_settings_read_prefixed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("TRADEFLOW_REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("TRADEFLOW_MAX_RETRIES", "7")
    monkeypatch.setenv("REDIS_URL", "redis://ignored:1/0")
    monkeypatch.setenv("TRADEFLOW_TRACING_QUEUE_SAMPLE_RATIOS", '{"ib_positions": 0.05}')
    settings = Settings()
    assert settings.tracing_queue_sample_ratios == {"ib_positions": 0.05}
    assert settings.effective_redis_url == "redis://example:6380/2"
    assert settings.max_retries == 7
    assert settings.delta_root == tmp_path / "tradeflow" / "delta"
    assert settings.database_url == f"sqlite:///{tmp_path}/tradeflow/tradeflow.db"


def test_test_workers_serve_metrics_only_on_a_port_the_test_names(monkeypatch):
    monkeypatch.delenv("TRADEFLOW_METRICS_PORT", raising=False)
    settings = Settings(redis_url=NOWHERE)
    assert settings.metrics_port == 9191
    assert settings_env(settings)["TRADEFLOW_METRICS_PORT"] == "0"
    asked = settings.model_copy(update={"metrics_port": 9300})
    assert settings_env(asked)["TRADEFLOW_METRICS_PORT"] == "9300"


def test_the_default_database_is_the_same_from_any_folder(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_")}
    env |= {"XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT)}
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    upgraded = subprocess.run(
        [tradeflow, "db", "upgrade"], cwd=tmp_path / "one", env=env, capture_output=True, text=True
    )
    assert upgraded.returncode == 0, upgraded.stderr
    listed = subprocess.run(
        [tradeflow, "jobs", "list"], cwd=tmp_path / "two", env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "data" / "tradeflow" / "tradeflow.db").exists() and not list(
        (tmp_path / "two").iterdir()
    )


def test_no_redis_url_means_default_address():
    assert Settings(redis_url=None).effective_redis_url == DEFAULT_REDIS_URL


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("redis_url", "http://x", "must start with one of redis://"),
        ("database_url", "mysql://x", "must be a sqlite:// or postgresql:// URL"),
        ("max_retries", -1, "greater than or equal to 0"),
        ("tracing_queue_sample_ratios", {"ib_positions": 1.5}, "ib_positions\n  Input should be less than"),
    ],
)
def test_bad_settings_say_what_is_wrong(field, value, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_configured_redis_is_used_as_is(redis_url):
    with redis_for(Settings(redis_url=redis_url)) as url:
        assert url == redis_url


def test_configured_but_unreachable_redis_is_an_error():
    with (
        pytest.raises(ConnectionError, match="nothing answers at TRADEFLOW_REDIS_URL"),
        redis_for(Settings(redis_url=NOWHERE)),
    ):
        pass


@pytest.mark.timeout(60)
def test_embedded_valkey_starts_when_nothing_answers_and_stops_after():
    with redis_for(Settings(redis_url=None), default_url=NOWHERE) as url:
        assert url != NOWHERE
        assert redis_answers(url)
    assert not redis_answers(url)
