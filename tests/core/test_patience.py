"""Token patience: stability counts, the rule on hand-made labels, and the
encoder's loop against a simulation from the per-layer labels."""

import pytest
import torch
from transformers import BertConfig, BertModel

from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.policies import ExitPolicy, TokenPatience, make_policy, stability_counts

from ..conftest import assert_batch_invariant, random_batch

N_LAYERS = 6


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=24,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    model = MultiExitEncoder(BertModel(config), n_labels=3).eval()
    # classifiers that share a component, so that predictions settle at different layers
    with torch.no_grad():
        shared = model.heads[-1].weight.clone()
        for head in model.heads:
            head.weight.mul_(0.5).add_(shared)
    return model


def simulate(policy, labels, words):
    """Exit layers [B, W] (1-based) of `policy` on labels [B, L, W], layer by
    layer as the encoder's loop runs: the words that left no longer count as
    active."""
    B, L, W = labels.shape
    stable = stability_counts(labels)
    exits = torch.full((B, W), L, dtype=torch.long)
    active = words.clone()
    unc = torch.zeros(B, W)
    for index in range(L - 1):
        leaving = active & policy.exits(index, L, unc, active, words, stable=stable[:, index])
        exits[leaving] = index + 1
        active = active & ~leaving
    return exits


def per_layer_labels(logits, words):
    """The encoder's all-exits logits [L, n_words, C] as labels [B, L, W]."""
    labels = torch.zeros(logits.shape[0], *words.shape, dtype=torch.long)
    labels[:, words] = logits.argmax(-1)
    return labels.transpose(0, 1)


# -- stability counts ---------------------------------------------------------
def test_stability_counts_by_hand():
    labels = torch.tensor([[0, 1, 2], [0, 2, 2], [0, 2, 1], [1, 2, 1], [1, 2, 1]])  # [L=5, W=3]
    assert stability_counts(labels).tolist() == [[0, 0, 0], [1, 0, 1], [2, 1, 0], [0, 2, 1], [1, 3, 2]]
    assert stability_counts(labels).dtype == torch.long


def test_stability_counts_keeps_leading_dimensions():
    a = torch.tensor([[3, 4], [3, 4], [3, 0]])
    b = torch.tensor([[1, 1], [2, 1], [2, 1]])
    both = stability_counts(torch.stack([a, b]))  # [2, L=3, W=2]
    assert both.shape == (2, 3, 2)
    assert torch.equal(both[0], stability_counts(a))
    assert torch.equal(both[1], stability_counts(b))
    assert stability_counts(torch.tensor([[5, 6]])).tolist() == [[0, 0]]  # one layer
    with pytest.raises(ValueError, match="L, W"):
        stability_counts(torch.tensor([1, 2]))


# -- the rule on hand-made labels -------------------------------------------------
def test_patience_one_and_two_by_hand():
    labels = torch.tensor(
        [
            [0, 1, 1, 2, 2],  # A B B C C
            [0, 0, 0, 0, 0],  # A A A A A
            [0, 1, 0, 1, 0],  # never twice in a row
            [2, 1, 0, 0, 0],  # A B C C C
        ]
    ).T[None]  # [B=1, L=5, W=4]
    words = torch.ones(1, 4, dtype=torch.bool)
    assert simulate(TokenPatience(1), labels, words).tolist() == [[3, 2, 5, 4]]
    assert simulate(TokenPatience(2), labels, words).tolist() == [[5, 3, 5, 5]]
    assert simulate(TokenPatience(4), labels, words).tolist() == [[5, 5, 5, 5]]  # last layer anyway


def test_patience_exits_on_given_counts():
    policy = TokenPatience(patience=2)
    stable = torch.tensor([[0, 1, 2, 3, 2], [2, 2, 0, 0, 0]])
    words = torch.tensor([[True] * 5, [True, True, False, False, False]])
    active = words.clone()
    active[0, 3] = False  # already left
    assert policy.exits(2, 6, torch.zeros(2, 5), active, words, stable=stable).tolist() == [
        [False, False, True, False, True],
        [True, True, False, False, False],
    ]
    with pytest.raises(ValueError, match="stable"):
        policy.exits(2, 6, torch.zeros(2, 5), active, words)


def test_window_waits_for_running_neighbours_only():
    policy = TokenPatience(patience=1, window=1)
    stable = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    words = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    leaving = policy.exits(1, 4, torch.zeros(2, 6), words.clone(), words, stable=stable)
    # word 2 of the first sequence holds back its neighbours; padding holds back nobody
    assert leaving.tolist() == [[True, False, False, False, True, True], [True, True, True, False, False, False]]
    active = words.clone()
    active[0, 2] = False  # once it has left, it counts as stable
    leaving = policy.exits(1, 4, torch.zeros(2, 6), active, words, stable=stable)
    assert leaving[0].tolist() == [True, True, False, True, True, True]
    wide = TokenPatience(patience=1, window=100)  # wider than the sequence: the least stable word decides
    assert not wide.exits(1, 4, torch.zeros(2, 6), words.clone(), words, stable=stable)[0].any()


