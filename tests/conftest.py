"""Fixtures and shared helpers: tiny randomly initialized encoders (saved as
local model directories, or as backbones and encoders), random batches,
small annotated corpora and trained pipelines."""

import string
from pathlib import Path

import pytest
import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

import spacy_earlyexit  # noqa: F401  registers factories and extensions
from spacy_earlyexit.core.batch import EncoderBatch
from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.engines import Engine

REPO = Path(__file__).resolve().parents[1]


WORDS = ["angela", "merkel", "visited", "paris", "on", "tuesday", "the", "cat", "sat", "mat", "berlin", "john"]


class RecordingEngine(Engine):
    """Runs `inner` (an engine) and keeps every batch it was given, with the
    precision it was asked for: what tests use to see what reaches an engine."""

    name = "recording"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.exits = inner.exits
        self.batches = []
        self.precisions = []

    def predict(self, encoder, batch, policy, width, precision):
        self.batches.append(batch)
        self.precisions.append(precision)
        return self.inner.predict(encoder, batch, policy, width, precision)


def make_tiny_bert_dir(path: Path, hidden: int = 32, layers: int = 3, heads: int = 2, seed: int = 0) -> Path:
    """A 3-layer BERT with random weights and a character-level wordpiece vocab."""
    import torch
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + chars + ["##" + c for c in chars]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(path))
    return path


def tiny_backbone(kind: str):
    common = dict(vocab_size=50, max_position_embeddings=40)
    if kind == "bert":
        return BertModel(
            BertConfig(hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48, **common)
        )
    if kind == "roberta":
        return RobertaModel(
            RobertaConfig(
                hidden_size=24,
                num_hidden_layers=3,
                num_attention_heads=2,
                intermediate_size=48,
                pad_token_id=1,
                **common,
            )
        )
    return DistilBertModel(DistilBertConfig(dim=24, n_layers=3, n_heads=2, hidden_dim=48, **common))


def random_batch(lengths, seed=0, vocab=50, start=5):
    """Sequences of the given numbers of words, one piece per word plus [CLS]/[SEP]."""
    gen = torch.Generator().manual_seed(seed)
    B, T, W = len(lengths), max(lengths) + 2, max(lengths)
    ids = torch.zeros(B, T, dtype=torch.long)
    piece_mask = torch.zeros(B, T, dtype=torch.bool)
    piece_words = torch.full((B, T), -1, dtype=torch.long)
    word_starts = torch.zeros(B, W, dtype=torch.long)
    word_mask = torch.zeros(B, W, dtype=torch.bool)
    for b, n in enumerate(lengths):
        ids[b, : n + 2] = torch.randint(start, vocab, (n + 2,), generator=gen)
        piece_mask[b, : n + 2] = True
        piece_words[b, 1 : n + 1] = torch.arange(n)
        word_starts[b, :n] = torch.arange(1, n + 1)
        word_mask[b, :n] = True
    return EncoderBatch(ids, piece_mask, piece_words, word_starts, word_mask)


def assert_batch_invariant(encoder, policy, n_sequences: int, step: int) -> None:
    """Every `step`-th of `n_sequences` random sequences (1 to 29 pieces),
    run alone, gets the labels, exit layers and cost it gets in the batch of
    them all under `policy`."""
    lengths = [int(n) for n in torch.randint(1, 30, (n_sequences,), generator=torch.Generator().manual_seed(7))]
    big = random_batch(lengths, seed=8)
    together = encoder.predict(big, policy)
    for b in range(0, len(lengths), step):
        alone = random_batch([lengths[b]], seed=8)
        alone.input_ids[0] = big.input_ids[b, : alone.input_ids.shape[1]]
        single = encoder.predict(alone, policy)
        n = lengths[b]
        assert torch.equal(single.labels[0, :n], together.labels[b, :n])
        assert torch.equal(single.exit_layers[0, :n], together.exit_layers[b, :n])
        assert float(single.cost[0]) == pytest.approx(float(together.cost[b]))


def four_head_encoder(seed: int = 0) -> MultiExitEncoder:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    return MultiExitEncoder(BertModel(config), n_labels=5).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert"))


