"""Training stages and operating points: dropout, corpus-length schedule,
stage 2 from a stage-1 pipeline and switching by name (calibration:
tests/tools/test_calibrate.py)."""

import numpy
import pytest
import spacy
from thinc.api import Config

from spacy_earlyexit.core.policies import FullDepth, TokenWindowExit
from spacy_earlyexit.pipeline.architectures import warmup_linear_epochs
from spacy_earlyexit.pipeline.schedules import steps_per_epoch
from spacy_earlyexit.tools.train import plan_training

from ..conftest import model_config, ner_corpus, ner_examples


def _weights(nlp, name="earlyexit_ner"):
    encoder = nlp.get_pipe(name).encoder
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def test_update_honours_drop(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, head_dropout=0.5))
    examples = ner_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("earlyexit_ner")
    docs = [eg.predicted for eg in examples]

    def logits(drop):
        ner.model.attrs["dropout_rate"] = drop
        (scores, _), _ = ner.model.begin_update(docs)
        return numpy.concatenate([s.ravel() for s in scores])

    assert numpy.allclose(logits(0.0), logits(0.0))  # drop=0: no dropout, head_dropout=0.5 notwithstanding
    assert not numpy.allclose(logits(0.5), logits(0.5))
    losses = nlp.update(examples, drop=0.0)
    assert losses["earlyexit_ner"] > 0 and ner.model.attrs["dropout_rate"] == 0.0


def test_schedule_and_plan_follow_the_corpus(trained_ner, tmp_path):
    small = ner_corpus(trained_ner, tmp_path / "small.spacy", copies=2)
    large = ner_corpus(trained_ner, tmp_path / "large.spacy", copies=20)
    assert steps_per_epoch(large, size=40) > steps_per_epoch(small, size=40) >= 1
    per_epoch = steps_per_epoch(large, size=40)
    rates = list(
        _take(warmup_linear_epochs(0.1, large, max_epochs=3, batch_size=40, warmup_fraction=0.1), 3 * per_epoch + 2)
    )
    assert max(rates) == pytest.approx(0.1) and rates[3 * per_epoch] == 0.0 and rates[3 * per_epoch - 1] > 0
    config = Config().from_str(
        f'[paths]\ntrain = "{large}"\n[training]\nmax_epochs = 3\n'
        '[training.batcher]\n@batchers = "spacy.batch_by_padded.v1"\nsize = 40\nbuffer = 256\ndiscard_oversize = false\n'  # noqa: E501
    )
    plan, counted = plan_training(config)
    assert counted == per_epoch
    frequency = plan["training.eval_frequency"]
    assert plan["training.max_epochs"] == 0 and frequency <= per_epoch
    # the run ends on an evaluated step and covers at least the epochs asked for
    assert plan["training.max_steps"] % frequency == 0 and plan["training.max_steps"] >= 3 * per_epoch
    assert plan_training(config, user_overrides={"training.max_steps": 7}) == ({}, None)


def _take(schedule, n):
    if callable(schedule) and not hasattr(schedule, "__next__"):
        return [schedule(step=i) for i in range(n)]
    return [next(schedule) for _ in range(n)]


STAGE2_CONFIG = """
[nlp]
lang = "en"
pipeline = ["earlyexit_ner"]

[components]

[components.earlyexit_ner]
factory = "earlyexit_ner"

[components.earlyexit_ner.model]
@architectures = "spacy-earlyexit.MultiExitTransformer.v1"
name = "{model_dir}"
max_wordpieces = 64

[components.earlyexit_ner.self_sampling]
@misc = "spacy-earlyexit.self_sampling.v1"
min_window = 1
max_window = 1
min_threshold = 1.01
max_threshold = 1.01
aggressive_share = 0.0
full_depth_share = 0.0

[initialize]

[initialize.components]

[initialize.components.earlyexit_ner]
init_from = "{stage1}"
"""


def test_stage_two_starts_from_stage_one_and_trains_with_sampled_exits(trained_ner, tiny_model_dir, tmp_path):
    stage1 = tmp_path / "stage1"
    trained_ner.to_disk(stage1)
    config = Config().from_str(STAGE2_CONFIG.format(model_dir=tiny_model_dir, stage1=stage1))
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("earlyexit_ner")
    # the new setting reached the component, and it starts as the stage-1 pipeline
    assert ner.model.attrs["self_sampling"]["min_threshold"] == 1.01
    assert ner.labels == trained_ner.get_pipe("earlyexit_ner").labels
    before = _weights(nlp)
    for name, value in _weights(trained_ner).items():
        assert bool((before[name] == value).all()), name
    text = "Angela Merkel visited Paris on Tuesday ."
    assert [e.text for e in nlp(text).ents] == [e.text for e in trained_ner(text).ents]
    # training uses the sampled exits: with a threshold above 1, every word leaves at layer 1
    (scores, run_layers), _ = ner.model.begin_update([eg.predicted for eg in examples])
    assert all(bool((layers == 1).all()) for layers in run_layers)
    encoder = ner.encoder
    encoder.zero_grad(set_to_none=True)
    ner.update(examples)  # no optimizer: the gradients stay on the parameters
    assert encoder.heads[0].weight.grad.abs().sum() > 0
    # only exit 1 had a loss: the deeper classifiers got no gradient
    assert encoder.heads[2].weight.grad is None or not encoder.heads[2].weight.grad.any()
    optimizer.learn_rate = 0.01
    ner.finish_update(optimizer)
    after = _weights(nlp)
    assert not bool((after["heads.0.weight"] == before["heads.0.weight"]).all())


def test_operating_points_switch_by_name_and_through_the_config(trained_ner, tmp_path):
    points = {
        "fast": {"policy": "token_window", "threshold": 1.01, "window": 1},
        "l2": {"policy": "fixed_depth", "layer": 2},
    }
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tmp_path), "operating_points": points})
    ner = nlp.get_pipe("earlyexit_ner")
    assert isinstance(ner.exit_policy, FullDepth) and ner.operating_point is None
    assert isinstance(ner.use("fast"), TokenWindowExit) and ner.operating_point == "fast"
    with ner.using("full"):
        assert isinstance(ner.exit_policy, FullDepth)
    assert ner.operating_point == "fast"
    with pytest.raises(ValueError, match="no operating point 'turbo'.*full, fast, l2"):
        ner.use("turbo")
    with pytest.raises(ValueError, match="no 'policy'"):
        spacy.blank("en").add_pipe(
            "earlyexit_ner", config={**model_config(tmp_path), "operating_points": {"x": {"threshold": 0.1}}}
        )
