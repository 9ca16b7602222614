"""The spaCy components: training, annotation, exit info, serialization, odd input."""

import pickle

import pytest
import spacy
from spacy.training import Example

from spacy_earlyexit.core.hf import EncoderLoadError
from spacy_earlyexit.core.policies import FullDepth, TokenWindowExit

from ..conftest import NER_DATA, TAG_DATA, model_config, ner_examples, tag_examples, train


def test_ner_overfits_to_the_gold_entities(trained_ner):
    for text, ents in NER_DATA:
        doc = trained_ner(text)
        assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == ents


def test_tagger_overfits_to_the_gold_tags(trained_tagger):
    for text, tags in TAG_DATA:
        assert [t.tag_ for t in trained_tagger(text)] == tags


def test_every_token_reports_its_exit_layer_and_the_doc_its_cost(trained_ner):
    doc = trained_ner("Angela Merkel visited Paris on Tuesday .")
    assert [t._.exit_layer for t in doc] == [3] * len(doc)
    info = doc._.earlyexit["earlyexit_ner"]
    assert info["n_layers"] == 3 and set(info) == {"n_layers", "cost", "full_cost", "speedup", "width"}
    assert info["width"] == 1.0
    assert [t._.exit_layers for t in doc] == [{"earlyexit_ner": 3}] * len(doc)
    assert info["cost"] == pytest.approx(info["full_cost"])
    assert doc._.earlyexit_speedup == pytest.approx(1.0)


def test_labels_and_scores(trained_ner, trained_tagger):
    ner = trained_ner.get_pipe("earlyexit_ner")
    assert ner.labels == ("LOC", "PER")
    assert ner.output_labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    scores = trained_ner.evaluate(ner_examples(trained_ner))
    assert scores["ents_f"] == 1.0 and "PER" in scores["ents_per_type"]
    assert scores["earlyexit_ner_flops_speedup"] == pytest.approx(1.0)
    assert scores["earlyexit_ner_mean_exit_layer"] == 3.0
    assert trained_tagger.evaluate(tag_examples(trained_tagger))["tag_acc"] == 1.0


def test_pipe_equals_call_and_mixed_length_batches(trained_ner):
    texts = [text for text, _ in NER_DATA] * 3 + ["", "Paris", "John " * 40 + "."]
    ner = trained_ner.get_pipe("earlyexit_ner")
    for policy in (FullDepth(), TokenWindowExit(0.3, window=1)):
        ner.exit_policy = policy
        try:
            piped = list(trained_ner.pipe(texts, batch_size=4))
            single = [trained_ner(text) for text in texts]
        finally:
            ner.exit_policy = FullDepth()
        for a, b in zip(piped, single):
            assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
            assert [t._.exit_layer for t in a] == [t._.exit_layer for t in b]


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\n\t", "😀 Paris 🇩🇪 \u200b\u0007 x", "John\x00Berlin", "a" * 500],
)
def test_odd_input_gets_a_label_and_exit_layer_for_every_token(trained_ner, text):
    doc = trained_ner(text)
    layers = [t._.exit_layer for t in doc]
    assert len(layers) == len(doc) and all(1 <= layer <= 3 for layer in layers)
    for ent in doc.ents:
        assert not ent[0].is_space and not ent[-1].is_space


def test_long_docs_are_split_and_fully_labelled(trained_ner, trained_tagger):
    text = " ".join(["Angela Merkel visited Paris on Tuesday ."] * 2900)  # ~20,000 tokens
    doc = trained_tagger(text)
    assert len(doc) > 20000
    assert all(t.tag_ for t in doc)
    assert all(t._.exit_layer == 3 for t in doc)
    doc = trained_ner(text)
    assert all(t._.exit_layer == 3 for t in doc)
    # every window is labelled: entities are found from the first sentence to the last
    assert doc.ents[0].start < 7 and doc.ents[-1].end > len(doc) - 8
    assert {e.label_ for e in doc.ents} == {"PER", "LOC"}


