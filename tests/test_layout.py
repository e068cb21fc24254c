"""Layout rules the architecture relies on, checked on the sources: every file name a stage or the
app reads or writes is spelled once, in core/workspace.py (a name spelled in two modules drifts
apart, as scores.csv and checkpoint names did), and only the CLI modules import core.cli."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a whole string that is a file name, maybe with folders or f-string fields ("{}") in it; a bare
# glob such as "*.json" names no file and is left to the code that owns the folder
FILE_NAME = re.compile(r"^\S*[\w}\-]\.(csv|json|jsonl|md)$")
ALLOWED = {   # (module, literal): why it stays where it is
    ("core/data/demo.py", "skin_annotations.json"):
        "an asset shipped in assets/ and read from the repository, not a file of any workspace",
    ("core/protocol/demo_models.py", "bundle.json"):
        "the demo bundle's own listing of its files, which no workspace holds",
}


def stray_names(source: str, module: str) -> list[str]:
    """File-name literals of `source` outside the allow-list, as 'module:line: name'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):        # f"{stage}.json" -> "{}.json"
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if FILE_NAME.match(text) and (module, text) not in ALLOWED:
            found.append((node.lineno, f"{module}:{node.lineno}: {text!r}"))
    return [hit for _, hit in sorted(found)]


def _sources(*patterns: str) -> list[tuple[str, Path]]:
    return [(p.relative_to(ROOT).as_posix(), p) for pattern in patterns for p in sorted(ROOT.glob(pattern))]


def test_file_names_are_spelled_only_in_the_workspace():
    found = [hit for module, path in _sources("core/**/*.py", "app/**/*.py") if module != "core/workspace.py"
             for hit in stray_names(path.read_text(encoding="utf-8"), module)]
    assert not found, "file names outside core/workspace.py (make them Workspace attributes):\n" + "\n".join(found)
    for module, literal in ALLOWED:      # an entry whose literal is gone must leave the list too
        assert repr(literal) in (ROOT / module).read_text(encoding="utf-8") or \
            f'"{literal}"' in (ROOT / module).read_text(encoding="utf-8"), (module, literal)


def test_the_scan_sees_names_in_strings_f_strings_and_messages():
    source = ('a = ws.synthetic_dir / "scores.csv"\nb = f"{stage}.json"\nc = sorted(d.glob("*.json"))\n'
              'e = f"{ws.data_dir / \'pools.csv\'} lists no images"\nf = "see results/summary.md for more"\n')
    assert [hit.split(": ")[1] for hit in stray_names(source, "core/x.py")] == \
        ["'scores.csv'", "'{}.json'", "'pools.csv'"]


def _imports_core_cli(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "core.cli" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module == "core.cli" or (
                node.module == "core" and any(a.name == "cli" for a in node.names))):
            return True
    return False


def test_only_cli_modules_import_core_cli():
    importers = [module for module, path in _sources("core/**/*.py", "app/**/*.py", "app.py")
                 if _imports_core_cli(ast.parse(path.read_text(encoding="utf-8")))]
    outside = [m for m in importers if not m.startswith("core/commands/")]
    assert importers and not outside, f"core.cli imported outside core/commands/: {outside}"


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an import names: `import a.b` -> a.b; `from a import b` -> a, and a.b too where
    b may be a module of the tests (a relative import, or one from the tests package)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.add(base)
            if node.level or base.split(".")[0] == "tests":
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_no_test_module_or_conftest_is_imported():
    """Shared test code lives in tests/helpers/ (importable by name) or in conftest.py fixtures:
    a test module importing another runs that module's tests' imports and fixtures twice and ties
    the two together; benchmarks take the same helpers."""
    tests = ROOT / "tests"
    private = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    offenders = [f"{module} imports {name}" for module, path in _sources("tests/**/*.py", "benchmarks/*.py")
                 for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
                 if private & set(name.split("."))]
    assert not offenders, "\n".join(offenders)
