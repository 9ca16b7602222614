"""The optimizer's `use_averages` with the early-exit components: the fused
AdamW step keeps a moving average of every weight, and spaCy's
`nlp.use_params(optimizer.averages)` (which its training loop wraps around
every evaluation and save) swaps the averages in and the trained weights back."""

import io
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from thinc.api import Adam

from ..conftest import model_config, ner_corpus, ner_examples

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _pipeline(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    examples = ner_examples(nlp)
    nlp.initialize(lambda: examples)
    return nlp, examples


def _params(nlp):
    encoder = nlp.get_pipe("earlyexit_ner").encoder
    return {name: p.detach().clone() for name, p in encoder.named_parameters() if p.requires_grad}


def _logits(nlp, docs):
    (scores, _) = nlp.get_pipe("earlyexit_ner").model.predict(docs)
    return numpy.concatenate([s.ravel() for s in scores])


def test_averages_follow_thincs_decay_and_cover_every_weight(tiny_model_dir):
    nlp, examples = _pipeline(tiny_model_dir)
    shim = nlp.get_pipe("earlyexit_ner").model.shims[0]
    optimizer = Adam(0.01, use_averages=True)
    snapshots = []
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
        snapshots.append(_params(nlp))
    assert shim._torch_optimizer is not None  # the fused step ran, not Thinc's per-array update
    assert set(optimizer.averages) == {f"pytorch_{shim.id}_{name}" for name in snapshots[0]}
    # started from the weights after the first step, then Thinc's decay (1 + t) / (10 + t)
    for name, first in snapshots[0].items():
        expected = first
        for t, weights in ((2, snapshots[1][name]), (3, snapshots[2][name])):
            decay = (1.0 + t) / (10.0 + t)
            expected = decay * expected + (1.0 - decay) * weights
        average = optimizer.averages[f"pytorch_{shim.id}_{name}"]
        assert torch.allclose(average, expected, atol=1e-6), name
    moved = [name for name in snapshots[0] if not torch.equal(snapshots[0][name], snapshots[2][name])]
    assert moved  # training moved the weights, so the averages differ from them
    assert any(not torch.allclose(optimizer.averages[f"pytorch_{shim.id}_{n}"], snapshots[2][n]) for n in moved)


def test_use_params_swaps_the_averages_in_and_the_weights_back(tiny_model_dir):
    nlp, examples = _pipeline(tiny_model_dir)
    shim = nlp.get_pipe("earlyexit_ner").model.shims[0]
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(4):
        nlp.update(examples, sgd=optimizer)
    docs = [nlp.make_doc(eg.reference.text) for eg in examples]
    trained, trained_logits = _params(nlp), _logits(nlp, docs)
    with nlp.use_params(optimizer.averages):
        inside = _params(nlp)
        inside_logits = _logits(nlp, docs)
        for name, value in inside.items():
            assert torch.equal(value, optimizer.averages[f"pytorch_{shim.id}_{name}"])
    assert all(torch.equal(trained[name], value) for name, value in _params(nlp).items())
    assert numpy.array_equal(_logits(nlp, docs), trained_logits)
    assert not numpy.allclose(inside_logits, trained_logits)
    # the averaged logits are those of the averaged weights (no stale packed copy)
    encoder = nlp.get_pipe("earlyexit_ner").encoder
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name in inside:
                p.copy_(inside[name])
    encoder.forget_packed_weights()
    assert numpy.allclose(_logits(nlp, docs), inside_logits, atol=1e-6)


def test_use_params_ignores_other_keys_and_refuses_wrong_shapes(tiny_model_dir):
    nlp, examples = _pipeline(tiny_model_dir)
    shim = nlp.get_pipe("earlyexit_ner").model.shims[0]
    before = _params(nlp)
    with nlp.use_params({(123, "W"): numpy.zeros(3, dtype="float32"), "pytorch_999_x": numpy.zeros(2)}):
        assert all(torch.equal(before[name], value) for name, value in _params(nlp).items())
    name = next(iter(before))
    with pytest.raises(ValueError, match="shape"):
        with shim.use_params({f"pytorch_{shim.id}_{name}": numpy.zeros(1, dtype="float32")}):
            pass
    assert all(torch.equal(before[n], value) for n, value in _params(nlp).items())


def test_without_averages_nothing_is_averaged(tiny_model_dir):
    nlp, examples = _pipeline(tiny_model_dir)
    shim = nlp.get_pipe("earlyexit_ner").model.shims[0]
    optimizer = Adam(0.01, use_averages=False)
    nlp.update(examples, sgd=optimizer)
    assert optimizer.averages is None and shim._averages == {}


def test_spacys_training_loop_saves_the_averaged_weights(tiny_model_dir, tmp_path):
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train as train_loop

    blank = spacy.blank("en")
    corpus = ner_corpus(blank, tmp_path / "train.spacy", copies=6)
    overrides = {
        "paths.train": corpus,
        "paths.dev": corpus,
        "components.earlyexit_ner.model.name": str(tiny_model_dir),
        "components.earlyexit_ner.model.max_wordpieces": 64,
        "components.earlyexit_ner.training_precision": "fp32",
        "training.max_steps.epochs": 2,
        "training.max_steps.min_steps": 0,
        "training.optimizer.use_averages": True,
        "training.optimizer.learn_rate.initial_rate": 0.01,
    }
    config = spacy.util.load_config(CONFIGS / "ner.cfg", overrides=overrides, interpolate=False)
    nlp = init_nlp(config)
    before = _params(nlp)
    (tmp_path / "out").mkdir()
    trained, last = train_loop(nlp, tmp_path / "out", stdout=io.StringIO(), stderr=io.StringIO())
    saved = _params(spacy.load(last))
    weights = _params(trained)  # the loop returns the trained weights, and saved their averages
    assert set(saved) == set(weights)
    assert any(not torch.equal(before[name], weights[name]) for name in weights)
    assert any(not torch.allclose(saved[name], weights[name]) for name in weights)
