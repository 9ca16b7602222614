"""Packed inference projections: the same products as F.linear, with or
without oneDNN, and the same predictions as the autograd path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spacy_earlyexit.core import projections
from spacy_earlyexit.core.policies import FullDepth, TokenWindowExit
from spacy_earlyexit.core.projections import Projection, is_exact_gelu

from ..conftest import four_head_encoder, random_batch

ONEDNN = [False] + ([True] if projections.onednn_available() else [])


@pytest.mark.parametrize("onednn", ONEDNN)
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8), (0, 8), (1, 8)])
def test_projection_equals_linear(onednn, shape):
    torch.manual_seed(0)
    weight, bias = torch.randn(6, 8), torch.randn(6)
    x, residual = torch.randn(*shape), torch.randn(*shape[:-1], 6)
    projection = Projection(weight, bias, onednn)
    with torch.inference_mode():
        expected = F.linear(x, weight, bias)
        assert projection(x).shape == expected.shape
        assert torch.allclose(projection(x), expected, atol=1e-5)
        assert torch.allclose(projection(x, gelu=True), F.gelu(expected), atol=1e-5)
        assert torch.allclose(projection.plus(x, residual), expected + residual, atol=1e-5)
        # a strided (non-contiguous) input and residual give the same products
        wide = torch.randn(*shape[:-1], 16)[..., ::2]
        assert torch.allclose(
            projection.plus(wide, residual.clone()), F.linear(wide, weight, bias) + residual, atol=1e-5
        )


def test_projection_without_bias():
    weight = torch.randn(4, 3)
    x = torch.randn(2, 3)
    for onednn in ONEDNN:
        assert torch.allclose(Projection(weight, None, onednn)(x), x @ weight.T, atol=1e-5)


def test_only_the_erf_gelu_is_fused():
    assert is_exact_gelu(F.gelu) and is_exact_gelu(nn.GELU())
    assert (
        not is_exact_gelu(nn.GELU(approximate="tanh"))
        and not is_exact_gelu(nn.ReLU())
        and not is_exact_gelu(torch.tanh)
    )


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("policy", [FullDepth(), TokenWindowExit(threshold=0.3, window=1)])
def test_prediction_is_the_same_with_and_without_onednn(width, policy):
    encoder = four_head_encoder().eval()
    batch = random_batch([9, 4, 7, 2])
    outputs = []
    for onednn in ONEDNN + [False]:
        encoder.use_onednn = onednn  # the packed projections follow the switch
        outputs.append(encoder.predict(batch, policy, width=width))
        assert encoder.inference_layer(0, width).kv.onednn is onednn
    first = outputs[0]
    for out in outputs[1:]:
        assert torch.equal(out.exit_layers, first.exit_layers) and torch.equal(out.labels, first.labels)
        assert torch.allclose(out.probs, first.probs, atol=1e-5)


def test_switching_onednn_off_by_environment(monkeypatch):
    monkeypatch.setattr(projections, "_onednn", None)
    monkeypatch.setenv("SPACY_EARLYEXIT_ONEDNN", "0")
    assert not projections.onednn_available()
    monkeypatch.setattr(projections, "_onednn", None)
    monkeypatch.delenv("SPACY_EARLYEXIT_ONEDNN")
    assert projections.onednn_available() == projections._onednn_matches_linear()


@pytest.mark.parametrize("onednn", ONEDNN)
def test_keys_and_values_keep_a_bias_only_one_of_them_has(onednn):
    torch.manual_seed(0)
    d, inner = 8, 4
    k, v = (torch.randn(inner, d), torch.randn(inner)), (torch.randn(inner, d), None)
    layer = projections.inference_layer(
        1,
        (k[0], None),
        k,
        v,
        (torch.randn(d, inner), None),
        (torch.randn(6, d), None),
        (torch.randn(d, 6), None),
        F.gelu,
        onednn,
    )
    x = torch.randn(3, d)
    with torch.inference_mode():
        keys, values = layer.kv(x).chunk(2, dim=-1)
    assert torch.allclose(keys, F.linear(x, *k), atol=1e-5)
    assert torch.allclose(values, F.linear(x, v[0]), atol=1e-5)


@pytest.mark.parametrize("has_amx", ["0", "1"])
def test_bf16_is_fused_only_without_amx_and_predicts_the_same_either_way(has_amx, monkeypatch):
    """On AMX CPUs bf16 runs through F.linear (fused oneDNN products compile a
    kernel per shape there); fp32 stays fused; the labels do not change."""
    monkeypatch.setenv("SPACY_EARLYEXIT_AMX", has_amx)
    encoder = four_head_encoder().eval()
    batch = random_batch([9, 4, 7, 2])
    policy = TokenWindowExit(threshold=0.3, window=1)
    fused = projections.onednn_available()
    assert projections.fuses("fp32") is fused
    assert projections.fuses("bf16") is (fused and has_amx == "0")
    assert not projections.fuses("int8")
    assert encoder.inference_layer(0, 1.0, "bf16").kv.onednn is projections.fuses("bf16")
    assert encoder.inference_layer(0, 1.0, "fp32").kv.onednn is fused
    reference = encoder.predict(batch, policy, precision="fp32")
    out = encoder.predict(batch, policy, precision="bf16")
    agree = (out.labels == reference.labels)[batch.word_mask].float().mean()
    assert float(agree) >= 0.9
    # the packed copies follow a change of the detection
    monkeypatch.setenv("SPACY_EARLYEXIT_AMX", "0" if has_amx == "1" else "1")
    assert encoder.inference_layer(0, 1.0, "bf16").kv.onednn is projections.fuses("bf16")
