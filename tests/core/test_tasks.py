"""Several tasks on one encoder (issue 32): each task's slice of the exit
classifiers, its own rule and exit layer, a word running while any task
needs it, one shared cost."""

import pytest
import torch

from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.objective import SelfSampling
from spacy_earlyexit.core.policies import FixedDepth, FullDepth, TokenPatience, TokenWindowExit
from spacy_earlyexit.core.tasks import TaskPolicies, TaskRules

from ..conftest import random_batch, tiny_backbone

SIZES = (5, 3)


def two_task_encoder(seed: int = 0) -> MultiExitEncoder:
    torch.manual_seed(seed)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=0).eval()
    for n in SIZES:
        encoder.add_labels(n)
    with torch.no_grad():  # confident enough that some words leave early, not all
        for head in encoder.heads:
            head.weight.mul_(12.0)
    return encoder


def test_one_task_over_the_whole_output_is_the_single_task_loop():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=4).eval()
    batch = random_batch([7, 3, 12, 5], seed=3)
    for policy in (FullDepth(), FixedDepth(2), TokenWindowExit(0.6, 1), TokenPatience(1)):
        single = encoder.predict(batch, policy)
        (task,) = encoder.predict_tasks(batch, TaskRules.single(4, policy))
        for field in ("labels", "exit_layers", "uncertainty", "cost", "full_cost", "probs"):
            assert torch.equal(getattr(single, field), getattr(task, field)), (policy, field)


def test_added_labels_keep_the_earlier_outputs():
    encoder = two_task_encoder()
    first = [head.weight[:5].clone() for head in encoder.heads]
    part = encoder.add_labels(2)
    assert part == slice(8, 10) and encoder.n_labels == 10
    assert all(torch.equal(head.weight[:5], w) for head, w in zip(encoder.heads, first))
    assert encoder.layer_cost.n_labels == 10


def test_an_encoder_without_labels_says_so():
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=0).eval()
    with pytest.raises(ValueError, match="no labels yet"):
        encoder.predict(random_batch([3]))
    with pytest.raises(ValueError, match="whole number"):
        encoder.add_labels(0)


def test_each_task_takes_its_labels_at_its_own_exit():
    encoder = two_task_encoder()
    batch = random_batch([9, 4, 6], seed=1)
    rules = TaskRules(SIZES, [TokenWindowExit(0.7, 1), FullDepth()])
    ner, tags = encoder.predict_tasks(batch, rules)
    # the second task runs every word to the last layer: no word is ever
    # frozen, so the first task's exits read the full-depth forward's exits
    logits = encoder(batch)  # [L, n_words, 8]
    words = batch.word_mask
    layers = ner.exit_layers[words]
    assert int(layers.min()) < encoder.n_layers  # some words leave early
    at_exit = logits[layers - 1, torch.arange(len(layers))][:, :5]
    assert torch.equal(ner.labels[words], at_exit.argmax(-1))
    assert torch.allclose(ner.probs[words], at_exit.softmax(-1), atol=1e-5)
    assert torch.equal(tags.labels[words], logits[-1][:, 5:].argmax(-1))
    assert bool((tags.exit_layers[words] == encoder.n_layers).all())
    assert ner.probs.shape[-1] == 5 and tags.probs.shape[-1] == 3
    # one pass: both tasks report its cost, a full pass's (a word ran every layer)
    assert torch.equal(ner.cost, tags.cost)
    assert torch.allclose(ner.cost, encoder.batch_cost(batch, tags.exit_layers, every_exit=True)[0])


def test_a_word_runs_while_any_task_needs_it():
    encoder = two_task_encoder()
    batch = random_batch([8, 5, 11], seed=2)
    rules = TaskRules(SIZES, [FixedDepth(1), TokenWindowExit(0.5, 0)])
    first, second = encoder.predict_tasks(batch, rules)
    words = batch.word_mask
    assert bool((first.exit_layers[words] == 1).all())
    alone = encoder.predict_tasks(batch, TaskRules(SIZES, [FixedDepth(1), FixedDepth(1)]))[0]
    deepest = torch.maximum(first.exit_layers, second.exit_layers)
    cost, _ = encoder.batch_cost(batch, deepest, every_exit=True)
    assert torch.allclose(first.cost, cost)
    assert bool((second.cost >= alone.cost).all())


def test_tasks_are_batch_invariant():
    encoder = two_task_encoder()
    lengths = [int(n) for n in torch.randint(1, 20, (12,), generator=torch.Generator().manual_seed(4))]
    big = random_batch(lengths, seed=5)
    rules = TaskRules(SIZES, [TokenWindowExit(0.6, 1), TokenPatience(1)])
    together = encoder.predict_tasks(big, rules)
    for b in range(0, len(lengths), 3):
        alone = random_batch([lengths[b]], seed=5)
        alone.input_ids[0] = big.input_ids[b, : alone.input_ids.shape[1]]
        single = encoder.predict_tasks(alone, rules)
        n = lengths[b]
        for t in range(2):
            assert torch.equal(single[t].labels[0, :n], together[t].labels[b, :n])
            assert torch.equal(single[t].exit_layers[0, :n], together[t].exit_layers[b, :n])
        assert float(single[0].cost[0]) == pytest.approx(float(together[0].cost[b]))


def test_rules_must_cover_the_classifiers():
    encoder = two_task_encoder()
    with pytest.raises(ValueError, match="cover 5 labels"):
        encoder.predict_tasks(random_batch([3]), TaskRules([5], [FullDepth()]))
    with pytest.raises(ValueError, match="one policy per task"):
        TaskRules([5, 3], [FullDepth()])
    with pytest.raises(ValueError, match="single exit policy"):
        TaskRules([5], [TaskPolicies({"a": FullDepth()})])


def test_task_policies_name_a_rule_per_task():
    policy = TaskPolicies({"ner": TokenWindowExit(0.1, 2), "tagger": FixedDepth(2)})
    assert policy.for_task("ner").threshold == 0.1
    assert isinstance(policy.for_task("other"), FullDepth)
    assert policy.needs_every_exit and policy.last_layer(6) == 6
    assert policy.params()["tasks"]["tagger"] == {"policy": "fixed_depth", "layer": 2}
    with pytest.raises(ValueError, match="does not fit|exceeds"):
        TaskPolicies({"ner": FixedDepth(9)}).check_depth(6)
    with pytest.raises(ValueError, match="single exit policy"):
        TaskPolicies({"ner": "token_window"})


def test_self_sampling_samples_each_tasks_exits():
    encoder = two_task_encoder()
    encoder.train()
    batch = random_batch([6, 9], seed=6)
    sampled = SelfSampling(min_threshold=0.3, max_threshold=0.9, full_depth_share=0.0).sample(
        torch.zeros(batch.word_mask.shape, dtype=torch.long), batch.word_mask, torch.Generator().manual_seed(0)
    )
    logits = encoder(batch, sampled_exits=sampled, task_sizes=list(SIZES))
    assert logits.shape[-1] == 8
    per_task = sampled.task_exit_layers
    assert per_task.shape == (2, *batch.word_mask.shape)
    assert torch.equal(sampled.exit_layers, per_task.amax(0))
    logits.sum().backward()
