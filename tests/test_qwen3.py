"""Qwen3-Embedding and Qwen3-Reranker through ragopt's real loading code, on tiny random-weight
Qwen3 models laid out as their hub repositories are: the embedder as a sentence-transformers
model (last-token pooling, left padding, an end-of-text token appended, the instruction stored
as the `query` prompt) and the reranker as a causal LM with the CrossEncoder files Qwen ships
(a chat template laying out <Instruct>/<Query>/<Document>, a LogitScore head over 'yes' and
'no'). The reranker is checked against the model card's own code (transformers' causal LM, the
prompt's prefix and suffix around each pair, softmax over the 'no' and 'yes' logits)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from conftest import KO_MINI, ROOT, write_config
from ragopt.search.config import load_config
from ragopt.data.qa import Queries
from ragopt.stages.engine import Engine
from ragopt.errors import ModelError
from ragopt.stages.models import Locator, ModelPool
from ragopt.serving.pipeline import load_pipeline
from ragopt.stages.rerankers.causal_lm_reranker import CausalLMRerankerSpec, CausalLMScorer
from ragopt.stages.rerankers.cross_encoder import CrossEncoderSpec, CrossEncoderScorer
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.study.runs import StudyRuns
from ragopt.study import optimize
from ragopt.testing.rerankers import PairScorerContract, ScorerCase

EMBEDDING_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
KOREAN_INSTRUCTION = "Given a question, retrieve passages that answer the question"

# Qwen/Qwen3-Reranker-0.6B's chat template (its tokenizer_config.json, since its sentence-transformers release)
RERANKER_TEMPLATE = (
    '{%- set instruction = messages | selectattr("role", "eq", "system") | map(attribute="content")'
    ' | first | default("Given a web search query, retrieve relevant passages that answer the query") -%}\n'
    '{%- set query_text = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}\n'
    '{%- set document_text = messages | selectattr("role", "eq", "document") | map(attribute="content")'
    " | first -%}\n"
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the"
    ' Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {{ instruction }}\n<Query>: {{ query_text }}\n"
    "<Document>: {{ document_text }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n\n"
)

# The Qwen3-Reranker model card's inference code
CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
               "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def qwen_tokenizer(end_of_text: bool = False):
    """Qwen's kind of tokenizer, small: byte-level BPE without a prefix space (every byte a token,
    and 'yes' and 'no' whole), ChatML's special tokens, <think> tags, left padding; with
    `end_of_text`, <|endoftext|> appended to every text as Qwen3-Embedding's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {piece: i for i, piece in enumerate([*alphabet, "ye", "yes", "no"])}
    backend = Tokenizer(models.BPE(vocab, [("y", "e"), ("ye", "s"), ("n", "o")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    backend.add_tokens(["<think>", "</think>"])
    if end_of_text:
        backend.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", backend.token_to_id("<|endoftext|>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")


def save_qwen3(folder: Path, model_class, tokenizer, seed: int, **config) -> Path:
    """Random weights in Qwen3's architecture (grouped-query attention, tied embeddings), width 32."""
    from transformers import Qwen3Config

    torch.manual_seed(seed)
    qwen3 = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **config)
    model_class(qwen3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qwen3_embedding(tmp_path_factory) -> Path:
    """Qwen3-Embedding's layout: Transformer, last-token Pooling and Normalize, the instruction as
    the stored `query` prompt, cosine similarity."""
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import Qwen3Model

    base = save_qwen3(tmp_path_factory.mktemp("qwen3-base"), Qwen3Model, qwen_tokenizer(end_of_text=True), seed=8)
    folder = tmp_path_factory.mktemp("qwen3-embedding")
    SentenceTransformer(modules=[Transformer(str(base)), Pooling(32, pooling_mode="lasttoken"), Normalize()],
                        prompts={"query": EMBEDDING_PROMPT, "document": ""}, similarity_fn_name="cosine",
                        device="cpu").save(str(folder))
    return folder


def save_qwen3_reranker(folder: Path, seed: int = 9, template: str | None = RERANKER_TEMPLATE) -> Path:
    """Qwen3-Reranker's layout: a Qwen3 causal LM loaded by CrossEncoder as text generation with
    chat messages, its chat template, and LogitScore over the 'yes' and 'no' tokens; without a
    template, a bare causal LM."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore
    from transformers import Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = template
    save_qwen3(folder, Qwen3ForCausalLM, tokenizer, seed, initializer_range=0.2)  # scores spread apart
    if template is None:
        return folder
    transformer = Transformer(str(folder), transformer_task="text-generation", module_output_name="causal_logits",
                              modality_config={"text": {"method": "forward", "method_output_name": "logits"},
                                               "message": {"method": "forward", "method_output_name": "logits",
                                                           "format": "flat"}})
    head = LogitScore(true_token_id=tokenizer.convert_tokens_to_ids("yes"),
                      false_token_id=tokenizer.convert_tokens_to_ids("no"))
    CrossEncoder(modules=[transformer, head], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_qwen3_reranker(tmp_path_factory) -> Path:
    return save_qwen3_reranker(tmp_path_factory.mktemp("qwen3-reranker"))


def card_scores(folder: Path, instruction: str | None = None, max_length: int = 8192):
    """The Qwen3-Reranker model card's scoring, one pair at a time: P(yes) over 'no' and 'yes',
    the instruction, query and passage cut to fit max_length between the prompt's prefix and suffix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    def score(pairs):
        out = []
        for query, passage in pairs:
            text = (f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}\n<Query>: {query}\n"
                    f"<Document>: {passage}")
            cut = tokenizer(text, truncation="longest_first", max_length=max_length - len(prefix) - len(suffix))
            ids = prefix + cut["input_ids"] + suffix
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            out.append(torch.log_softmax(torch.stack([logits[no], logits[yes]]), dim=0)[1].exp().item())
        return np.array(out, dtype=np.float32)

    return score


class TestQwen3RerankerContract(PairScorerContract):
    @pytest.fixture(params=[None, KOREAN_INSTRUCTION])
    def case(self, request, ko_mini, tiny_qwen3_reranker):
        qa, corpus = ko_mini
        spec = CausalLMRerankerSpec(model=str(tiny_qwen3_reranker), depth=4, instruction=request.param)
        return ScorerCase(spec, corpus, Queries(qa.queries.texts[:4]),
                          card_scores(tiny_qwen3_reranker, request.param), rtol=1e-5, atol=1e-6)


def test_a_study_with_the_reranker_exports_a_winner_that_reranks_as_its_trial(ko_mini, tiny_qwen3_reranker, tmp_path):
    config = write_config(tmp_path / "rerank.yaml", f"""
data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}}
retrievers: [{{name: bm25, type: bm25, tokenizer: whitespace}}]
rerankers: [{{name: qwen3, type: causal_lm_reranker, model: "{tiny_qwen3_reranker}", depth: 4,
             instruction: "{KOREAN_INSTRUCTION}"}}]
top_k: [3]
study: {{latency: off}}
""")
    output = optimize(config, progress=False).output
    runs = StudyRuns(output)
    winner = load_pipeline(output / "best.yaml", KO_MINI / "corpus.jsonl", device="cpu")
    assert winner.spec.reranker.instruction == KOREAN_INSTRUCTION
    hits = winner.retrieve(ko_mini[0].queries.texts)
    doc_ids = winner.engine.corpus.doc_ids
    assert [[h.doc_id for h in row] for row in hits] == [[doc_ids[i] for i in row if i >= 0]
                                                         for row in runs.ranking(runs.best)]


def test_the_instruction_reaches_the_prompt(ko_mini, tiny_qwen3_reranker):
    qa, corpus = ko_mini
    pairs = [(qa.queries.texts[i], corpus.contents[i]) for i in range(4)]
    spec = CausalLMRerankerSpec(model=str(tiny_qwen3_reranker))
    located = Locator()(spec.model)
    default = CausalLMScorer(spec, located, "cpu", ModelPool(), "a").score(pairs)
    korean = CausalLMScorer(spec.model_copy(update={"instruction": KOREAN_INSTRUCTION}), located, "cpu", ModelPool(),
                            "b").score(pairs)
    assert np.abs(default - korean).min() > 1e-3
    np.testing.assert_allclose(korean, card_scores(tiny_qwen3_reranker, KOREAN_INSTRUCTION)(pairs), rtol=1e-5)


def test_long_pairs_are_cut_as_the_card_cuts_them(ko_mini, tiny_qwen3_reranker):
    """The passage's end gives way, the prompt's suffix stays: the last position is still the
    assistant's answer."""
    qa, corpus = ko_mini
    pairs = [(qa.queries.texts[i], " ".join(corpus.contents[i:i + 3])) for i in range(4)]
    spec = CausalLMRerankerSpec(model=str(tiny_qwen3_reranker), max_length=300, batch_size=3)
    cut = CausalLMScorer(spec, Locator()(spec.model), "cpu", ModelPool(), "k").score(pairs)
    np.testing.assert_allclose(cut, card_scores(tiny_qwen3_reranker, max_length=300)(pairs), rtol=1e-5)
    assert np.abs(cut - card_scores(tiny_qwen3_reranker)(pairs)).min() > 1e-4  # every pair was cut


def test_a_plain_cross_encoder_entry_scores_qwen3_reranker_as_its_card(ko_mini, tiny_qwen3_reranker):
    """sentence-transformers' own CrossEncoder path (type: cross_encoder) gives the card's P(yes)
    with the template's default instruction."""
    qa, corpus = ko_mini
    pairs = [(qa.queries.texts[i], corpus.contents[3 * i]) for i in range(5)]
    spec = CrossEncoderSpec(model=str(tiny_qwen3_reranker))
    ours = CrossEncoderScorer(spec, Locator()(spec.model), "cpu", ModelPool(), "k").score(pairs)
    np.testing.assert_allclose(ours, card_scores(tiny_qwen3_reranker)(pairs), rtol=1e-5)


def test_a_sequence_classifier_or_a_bare_causal_lm_is_refused(tiny_xlmr_reranker, tmp_path):
    for folder, why in [(tiny_xlmr_reranker, "use type: cross_encoder"),
                        (save_qwen3_reranker(tmp_path / "bare", template=None), "no chat template that lays out")]:
        spec = CausalLMRerankerSpec(model=str(folder))
        with pytest.raises(ModelError, match=why):
            CausalLMScorer(spec, Locator()(spec.model), "cpu", ModelPool(), "k")


def test_qwen3_embedding_is_encoded_as_sentence_transformers_does(ko_mini, tiny_qwen3_embedding):
    """A decoder goes through model.encode: last-token pooling over left-padded batches, the
    stored query prompt before each query and none before passages."""
    qa, corpus = ko_mini
    queries = Queries(qa.queries.texts[:8])
    spec = DenseSpec(model=str(tiny_qwen3_embedding), query_prompt_name="query")
    engine = Engine(corpus, device="cpu")
    retriever = engine.retriever(spec)
    reference = SentenceTransformer(str(tiny_qwen3_embedding), device="cpu")
    assert reference.tokenizer.padding_side == "left"
    np.testing.assert_allclose(retriever.corpus_vectors, reference.encode(corpus.contents), rtol=1e-5, atol=1e-6)
    expected = reference.encode(queries.texts, prompt_name="query")
    assert np.abs(expected - reference.encode(queries.texts)).max() > 1e-3  # the prompt changes the vectors
    np.testing.assert_allclose(retriever.embed(queries.texts, queries.key, "query"), expected, rtol=1e-5, atol=1e-6)
    ranking = engine.retrieve(spec, queries, 5)
    np.testing.assert_array_equal(ranking.ids, np.argsort(-(expected @ retriever.corpus_vectors.T), axis=1,
                                                          kind="stable")[:, :5])


def test_the_catalogue_names_the_newest_korean_leaders():
    """configs/korean-models.yaml carries KURE-v2, Qwen3-Embedding and Qwen3-Reranker with the
    settings their model cards ask for."""
    config, _ = load_config(ROOT / "configs" / "korean-models.yaml")
    entries = {getattr(entry, "model", None): entry for entry in config.retrievers + config.rerankers}
    assert entries["nlpai-lab/KURE-v2"].type == "multi_vector"
    embedding = entries["Qwen/Qwen3-Embedding-0.6B"]
    assert (embedding.type, embedding.query_prompt_name, embedding.passage_prefix) == ("dense", "query", "")
    reranker = entries["Qwen/Qwen3-Reranker-0.6B"]
    assert reranker.type == "causal_lm_reranker" and reranker.instruction
    kure = entries["nlpai-lab/KURE-v2"].name
    assert any(kure in r.retrievers for r in config.retrievers if r.type == "hybrid")  # fused with BM25
