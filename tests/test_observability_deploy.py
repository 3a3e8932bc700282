"""Deployment files: alert rules under promtool, compose.yaml against the compose specification
and against our settings, the Grafana dashboard against the metrics we export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml
from conftest import REPO_ROOT

from actors.settings import Settings
from actors.telemetry import RedisStateCollector, WorkerMetrics
from saga.run_metrics import COUNTERS

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = REPO_ROOT / "compose.yaml"

#: Suffixes Prometheus adds to a metric's name in samples.
SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")

#: Names of metrics in PromQL expressions (ours all start with these).
METRIC_NAME = re.compile(r"\b((?:task_queue|workflow|scheduler|ib)_[a-z_]+)")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is missing: apt-get install prometheus (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _promtool()
    checked = _run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = _run(promtool, "test", "rules", "deploy/prometheus/alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = _run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_alerts_cover_what_operators_asked_for() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert names == {
        "TradeflowQueueDepthHigh",
        "TradeflowFailureRateHigh",
        "TradeflowDeadLettersGrowing",
        "TradeflowNoWorkerHeartbeat",
        "TradeflowCompensationFailed",
        "TradeflowSchedulerSilent",
    }
    tested = (DEPLOY / "prometheus/alerts.test.yml").read_text()
    assert all(f"alertname: {name}" in tested for name in names), "every alert has a promtool unit test"


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return _run(str(checker), "--builtin-schema", "vendor.compose-spec", str(path))


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    valid = _check_compose(COMPOSE)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    broken = tmp_path / "compose.yaml"
    misplaced = COMPOSE.read_text().replace(
        "    deploy:\n      replicas: 3", "    replicas: 3"
    )  # a usual slip
    assert misplaced != COMPOSE.read_text()
    broken.write_text(misplaced)
    rejected = _check_compose(broken)
    assert rejected.returncode != 0 and "replicas" in rejected.stdout, "the validator really validates"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_are_the_stack_we_run() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "redis",
        "postgres",
        "jaeger",
        "prometheus",
        "grafana",
        "migrations",
        "worker",
        "scheduler",
        "api",
    }
    assert services["api"]["command"] == ["tradeflow", "api"]
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["worker"]["command"][:2] == ["dramatiq", "actors"]
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert services["migrations"]["command"] == ["tradeflow", "db", "upgrade"]
    assert services["worker"]["depends_on"]["migrations"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} would be published on every interface"


def test_compose_environment_is_made_of_real_settings() -> None:
    services = _compose()["services"]
    for name in ("migrations", "worker", "scheduler", "api"):
        env = services[name]["environment"]
        fields = {key.removeprefix("TRADEFLOW_").lower(): value for key, value in env.items()}
        unknown = set(fields) - set(Settings.model_fields)
        assert not unknown, f"{name}: no such setting {unknown}"
        settings = Settings(**fields)  # validates every value
        assert settings.redis_url.startswith("redis://redis:")
        assert "@postgres:5432/" in settings.database_url
        assert settings.tracing_endpoint == "http://jaeger:4317"
    worker = Settings(
        **{k.removeprefix("TRADEFLOW_").lower(): v for k, v in services["worker"]["environment"].items()}
    )
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": worker.metrics_port}
    assert str(worker.metrics_dir) in services["worker"]["tmpfs"], "a fresh metrics directory per container"


def test_compose_mounts_point_at_files_in_the_repository() -> None:
    services = _compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).is_dir(), f"{name} mounts missing {source}"
    assert (DEPLOY / "prometheus/prometheus.yml").is_file() and (DEPLOY / "prometheus/alerts.yml").is_file()
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tradeflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for package in ("actors", "api", "orchestration", "saga", "storage"):
        assert f"COPY {package} {package}" in dockerfile


def _exported_names(redis_url: str) -> set[str]:
    worker = WorkerMetrics.create()
    names = {getattr(worker, field)._name for field in worker.__dataclass_fields__}
    state = RedisStateCollector(
        client=redis.Redis.from_url(redis_url), namespace="tftest-names", queues=["q"], heartbeat_timeout=60
    )
    names |= {family.name for family in state.collect()}
    return names | set(COUNTERS) | {"ib_batch_size", "ib_batch_duration_seconds"}


def _base_name(name: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_dashboard_and_alerts_use_only_metrics_we_export(redis_url: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/tradeflow.json").read_text())
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)) and dashboard["uid"] == "tradeflow-overview"
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions.append((DEPLOY / "prometheus/alerts.yml").read_text())
    used = {_base_name(name) for expr in expressions for name in METRIC_NAME.findall(expr)}
    exported = _exported_names(redis_url)
    assert used - exported == set(), "expressions name metrics nothing exports"
    must_show = {"task_queue_depth_current", "task_queue_failed", "workflow_runs", "workflow_compensations"}
    assert must_show <= used
