"""Adaptive width on a shared encoder (issue 32): heads and neurons ranked by
all tasks' loss, width distillation per task, self-sampling across width
and exit for every task (tiny four-head encoders)."""

import pytest
import spacy
import torch
from spacy.training import Example

from spacy_earlyexit.core.objective import TaskGold, distillation_loss
from spacy_earlyexit.pipeline.model import training_batch

from ..conftest import (
    LISTENER,
    TAG_DATA,
    make_tiny_bert_dir,
    model_config,
    ner_tagger_examples,
    shared_pipeline,
    train,
)

WIDTHS = [0.25, 0.5, 1.0]
SAMPLING = {"@misc": "spacy-earlyexit.self_sampling.v1", "min_threshold": 0.2, "max_threshold": 0.9}
TEXTS = ["Angela Merkel visited Paris on Tuesday .", "The cat sat on the mat ."]


@pytest.fixture(scope="module")
def four_head_shared(tmp_path_factory):
    """A trained shared pipeline on a four-head encoder (never rewired), its
    model directory and its path."""
    model_dir = make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert_4h_shared"), heads=4)
    spacy.util.fix_random_seed(0)
    nlp = shared_pipeline(model_dir)
    train(nlp, ner_tagger_examples(nlp), steps=40)
    path = tmp_path_factory.mktemp("shared_stage") / "pipeline"
    nlp.to_disk(path)
    return model_dir, path


def _stage(model_dir, source, phase):
    """A width stage of the shared encoder, started from `source`."""
    settings = {"@misc": "spacy-earlyexit.width_training.v1", "phase": phase}
    nlp = shared_pipeline(model_dir, width_multipliers=WIDTHS, width_training=settings, self_sampling=SAMPLING)
    nlp.config["initialize"]["components"] = {
        name: {"init_from": str(source)} for name in ("encoder", "earlyexit_ner", "earlyexit_tagger")
    }
    examples = ner_tagger_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    return nlp, examples, optimizer


def _outputs(nlp, width=1.0):
    """Entities, tags and the width each doc's pass ran at."""
    with nlp.get_pipe("encoder").using(width=width):
        docs = list(nlp.pipe(TEXTS))
    return [
        ([(e.start, e.end, e.label_) for e in d.ents], [t.tag_ for t in d], d._.earlyexit["encoder"]["width"])
        for d in docs
    ]


def _distillation_gap(encoder_component, teacher, examples, width):
    """The per-task distillation loss of `width` against `teacher`."""
    batch, _ = training_batch(encoder_component.model, [eg.predicted for eg in examples])
    encoder = encoder_component.encoder.eval()
    weights = torch.ones(encoder.n_layers) / encoder.n_layers
    with torch.no_grad():
        full = teacher(batch, return_hidden=True)
        narrow = encoder(batch, width=width, return_hidden=True)
    parts = encoder_component._width_parts()
    return float(distillation_loss(narrow[0], full[0], narrow[1], full[1], weights, parts=parts))


@pytest.mark.issue(32)
def test_rewiring_ranks_by_every_tasks_gold_and_keeps_full_width_outputs(four_head_shared):
    model_dir, source = four_head_shared
    nlp = spacy.load(source)
    encoder = nlp.get_pipe("encoder")
    before = _outputs(nlp)
    # examples with tags only: the tagger's gold alone ranks the heads
    tags_only = [Example.from_dict(nlp.make_doc(text), {"tags": tags}) for text, tags in TAG_DATA]
    importance = encoder.rewire_for_width(tags_only)
    assert encoder.encoder.width_rewired
    assert bool(importance.heads.any()) and bool(importance.neurons.any())
    assert _outputs(nlp) == before
    with pytest.raises(ValueError, match="rewire the shared encoder"):
        nlp.get_pipe("earlyexit_ner").rewire_for_width(tags_only)


@pytest.mark.issue(32)
def test_examples_without_any_tasks_gold_cannot_rank(four_head_shared):
    _, source = four_head_shared
    nlp = spacy.load(source)
    bare = [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in TEXTS]
    with pytest.raises(ValueError, match="no gold annotation"):
        nlp.get_pipe("encoder").rewire_for_width(bare)


