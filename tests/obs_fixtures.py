"""Fixtures of the observability tests (loaded with ``pytest_plugins = ["obs_fixtures"]``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.settings import Settings


@pytest.fixture
def obs_settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    """Settings of one test: its namespace, metrics directory, fast retries, no audit trail."""
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=f"sqlite:///{tmp_path / 'tradeflow.db'}",
        audit_enabled=False,
        metrics_dir=tmp_path / "metrics",
        metrics_port=0,
        min_backoff_ms=10,
        max_backoff_ms=50,
    )
