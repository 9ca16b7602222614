"""Exit policies on the encoder: equivalence, monotone cost, windows, invariance."""

import pytest
import torch

from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.policies import (
    FixedDepth,
    FullDepth,
    SentenceExit,
    TokenPatience,
    TokenWindowExit,
    make_policy,
    max_prob_uncertainty,
    normalized_entropy,
)

from ..conftest import assert_batch_invariant, random_batch, tiny_backbone

POLICIES = [
    lambda t: TokenWindowExit(t, window=2),
    lambda t: TokenWindowExit(t, window=0, uncertainty="max_prob"),
    lambda t: SentenceExit(t),
]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    model = MultiExitEncoder(tiny_backbone("bert"), n_labels=3).eval()
    # sharpen the classifiers so that some words are confident early
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(40)
    return model


def test_uncertainty_measures():
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert normalized_entropy(probs).tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    assert max_prob_uncertainty(probs).tolist() == pytest.approx([0.0, 2 / 3])
    assert normalized_entropy(torch.ones(2, 1)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("make", POLICIES)
def test_threshold_zero_equals_full_depth(encoder, make):
    batch = random_batch([9, 4, 1, 6], seed=1)
    full = encoder.predict(batch, FullDepth())
    zero = encoder.predict(batch, make(0.0))
    assert torch.equal(full.labels[batch.word_mask], zero.labels[batch.word_mask])
    assert bool((zero.exit_layers[batch.word_mask] == encoder.n_layers).all())


@pytest.mark.parametrize("make", POLICIES)
def test_cost_falls_as_threshold_rises(encoder, make):
    batch = random_batch([12, 7, 3, 9, 1], seed=2)
    costs = [float(encoder.predict(batch, make(t)).cost.sum()) for t in (0.0, 0.05, 0.2, 0.5, 0.9, 1.01)]
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    assert costs[-1] < costs[0]
    out = encoder.predict(batch, make(1.01))  # everything is below 1.01: all leave at layer 1
    assert bool((out.exit_layers[batch.word_mask] == 1).all())


@pytest.mark.parametrize(
    "make", POLICIES + [lambda t: FullDepth(), lambda t: FixedDepth(2), lambda t: TokenPatience(1, window=1)]
)
def test_exit_layers_stay_within_range(encoder, make):
    batch = random_batch([8, 1, 5], seed=3)
    out = encoder.predict(batch, make(0.3))
    layers = out.exit_layers[batch.word_mask]
    assert bool(((layers >= 1) & (layers <= encoder.n_layers)).all())
    assert bool((out.cost <= out.full_cost * 1.5).all())


def test_window_edges_one_word_and_window_wider_than_sequence(encoder):
    batch = random_batch([1, 3], seed=4)
    for window in (0, 1, 5, 100):
        out = encoder.predict(batch, TokenWindowExit(0.4, window=window))
        assert bool((out.exit_layers[batch.word_mask] >= 1).all())
    # a window wider than the sequence makes every word wait for the most uncertain one
    wide = encoder.predict(batch, TokenWindowExit(0.4, window=100))
    sent = encoder.predict(batch, SentenceExit(0.4))
    assert torch.equal(wide.exit_layers[batch.word_mask], sent.exit_layers[batch.word_mask])


def test_token_window_max_pooling_is_per_sequence():
    policy = TokenWindowExit(0.5, window=1)
    unc = torch.tensor([[0.1, 0.1, 0.9, 0.1, 0.1], [0.1, 0.1, 0.0, 0.0, 0.0]])
    words = torch.tensor([[True] * 5, [True, True, False, False, False]])
    leaving = policy.exits(0, 3, unc, words.clone(), words)
    assert leaving.tolist() == [[True, False, False, False, True], [True, True, False, False, False]]


def test_per_layer_thresholds(encoder):
    batch = random_batch([6, 6], seed=5)
    never_early = TokenWindowExit(0.0, layer_thresholds=[0.0, 0.0, 0.0])
    assert bool((encoder.predict(batch, never_early).exit_layers[batch.word_mask] == 3).all())
    only_second = TokenWindowExit(0.0, layer_thresholds=[0.0, 2.0, 0.0])
    assert bool((encoder.predict(batch, only_second).exit_layers[batch.word_mask] == 2).all())
    with pytest.raises(ValueError, match="layer_thresholds"):
        encoder.predict(batch, TokenWindowExit(0.1, layer_thresholds=[0.1]))


def test_batch_invariance_on_the_encoder(encoder):
    assert_batch_invariant(encoder, TokenWindowExit(0.3, window=1), 40, 7)


def test_make_policy_and_bad_parameters():
    assert isinstance(make_policy("token_window", threshold=0.2, window=3), TokenWindowExit)
    assert make_policy("token_patience", patience=2).params() == {"patience": 2, "window": 0}
    assert make_policy("sentence", threshold=0.1).params() == {"threshold": 0.1, "uncertainty": "entropy"}
    with pytest.raises(ValueError, match="Unknown exit policy"):
        make_policy("random")
    with pytest.raises(ValueError, match="uncertainty"):
        TokenWindowExit(0.1, uncertainty="variance")
    with pytest.raises(ValueError, match="threshold"):
        SentenceExit(-0.1)
    with pytest.raises(ValueError, match="exceeds"):
        FixedDepth(9).last_layer(3)
    with pytest.raises(ValueError, match="patience"):
        TokenPatience(0)
    with pytest.raises(ValueError, match="window"):
        TokenPatience(1, window=-1)
