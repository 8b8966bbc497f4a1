"""Each trial's final ranking, stored once however many trials share it, and TREC runs written
from the stored rankings on demand (`ragopt runs`), so that a study's files grow with its
distinct rankings, not with trials x questions x depth. Plain numpy: no torch, no pickle.

A study's output folder holds, under runs/: `<key>.npy` per distinct ranking (corpus rows,
questions x depth, -1 where nothing more was retrieved), and `index.json`, rewritten with the
study's outputs: the question and doc ids of the rows, and each finished trial's ranking key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ragopt.errors import StudyError
from ragopt.files import atomic_write, write_text
from ragopt.scoring.trec import TrecWriter

RUNS = "runs"
"""The folder of a study's output that holds its rankings, index and TREC runs."""
INDEX = "index.json"
BEST = "best.trec"
"""The TREC run of the winning trial, written with the study's outputs."""


def _smallest_int(ids: np.ndarray) -> type[np.signedinteger]:
    """The narrowest signed integer type holding every row of a ranking (and its -1 padding)."""
    top = int(ids.max(initial=-1))
    return next(t for t in (np.int16, np.int32, np.int64) if top <= np.iinfo(t).max)


class RankingStore:
    """Rankings saved by content as `<folder>/<key>.npy`, the key a hash of the rows, their shape
    and type, so that identical rankings of different trials are one file.

    Several processes (workers on one machine, or on several sharing the folder) may save at
    once: each writes through its own temporary file (unique across processes and machines) and
    renames it into place in one step, and writers of one key write the same bytes, so whichever
    rename comes last leaves the same, whole file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, ids: np.ndarray) -> str:
        """Store a ranking (corpus rows, questions x depth, -1 padded) unless it is already
        stored; return its key."""
        rows = np.ascontiguousarray(ids, dtype=_smallest_int(ids))
        digest = hashlib.blake2b(f"{rows.dtype.str}{rows.shape}".encode(), digest_size=16)
        digest.update(rows.tobytes())
        key = digest.hexdigest()
        path = self.path(key)
        if not path.exists():
            atomic_write(path, lambda tmp: _save(tmp, rows))
        return key

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str) -> np.ndarray:
        """A stored ranking, as saved (its narrowest integer type)."""
        path = self.path(key)
        if not path.exists():
            raise StudyError(f"the ranking {path} is missing: a worker with its own output folder may have stored it "
                             f"there; copy that folder's {RUNS}/*.npy into {self.folder}")
        return np.load(path, allow_pickle=False)


def _save(path: Path, rows: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object, so that np.save adds no .npy to the temporary name
        np.save(handle, rows, allow_pickle=False)


QRELS = "qrels"
"""The folder of a study over documents that holds each chunking's qrels, `<chunker key>.trec`."""


