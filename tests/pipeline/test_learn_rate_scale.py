"""`added_learn_rate_scale`: the weights the pretrained backbone does not have
(exit classifiers, casing and lexical embeddings) train at a multiple of the
optimizer's learning rate; the backbone at the rate itself."""

import pytest
import spacy
import torch
from thinc.api import Adam

from ..conftest import model_config, ner_examples


def _pipeline(tiny_model_dir, **extra):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "earlyexit_ner", config=model_config(tiny_model_dir, lexical_attrs=["SUFFIX"], lexical_rows=[50], **extra)
    )
    examples = ner_examples(nlp)
    nlp.initialize(lambda: examples)
    return nlp, examples


def _step_sizes(nlp, examples, learn_rate):
    """Largest change of any backbone weight and of any added weight in one
    Adam step (the first step of Adam moves each weight by the rate at most)."""
    encoder = nlp.get_pipe("earlyexit_ner").encoder
    added = set(encoder.added_parameter_names())
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    nlp.update(examples, sgd=Adam(learn_rate, L2=0.0, grad_clip=0.0, use_averages=False))
    moved = {True: 0.0, False: 0.0}
    for name, p in encoder.named_parameters():
        change = float((p.detach() - before[name]).abs().max())
        moved[name in added] = max(moved[name in added], change)
    return moved[False], moved[True]


def test_added_weights_are_the_heads_and_the_feature_embeddings(tiny_model_dir):
    nlp, _ = _pipeline(tiny_model_dir)
    names = nlp.get_pipe("earlyexit_ner").encoder.added_parameter_names()
    assert names and not any(name.startswith("backbone.") for name in names)
    assert any(name.startswith("heads.") for name in names)
    assert "case_embedding.weight" in names and "lexical_embedding.weight" in names


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_added_weights_move_by_the_scaled_rate(tiny_model_dir, scale):
    nlp, examples = _pipeline(tiny_model_dir, added_learn_rate_scale=scale)
    backbone_step, added_step = _step_sizes(nlp, examples, 1e-3)
    assert backbone_step == pytest.approx(1e-3, rel=0.05)
    assert added_step == pytest.approx(scale * 1e-3, rel=0.05)
    groups = nlp.get_pipe("earlyexit_ner").model.shims[0]._torch_optimizer.param_groups
    assert sorted(group["lr"] for group in groups) == pytest.approx([1e-3, scale * 1e-3])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_bad_scale_is_refused(tiny_model_dir, bad):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="added_learn_rate_scale"):
        nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, added_learn_rate_scale=bad))


def test_other_optimizers_warn_that_the_scale_does_not_apply(tiny_model_dir):
    nlp, examples = _pipeline(tiny_model_dir, added_learn_rate_scale=10.0)
    heads = nlp.get_pipe("earlyexit_ner").encoder.heads[0].weight
    before = heads.detach().clone()
    with pytest.warns(UserWarning, match="added_learn_rate_scale"):
        nlp.update(examples, sgd=Adam(1e-3, L2=0.01, L2_is_weight_decay=False))
    assert not torch.equal(heads.detach(), before)  # Thinc's update still trained the weights
