"""The package's shape: its public import surface and the rules of docs/architecture.md."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mdnkit

SRC = Path(mdnkit.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))
ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"


def _layers() -> dict[str, int]:
    """Module -> layer number, read from the layer table of docs/architecture.md."""
    layers = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            rank = cells[0].split()[0]
            level = int(rank) if rank.isdigit() else -1  # "standalone": imports nothing
            for name in cells[1].split(","):
                layers[name.strip().strip("`")] = level
    return layers


LAYERS = _layers()


def _name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import of mdnkit in ``path``."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "mdnkit":
                out.append((mod, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mdnkit":
                    out.append((a.name, [], node.lineno))
    return out


def test_star_import_works_without_keras():
    code = "import sys; sys.modules['keras'] = None\nfrom mdnkit import *\nprint(MDN, fit, MDNRNN)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_public_name_has_a_docstring():
    for name in mdnkit.__all__:
        if name != "__version__":
            assert getattr(mdnkit, name).__doc__, f"mdnkit.{name} has no docstring"


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{_name(path)}.{node.name}: {n} lines")
    assert not long, long


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in MODULES:
        for mod, names, line in _imports(path):
            private = [p for p in mod.split(".") if p.startswith("_") and p != "__init__"]
            private += [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                crossing.append(f"{_name(path)}:{line} imports {private} from {mod}")
    assert not crossing, crossing


def test_the_layer_table_names_every_module():
    modules = {_name(p).split(".")[1] for p in MODULES if _name(p) != "mdnkit"}
    assert modules == set(LAYERS), (sorted(modules - set(LAYERS)), sorted(set(LAYERS) - modules))


def test_no_module_imports_from_a_layer_below_it():
    wrong = []
    for path in MODULES:
        parts = _name(path).split(".")
        if len(parts) < 2:
            continue
        own = LAYERS[parts[1]]
        for mod, names, line in _imports(path):
            targets = {mod.split(".")[1]} if mod.count(".") else set(names)
            for target in targets - {parts[1], "__version__"}:
                if own < 0 or LAYERS[target] > own:
                    wrong.append(f"{_name(path)}:{line} (layer {own}) imports {target}")
    assert not wrong, wrong
