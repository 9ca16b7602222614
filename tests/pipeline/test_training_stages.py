"""Training stages and operating points: dropout, corpus-length schedule,
stage 2 from a stage-1 pipeline, calibration and switching by name."""

import numpy
import pytest
import spacy
from thinc.api import Config

from spacy_earlyexit.core.policies import FullDepth, TokenWindowExit
from spacy_earlyexit.pipeline.architectures import warmup_linear_epochs
from spacy_earlyexit.pipeline.schedules import steps_per_epoch
from spacy_earlyexit.tools import calibrate
from spacy_earlyexit.tools.calibrate import CalibratedPoint, Candidate, run_calibration
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


def test_calibration_writes_points_that_load_by_name(trained_ner, tmp_path):
    source = tmp_path / "trained"
    trained_ner.to_disk(source)
    dev = ner_corpus(trained_ner, tmp_path / "dev.spacy")
    result = run_calibration(
        str(source), dev, tmp_path / "calibrated", targets=(2.0, 100.0), max_drop=0.5, progress=lambda line: None
    )
    by_name = {p["name"]: p for p in result["points"]}
    assert by_name["2x"]["reached"] and by_name["2x"]["dev_flops_speedup"] >= 2.0 * result["margin"] * 0.995
    assert not by_name["100x"]["reached"] and "not reached" in by_name["100x"]["note"]
    assert by_name["max-drop"]["reached"] and by_name["max-drop"]["dev_score"] >= result["full"]["dev_score"] - 0.005
    nlp = spacy.load(tmp_path / "calibrated")
    ner = nlp.get_pipe("earlyexit_ner")
    assert set(ner.operating_points) == {"2x", "max-drop"}
    assert ner.operating_point == result["default"] == "max-drop"
    assert nlp.meta["earlyexit"]["points"][0]["name"] == "2x"
    assert any(r.startswith("spacy-earlyexit") for r in nlp.meta["requirements"])
    doc = nlp("Angela Merkel visited Paris on Tuesday .")
    assert doc._.earlyexit_speedup >= 1.0
    fast = spacy.load(tmp_path / "calibrated", config={"components.earlyexit_ner.operating_point": "2x"})
    assert fast.get_pipe("earlyexit_ner").operating_point == "2x"
    assert fast.get_pipe("earlyexit_ner").exit_policy.params() == {k: v for k, v in by_name["2x"]["params"].items()} | {
        "uncertainty": "entropy"
    }
    assert fast("Angela Merkel visited Paris on Tuesday .")._.earlyexit_speedup > 1.0


class _FakeComponent:
    encoder = type("Encoder", (), {"n_layers": 6})()


FLAT_CURVE = {0.05: (0.9140, 2.12), 0.1: (0.9141, 2.45), 0.2: (0.9143, 2.88), 0.3: (0.9000, 3.3)}


def _choose_on_a_flat_curve(monkeypatch, margin, tolerance, curve=FLAT_CURVE, target=2.0):
    """By default: candidates whose dev score barely moves between 2.1x and 2.9x, then falls."""
    monkeypatch.setattr(calibrate, "_real", lambda nlp, name, examples, spec: curve[spec["threshold"]])
    simulated = [Candidate(2, t, 1.0, score=s, speedup=x) for t, (s, x) in curve.items()]
    point = CalibratedPoint(f"{target:g}x", target, "speedup")
    calibrate._choose(
        None,
        "ner",
        [],
        _FakeComponent(),
        simulated,
        point,
        0.9141,
        lambda line: None,
        margin=margin,
        tolerance=tolerance,
    )
    return point


def test_calibration_keeps_the_least_aggressive_of_tied_points(monkeypatch):
    point = _choose_on_a_flat_curve(monkeypatch, margin=1.0, tolerance=0.1)
    assert point.reached and point.spec["threshold"] == 0.05 and point.flops_speedup == 2.12
    greedy = _choose_on_a_flat_curve(monkeypatch, margin=1.0, tolerance=0.0)
    assert greedy.spec["threshold"] == 0.2  # without a tolerance the best dev score wins, at 2.88x


def test_calibration_takes_the_better_score_when_speedups_are_close(monkeypatch):
    curve = {0.25: (0.9105, 3.21), 0.2: (0.9126, 3.25)}
    point = _choose_on_a_flat_curve(monkeypatch, margin=1.05, tolerance=0.25, curve=curve, target=3.0)
    assert point.spec["threshold"] == 0.2 and point.dev_score == 0.9126


def test_calibration_seeks_speedup_targets_with_a_margin(monkeypatch):
    point = _choose_on_a_flat_curve(monkeypatch, margin=1.1, tolerance=0.1)
    assert point.reached and point.flops_speedup >= 2.2 and point.spec["threshold"] == 0.1
    unreachable = _choose_on_a_flat_curve(monkeypatch, margin=2.0, tolerance=0.1)
    assert not unreachable.reached and "margin 2" in unreachable.note


def test_calibration_holds_fixed_depths_to_the_target_itself(monkeypatch):
    """A fixed depth costs the same on any text: it needs no margin, while a
    TOKEE setting at the same dev speed-up does."""

    def real(nlp, name, examples, spec):
        return (0.93, 3.0) if spec["policy"] == "fixed_depth" else (0.92, 3.0)

    monkeypatch.setattr(calibrate, "_real", real)
    simulated = [Candidate(layer=2, score=0.93, speedup=3.0), Candidate(1, 0.3, 1.0, score=0.92, speedup=3.0)]
    point = CalibratedPoint("3x", 3.0, "speedup")
    calibrate._choose(
        None, "tagger", [], _FakeComponent(), simulated, point, 0.94, lambda line: None, margin=1.05, tolerance=0.25
    )
    assert point.reached and point.spec == {"policy": "fixed_depth", "layer": 2}
    tokee_only = CalibratedPoint("3x", 3.0, "speedup")
    calibrate._choose(
        None,
        "tagger",
        [],
        _FakeComponent(),
        simulated[1:],
        tokee_only,
        0.94,
        lambda line: None,
        margin=1.05,
        tolerance=0.25,
    )
    assert not tokee_only.reached and "margin 1.05" in tokee_only.note
