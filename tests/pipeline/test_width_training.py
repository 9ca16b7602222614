"""Width-adaptive training stages: distillation across widths, self-sampling
across width and exit (tiny models)."""

import pytest
import spacy
import torch
from thinc.api import Config

from spacy_earlyexit.core.objective import SelfSampling, distillation_loss, sample_widths
from spacy_earlyexit.core.width_training import WidthTraining

from ..conftest import four_head_encoder, model_config, ner_examples, random_batch

WIDTH_CONFIG = """
[nlp]
lang = "en"
pipeline = ["earlyexit_ner"]

[components]

[components.earlyexit_ner]
factory = "earlyexit_ner"
width_multipliers = [0.25, 0.5, 1.0]

[components.earlyexit_ner.model]
@architectures = "spacy-earlyexit.MultiExitTransformer.v1"
name = "{model_dir}"
max_wordpieces = 64

[components.earlyexit_ner.self_sampling]
@misc = "spacy-earlyexit.self_sampling.v1"

[components.earlyexit_ner.width_training]
@misc = "spacy-earlyexit.width_training.v1"
phase = "{phase}"

[initialize]

[initialize.components]

[initialize.components.earlyexit_ner]
init_from = "{source}"
"""


def _stage(model_dir, source, phase):
    config = Config().from_str(WIDTH_CONFIG.format(model_dir=model_dir, source=source, phase=phase))
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    return nlp, examples, optimizer


def _distillation_gap(ner, examples, width):
    """The distillation loss of `width` against the teacher on the examples."""
    from spacy_earlyexit.pipeline.model import training_batch

    batch, _ = training_batch(ner.model, [eg.predicted for eg in examples])
    encoder = ner.encoder.eval()
    weights = torch.ones(encoder.n_layers) / encoder.n_layers
    with torch.no_grad():
        teacher = ner._teacher(batch, return_hidden=True)
        student = encoder(batch, width=width, return_hidden=True)
    return float(distillation_loss(student[0], teacher[0], student[1], teacher[1], weights))


def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise():
    encoder = four_head_encoder()
    batch = random_batch([6, 4])
    weights = torch.ones(encoder.n_layers)
    with torch.no_grad():
        full = encoder(batch, return_hidden=True)
        narrow = encoder(batch, width=0.5, return_hidden=True)
    assert full[1].shape == (encoder.n_layers, int(batch.piece_mask.sum()), encoder.hidden_size)
    assert float(distillation_loss(full[0], full[0], full[1], full[1], weights)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(narrow[0], full[0], narrow[1], full[1], weights)) > 0


def test_selected_rows_give_the_same_outputs_as_the_whole_batch():
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    with torch.no_grad():
        whole = encoder(batch)
        part = encoder(batch.select_rows(torch.tensor([0, 2])))
    per_row = batch.word_mask.sum(1).tolist()
    rows = torch.cat([torch.arange(sum(per_row[:0]), sum(per_row[:1])), torch.arange(sum(per_row[:2]), sum(per_row))])
    assert torch.allclose(whole[:, rows], part, atol=1e-5)


