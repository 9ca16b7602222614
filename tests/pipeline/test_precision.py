"""Inference precision (fp32, bf16, int8, auto) on tiny random encoders."""

import warnings

import pytest
import spacy
import torch

from spacy_earlyexit.core import precision as precision_module
from spacy_earlyexit.core.policies import TokenWindowExit
from spacy_earlyexit.core.precision import (
    check_precision,
    native_bf16,
    resolve_precision,
    resolve_training_precision,
)

from ..conftest import NER_DATA, TAG_DATA, model_config, ner_examples, train

TEXTS = (
    [text for text, _ in NER_DATA]
    + [text for text, _ in TAG_DATA]
    + [
        "Berlin and Paris are cities in Europe , said Angela Merkel on Tuesday .",
        "The mat .",
    ]
)


def _outputs(nlp, texts, **cfg):
    docs = list(nlp.pipe(texts, component_cfg={"earlyexit_ner": cfg} if cfg else None))
    return [([(e.start, e.end, e.label_) for e in doc.ents], [t._.exit_layer for t in doc]) for doc in docs]


@pytest.fixture(scope="module")
def ner(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    config = {
        **model_config(tiny_model_dir),
        "exit_policy": {"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 0.2, "window": 1},
    }
    nlp.add_pipe("earlyexit_ner", config=config)
    return train(nlp, ner_examples(nlp))


def test_precision_names_are_checked():
    assert [check_precision(p) for p in ("auto", "fp32", "bf16", "int8")] == ["auto", "fp32", "bf16", "int8"]
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp16")


def test_auto_is_fp32_where_bf16_is_not_native_and_bf16_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "0")
    monkeypatch.setattr(precision_module, "_warned", set())
    assert not native_bf16()
    assert resolve_precision("auto") == "fp32"
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_precision("bf16") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16") == "fp32"  # warned once only
    assert resolve_precision("int8") == "int8"
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")
    assert resolve_precision("auto") == "bf16"


def test_native_bf16_detection_matches_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("SPACY_EARLYEXIT_NATIVE_BF16", raising=False)
    flags = precision_module._cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_labels_agree_with_fp32_on_nearly_all_tokens(ner, precision, monkeypatch):
    """Bound: at most 5% of tokens labelled differently or at another layer."""
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")  # run bf16 even where it is emulated
    reference = _outputs(ner, TEXTS, precision="fp32")
    reduced = _outputs(ner, TEXTS, precision=precision)
    n_tokens = sum(len(layers) for _, layers in reference)
    differ = sum(
        sum(a != b for a, b in zip(ref_layers, red_layers))
        for (_, ref_layers), (_, red_layers) in zip(reference, reduced)
    )
    assert differ <= 0.05 * n_tokens
    assert sum(ref_ents == red_ents for (ref_ents, _), (red_ents, _) in zip(reference, reduced)) >= len(TEXTS) - 1


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_exits_are_batch_invariant_and_pipe_equals_call_within_a_precision(ner, precision, monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")
    batched = _outputs(ner, TEXTS, precision=precision)
    alone = [_outputs(ner, [text], precision=precision)[0] for text in TEXTS]
    assert batched == alone
    called = []
    for text in TEXTS:
        doc = ner(text, component_cfg={"earlyexit_ner": {"precision": precision}})
        called.append(([(e.start, e.end, e.label_) for e in doc.ents], [t._.exit_layer for t in doc]))
    assert called == batched


def test_packed_weights_never_mix_precisions(ner, monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")
    component = ner.get_pipe("earlyexit_ner")
    component.encoder.forget_packed_weights()
    fp32_first = _outputs(ner, TEXTS, precision="fp32")
    _outputs(ner, TEXTS, precision="bf16")
    _outputs(ner, TEXTS, precision="int8")
    assert _outputs(ner, TEXTS, precision="fp32") == fp32_first
    precisions = {key[2] for key in component.encoder._packed}
    assert precisions == {"fp32", "bf16", "int8"}
    layer = component.encoder.inference_layer(0, 1.0, "bf16")
    assert layer.q.weight.dtype == torch.bfloat16 or layer.q.onednn


def test_user_autocast_around_pipe_neither_crashes_nor_changes_exits(ner):
    expected = _outputs(ner, TEXTS, precision="fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _outputs(ner, TEXTS, precision="fp32") == expected


def test_a_saved_pipeline_keeps_its_precision_unless_the_config_overrides_it(ner, tmp_path):
    component = ner.get_pipe("earlyexit_ner")
    before = component.precision
    try:
        component.precision = "int8"
        ner.to_disk(tmp_path / "p")
        assert spacy.load(tmp_path / "p").get_pipe("earlyexit_ner").precision == "int8"
        override = {"components.earlyexit_ner.precision": "fp32"}
        assert spacy.load(tmp_path / "p", config=override).get_pipe("earlyexit_ner").precision == "fp32"
        from_bytes = spacy.blank("en")
        from_bytes.add_pipe("earlyexit_ner", config=model_config(component.model.attrs["name"]))
        from_bytes.get_pipe("earlyexit_ner").from_bytes(component.to_bytes())
        assert from_bytes.get_pipe("earlyexit_ner").precision == "int8"
    finally:
        component.precision = before


def test_an_operating_point_may_name_its_precision(ner):
    component = ner.get_pipe("earlyexit_ner")
    component.operating_points["fast"] = {"policy": "fixed_depth", "layer": 1, "precision": "int8"}
    try:
        with component.using("fast"):
            assert component.precision == "int8" and component.exit_policy.params() == {"layer": 1}
        settings = component.point_settings("fast", precision="fp32")
        assert settings.precision == "fp32" and settings.name == "fast"
    finally:
        del component.operating_points["fast"]


def test_encoder_predict_refuses_an_unresolved_precision(ner):
    from spacy_earlyexit.pipeline.model import sequence_batches

    component = ner.get_pipe("earlyexit_ner")
    _, batches = sequence_batches(component.model, [ner.make_doc(TEXTS[0])])
    _, batch = next(batches)
    with pytest.raises(ValueError, match="resolved precision"):
        component.encoder.predict(batch, TokenWindowExit(0.2), precision="auto")


@pytest.mark.parametrize("value, message", [("int8", "must be one of"), ("fp16", "must be one of"), (None, "not")])
def test_training_precision_names_are_checked(tiny_model_dir, value, message):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=f"training_precision.*{message}"):
        nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "training_precision": value})


def test_training_precision_resolves_like_inference_precision(monkeypatch):
    monkeypatch.setattr(precision_module, "_warned", set())
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")
    assert resolve_training_precision("auto") == "bf16"
    assert resolve_training_precision("bf16") == "bf16"
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "0")
    assert resolve_training_precision("auto") == "fp32"
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_training_precision("bf16") == "fp32"
    with pytest.raises(ValueError, match="training_precision"):
        resolve_training_precision("int8")


