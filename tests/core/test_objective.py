"""The training objective: masked layer-weighted loss, sampled exits, self-sampling forward."""

import pytest
import torch

from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.objective import SampledExits, SelfSampling, exit_loss, layer_loss_weights

from ..conftest import random_batch, tiny_backbone


def test_exit_loss_gradient_matches_autograd_and_skips_exited_words():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4, requires_grad=True)
    gold = torch.tensor([0, 3, -1, 2, 1])
    weights = torch.tensor(layer_loss_weights(3))
    exits = torch.tensor([1, 3, 3, 2, 3])
    loss, grad = exit_loss(logits.detach(), gold, weights, exits)
    reference = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 4), gold.repeat(3), reduction="none", ignore_index=-1
    ).reshape(3, 5)
    counted = (torch.arange(1, 4)[:, None] <= exits[None, :]).float()
    expected = (weights[:, None] * reference * counted).sum() / 4  # 4 words with known gold
    expected.backward()
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert torch.allclose(grad, logits.grad, atol=1e-6)
    assert not grad[1:, 0].any() and not grad[2, 3].any()  # exited words: no loss after their exit
    assert not grad[:, 2].any()  # unknown gold


def test_exit_loss_without_exits_is_the_stage_one_loss():
    logits = torch.randn(2, 3, 4)
    gold = torch.tensor([1, 0, 2])
    weights = torch.tensor([0.25, 0.75])
    with_exits, _ = exit_loss(logits, gold, weights, torch.tensor([2, 2, 2]))
    without, _ = exit_loss(logits, gold, weights)
    assert float(with_exits) == pytest.approx(float(without))


def test_self_sampling_sandwich_per_sentence():
    sampling = SelfSampling(aggressive_share=0.2, full_depth_share=0.4)
    groups = torch.arange(50).repeat_interleave(3).reshape(10, 15)  # 50 sentences of 3 words
    words = torch.ones(10, 15, dtype=torch.bool)
    sampled = sampling.sample(groups, words, torch.Generator().manual_seed(0))
    per_sentence = sampled.thresholds.reshape(-1, 3)
    assert bool((per_sentence == per_sentence[:, :1]).all())  # one setting per sentence
    thresholds = per_sentence[:, 0]
    assert int((thresholds == 0).sum()) == 20  # full depth
    assert int((thresholds == 0.25).sum()) >= 10  # most aggressive
    assert bool(((thresholds == 0) | ((thresholds >= 0.01) & (thresholds <= 0.25))).all())
    assert bool(((sampled.half_windows >= 2) & (sampled.half_windows <= 7)).all())


def test_self_sampling_rejects_bad_settings():
    with pytest.raises(ValueError, match="odd"):
        SelfSampling(min_window=4)
    with pytest.raises(ValueError, match="add up"):
        SelfSampling(aggressive_share=0.7, full_depth_share=0.5)


def test_sampled_exits_double_the_threshold_in_the_upper_half():
    probs = torch.full((1, 4, 2), 0.5)  # entropy 1 everywhere
    probs[0, :, 0], probs[0, :, 1] = 0.9, 0.1  # normalized entropy ~0.47
    rule = SampledExits(thresholds=torch.full((1, 4), 0.3), half_windows=torch.zeros(1, 4, dtype=torch.long))
    active = words = torch.ones(1, 4, dtype=torch.bool)
    assert not rule.exits(0, 4, probs, active, words).any()  # 0.47 >= 0.3 (lower half)
    assert rule.exits(2, 4, probs, active, words).all()  # 0.47 < 0.6 (upper half)


def test_self_sampled_forward_freezes_words_as_recorded():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3).eval()
    batch = random_batch([6, 4])
    sampled = SampledExits(thresholds=torch.full((2, 6), 0.9), half_windows=torch.zeros(2, 6, dtype=torch.long))
    sampled.thresholds[1] = 0.0  # the second sequence runs to full depth
    with torch.no_grad():
        logits = encoder(batch, sampled_exits=sampled)
        exits = sampled.exit_layers
        assert bool((exits[1][batch.word_mask[1]] == 3).all())
        assert bool((exits[0] < 3).any())  # random heads are uncertain, but below 0.9 somewhere
        # the same exits given explicitly reproduce the same logits
        replay = encoder(batch, word_exit_layers=exits)
    assert torch.allclose(logits, replay, atol=1e-6)


@pytest.mark.issue(32)
def test_task_exit_loss_weighs_each_tasks_loss_on_its_slice_at_its_own_exits():
    from spacy_earlyexit.core.objective import TaskGold, exit_loss, task_exit_loss

    torch.manual_seed(0)
    L, N = 3, 6
    logits = torch.randn(L, N, 7)
    weights = torch.tensor([0.2, 0.3, 0.5])
    ner = TaskGold(torch.tensor([0, 1, 2, -1, 0, 1]), slice(0, 3), 2.0, 0)
    tags = TaskGold(torch.tensor([3, -1, 0, 1, 2, 3]), slice(3, 7), 1.0, 1)
    layers = torch.tensor([[1, 2, 3, 3, 1, 2], [3, 3, 1, 2, 2, 1]])  # [T, N]: each task's own exits
    expected = 2.0 * exit_loss(logits[..., :3], ner.gold, weights, layers[0])[0]
    expected = expected + exit_loss(logits[..., 3:], tags.gold, weights, layers[1])[0]
    assert float(task_exit_loss(logits, [ner, tags], weights, layers)) == pytest.approx(float(expected))
    # one task over every output is the plain exit loss
    alone = TaskGold(torch.tensor([0, 6, 2, -1, 5, 1]))
    plain = exit_loss(logits, alone.gold, weights, layers[0])[0]
    assert float(task_exit_loss(logits, [alone], weights, layers[0])) == pytest.approx(float(plain))
