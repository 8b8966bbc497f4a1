"""Safe by default: nothing ragopt reads can run code. YAML is parsed with the safe loader, arrays
are loaded without pickle, no module pickles anything, and remote model code runs only when a
config asks for it (trust_remote_code, tested with the loaders)."""

import ast
from pathlib import Path

import pytest
import yaml

import ragopt
from ragopt.config import load_config

SOURCES = sorted(Path(ragopt.__file__).parent.rglob("*.py"))
PICKLERS = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
UNSAFE_CALLS = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.load", "eval", "exec"}


def _unsafe(tree: ast.AST) -> list[str]:
    """Imports of picklers, calls of loaders that can run code, and allow_pickle=True."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {name} (line {node.lineno})" for name in names if name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called in UNSAFE_CALLS:
                found.append(f"{called}() (line {node.lineno})")
            found += [f"allow_pickle=True (line {node.lineno})" for keyword in node.keywords
                      if keyword.arg == "allow_pickle" and ast.unparse(keyword.value) != "False"]
    return found


def test_the_unsafe_check_finds_what_it_looks_for():
    code = "import pickle\nimport yaml, numpy as np\nyaml.load(s)\nnp.load(p, allow_pickle=True)\neval('1')\n"
    assert _unsafe(ast.parse(code)) == ["import pickle (line 1)", "yaml.load() (line 3)",
                                        "allow_pickle=True (line 4)", "eval() (line 5)"]


def test_no_module_pickles_or_loads_code():
    found = {path.name: _unsafe(ast.parse(path.read_text())) for path in SOURCES}
    assert len(found) > 30 and not {name: calls for name, calls in found.items() if calls}


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("data: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(Exception) as caught:
        load_config(config)
    assert not (tmp_path / "pwned").exists()
    assert isinstance(caught.value, (yaml.YAMLError, ValueError)) and "evil.yaml" in str(caught.value)