def test_both_components_keep_their_own_exit_information(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger", config=model_config(tiny_model_dir))
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    examples = [
        Example.from_dict(nlp.make_doc(text), {"entities": ents, "tags": tags})
        for (text, ents), (_, tags) in zip(NER_DATA[:1], TAG_DATA[:1])
    ]
    train(nlp, examples, steps=40)
    nlp.get_pipe("earlyexit_ner").exit_policy = TokenWindowExit(1.01)  # everything leaves at layer 1
    doc = nlp(NER_DATA[0][0])
    assert set(doc._.earlyexit) == {"earlyexit_tagger", "earlyexit_ner"}
    assert all(t._.exit_layers == {"earlyexit_tagger": 3, "earlyexit_ner": 1} for t in doc)
    assert all(t._.exit_layer == 3 for t in doc)
    assert [t.tag_ for t in doc] == TAG_DATA[0][1]
    assert 1.0 < doc._.earlyexit_speedup < 3.0


def _predictions(nlp, texts):
    docs = list(nlp.pipe(texts))
    return [
        ([(e.start, e.end, e.label_) for e in d.ents], [t.tag_ for t in d], [t._.exit_layer for t in d]) for d in docs
    ]


def test_disk_round_trip_gives_identical_predictions(trained_ner, tmp_path):
    texts = [text for text, _ in NER_DATA] + ["Merkel and John visited the cat ."]
    ner = trained_ner.get_pipe("earlyexit_ner")
    ner.exit_policy = TokenWindowExit(0.3)
    try:
        expected = _predictions(trained_ner, texts)
        trained_ner.to_disk(tmp_path / "pipeline")
    finally:
        ner.exit_policy = FullDepth()
    weights = tmp_path / "pipeline" / "earlyexit_ner" / "model" / "model.safetensors"
    assert weights.is_file()
    loaded = spacy.load(tmp_path / "pipeline")
    # the policy is a setting of the running component (the config's is saved)
    assert isinstance(loaded.get_pipe("earlyexit_ner").exit_policy, FullDepth)
    loaded.get_pipe("earlyexit_ner").exit_policy = TokenWindowExit(0.3)
    assert _predictions(loaded, texts) == expected


def test_bytes_round_trip_gives_identical_predictions(trained_tagger, tiny_model_dir):
    texts = [text for text, _ in TAG_DATA]
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger", config=model_config(tiny_model_dir))
    nlp.from_bytes(trained_tagger.to_bytes())
    assert nlp.get_pipe("earlyexit_tagger").labels == trained_tagger.get_pipe("earlyexit_tagger").labels
    assert _predictions(nlp, texts) == _predictions(trained_tagger, texts)


def test_policy_can_be_changed_when_loading(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "p")
    override = {
        "components.earlyexit_ner.exit_policy": {"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 1.01}
    }
    nlp = spacy.load(tmp_path / "p", config=override)
    doc = nlp(NER_DATA[0][0])
    assert [t._.exit_layer for t in doc] == [1] * len(doc)
    assert doc._.earlyexit_speedup > 2.0


def test_saved_pipeline_loads_without_pickle(trained_ner, tmp_path, monkeypatch):
    trained_ner.to_disk(tmp_path / "p")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)
    assert spacy.load(tmp_path / "p")(NER_DATA[0][0]).ents


def test_missing_or_bad_model_directory_is_named(tmp_path):
    nlp = spacy.blank("en")
    missing = tmp_path / "no" / "such" / "model"
    nlp.add_pipe("earlyexit_ner", config=model_config(missing))
    with pytest.raises(EncoderLoadError, match=str(missing)):
        nlp.initialize(lambda: ner_examples(nlp))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(empty))
    with pytest.raises(EncoderLoadError, match="config.json"):
        nlp.initialize(lambda: ner_examples(nlp))


def test_corrupt_saved_weights_are_named(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "p")
    weights = tmp_path / "p" / "earlyexit_ner" / "model" / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(EncoderLoadError, match="model.safetensors"):
        spacy.load(tmp_path / "p")


def test_no_labels_and_late_labels_are_clear_errors(tiny_model_dir, trained_ner):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    unlabeled = [Example(nlp.make_doc("The cat"), nlp.make_doc("The cat"))]
    with pytest.raises(ValueError, match="no labels"):
        nlp.initialize(lambda: unlabeled)
    with pytest.raises(ValueError, match="after it was initialized"):
        trained_ner.get_pipe("earlyexit_ner").add_label("ORG")


