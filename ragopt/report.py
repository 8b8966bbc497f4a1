"""Files a study leaves behind: TREC runs and qrels, trials.csv and summary.md.

TREC files separate fields by whitespace, and doc ids such as autorag-ko's contain spaces, so ids
are written percent-encoded: '%', whitespace and control characters become %XX (UTF-8 bytes).
urllib.parse.unquote gives the original id back. The run's score column is depth + 1 - rank,
so trec_eval, which sorts by score, keeps ragopt's order exactly (ties included).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ragopt.data import Corpus, QASet
from ragopt.retrievers._base import Ranking

_UNSAFE = re.compile(r"[%\s\x00-\x1f\x7f]")


def encode_id(text: str) -> str:
    """A doc or query id as one whitespace-free TREC field."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


class TrecWriter:
    """Writes runs and qrels of one QA set and corpus in TREC format, ids encoded once."""

    def __init__(self, qa: QASet, corpus: Corpus) -> None:
        self.qa = qa
        self.qids = [encode_id(q) for q in qa.qids]
        self.doc_ids = [encode_id(d) for d in corpus.doc_ids]

    def run(self, path: Path, ranking: Ranking, tag: str) -> None:
        """One line 'qid Q0 docid rank score tag' per retrieved passage."""
        depth, doc_ids = ranking.depth, self.doc_ids
        lines = [f"{qid} Q0 {doc_ids[doc]} {rank + 1} {depth - rank} {tag}\n"
                 for qid, row in zip(self.qids, ranking.ids.tolist()) for rank, doc in enumerate(row) if doc >= 0]
        path.write_text("".join(lines), encoding="utf-8")

    def qrels(self, path: Path) -> None:
        """Every ground-truth id as relevance 1. With one id per group (the usual case) trec_eval
        reproduces ragopt's metrics; alternatives inside a group cannot be expressed in qrels."""
        lines = [f"{qid} 0 {self.doc_ids[doc]} 1\n"
                 for qid, groups in zip(self.qids, self.qa.groups) for group in groups for doc in group]
        path.write_text("".join(lines), encoding="utf-8")


def trials_table(study: optuna.Study, record_key: str) -> pd.DataFrame:
    """One row per finished trial: parameters, the pipeline, every metric at every k, timing."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = trial.user_attrs.get(record_key, {})
        row: dict[str, Any] = {"trial": trial.number, "value": trial.value, "pipeline": record.get("description")}
        row.update({f"param.{k}": v for k, v in trial.params.items()})
        row.update(record.get("metrics", {}))
        row["seconds_per_query"] = record.get("seconds_per_query")
        row["reused"] = record.get("reused")
        rows.append(row)
    table = pd.DataFrame(rows)
    params = sorted(c for c in table.columns if c.startswith("param."))
    first = ["trial", "value", "pipeline", *params]
    return table[first + [c for c in table.columns if c not in first]]


def metric_grid(means: dict[str, float], names: list[str], ks: list[int]) -> str:
    """A markdown table: one row per metric, one column per k."""
    head = "| metric | " + " | ".join(f"@{k}" for k in ks) + " |\n|---|" + "---|" * len(ks) + "\n"
    return head + "".join(f"| {n} | " + " | ".join(f"{means[f'{n}@{k}']:.4f}" for k in ks) + " |\n" for n in names)


def write_summary(path: Path, *, title: str, qa: QASet, corpus: Corpus, table: pd.DataFrame, best: dict[str, Any],
                  names: list[str], ks: list[int], per_domain: dict[str, dict[str, float]], objective: dict[str, float],
                  seconds: dict[str, float]) -> None:
    """A short human report of the study and its winner."""
    top = table.sort_values("value", ascending=False).head(10)
    k = best["top_k"]
    lines = [
        f"# ragopt: {title}\n",
        f"{len(qa)} questions ({qa.source}), {len(corpus)} passages ({corpus.source}); "
        f"{len(table)} trials; objective {objective} (weighted mean, higher is better).\n",
        f"## Best pipeline (trial {best['trial']}, value {best['value']:.4f})\n",
        f"`{best['description']}`\n",
        metric_grid(best["metrics"], names, ks),
    ]
    if per_domain:
        lines.append(f"## Best pipeline per domain, at k={k}\n\n"
                     + "| domain | questions | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
                     + "".join(f"| {d} | {int(v['questions'])} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |\n"
                               for d, v in sorted(per_domain.items())))
    lines.append("## Top trials\n\n| trial | value | pipeline |\n|---|---|---|\n"
                 + "".join(f"| {int(r.trial)} | {r.value:.4f} | `{r.pipeline}` |\n" for r in top.itertuples()))
    lines.append(f"## Time\n\nfirst trial {seconds['first']:.2f} s, median later trial "
                 f"{seconds['median'] * 1000:.1f} ms, whole run {seconds['total']:.1f} s.\n")
    path.write_text("\n".join(lines), encoding="utf-8")


def domain_means(per_query: dict[str, np.ndarray], domains: list[str], names: list[str], k: int
                 ) -> dict[str, dict[str, float]]:
    """Mean of each metric at k over the questions of each domain."""
    labels = np.asarray(domains)
    result = {}
    for domain in sorted(set(domains)):
        mask = labels == domain
        result[domain] = {"questions": float(mask.sum()),
                          **{n: float(per_query[f"{n}@{k}"][mask].mean()) for n in names}}
    return result
