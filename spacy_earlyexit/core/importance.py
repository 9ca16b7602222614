"""Adaptive width (DynaBERT, Hou et al. 2020): importance and rewiring.

Plain PyTorch, no spaCy. Rewiring puts the most important heads and neurons first:

- a head's importance is |d loss / d head mask| (the mask scales that head's
  attention output), summed over batches;
- a neuron's importance is |sum of weight x gradient| over its intermediate
  row and bias, plus the same over its output column, summed over batches.

Permuting heads (q/k/v rows, attention-output columns) and neurons
(intermediate rows and bias, output columns) changes no output of the full
model; it only decides what a narrower width keeps.
"""

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .batch import EncoderBatch
from .encoder import MultiExitEncoder
from .hf import LayerView

#: maps the encoder's exit logits [L, n_words, C] for one batch to a scalar loss
LossFn = Callable[[Tensor], Tensor]


@dataclass
class Importance:
    """Importance of every head and feed-forward neuron, layer by layer."""

    heads: Tensor  # [L, H]
    neurons: Tensor  # [L, F]


def _grad_or_zero(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def compute_importance(encoder: MultiExitEncoder, batches: Iterable[Tuple[EncoderBatch, LossFn]]) -> Importance:
    """Accumulate head and neuron importance over `(batch, loss_fn)` pairs.

    The encoder runs its training forward at full width without dropout
    (eval mode, as the reference does), with a head mask of ones that the
    gradient is taken against; gradients go through `torch.autograd.grad`,
    so the parameters' `.grad` stay untouched."""
    views = encoder.layer_views
    L, H = encoder.n_layers, encoder.n_heads
    device = encoder.device
    heads = torch.zeros(L, H, device=device)
    neurons = torch.zeros(L, encoder.ff_size, device=device)
    head_mask = torch.ones(L, H, device=device, requires_grad=True)
    ffn = [(v.ff_in.weight, v.ff_in.bias, v.ff_out.weight) for v in views]
    params: List[Tensor] = [p for triple in ffn for p in triple if p is not None]
    was_training = encoder.training
    encoder.eval()
    try:
        for batch, loss_fn in batches:
            if not bool(batch.word_mask.any()):
                continue
            loss = loss_fn(encoder(batch, head_mask=head_mask))
            grads = iter(torch.autograd.grad(loss, [head_mask, *params], allow_unused=True))
            heads += _grad_or_zero(next(grads), head_mask).abs()
            for layer, (w_in, b_in, w_out) in enumerate(ffn):
                g_in = _grad_or_zero(next(grads), w_in)
                row = (w_in * g_in).sum(1)
                if b_in is not None:
                    row = row + b_in * _grad_or_zero(next(grads), b_in)
                g_out = _grad_or_zero(next(grads), w_out)
                neurons[layer] += row.abs() + (w_out * g_out).sum(0).abs()
    finally:
        encoder.train(was_training)
    return Importance(heads.detach(), neurons.detach())


def _take_rows(linear: nn.Linear, index: Tensor) -> None:
    linear.weight.copy_(linear.weight[index])
    if linear.bias is not None:
        linear.bias.copy_(linear.bias[index])


def _take_columns(linear: nn.Linear, index: Tensor) -> None:
    linear.weight.copy_(linear.weight[:, index])


def permute_heads(view: LayerView, order: Tensor, head_size: int) -> None:
    """Reorder the heads of one layer in place: new head i is old head order[i]."""
    offsets = torch.arange(head_size, device=order.device)
    index = (order[:, None] * head_size + offsets).reshape(-1)
    for linear in (view.q, view.k, view.v):
        _take_rows(linear, index)
    _take_columns(view.o, index)


def permute_neurons(view: LayerView, order: Tensor) -> None:
    """Reorder the feed-forward neurons of one layer in place."""
    _take_rows(view.ff_in, order)
    _take_columns(view.ff_out, order)


@torch.no_grad()
def rewire(encoder: MultiExitEncoder, importance: Importance) -> None:
    """Permute every layer's heads and neurons by descending importance (ties
    keep their order), and mark the encoder as rewired."""
    for layer, view in enumerate(encoder.layer_views):
        head_order = torch.argsort(importance.heads[layer], descending=True, stable=True)
        permute_heads(view, head_order.to(view.q.weight.device), encoder.head_size)
        neuron_order = torch.argsort(importance.neurons[layer], descending=True, stable=True)
        permute_neurons(view, neuron_order.to(view.ff_in.weight.device))
    encoder.width_rewired = True
