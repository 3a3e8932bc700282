"""deploy/kubernetes/: every manifest against the Kubernetes schemas (kubernetes-validate, strict)
and KEDA's ScaledObject CRD (vendored from the KEDA release, tests/schemas/), and the wiring the
schemas cannot see: queues, probes, shutdown grace, disruption budgets, settings names."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import REPO_ROOT

from actors.settings import Settings

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"

#: Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.34.0"

#: KEDA's ScaledObject CRD of the pinned release.
KEDA_CRD = REPO_ROOT / "tests" / "schemas" / "keda-2.20.2-scaledobjects.yaml"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


DOCUMENTS = _documents()


def _of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def _scaled_object_schema() -> dict:
    crd = next(doc for doc in yaml.safe_load_all(KEDA_CRD.read_text()) if doc)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def _unknown_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (the API server prunes them silently: a typo)."""
    if isinstance(value, dict) and "properties" in schema:
        found = []
        for key, item in value.items():
            if key not in schema["properties"]:
                if not schema.get("additionalProperties") and not schema.get(
                    "x-kubernetes-preserve-unknown-fields"
                ):
                    found.append(f"{path}.{key}")
                continue
            found += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [
            err
            for i, item in enumerate(value)
            for err in _unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    return []


def validate_scaled_object(doc: dict) -> None:
    schema = _scaled_object_schema()
    jsonschema.validate(doc, schema)
    unknown = _unknown_fields(doc, schema)
    if unknown:
        raise jsonschema.ValidationError(f"fields KEDA's ScaledObject does not have: {unknown}")


def validate(doc: dict) -> None:
    if doc["kind"] == "ScaledObject":
        validate_scaled_object(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "doc"), DOCUMENTS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCUMENTS]
)
def test_each_manifest_is_valid(name: str, doc: dict) -> None:
    validate(doc)


def test_validation_catches_broken_manifests() -> None:
    deployment = copy.deepcopy(_of_kind("Deployment")[0])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    typo = copy.deepcopy(_of_kind("Deployment")[0])
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 75
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    scaled = copy.deepcopy(_of_kind("ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 1  # HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate(scaled)
    scaled = copy.deepcopy(_of_kind("ScaledObject")[0])
    del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError, match="scaleTargetRef"):
        validate(scaled)


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _option(command: list[str], name: str) -> list[str]:
    """Values of a ``--name v1 v2 ...`` option of a command line."""
    start = command.index(name) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end]


def _workers() -> list[dict]:
    return [
        d
        for d in _of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


def test_worker_groups_cover_every_queue_once_and_each_scales_on_its_own_queues() -> None:
    import actors

    # the queues of the actors package (other tests may declare their own actors on this broker)
    broker = actors.current_broker
    declared = {
        broker.get_actor(name).queue_name
        for name in broker.get_declared_actors()
        if broker.get_actor(name).fn.__module__.split(".")[0] == "actors"
    }
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in _of_kind("ScaledObject")}
    served: list[str] = []
    for worker in _workers():
        command = _container(worker)["command"]
        assert command[:2] == ["dramatiq", "actors"]
        queues = _option(command, "--queues")
        served += queues
        so = scaled.pop(worker["metadata"]["name"])  # one ScaledObject per worker Deployment
        [trigger] = so["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        assert "task_queue_depth_current" in query and 'state="ready"' in query
        assert set(re.search(r'queue=~"([^"]+)"', query).group(1).split("|")) == set(queues)
        assert so["spec"]["minReplicaCount"] >= 1  # a worker of each group is always there
    assert not scaled, f"ScaledObjects without a worker Deployment: {sorted(scaled)}"
    assert sorted(served) == sorted(set(served)), "a queue is served by two groups"
    assert set(served) == declared, f"unserved {declared - set(served)}, unknown {set(served) - declared}"


def test_shutdown_grace_covers_dramatiqs_drain() -> None:
    settings = Settings()
    for worker in _workers():
        drain_s = int(_option(_container(worker)["command"], "--worker-shutdown-timeout")[0]) / 1000
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # running messages finish, then deferred acks and audit rows get their wait each
        assert grace >= drain_s + 2 * settings.audit_commit_wait_ms / 1000, worker["metadata"]["name"]


def test_probes_disruption_budgets_and_replicas() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    for worker in _workers():
        probe = _container(worker)["livenessProbe"]["httpGet"]
        assert probe["path"] == "/metrics" and probe["port"] == "metrics"
    api = _container(deployments["api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployments["scheduler"]["spec"]["replicas"] == 2
    budgets = _of_kind("PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, f"{name}: {len(matching)} disruption budgets"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [job] = _of_kind("Job")
    assert _container({"spec": job["spec"]})["command"] == ["tradeflow", "db", "upgrade"]


def test_environment_is_made_of_real_settings() -> None:
    fields = {f"TRADEFLOW_{name.upper()}" for name in Settings.model_fields}
    [config] = _of_kind("ConfigMap")
    names = set(config["data"])
    for _, doc in DOCUMENTS:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            names |= {env["name"] for env in container.get("env", [])}
            refs = [
                ref["configMapRef"]["name"] for ref in container.get("envFrom", []) if "configMapRef" in ref
            ]
            assert refs == [config["metadata"]["name"]]
    assert names <= fields, f"not settings: {sorted(names - fields)}"
    Settings(**{name[len("TRADEFLOW_") :].lower(): value for name, value in config["data"].items()})
    assert {doc["metadata"].get("namespace", "tradeflow") for _, doc in DOCUMENTS} == {"tradeflow"}


def test_compose_file_still_parses() -> None:
    compose = yaml.safe_load(Path(REPO_ROOT / "compose.yaml").read_text())
    assert {"redis", "postgres", "worker", "scheduler", "migrations"} <= set(compose["services"])