def _train_ner(tiny_model_dir, training_precision):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "training_precision": training_precision})
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.005
    losses = [nlp.update(examples, sgd=optimizer, losses={})["earlyexit_ner"] for _ in range(60)]
    return nlp, losses


def test_bf16_training_learns_what_fp32_training_learns(tiny_model_dir, monkeypatch):
    """Mixed-precision steps (bf16 autocast) train the same tiny data to the
    same entities as fp32 steps; the weights stay float32 and save as such."""
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")  # bf16 steps wherever the tests run
    fp32, fp32_losses = _train_ner(tiny_model_dir, "fp32")
    bf16, bf16_losses = _train_ner(tiny_model_dir, "auto")
    ner = bf16.get_pipe("earlyexit_ner")
    assert ner.model.attrs["training_precision"] == "bf16"
    assert fp32.get_pipe("earlyexit_ner").model.attrs["training_precision"] == "fp32"
    assert bf16_losses[-1] < 0.1 * bf16_losses[0]
    assert bf16_losses != fp32_losses  # the steps did differ
    gold = [[(e.start_char, e.end_char, e.label_) for e in eg.reference.ents] for eg in ner_examples(bf16)]
    for nlp in (fp32, bf16):
        with nlp.select_pipes(enable=["earlyexit_ner"]):
            got = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(t for t, _ in NER_DATA)]
        assert got == gold
    assert all(p.dtype == torch.float32 for p in ner.encoder.parameters())


def test_bf16_training_falls_back_to_fp32_where_bf16_is_not_native(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "0")
    monkeypatch.setattr(precision_module, "_warned", set())
    with pytest.warns(UserWarning, match="no native bf16"):
        nlp, losses = _train_ner(tiny_model_dir, "bf16")
    assert nlp.get_pipe("earlyexit_ner").model.attrs["training_precision"] == "fp32"
    assert losses[-1] < losses[0]
