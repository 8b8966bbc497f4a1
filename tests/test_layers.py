"""The package's layers import downward only (docs/architecture.md): data in, the stages, scoring,
the search, analysis, serving, the study, then the command line; the shared basics (errors,
files, provenance) below them all. A module that imports a layer above its own fails here."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "ragopt"
LAYERS = {"errors": 0, "files": 0, "provenance": 0, "data": 1, "stages": 2, "scoring": 3, "generate": 3,
          "testing": 3, "search": 4, "tune": 4, "analysis": 5, "serving": 6, "study": 7, "cli": 8, "__main__": 9,
          "__init__": 9}
"""Each layer's rank: a module may import from its own layer and from layers of lower rank."""


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ragopt."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.module == "ragopt" and node.level == 0:
            found += [(node.lineno, f"ragopt.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("ragopt.")]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    layers = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in MODULES}
    assert layers == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_layers(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [f"line {line}: {module}" for line, module in _imports(path)
              if _layer(module) in LAYERS and LAYERS[_layer(module)] > LAYERS[own]]
    assert not upward, f"{path.relative_to(ROOT)} imports a layer above {own!r}: {upward}"