def test_predict_before_initialize_is_a_clear_error(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    with pytest.raises(ValueError, match="initialize"):
        nlp("Paris")


def test_initialize_with_given_labels(tiny_model_dir):
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    ner.initialize(lambda: ner_examples(nlp), nlp=nlp, labels=["ORG", "PER"])
    assert ner.labels == ("ORG", "PER")


def test_batch_invariance_over_hundreds_of_sentences(trained_ner):
    import random

    rng = random.Random(0)
    words = "Angela Merkel visited Paris on Tuesday John sat the mat in Berlin cat . , and".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 45))) for _ in range(300)]
    ner = trained_ner.get_pipe("earlyexit_ner")
    ner.exit_policy = TokenWindowExit(0.3, window=2)
    try:
        alone = [trained_ner(text) for text in texts]
        batched = list(trained_ner.pipe(texts, batch_size=64))
    finally:
        ner.exit_policy = FullDepth()
    n_tokens = sum(len(doc) for doc in alone)
    differing = sum(
        (a.ent_iob_ != b.ent_iob_) or (a.ent_type_ != b.ent_type_) or (a._.exit_layer != b._.exit_layer)
        for da, db in zip(alone, batched)
        for a, b in zip(da, db)
    )
    print(f"batch invariance: {differing} of {n_tokens} tokens differ")
    assert len({len(doc) for doc in alone}) > 30  # really mixed lengths
    assert len({t._.exit_layer for doc in alone for t in doc}) > 1  # really exiting early
    assert differing <= n_tokens // 1000


def test_entry_points_make_everything_available_without_import():
    import subprocess
    import sys

    script = (
        "import spacy\n"
        "nlp = spacy.blank('en'); nlp.add_pipe('earlyexit_ner'); nlp.add_pipe('earlyexit_tagger')\n"
        "for name in ('full_depth', 'fixed_depth', 'sentence_exit', 'token_window_exit'):\n"
        "    spacy.registry.misc.get(f'spacy-earlyexit.{name}.v1')\n"
        "spacy.registry.architectures.get('spacy-earlyexit.MultiExitTransformer.v1')\n"
        "print(nlp.pipe_names)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "earlyexit_tagger" in proc.stdout


@pytest.mark.parametrize("preset,expected", [(None, "1024"), ("64", "64")])
def test_onednn_kernel_cache_is_sized_when_a_model_is_built_unless_the_user_sets_it(preset, expected):
    """oneDNN's per-shape kernel cache gets room for the bounded set of shapes
    inference meets (core/shapes.py); a size the user set wins. Importing the
    package leaves the environment alone; building a component sets it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if preset:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = preset
    code = (
        "import os, spacy, spacy_earlyexit\n"
        "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))\n"
        "spacy.blank('en').add_pipe('earlyexit_ner')\n"
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    after_import, after_build = out.stdout.split()
    assert after_import == (preset or "None")
    assert after_build == expected


def test_n_layers_keeps_the_first_layers_and_survives_a_round_trip(tiny_model_dir, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, n_layers=2))
    train(nlp, ner_examples(nlp), steps=20)
    encoder = nlp.get_pipe("earlyexit_ner").encoder
    assert encoder.n_layers == 2 and len(encoder.heads) == 2
    texts = [text for text, _ in NER_DATA]
    expected = _predictions(nlp, texts)
    assert max(layer for _, _, layers in expected for layer in layers) == 2
    nlp.to_disk(tmp_path / "short")
    loaded = spacy.load(tmp_path / "short")
    assert loaded.get_pipe("earlyexit_ner").encoder.n_layers == 2
    assert _predictions(loaded, texts) == expected


@pytest.mark.parametrize("n_layers", [0, -1, 2.5, True])
def test_n_layers_must_be_a_positive_whole_number(tiny_model_dir, n_layers):
    with pytest.raises(ValueError, match="n_layers"):
        spacy.blank("en").add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, n_layers=n_layers))


def test_n_layers_beyond_the_encoder_is_a_clear_error(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, n_layers=4))
    with pytest.raises(ValueError, match="has 3 layers"):
        nlp.initialize(lambda: ner_examples(nlp))


@pytest.mark.issue(21)
def test_tagger_keeps_existing_tags_unless_overwrite(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    tagger = nlp.add_pipe("earlyexit_tagger", config=model_config(tiny_model_dir))
    assert tagger.overwrite is False and nlp.config["components"]["earlyexit_tagger"]["overwrite"] is False
    train(nlp, tag_examples(nlp), steps=30)
    text = TAG_DATA[0][0]
    doc = nlp.make_doc(text)
    doc[0].tag_ = "XX"
    doc = tagger(doc)
    assert doc[0].tag_ == "XX" and all(t.tag_ for t in doc)
    tagger.overwrite = True
    doc = nlp.make_doc(text)
    doc[0].tag_ = "XX"
    assert tagger(doc)[0].tag_ != "XX"
