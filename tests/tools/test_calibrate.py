"""Calibration's trace and simulation, tested directly against inference
(they share its batching and its cost count), and the tagger's `overwrite`."""

import pytest
import spacy
import torch

from spacy_earlyexit.core.policies import FixedDepth, TokenWindowExit
from spacy_earlyexit.tools.calibrate import Candidate, simulate, trace
from spacy_earlyexit.tools.evaluation import OperatingPoint, fresh_copy, measure

from ..conftest import TAG_DATA, model_config, ner_examples, tag_examples, train


@pytest.fixture(scope="module")
def ner(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "precision": "fp32"})
    return train(nlp, ner_examples(nlp))


def test_trace_holds_what_full_depth_inference_predicts(ner):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    tr = trace(ner, component, examples)
    last = tr.labels[:, -1]
    for d, eg in enumerate(examples):
        pred = component.predict([fresh_copy(eg.predicted)])[0]
        traced = last[tr.owner_sequence[d], tr.owner_word[d]]
        assert traced.tolist() == pred.label_ids.tolist()


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_simulated_cost_of_a_fixed_depth_is_what_inference_spends(ner, layer):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    _, simulated = simulate(trace(ner, component, examples), component, Candidate(layer=layer))
    real = measure(ner, "earlyexit_ner", examples, OperatingPoint("fixed_depth", {"layer": layer}), batch_size=8)
    assert simulated == pytest.approx(real.flops_speedup, rel=1e-9)


def test_simulated_exits_follow_the_token_window_rule(ner):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    tr = trace(ner, component, examples)
    candidate = Candidate(window=1, threshold=0.3, upper_factor=2.0)
    exits, speedup = simulate(tr, component, candidate)
    assert speedup >= 1.0
    L = tr.labels.shape[1]
    policy = candidate.policy(L)
    assert policy.layer_thresholds == [0.3] * (L // 2) + [0.6] * (L - L // 2)
    for s in range(exits.shape[0]):
        words = tr.word_mask[s]
        for index in range(L - 1):
            below = policy.exits(index, L, tr.uncertainty[s : s + 1, index], words[None], words[None])[0]
            leaving = (exits[s] == index + 1) & words
            # a word leaves at the first layer where its window is certain
            assert torch.equal(leaving, below & words & (exits[s] > index))


def test_cost_counts_every_layer_once_per_running_word(ner):
    encoder = ner.get_pipe("earlyexit_ner").encoder
    cost = encoder.layer_cost
    n = torch.tensor([6.0])
    special = torch.tensor([2.0])
    pieces = torch.tensor([[1.0, 2.0, 1.0]])
    exits = torch.tensor([[1, 3, 2]])
    got = cost.of_exits(n, special, pieces, exits, 3, every_exit=True)
    expected = sum(
        cost.layer(n, special + torch.tensor([q]), 1.0) + cost.classifier(torch.tensor([a]))
        for q, a in ((4.0, 3.0), (3.0, 2.0), (2.0, 1.0))
    )
    assert got.item() == pytest.approx(expected.item())
    once = cost.of_exits(n, special, pieces, torch.full((1, 3), 3), 3, every_exit=False)
    assert once.item() == pytest.approx(cost.full(n, torch.tensor([3.0]), 3).item())


def test_predict_reports_the_cost_of_its_own_exits(ner):
    component = ner.get_pipe("earlyexit_ner")
    doc = ner.make_doc("Angela Merkel visited Paris on Tuesday and Berlin on Friday .")
    for policy in (FixedDepth(2), TokenWindowExit(0.3, 1)):
        with component.using(policy):
            pred = component.predict([doc])[0]
        assert 0 < pred.cost <= pred.full_cost


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
