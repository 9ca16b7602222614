"""Inference projections of one transformer layer, made once per width: keys
and values in one product, weights packed contiguously, and on CPUs with
oneDNN the bias, GELU and residual additions fused into the matrix products.

Plain PyTorch, no spaCy. Training (autograd) never uses these; it runs on the
parameters' own slices. Set SPACY_EARLYEXIT_ONEDNN=0 to fall back to
`F.linear` everywhere.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_onednn: Optional[bool] = None


def onednn_available() -> bool:
    """Whether this torch build fuses linear products with oneDNN on the CPU
    (checked once, against `F.linear`, on a tiny product)."""
    global _onednn
    if _onednn is None:
        _onednn = os.environ.get("SPACY_EARLYEXIT_ONEDNN", "1") != "0" and _onednn_matches_linear()
    return _onednn


def _onednn_matches_linear() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        fused = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x, weight, bias, other = (torch.randn(*shape, generator=generator) for shape in ((5, 8), (6, 8), (6,), (5, 6)))
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
            expected = F.linear(x, weight, bias)
            return bool(
                torch.allclose(fused(x, packed, bias, "none", [], ""), expected, atol=1e-4)
                and torch.allclose(fused(x, packed, bias, "gelu", [], "none"), F.gelu(expected), atol=1e-4)
                and torch.allclose(fused.binary(x, other, packed, bias, "add"), expected + other, atol=1e-4)
            )
    except Exception:  # an op missing or failing in this build: plain products
        return False


def is_exact_gelu(activation) -> bool:
    """Whether `activation` is the erf GELU (Hugging Face's "gelu")."""
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return True
    return getattr(activation, "act", None) is F.gelu  # transformers' GELUActivation


class Projection:
    """`x @ weight.T + bias` for fixed weights: prepacked for oneDNN when
    `onednn`, else a contiguous copy for `F.linear`."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], onednn: bool) -> None:
        weight = weight.detach().contiguous()
        self.out_features = weight.shape[0]
        self.bias = None if bias is None else bias.detach().contiguous()
        self.onednn = onednn and weight.device.type == "cpu" and weight.dtype == torch.float32
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1024) if self.onednn else weight

    def __call__(self, x: Tensor, gelu: bool = False) -> Tensor:
        """The product; with `gelu`, the erf GELU of it."""
        if not self.onednn:
            out = F.linear(x, self.weight, self.bias)
            return F.gelu(out) if gelu else out
        if not x.numel():
            return x.new_empty(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.weight, self.bias, "gelu" if gelu else "none", [], "none" if gelu else ""
        )

    def plus(self, x: Tensor, residual: Tensor) -> Tensor:
        """The product plus `residual` (same shape as the product)."""
        if self.onednn and x.numel():
            return torch.ops.mkldnn._linear_pointwise.binary(
                x.contiguous(), residual.contiguous(), self.weight, self.bias, "add"
            )
        return self(x).add_(residual)


@dataclass
class InferenceLayer:
    """The projections one layer runs with at some width, for inference."""

    n_heads: int
    q: Projection  # queries of the kept heads
    kv: Projection  # keys then values of the kept heads, one product
    o: Projection  # attention output, from the kept heads
    ff_in: Projection  # the kept feed-forward neurons
    ff_out: Projection  # from the kept neurons
    fused_gelu: bool  # whether ff_in applies the layer's activation itself


def _stacked(*pairs):
    """One (weight, bias) from several stacked by rows; a missing bias is
    zeros beside a present one, and None only when every bias is missing."""
    weight = torch.cat([w for w, _ in pairs])
    if all(b is None for _, b in pairs):
        return weight, None
    return weight, torch.cat([w.new_zeros(w.shape[0]) if b is None else b for w, b in pairs])


def inference_layer(n_heads: int, q, k, v, o, ff_in, ff_out, activation, onednn: bool = True) -> InferenceLayer:
    """An InferenceLayer from (weight, bias) pairs already cut to a width;
    fused with oneDNN when `onednn` and this torch build can."""
    onednn = onednn and onednn_available()
    return InferenceLayer(
        n_heads,
        Projection(*q, onednn),
        Projection(*_stacked(k, v), onednn),
        Projection(*o, onednn),
        Projection(*ff_in, onednn),
        Projection(*ff_out, onednn),
        fused_gelu=onednn and is_exact_gelu(activation),
    )
