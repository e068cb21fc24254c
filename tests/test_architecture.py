"""The module map's rules (docs/architecture.md), checked on the source: who may import whom,
no import cycle, no file over 400 lines. Each rule names the offending file and import."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULES = ("core.cli", "core.commands", "core.__main__")
MAX_LINES = 400
# core's packages, lowest first: a module imports from its own package and the layers below it
# (docs/architecture.md). The top-level base modules sit under everything.
BASE = ("core.errors", "core.io", "core.workspace", "core.precision")
LAYERS = ("core.config", "core.data", "core.models", "core.generate", "core.evaluate", "core.train",
          "core.protocol", "core.cli", "core.commands", "core.__main__", "app")


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


def layer(module: str) -> int:
    """The module's layer: -1 for the base modules, else its package's index in LAYERS."""
    if module in BASE or module == "core":
        return -1
    for i, package in enumerate(LAYERS):
        if module == package or module.startswith(package + ".") or module.startswith(package + "/"):
            return i
    raise AssertionError(f"{module} belongs to no layer of tests/test_architecture.py LAYERS")


def test_each_package_imports_only_its_own_layer_and_below(graph):
    bad = sorted(f"{m} ({LAYERS[layer(m)]}) imports {d} ({LAYERS[layer(d)]})"
                 for m, deps in graph.items() if m != "core" for d in deps if layer(d) > layer(m))
    assert not bad, bad


def test_models_import_no_stage(graph):
    # nn.Modules + config only: loadable by diffusers without the lab's stages
    allowed = {"core.config.lab_config", "core.errors", "core.workspace", "core.io"}
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() if m.startswith("core.models")
                 for d in deps if not d.startswith("core.models") and d not in allowed and d != "core")
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