def write_index(output: Path, qids: Sequence[str], doc_ids: Sequence[str] | Mapping[str, Sequence[str]],
                trials: dict[int, str | None], corpus_of: Mapping[int, str] | None = None) -> None:
    """runs/index.json: the qids of the rankings' rows, the doc ids of the corpus rows they hold
    (only those: a million-passage corpus is not copied), and each finished trial's ranking key
    (None for a trial of an earlier ragopt, which wrote its TREC run itself). A study over
    documents ranks a corpus per chunking: `doc_ids` maps each chunking's key to its chunk ids and
    `corpus_of` each trial to its chunking."""
    store = RankingStore(output / RUNS)

    def held_rows(keys: Iterable[str | None], ids: Sequence[str]) -> dict[str, list]:
        held = [np.unique(store.load(key)) for key in {key for key in keys if key is not None}
                if store.path(key).exists()]
        rows = np.unique(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
        rows = rows[rows >= 0].tolist()
        return {"doc_rows": rows, "doc_ids": [ids[r] for r in rows]}

    index: dict = {"qids": list(qids), "trials": {str(n): key for n, key in sorted(trials.items())}}
    if corpus_of is None:
        assert not isinstance(doc_ids, Mapping)
        index.update(held_rows(trials.values(), doc_ids))
    else:
        assert isinstance(doc_ids, Mapping)
        index["corpora"] = {corpus: held_rows([trials[n] for n in trials if corpus_of[n] == corpus], ids)
                            for corpus, ids in doc_ids.items()}
        index["trial_corpus"] = {str(n): corpus_of[n] for n in sorted(trials)}
    write_text(output / RUNS / INDEX, json.dumps(index, ensure_ascii=False) + "\n")


class StudyRuns:
    """A study's stored rankings, read through its runs/index.json, written as TREC runs."""

    def __init__(self, output: Path) -> None:
        path = output / RUNS / INDEX
        if not path.exists():
            raise StudyError(f"{path} not found: give the output folder of a `ragopt optimize` run (one made by this "
                             "version of ragopt, or resumed with it)")
        index = json.loads(path.read_text(encoding="utf-8"))
        self.output = output
        self.n_questions = len(index["qids"])
        self.trials: dict[int, str | None] = {int(n): key for n, key in index["trials"].items()}
        corpora = index.get("corpora", {"": index})
        self.writers = {corpus: TrecWriter(index["qids"], dict(zip(held["doc_rows"], held["doc_ids"])))
                        for corpus, held in corpora.items()}
        self.corpus_of: dict[int, str] = {int(n): c for n, c in index.get("trial_corpus", {}).items()}
        """Each trial's chunking, in a study over documents (its qrels: qrels/<chunking>.trec)."""
        self.store = RankingStore(output / RUNS)

    def writer(self, trial: int) -> TrecWriter:
        """The writer of the trial's corpus ids."""
        return self.writers[self.corpus_of.get(trial, "")]

    def qrels(self, trial: int) -> Path:
        """The qrels the trial's run is scored against with trec_eval."""
        corpus = self.corpus_of.get(trial)
        return self.output / (f"{QRELS}/{corpus}.trec" if corpus else "qrels.trec")

    @property
    def best(self) -> int:
        """The winning trial, as study.json names it."""
        path = self.output / "study.json"
        if not path.exists():
            raise StudyError(f"{path} not found: the study has no winner yet; name trials with --trial")
        return int(json.loads(path.read_text(encoding="utf-8"))["best_trial"])

    def ranking(self, trial: int) -> np.ndarray:
        """The trial's ranking: corpus rows, questions x depth, -1 padded."""
        if trial not in self.trials:
            raise StudyError(f"trial {trial} is not a finished trial of the study in {self.output}; its finished "
                             f"trials: {spans(self.trials)}")
        key = self.trials[trial]
        if key is None:
            raise StudyError(f"trial {trial} ran under an earlier ragopt, which stored no ranking but wrote its TREC "
                             f"run itself: {self.output / RUNS / f'{trial}.trec'}")
        ids = self.store.load(key)
        if ids.ndim != 2 or ids.shape[0] != self.n_questions:
            raise StudyError(f"{self.store.path(key)} is not a ranking of this study's {self.n_questions} questions "
                             f"(it holds an array of shape {ids.shape}): it was copied from another study's {RUNS}/")
        return ids

    def has(self, trial: int) -> bool:
        """Whether the trial's ranking is stored in this folder."""
        key = self.trials.get(trial)
        return key is not None and self.store.path(key).exists()

    def write(self, trials: Iterable[int], folder: Path) -> list[Path]:
        """`folder/trial-<n>.trec` for each trial (tagged ragopt-<n>), every trial checked before
        any file is written."""
        chosen = list(dict.fromkeys(trials))
        if not chosen:
            raise StudyError(f"name the trials to write with --trial N (or --best); the finished trials: "
                             f"{spans(self.trials)}")
        rankings = {n: self.ranking(n) for n in chosen}
        paths = []
        for n, ids in rankings.items():
            paths.append(folder / f"trial-{n}.trec")
            self.writer(n).run(paths[-1], ids, f"ragopt-{n}")
            if n in self.corpus_of:  # a chunking of documents: its own qrels beside the run
                paths.append(folder / f"trial-{n}.qrels")
                shutil.copyfile(self.qrels(n), paths[-1])
        return paths


def write_best_run(output: Path, trial: int) -> None:
    """runs/best.trec: the winning trial's TREC run, so that one is there without a command. A
    winner whose ranking is not in this folder (run by an earlier ragopt, or by a worker with
    its own output folder) leaves none, rather than an older winner's."""
    runs, path = StudyRuns(output), output / RUNS / BEST
    if runs.has(trial):
        runs.writer(trial).run(path, runs.ranking(trial), f"ragopt-{trial}")
    else:
        path.unlink(missing_ok=True)


def spans(numbers: Iterable[int]) -> str:
    """Numbers as sorted runs, e.g. '0-29, 31, 40-45'."""
    values, parts = sorted(set(numbers)), []
    for n in values:
        if parts and parts[-1][1] == n - 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts) or "none"
