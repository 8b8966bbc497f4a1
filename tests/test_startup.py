"""The command line and the plain data modules start without torch or transformers."""

import subprocess
import sys

import pytest

from conftest import AUTORAG_KO, ROOT

HEAVY = ("torch", "transformers", "sentence_transformers", "FlagEmbedding", "faiss", "fastapi", "uvicorn",
         "llama_index")
CHECK = """
import sys
{body}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
print("heavy:", heavy)
"""


def imported_heavy(body: str) -> str:
    result = subprocess.run([sys.executable, "-c", CHECK.format(body=body, heavy=HEAVY)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_plain_data_modules_import_no_torch():
    modules = ["ragopt", "ragopt.ranking", "ragopt.spec", "ragopt.metrics", "ragopt.fusion", "ragopt.records",
               "ragopt.config", "ragopt.space", "ragopt.cli", "ragopt.stats", "ragopt.splits", "ragopt.selection",
               "ragopt.compare", "ragopt.summary", "ragopt.report", "ragopt.report_data"]
    assert imported_heavy("\n".join(f"import {m}" for m in modules)) == "heavy: []"


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/autorag-ko.yaml"])
def test_help_and_validate_run_without_torch(config):
    if "autorag" in config and not AUTORAG_KO.exists():
        pytest.skip("../shared/data/autorag-ko is not beside this checkout")
    body = f"""
from typer.testing import CliRunner
from ragopt.cli import app
for args in (["--help"], ["validate", "{config}"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
assert "ok:" in result.output
"""
    assert imported_heavy(body) == "heavy: []"