def test_the_width_sandwich_puts_the_narrowest_at_the_most_aggressive_setting():
    sampling = SelfSampling(aggressive_share=0.25, full_depth_share=0.25)
    groups = torch.arange(8)[:, None].expand(8, 5) * 0  # one sentence per row
    words = torch.ones(8, 5, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    sampled = sampling.sample(groups, words, generator, sandwich=False)
    widths = sample_widths(sampled, sampling, groups, words, (0.25, 0.5, 1.0), generator)
    assert set(widths.tolist()) <= {0.25, 0.5, 1.0}
    aggressive = (sampled.thresholds == sampling.max_threshold).all(1) & (
        sampled.half_windows == sampling.min_window // 2
    ).all(1)
    full = (sampled.thresholds == 0).all(1)
    assert int(aggressive.sum()) == 2 and bool((widths[aggressive] == 0.25).all())
    assert int(full.sum()) == 2 and bool((widths[full] == 1.0).all())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distillation_stage_rewires_keeps_its_teacher_and_narrows_the_gap(
    four_head_stage, tmp_path, precision, monkeypatch
):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")  # bf16 training wherever the tests run
    model_dir, source = four_head_stage
    nlp, examples, optimizer = _stage(model_dir, source, "distill")
    ner = nlp.get_pipe("earlyexit_ner")
    ner.training_precision = precision
    encoder = ner.encoder
    assert encoder.width_rewired  # ranked on the training examples before distilling
    teacher_before = {k: v.clone() for k, v in ner._teacher.state_dict().items()}
    # the teacher is the starting model at full width
    assert all(torch.equal(teacher_before[k], v) for k, v in encoder.state_dict().items())
    gap = _distillation_gap(ner, examples, 0.25)
    assert gap > 0
    optimizer.learn_rate = 0.003
    for _ in range(25):
        losses = nlp.update(examples, sgd=optimizer, drop=0.0)
    assert losses["earlyexit_ner"] > 0
    assert ner.model.attrs["training_precision"] == precision
    assert all(torch.equal(teacher_before[k], v) for k, v in ner._teacher.state_dict().items())
    assert _distillation_gap(ner, examples, 0.25) < 0.5 * gap
    # the teacher is not saved; the distilled pipeline loads and keeps its rewiring
    nlp.to_disk(tmp_path / "distilled")
    loaded = spacy.load(tmp_path / "distilled")
    loaded_ner = loaded.get_pipe("earlyexit_ner")
    assert loaded_ner.encoder.width_rewired and loaded_ner._teacher is None
    with loaded_ner.using(width=0.25):
        assert len(loaded("Angela Merkel visited Paris .")) == 5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_width_self_sampling_stage_trains_every_width_with_sampled_exits(four_head_stage, precision, monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")
    model_dir, source = four_head_stage
    nlp, examples, optimizer = _stage(model_dir, source, "self_sampling")
    ner = nlp.get_pipe("earlyexit_ner")
    ner.training_precision = precision
    assert ner._teacher is None and ner.encoder.width_rewired
    encoder = ner.encoder
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    losses = ner.update(examples)  # no optimizer: gradients stay on the parameters
    assert losses["earlyexit_ner"] > 0
    assert ner.model.attrs["training_precision"] == precision
    assert encoder.heads[0].weight.grad is not None and encoder.heads[0].weight.grad.abs().sum() > 0
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer.learn_rate = 0.01
    ner.finish_update(optimizer)
    assert not torch.equal(before["heads.0.weight"], encoder.state_dict()["heads.0.weight"])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"phase": "prune"}, "phase must be one of"),
        ({"phase": "distill", "widths": [0.5]}, "must include 1.0"),
        ({"phase": "distill", "logits_weight": 0.0, "hidden_weight": 0.0}, "not both 0"),
        ({"phase": "distill", "temperature": 0}, "temperature"),
    ],
)
def test_bad_width_training_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        WidthTraining(**settings)


def test_width_self_sampling_needs_self_sampling_settings(tiny_model_dir):
    nlp = spacy.blank("en")
    config = {
        **model_config(tiny_model_dir),
        "width_training": {"@misc": "spacy-earlyexit.width_training.v1", "phase": "self_sampling"},
    }
    with pytest.raises(ValueError, match="needs the self_sampling settings"):
        nlp.add_pipe("earlyexit_ner", config=config)


def test_trained_widths_must_be_in_the_menu(four_head_stage, tmp_path):
    model_dir, source = four_head_stage
    text = WIDTH_CONFIG.format(model_dir=model_dir, source=source, phase="distill")
    text = text.replace('phase = "distill"', 'phase = "distill"\nwidths = [0.75, 1.0]')
    nlp = spacy.util.load_model_from_config(Config().from_str(text), auto_fill=True)
    examples = ner_examples(nlp)
    with pytest.raises(ValueError, match="not in the width menu"):
        nlp.initialize(lambda: examples)


def test_a_distillation_step_keeps_the_narrowest_and_the_full_width():
    from spacy_earlyexit.core.width_training import step_widths

    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        chosen = step_widths((0.25, 0.5, 0.75, 1.0), 3, generator)
        assert len(chosen) == 3 and chosen[0] == 0.25 and chosen[-1] == 1.0
        seen.add(chosen[1])
    assert seen == {0.5, 0.75}
    assert step_widths((0.25, 0.5, 1.0), None) == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="widths_per_step"):
        WidthTraining(widths_per_step=1)
