"""The package layout: imports point down the layers, no circles, no generic top-level names."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import redis
from conftest import REPO_ROOT, settings_env

from actors.settings import Settings

#: Top-level packages of the distribution, and nothing else.
PACKAGES = ("actors", "api", "orchestration", "saga", "storage")

#: Layer of each package (and of the parts of ``actors``): an import may only go to a lower or equal
#: layer, never up.  ``api -> orchestration -> actors -> saga -> storage``; inside ``actors``:
#: settings, transport, per-message policies, scheduling and telemetry, the runtime that assembles
#: them, the queues' domain code, the queue modules, and the package door on top.
LAYERS = {
    "storage": 0,
    "saga": 1,
    "actors.settings": 2,
    "actors.broker": 3,
    "actors.middleware": 4,
    "actors.scheduling": 5,
    "actors.telemetry": 5,
    "actors.runtime": 6,
    "actors.ib": 7,
    "actors.accounts": 7,
    "actors.market_data": 7,
    "actors.analysis": 7,
    "actors.strategies": 7,
    "actors.<queue>": 8,
    "actors": 9,
    "orchestration": 10,
    "api": 11,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            # ``from package import module`` imports the module, not the package's door
            targets = [base, *submodules] if any(m not in modules for m in submodules) else submodules
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "actors" or len(parts) == 1:
        return LAYERS[parts[0]]
    key = f"actors.{parts[1]}"
    return LAYERS.get(key, LAYERS["actors.<queue>"])


def test_no_import_circles() -> None:
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_top_of_actors_holds_only_queue_modules_and_subpackages() -> None:
    queues = {"portfolio", "data_fetcher", "ai_analysis", "ib_positions", "strategy", "system"}
    queues |= {"maintenance", "monitoring", "orders", "workflows"}
    top = {path.stem for path in (REPO_ROOT / "actors").glob("*.py")} - {"__init__", "settings"}
    assert top == queues
    for folder in (REPO_ROOT / "actors").iterdir():
        if folder.is_dir() and folder.name not in ("__pycache__",):
            assert (folder / "__init__.py").exists(), f"{folder.name} has no door"


def test_a_service_with_its_own_config_and_api_imports_actors(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """A service's own ``config.py`` and ``api/`` package shadow nothing of ours."""
    service = tmp_path / "service"
    (service / "api").mkdir(parents=True)
    (service / "config.py").write_text("SERVICE_NAME = 'orders'\n")
    (service / "api" / "__init__.py").write_text(
        "raise ImportError('the service api package was imported')\n"
    )
    (service / "send.py").write_text(
        textwrap.dedent(
            """
            import config

            import actors

            assert config.SERVICE_NAME == "orders"
            print(actors.system.ping.send("hello").message_id)
            """
        )
    )
    settings = Settings(redis_url=redis_url, namespace=namespace, database_url=f"sqlite:///{tmp_path}/t.db")
    result = subprocess.run(
        [sys.executable, "send.py"],
        cwd=service,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    message_id = result.stdout.strip().splitlines()[-1]
    client = redis.Redis.from_url(redis_url)
    stored = client.hvals(f"{namespace}:system.msgs")
    assert any(message_id.encode() in body for body in stored)