@pytest.mark.issue(32)
def test_distillation_ranks_at_the_first_update_and_narrows_every_tasks_gap(four_head_shared, tmp_path):
    model_dir, source = four_head_shared
    nlp, examples, optimizer = _stage(model_dir, source, "distill")
    encoder = nlp.get_pipe("encoder")
    # the tasks are initialized after the encoder: ranking waits for their gold
    assert not encoder.encoder.width_rewired and encoder._teacher is None
    optimizer.learn_rate = 0.003
    losses = nlp.update(examples, sgd=optimizer, drop=0.0)
    assert encoder.encoder.width_rewired and encoder._teacher is not None
    assert losses["encoder"] > 0
    teacher = encoder._teacher
    gap = _distillation_gap(encoder, teacher, examples, 0.25)
    for _ in range(25):
        nlp.update(examples, sgd=optimizer, drop=0.0)
    assert _distillation_gap(encoder, teacher, examples, 0.25) < 0.5 * gap
    nlp.to_disk(tmp_path / "distilled")
    loaded = spacy.load(tmp_path / "distilled")
    assert loaded.get_pipe("encoder").encoder.width_rewired and loaded.get_pipe("encoder")._teacher is None
    for _ents, tags, width in _outputs(loaded, width=0.25):
        assert width == 0.25 and all(tags)


@pytest.mark.issue(32)
def test_distillation_matches_each_tasks_distribution_apart():
    torch.manual_seed(0)
    L, N = 2, 5
    teacher = torch.randn(L, N, 7)
    student = teacher.clone()
    # the same logits up to a constant within each task's slice: each task's distribution is unchanged
    student[..., :3] += 2.0
    student[..., 3:] -= 1.0
    hidden = torch.zeros(L, 4, 3)
    weights = torch.ones(L)
    per_task = distillation_loss(student, teacher, hidden, hidden, weights, parts=[slice(0, 3), slice(3, 7)])
    assert float(per_task) == pytest.approx(0.0, abs=1e-5)
    assert float(distillation_loss(student, teacher, hidden, hidden, weights)) > 0.1  # one distribution over both


@pytest.mark.issue(32)
def test_width_self_sampling_trains_every_task_at_its_own_exits(four_head_shared):
    model_dir, source = four_head_shared
    nlp, examples, optimizer = _stage(model_dir, source, "self_sampling")
    component = nlp.get_pipe("encoder")
    encoder = component.encoder
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    losses = component.update(examples)  # no optimizer: the gradients stay
    assert encoder.width_rewired and component._teacher is None
    assert losses["encoder"] > 0
    grad = encoder.heads[-1].weight.grad
    ner_part, tag_part = component._slices()
    assert grad[ner_part].abs().sum() > 0 and grad[tag_part].abs().sum() > 0
    before = encoder.heads[-1].weight.detach().clone()
    optimizer.learn_rate = 0.01
    component.finish_update(optimizer)
    assert not torch.equal(before, encoder.heads[-1].weight.detach())


@pytest.mark.issue(32)
def test_each_tasks_loss_weight_weighs_its_width_loss(four_head_shared):
    _, source = four_head_shared
    nlp = spacy.load(source)
    component = nlp.get_pipe("encoder")
    examples = ner_tagger_examples(nlp)
    batch, rows = training_batch(component.model, [eg.predicted for eg in examples])
    tasks = component._width_tasks(examples, rows, batch.n_words)
    assert [task.index for task in tasks] == [0, 1] and [task.part for task in tasks] == component._slices()
    assert all(isinstance(task, TaskGold) and task.weight == 1.0 for task in tasks)
    nlp.get_pipe("earlyexit_ner").model.attrs["loss_weight"] = 2.0
    assert [task.weight for task in component._width_tasks(examples, rows, batch.n_words)] == [2.0, 1.0]


@pytest.mark.issue(32)
def test_a_listening_task_refuses_width_training_and_names_the_encoder(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer", name="encoder", config=model_config(tiny_model_dir))
    settings = {"@misc": "spacy-earlyexit.width_training.v1", "phase": "distill"}
    with pytest.raises(ValueError, match="give width_training to the shared encoder"):
        nlp.add_pipe("earlyexit_ner", config={**LISTENER, "width_training": settings})
