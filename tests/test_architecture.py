"""The module map's rules (docs/architecture.md), checked on the source: who may import whom,
no import cycle, no file over 400 lines. Each rule names the offending file and import."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"core.autoencoder", "core.pretrain", "core.latent_classifier", "core.classify"}
CLI_MODULES = ("core.cli", "core.commands", "core.__main__")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*folders: str) -> dict[str, Path]:
    return {module_name(p): p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports, at module level or inside functions (a late import that
    dodges a cycle is still a cycle in the design)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = sources("core", "app")
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def _is_cli(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CLI_MODULES)


def test_only_cli_modules_import_the_cli(graph):
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                 if d == "core.cli" and not _is_cli(m))
    assert not bad, bad


def test_models_import_no_stage(graph):
    allowed = {"core.config", "core.errors", "core.workspace", "core.io"}
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() if m.startswith("core.models")
                 for d in deps if not d.startswith("core.models") and d not in allowed and d != "core")
    assert not bad, bad


def test_sampling_and_pipeline_import_no_trainer(graph):
    # the inference side; the app and the experiment launch trainers as jobs, which is their role
    users = [m for m in graph if m in ("core.sampling", "core.pipeline", "core.tune", "core.selection",
                                       "core.features", "core.quality", "core.topup", "core.stages")]
    bad = sorted(f"{m} imports {d}" for m in users for d in graph[m] & TRAINERS)
    assert not bad, bad


def test_no_import_cycle(graph):
    # a package's __init__ importing its own submodules is how re-exports work, not a cycle
    edges = {m: {d for d in deps if not (m in ("core", "app") or d.startswith(m + "."))}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in sources("core", "app").values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
