"""summary.md: a short human report of a study and its winner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ragopt.data import Corpus, QASet
from ragopt.files import write_text


def metric_grid(means: dict[str, float], names: list[str], ks: list[int]) -> str:
    """A markdown table: one row per metric, one column per k."""
    head = "| metric | " + " | ".join(f"@{k}" for k in ks) + " |\n|---|" + "---|" * len(ks) + "\n"
    return head + "".join(f"| {n} | " + " | ".join(f"{means[f'{n}@{k}']:.4f}" for k in ks) + " |\n" for n in names)


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


def write_summary(path: Path, *, title: str, qa: QASet, corpus: Corpus, table: pd.DataFrame, best: dict[str, Any],
                  names: list[str], ks: list[int], per_domain: dict[str, dict[str, float]], objective: dict[str, float],
                  seconds: dict[str, float]) -> None:
    """The study in a page: the winner's metrics at every k and per domain, the top trials, time."""
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
        lines.append(f"## The best pipeline's scores per domain, at k={k}\n\n"
                     "The overall winner scored on each domain's questions (not a winner per domain).\n\n"
                     + "| domain | questions | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
                     + "".join(f"| {d} | {int(v['questions'])} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |\n"
                               for d, v in sorted(per_domain.items())))
    lines.append("## Top trials\n\n| trial | value | pipeline |\n|---|---|---|\n"
                 + "".join(f"| {int(r.trial)} | {r.value:.4f} | `{r.pipeline}` |\n" for r in top.itertuples()))
    lines.append(f"## Time\n\nfirst trial {seconds['first']:.2f} s, median later trial "
                 f"{seconds['median'] * 1000:.1f} ms, whole run {seconds['total']:.1f} s.\n")
    write_text(path, "\n".join(lines))
