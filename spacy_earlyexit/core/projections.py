"""Inference projections of one transformer layer, made once per width: keys
and values in one product, weights packed contiguously, and on CPUs with
oneDNN the bias, GELU and residual additions fused into the matrix products.

Plain PyTorch, no spaCy. Training (autograd) never uses these; it runs on the
parameters' own slices. Set SPACY_EARLYEXIT_ONEDNN=0 to fall back to
`F.linear` everywhere.

bf16 products are fused only on CPUs without AMX: on an AMX Xeon the fused
(prepacked) oneDNN products measured slower than plain `F.linear` on bf16
weights (documents 0.85x, single sentences 0.63x: results.md, "On an AMX
Xeon"), where each new input shape costs a kernel compilation, and early exit
keeps changing the shapes; there bf16 runs through `F.linear` as Hugging
Face's forward does. fp32 stays fused everywhere (faster on both).
"""

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import amx

_onednn: Optional[bool] = None

#: oneDNN's per-shape kernel cache: room for every shape a pass can meet
ONEDNN_CACHE_ENTRIES = "1024"


def size_onednn_kernel_cache() -> None:
    """Give oneDNN's kernel cache room for every shape inference meets, unless
    the user set its size.

    oneDNN (torch's CPU kernels) makes and caches one kernel per tensor shape.
    Inference rounds its shapes up to a bounded ladder (`shapes.py`): one
    width and precision meet a few hundred product and attention shapes at
    most, whatever the corpus, so a cache of 1,024 entries (oneDNN's own
    default) always hits after a warm-up and its memory stays bounded. (An
    earlier bound of 8 entries kept memory flat when shapes never repeated,
    at the price of a new kernel for nearly every product on AMX CPUs.)
    oneDNN reads the variable when its first kernel is made, so this is
    called when an early-exit model is built, not when the package is
    imported; a value the user set wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)


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


def fuses(precision: str) -> bool:
    """Whether inference products at a resolved `precision` are fused with
    oneDNN here: fp32 where oneDNN is available, bf16 too unless the CPU has
    AMX (see the module's notes), int8 never (its own quantized kernels)."""
    if precision == "int8" or not onednn_available():
        return False
    return precision == "fp32" or not amx()


def is_exact_gelu(activation) -> bool:
    """Whether `activation` is the erf GELU (Hugging Face's "gelu")."""
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return True
    return getattr(activation, "act", None) is F.gelu  # transformers' GELUActivation


class Projection:
    """`x @ weight.T + bias` for fixed weights, packed once for a precision:

    - fp32: prepacked for oneDNN when `onednn`, else a contiguous copy for
      `F.linear`;
    - bf16: the weights in bfloat16 (prepacked for oneDNN when `onednn`);
      inputs and outputs in bfloat16;
    - int8: the weights quantized per output channel (symmetric int8), the
      input quantized per call (`torch.ops.quantized.linear_dynamic`);
      inputs and outputs in float32.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], onednn: bool, precision: str = "fp32") -> None:
        weight = weight.detach()
        self.precision = precision
        self.out_features = weight.shape[0]
        self.int8 = precision == "int8" and weight.device.type == "cpu"
        if self.int8:
            self.onednn = False
            self.bias = None
            self.weight = _int8_pack(weight, bias)
            return
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        weight = weight.to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.onednn = onednn and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1024) if self.onednn else weight

    def __call__(self, x: Tensor, gelu: bool = False) -> Tensor:
        """The product; with `gelu`, the erf GELU of it."""
        if self.int8:
            if not x.numel():
                return x.new_empty(*x.shape[:-1], self.out_features)
            out = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), self.weight, False)
            out = out.reshape(*x.shape[:-1], self.out_features)
            return F.gelu(out) if gelu else out
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


def _int8_pack(weight: Tensor, bias: Optional[Tensor]):
    """Per-output-channel symmetric int8 weights, prepacked for dynamic
    quantized products (fbgemm/x86 or oneDNN, torch's quantized engine)."""
    import warnings

    weight = weight.float().contiguous()
    scales = (weight.abs().amax(1) / 127.0).clamp_min(1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch deprecates quantized tensors, not these kernels yet
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.detach().float())


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


def inference_layer(
    n_heads: int, q, k, v, o, ff_in, ff_out, activation, onednn: bool = True, precision: str = "fp32"
) -> InferenceLayer:
    """An InferenceLayer from (weight, bias) pairs already cut to a width, at
    a resolved `precision` (fp32, bf16 or int8); fused with oneDNN when
    `onednn` and this torch build can (fp32 and bf16)."""
    onednn = onednn and fuses(precision)
    return InferenceLayer(
        n_heads,
        Projection(*q, onednn, precision),
        Projection(*_stacked(k, v), onednn, precision),
        Projection(*o, onednn, precision),
        Projection(*ff_in, onednn, precision),
        Projection(*ff_out, onednn, precision),
        fused_gelu=onednn and is_exact_gelu(activation),
    )