def test_window_simulation_layer_by_layer():
    # word 0 leaves after layer 2 (index 1); its label changes later, which no longer matters
    labels = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 1]]).T[None]  # [B=1, L=4, W=2]
    words = torch.ones(1, 2, dtype=torch.bool)
    assert simulate(TokenPatience(1, window=1), labels, words).tolist() == [[4, 4]]  # word 1 holds word 0 back
    labels = torch.tensor([[0, 0, 1, 2], [0, 0, 2, 2]]).T[None]
    assert simulate(TokenPatience(1, window=1), labels, words).tolist() == [[2, 2]]
    labels = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 2]]).T[None]
    assert simulate(TokenPatience(1, window=1), labels, words).tolist() == [[4, 4]]
    labels = torch.tensor([[0, 0, 0, 2], [0, 1, 1, 2]]).T[None]
    assert simulate(TokenPatience(1, window=1), labels, words).tolist() == [[3, 3]]
    # word 0 leaves after layer 2; at layer 3 its label changed but it no longer holds word 1 back
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]]).T[None]  # [B=1, L=4, W=3]
    words = torch.ones(1, 3, dtype=torch.bool)
    assert simulate(TokenPatience(1, window=1), labels, words).tolist() == [[2, 3, 3]]


# -- the encoder's loop -----------------------------------------------------------
@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("patience", [1, 2])
def test_encoder_exits_match_the_simulation(encoder, patience, window):
    batch = random_batch([9, 4, 1, 13, 6, 2], seed=11)
    words = batch.word_mask
    policy = TokenPatience(patience, window=window)
    out = encoder.predict(batch, policy)
    layers = out.exit_layers[words]
    assert bool(((layers >= patience + 1) | (layers == N_LAYERS)).all())
    assert bool((layers < N_LAYERS).any()) and bool((layers == N_LAYERS).any())  # a real test

    with torch.no_grad():
        full = per_layer_labels(encoder(batch), words)  # every word through every layer
        frozen = per_layer_labels(encoder(batch, word_exit_layers=out.exit_layers), words)  # as inference ran
    # inference reads the labels the frozen forward computes: the rule on them gives its exits exactly
    assert torch.equal(simulate(policy, frozen, words)[words], layers)
    exit_rows = torch.arange(len(layers))
    read = frozen.transpose(1, 2)[words][exit_rows, layers - 1]
    assert torch.equal(read, out.labels[words])
    # until the first word of a sequence leaves, every state is the full-depth one
    expected = simulate(policy, full, words)
    big = N_LAYERS + 1
    first = torch.where(words, out.exit_layers, big).amin(1)
    assert torch.equal(first, torch.where(words, expected, big).amin(1))
    at_first = words & (out.exit_layers == first[:, None])
    assert torch.equal(at_first, words & (expected == first[:, None]))


def test_one_word_sequences_follow_the_full_depth_labels(encoder):
    batch = random_batch([1] * 12, seed=12)
    with torch.no_grad():
        labels = per_layer_labels(encoder(batch), batch.word_mask)
    for patience in (1, 2, 3):
        policy = TokenPatience(patience)
        out = encoder.predict(batch, policy)
        assert torch.equal(out.exit_layers, simulate(policy, labels, batch.word_mask))


def test_patience_batch_invariance(encoder):
    for policy in (TokenPatience(1), TokenPatience(2, window=1)):
        assert_batch_invariant(encoder, policy, 30, 6)


class RecordingPatience(TokenPatience):
    """Token patience that keeps what the loop passed it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def exits(self, index, n_layers, uncertainty, active, words, stable=None):
        self.seen.append((index, active.clone(), stable.clone()))
        return super().exits(index, n_layers, uncertainty, active, words, stable=stable)


def test_loop_passes_the_stability_counts_of_the_running_words(encoder):
    batch = random_batch([7, 2, 11], seed=13)
    policy = RecordingPatience(1, window=1)
    out = encoder.predict(batch, policy)
    with torch.no_grad():
        frozen = per_layer_labels(encoder(batch, word_exit_layers=out.exit_layers), batch.word_mask)
    counts = stability_counts(frozen)
    assert [index for index, _, _ in policy.seen] == list(range(len(policy.seen)))
    for index, active, stable in policy.seen:
        # finished sequences are dropped: compare the running sequences only
        rows = (out.exit_layers > index).logical_and(batch.word_mask).any(1).nonzero(as_tuple=True)[0]
        W = active.shape[1]
        expected = counts[rows, index, :W]
        assert torch.equal(stable[active], expected[active])
        assert torch.equal(active, batch.word_mask[rows, :W] & (out.exit_layers[rows, :W] > index))


class PlainPolicy(ExitPolicy):
    """A policy written before `tracks_stability`: no `stable` argument."""

    needs_every_exit = True

    def exits(self, index, n_layers, uncertainty, active, words):
        return active & (index == 1)


def test_policies_without_stability_are_called_as_before(encoder):
    batch = random_batch([5, 3], seed=14)
    out = encoder.predict(batch, PlainPolicy())
    assert bool((out.exit_layers[batch.word_mask] == 2).all())


def test_make_and_check_token_patience():
    policy = make_policy("token_patience", patience=2)
    assert isinstance(policy, TokenPatience)
    assert policy.params() == {"patience": 2, "window": 0}
    assert make_policy("token_patience", patience=3.0, window=2.0).params() == {"patience": 3, "window": 2}
    assert repr(TokenPatience(1, window=1)) == "TokenPatience(patience=1, window=1)"
    assert policy.needs_every_exit and policy.tracks_stability and not ExitPolicy.tracks_stability
    for bad in (0, -1, 1.5, True, "2", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="patience"):
            TokenPatience(bad)
    for bad in (-1, 0.5, False, "1", None):
        with pytest.raises(ValueError, match="window"):
            TokenPatience(2, window=bad)