NER_DATA = [
    ("Angela Merkel visited Paris on Tuesday .", [(0, 13, "PER"), (22, 27, "LOC")]),
    ("John sat on the mat in Berlin .", [(0, 4, "PER"), (23, 29, "LOC")]),
    ("The cat visited Berlin .", [(16, 22, "LOC")]),
]
TAG_DATA = [
    ("Angela Merkel visited Paris on Tuesday .", ["NNP", "NNP", "VBD", "NNP", "IN", "NNP", "."]),
    ("The cat sat on the mat .", ["DT", "NN", "VBD", "IN", "DT", "NN", "."]),
]


def ner_examples(nlp):
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]


def ner_corpus(nlp, path, copies: int = 4) -> str:
    """NER_DATA `copies` times over, written to `path` as a DocBin corpus."""
    DocBin(docs=[eg.reference for eg in ner_examples(nlp)] * copies).to_disk(path)
    return str(path)


def tag_examples(nlp):
    return [Example.from_dict(nlp.make_doc(text), {"tags": tags}) for text, tags in TAG_DATA]


def model_config(model_dir: Path, **extra) -> dict:
    return {
        "model": {
            "@architectures": "spacy-earlyexit.MultiExitTransformer.v1",
            "name": str(model_dir),
            "max_wordpieces": 64,
            **extra,
        }
    }


def train(nlp, examples, steps: int = 60):
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.005
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


@pytest.fixture(scope="session")
def trained_ner(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    return train(nlp, ner_examples(nlp))


@pytest.fixture(scope="session")
def trained_tagger(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger", config=model_config(tiny_model_dir))
    return train(nlp, tag_examples(nlp))


def ner_tagger_examples(nlp):
    """NER_DATA and TAG_DATA as one set of examples (tags where a text has them)."""
    tags = dict(TAG_DATA)
    examples = []
    for text, ents in NER_DATA:
        annotation = {"entities": ents, **({"tags": tags[text]} if text in tags else {})}
        examples.append(Example.from_dict(nlp.make_doc(text), annotation))
    for text, text_tags in TAG_DATA:
        if text not in dict(NER_DATA):
            examples.append(Example.from_dict(nlp.make_doc(text), {"tags": text_tags}))
    return examples


@pytest.fixture(scope="session")
def saved_pipeline(tiny_model_dir, tmp_path_factory) -> Path:
    """NER and tagger on the tiny encoder, trained, with token-level exits
    (TOKEE, threshold 0.1, so exit layers vary), saved as a pipeline directory."""
    spacy.util.fix_random_seed(0)
    policy = {"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 0.1, "window": 1}
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "exit_policy": policy})
    nlp.add_pipe("earlyexit_tagger", config={**model_config(tiny_model_dir), "exit_policy": policy})
    train(nlp, ner_tagger_examples(nlp))
    path = tmp_path_factory.mktemp("pipelines") / "ner_tagger"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def four_head_stage(tmp_path_factory):
    """A trained four-head NER pipeline (never rewired) and its model directory."""
    model_dir = make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert_4h_training"), heads=4)
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(model_dir))
    train(nlp, ner_examples(nlp), steps=40)
    path = tmp_path_factory.mktemp("stage") / "ner"
    nlp.to_disk(path)
    return model_dir, path


LISTENER = {"model": {"@architectures": "spacy-earlyexit.EarlyExitListener.v1", "upstream": "encoder"}}
#: a rule per task: entities leave after layer 1, tags by their window's uncertainty
PER_TASK = {
    "policy": "per_task",
    "tasks": {
        "earlyexit_ner": {"policy": "fixed_depth", "layer": 1},
        "earlyexit_tagger": {"policy": "token_window", "threshold": 0.4, "window": 1},
    },
}


def shared_pipeline(model_dir, **encoder_config):
    """`earlyexit_transformer` (named "encoder") with NER and tagger listening to it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer", name="encoder", config={**model_config(model_dir), **encoder_config})
    nlp.add_pipe("earlyexit_ner", config=LISTENER)
    nlp.add_pipe("earlyexit_tagger", config=LISTENER)
    return nlp


@pytest.fixture(scope="session")
def saved_shared(tiny_model_dir, tmp_path_factory) -> Path:
    """A trained shared pipeline (NER and tagger on one tiny encoder) with a
    `mixed` per-task operating point, saved as a pipeline directory."""
    spacy.util.fix_random_seed(0)
    nlp = shared_pipeline(tiny_model_dir, operating_points={"mixed": PER_TASK})
    train(nlp, ner_tagger_examples(nlp), steps=60)
    path = tmp_path_factory.mktemp("shared") / "pipeline"
    nlp.to_disk(path)
    return path
