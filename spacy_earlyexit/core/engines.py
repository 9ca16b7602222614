"""Engines: what runs a trained multi-exit encoder's weights on a batch.

The component labels with its encoder's own layer loop (`OwnLoop`, the only
engine that lets words leave early). The other engines run the same weights
another way, at full depth and full width, so that a benchmark can compare
them through the very same tokenization, batching, alignment and annotation:
Hugging Face's own `forward` here, ONNX Runtime and OpenVINO in
`benchmarks/peers.py`. Every engine has the one method `predict`, and a
component runs on one by `component.running_on(engine)` (nothing is patched).

Plain PyTorch, no spaCy.
"""

import copy
import weakref
from typing import Dict, Optional

import torch

from .batch import EncoderBatch, ExitOutput
from .policies import ExitPolicy, FullDepth


def full_depth_output(encoder, hidden: torch.Tensor, batch: EncoderBatch) -> ExitOutput:
    """What a full-depth engine returns from the last hidden states [B, T, d]
    of `batch`: every word labelled by the encoder's last exit classifier
    (its softmax in float32), exit layer the last, cost the full pass."""
    states = encoder.word_states(hidden, batch).float()
    probs = encoder.heads[-1](states).softmax(-1)
    labels = probs.argmax(-1)
    n_pieces = batch.piece_mask.sum(1).double()
    full = encoder.layer_cost.full(n_pieces, batch.word_mask.sum(1).double(), encoder.n_layers)
    layers = torch.full_like(labels, encoder.n_layers)
    return ExitOutput(labels, layers, torch.zeros(labels.shape), full, full, probs)


class Engine:
    """Runs an encoder's weights on a batch: `predict` takes what
    `MultiExitEncoder.predict` takes, the encoder first, and returns its
    `ExitOutput`."""

    #: a short name for tables and metrics
    name = "engine"
    #: whether the engine runs exit policies (else: full depth, full width only)
    exits = False

    def predict(
        self, encoder, batch: EncoderBatch, policy: Optional[ExitPolicy], width: float, precision: str
    ) -> ExitOutput:
        raise NotImplementedError

    def check(self, policy: Optional[ExitPolicy], width: float) -> None:
        """A ValueError if this engine cannot run `policy` at `width`."""
        if self.exits:
            return
        if not (policy is None or type(policy) is FullDepth) or width != 1.0:
            raise ValueError(
                f"The engine '{self.name}' runs full depth at full width only, not {policy!r} at width {width:g}."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class OwnLoop(Engine):
    """The encoder's own layer loop, where words leave early (the default)."""

    name = "earlyexit"
    exits = True

    def predict(self, encoder, batch, policy, width, precision):
        return encoder.predict(batch, policy, width=width, precision=precision)


class HuggingFaceForward(Engine):
    """Hugging Face's own `forward` of the backbone (every layer, padded
    batches), with the encoder's casing and lexical embeddings added to the
    embedding output as its own loop adds them, and its last exit's
    classifier: a like-for-like timing of the same weights. In bf16 it runs
    a bf16 copy of the backbone (the usual way to run a Hugging Face model in
    bf16), made once per encoder; other precisions run in fp32 (int8 is
    not offered)."""

    name = "hf_forward"

    def __init__(self) -> None:
        self._copies: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()

    def _backbone(self, encoder, precision: str) -> torch.nn.Module:
        if precision != "bf16":
            return encoder.backbone
        if encoder not in self._copies:
            self._copies[encoder] = copy.deepcopy(encoder.backbone).to(torch.bfloat16).eval()
        return self._copies[encoder]

    @torch.inference_mode()
    def predict(self, encoder, batch, policy, width, precision):
        self.check(policy, width)
        backbone = self._backbone(encoder, precision)
        hook = backbone.embeddings.register_forward_hook(
            lambda m, i, out: encoder.add_token_features(out.float(), batch).to(out.dtype)
        )
        try:
            hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.piece_mask.long()).last_hidden_state
        finally:
            hook.remove()
        return full_depth_output(encoder, hidden, batch)

    def __getstate__(self) -> Dict:
        return {}  # the bf16 copies are made again where needed

    def __setstate__(self, state: Dict) -> None:
        self.__init__()
