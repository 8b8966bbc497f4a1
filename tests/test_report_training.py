"""The report's "Tuned models" section: the training loss per step and the held-out nDCG@10 per
epoch of each tuned setting's final model, drawn from the study's tuning.csv, and no section
without one."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from browser import inspect, require_chromium
from conftest import KO_MINI, write_config
from test_report import CHECK, report_data
from ragopt.analysis.report import write_report
from ragopt.analysis.report_data import TUNING_CSV, build_report, training
from ragopt.analysis.splits import holdout_mask
from ragopt.data.qa import load_dataset
from ragopt.study import optimize

SEED = 7
SPACE = """
data: {qa: @KO_MINI@/qa.jsonl, corpus: @KO_MINI@/corpus.jsonl, domain_column: domain}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace, k1: [1.2, 1.5]}]
top_k: [1, 5, 10]
optimize: ndcg
study: {sampler: grid, n_trials: 2, holdout: 0.3, seed: 7}
"""
MNRL, GIST = "dense[tiny+ft(mnrl,e=2,lr=2e-05,n=1:model)]", "dense[tiny+ft(gist,e=1,lr=2e-05,n=1:model)]"


def _tuning_csv() -> pd.DataFrame:
    """Two tuned settings as a study writes them: each one's final model (loss per step, held-out
    nDCG@10 and hit@1 per epoch, epoch 0 the base) and a fold model, which the section leaves out."""
    rows = []
    for setting, epochs, steps in ((MNRL, 2, 4), (GIST, 1, 3)):
        common = {"model": "tiny+ft", "setting": setting}
        for step in range(1, steps + 1):
            rows.append({**common, "part": "final", "kind": "loss", "on": "training", "step": step,
                         "epoch": step * epochs / steps, "value": 2.0 - 0.1 * step - 0.05 * epochs})
            rows.append({**common, "part": "fold 1 of 3", "kind": "loss", "on": "training", "step": step,
                         "epoch": step * epochs / steps, "value": 9.0})
        for epoch in range(epochs + 1):
            for kind, value in (("ndcg@10", 0.31 + 0.02 * epoch + 0.1 * epochs), ("hit@1", 0.7)):
                rows.append({**common, "part": "final", "kind": kind, "on": "held-out", "step": None, "epoch": epoch,
                             "value": value})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    outcome = optimize(write_config(folder / "space.yaml", SPACE), progress=False)
    return outcome.output


def _figure(page: str, div_id: str) -> list[dict]:
    """The traces a figure of the page plots, each array decoded from plotly's base64 form."""
    found = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*', page)
    assert found, f"no figure {div_id}"
    data, _ = json.JSONDecoder().raw_decode(page, found.end())

    def decoded(value):
        if isinstance(value, dict) and "bdata" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
        return value

    return [{key: decoded(value) for key, value in trace.items()} for trace in data]


def test_the_report_draws_each_final_models_loss_and_held_out_ndcg_from_tuning_csv(study):
    _tuning_csv().to_csv(study / TUNING_CSV, index=False)
    page = build_report(study, study / "report.html").read_text(encoding="utf-8")
    assert re.search(r'<section id="tuned"><h2>Tuned models</h2>', page)
    qa, _ = load_dataset(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl", domain_column="domain")
    held = int(holdout_mask(qa.domains, len(qa), 0.3, SEED).sum())
    assert f"nDCG@10 after each epoch on the {held} held-out questions, which no tuned model ever trains on" in page
    assert "epoch 0 is the base model before training" in page
    table = _tuning_csv()
    for div_id, kind, x in (("fig-tuned-loss", "loss", "step"), ("fig-tuned-held-out", "ndcg@10", "epoch")):
        traces = _figure(page, div_id)
        assert [t["name"] for t in traces] == [MNRL, GIST]  # one line per setting: no fold model, no hit@1
        for trace in traces:
            rows = table[(table["setting"] == trace["name"]) & (table["part"] == "final") & (table["kind"] == kind)]
            assert trace["x"] == pytest.approx(rows[x].tolist()) and trace["y"] == pytest.approx(rows["value"].tolist())
    held_out = _figure(page, "fig-tuned-held-out")
    assert held_out[0]["y"] == pytest.approx([0.51, 0.53, 0.55]) and held_out[1]["y"] == pytest.approx([0.41, 0.43])


def test_no_tuning_csv_no_section(study):
    (study / TUNING_CSV).unlink(missing_ok=True)
    assert training(study).empty
    page = build_report(study, study / "report.html").read_text(encoding="utf-8")
    assert "Tuned models" not in page and "fig-tuned" not in page


def test_training_reads_tuning_csv_as_written(tmp_path):
    _tuning_csv().to_csv(tmp_path / TUNING_CSV, index=False)
    read = training(tmp_path)
    expected = _tuning_csv()
    assert read[["setting", "part", "kind", "on"]].equals(expected[["setting", "part", "kind", "on"]])
    assert read["value"].tolist() == expected["value"].tolist() and read["epoch"].tolist() == expected["epoch"].tolist()


def test_without_a_final_model_each_fold_models_loss_is_drawn_and_no_held_out_curve():
    from ragopt.analysis.report import _training_section

    folds = _tuning_csv().query("part != 'final'")
    ((key, title, how, body),) = _training_section(folds, held_out=0)
    assert (key, title) == ("tuned", "Tuned models") and "one line per fold model" in how
    (_, loss), (_, held_out) = body
    assert [t.name for t in loss.data] == [f"{MNRL} (fold 1 of 3)", f"{GIST} (fold 1 of 3)"]
    assert list(loss.data[0].y) == [9.0] * 4
    assert isinstance(held_out, str) and held_out.startswith("No held-out curve")
    assert _training_section(pd.DataFrame(), held_out=0) == []


def test_the_section_is_drawn_in_a_browser(tmp_path):
    data = report_data(None)
    data.training, data.held_out = _tuning_csv(), 16
    page = write_report(tmp_path / "report.html", data)
    verdict = inspect(require_chromium(), page, CHECK, tmp_path / "report.png")
    plots = {plot["id"]: plot for plot in verdict["plots"]}
    assert verdict["errors"] == [] and "Tuned models" in verdict["headings"]
    for div_id in ("fig-tuned-loss", "fig-tuned-held-out"):
        plot = plots[div_id]
        assert plot["shown"] and plot["width"] > 600 and plot["height"] > 300 and plot["lines"] == 2, plot
        assert plot["legend"] == [MNRL, GIST]
    assert plots["fig-tuned-held-out"]["xticks"] == ["0 (base)", "1", "2"]
    assert plots["fig-tuned-held-out"]["points"] == 3 + 2
