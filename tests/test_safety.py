"""Safe by default: nothing ragopt reads can run code. No module pickles anything or loads with a
loader that can run code (YAML's safe loader is tested with bad configs in test_bad_config, and
trust_remote_code with the model loaders)."""

import ast
from pathlib import Path


import ragopt

SOURCES = sorted(Path(ragopt.__file__).parent.rglob("*.py"))
PICKLERS = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
UNSAFE_CALLS = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.load", "torch.save", "eval", "exec"}
UNSAFE_METHODS = {"to_pickle", "read_pickle"}


def _unsafe(tree: ast.AST) -> list[str]:
    """Imports of picklers, calls of loaders that can run code, and allow_pickle=True."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {name} (line {node.lineno})" for name in names if name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called in UNSAFE_CALLS or called.rsplit(".", 1)[-1] in UNSAFE_METHODS:
                found.append(f"{called}() (line {node.lineno})")
            found += [f"allow_pickle=True (line {node.lineno})" for keyword in node.keywords
                      if keyword.arg == "allow_pickle" and ast.unparse(keyword.value) != "False"]
    return found


def test_the_unsafe_check_finds_what_it_looks_for():
    code = ("import pickle\nimport yaml, numpy as np\nyaml.load(s)\nnp.load(p, allow_pickle=True)\neval('1')\n"
            "frame.to_pickle(p)\n")
    assert _unsafe(ast.parse(code)) == ["import pickle (line 1)", "yaml.load() (line 3)",
                                        "allow_pickle=True (line 4)", "eval() (line 5)", "frame.to_pickle() (line 6)"]


def test_no_module_pickles_or_loads_code():
    found = {path.name: _unsafe(ast.parse(path.read_text())) for path in SOURCES}
    assert len(found) > 30 and not {name: calls for name, calls in found.items() if calls}
