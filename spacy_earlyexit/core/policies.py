"""Exit policies: when a word may leave the encoder. Plain PyTorch, no spaCy.

A policy sees, after each layer, the uncertainty of every word's current
prediction and says which still-active words leave now. Words still active at
the policy's last layer leave there. A policy that `tracks_stability` also sees,
per word, for how many layers its predicted label has stayed the same
(`stability_counts`).
"""

import math
import numbers
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalized_entropy(probs: Tensor) -> Tensor:
    """Entropy of each row of `probs` divided by log(C): 0 (certain) .. 1."""
    n_labels = probs.shape[-1]
    if n_labels < 2:
        return probs.new_zeros(probs.shape[:-1])
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return (entropy / math.log(n_labels)).clamp(0.0, 1.0)


def max_prob_uncertainty(probs: Tensor) -> Tensor:
    """One minus the highest probability: 0 (certain) .. 1 - 1/C."""
    return 1.0 - probs.max(-1).values


UNCERTAINTY_MEASURES = {"entropy": normalized_entropy, "max_prob": max_prob_uncertainty}


def window_max(values: Tensor, half_width: int) -> Tensor:
    """Maximum of `values` [B, W] over `half_width` words on each side (clipped
    at the edges): TOKEE's window, as a 1-D max-pool with stride 1."""
    if half_width <= 0:
        return values
    k = min(half_width, values.shape[1])
    return F.max_pool1d(values[:, None, :], 2 * k + 1, stride=1, padding=k)[:, 0]


def window_min(values: Tensor, half_width: int) -> Tensor:
    """Minimum of `values` [B, W] (floating point) over `half_width` words on
    each side, clipped at the edges (`window_max` of the negated values)."""
    if half_width <= 0:
        return values
    return -window_max(-values, half_width)


def stability_counts(labels: Tensor) -> Tensor:
    """For labels [..., L, W] (one predicted label per layer per word), how many
    consecutive layers before each layer the word's label has been unchanged:
    int64 [..., L, W], 0 at the first layer and wherever the label differs from
    the layer before, else one more than at the layer before (labels A, A, A
    give 0, 1, 2). `TokenPatience` sees row `index` of this as `stable` after
    layer `index` (0-based), which is what the encoder's loop keeps for the
    words still running."""
    if labels.dim() < 2:
        raise ValueError(f"stability_counts needs labels [..., L, W], got shape {tuple(labels.shape)}.")
    counts = torch.zeros(labels.shape, dtype=torch.long, device=labels.device)
    for index in range(1, labels.shape[-2]):
        same = labels[..., index, :] == labels[..., index - 1, :]
        counts[..., index, :] = torch.where(same, counts[..., index - 1, :] + 1, 0)
    return counts


def _is_whole_number(value) -> bool:
    """An integer, or a float without a fractional part (configs may say 2.0);
    not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def _check_threshold(value, name: str) -> float:
    """A threshold as a float: a real number >= 0. NaN is refused: it compares
    false with every uncertainty, so no word would ever leave early."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    return float(value)


class ExitPolicy:
    """Full-depth behaviour; subclasses decide earlier exits."""

    name = "full"
    #: whether the classifier of every layer must run (not only the last one)
    needs_every_exit = False
    #: whether `exits` takes `stable=`: int64 [B, W], for each word how many
    #: consecutive layers before this one its label has been unchanged (see
    #: `stability_counts`); policies without it are called without that argument
    tracks_stability = False

    def __init__(self, uncertainty: str = "entropy") -> None:
        if uncertainty not in UNCERTAINTY_MEASURES:
            raise ValueError(f"Unknown uncertainty measure '{uncertainty}': use one of {sorted(UNCERTAINTY_MEASURES)}.")
        self.uncertainty_name = uncertainty
        self._uncertainty = UNCERTAINTY_MEASURES[uncertainty]

    def uncertainty(self, probs: Tensor) -> Tensor:
        return self._uncertainty(probs)

    def last_layer(self, n_layers: int) -> int:
        """1-based index of the deepest layer this policy runs."""
        return n_layers

    def check_depth(self, n_layers: int) -> None:
        """Raise ValueError if this policy cannot run on an encoder of
        `n_layers` layers (checked once the encoder is known, not per doc)."""

    def exits(self, index: int, n_layers: int, uncertainty: Tensor, active: Tensor, words: Tensor) -> Tensor:
        """Which words leave after layer `index` (0-based): bool [B, W]."""
        return torch.zeros_like(active)

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class FullDepth(ExitPolicy):
    """Every word runs every layer (the reference point)."""


class FixedDepth(ExitPolicy):
    """Every word leaves after `layer` layers: a statically truncated model."""

    name = "fixed_depth"

    def __init__(self, layer: int) -> None:
        super().__init__()
        if not _is_whole_number(layer) or layer < 1:
            raise ValueError(f"fixed_depth needs a whole number layer >= 1, got {layer!r}.")
        self.layer = int(layer)

    def check_depth(self, n_layers: int) -> None:
        if self.layer > n_layers:
            raise ValueError(f"fixed_depth layer {self.layer} exceeds the encoder's {n_layers} layers.")

    def last_layer(self, n_layers: int) -> int:
        self.check_depth(n_layers)
        return self.layer

    def params(self) -> dict:
        return {"layer": self.layer}


class ThresholdPolicy(ExitPolicy):
    """Shared handling of one threshold or one threshold per layer."""

    needs_every_exit = True

    def __init__(
        self,
        threshold: float,
        uncertainty: str = "entropy",
        layer_thresholds: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(uncertainty)
        self.threshold = _check_threshold(threshold, "threshold")
        self.layer_thresholds: Optional[List[float]] = None
        if layer_thresholds is not None:
            values = list(layer_thresholds)
            if not values:
                raise ValueError(
                    "layer_thresholds is empty: give one threshold per encoder layer, "
                    "or leave it out to use `threshold` at every layer."
                )
            self.layer_thresholds = [
                _check_threshold(value, f"layer_thresholds[{i}]") for i, value in enumerate(values)
            ]

    def check_depth(self, n_layers: int) -> None:
        if self.layer_thresholds is not None and len(self.layer_thresholds) != n_layers:
            raise ValueError(
                f"layer_thresholds has {len(self.layer_thresholds)} values but the encoder has {n_layers} layers."
            )

    def threshold_at(self, index: int, n_layers: int) -> float:
        if self.layer_thresholds is None:
            return self.threshold
        self.check_depth(n_layers)
        return self.layer_thresholds[index]

    def params(self) -> dict:
        out: dict = {"threshold": self.threshold, "uncertainty": self.uncertainty_name}
        if self.layer_thresholds is not None:
            out["layer_thresholds"] = self.layer_thresholds
        return out


class SentenceExit(ThresholdPolicy):
    """SENTEE: a sequence leaves as a whole once its most uncertain word is
    below the threshold."""

    name = "sentence"

    def exits(self, index, n_layers, uncertainty, active, words):
        seq_unc = torch.where(words, uncertainty, torch.zeros_like(uncertainty)).amax(1)
        leave = seq_unc < self.threshold_at(index, n_layers)
        return active & leave[:, None]


class TokenWindowExit(ThresholdPolicy):
    """TOKEE: a word leaves once the maximum uncertainty in the window of
    `window` words on each side (clipped at the sequence edges) is below the
    threshold. Exited words keep the uncertainty they left with."""

    name = "token_window"

    def __init__(
        self,
        threshold: float,
        window: int = 2,
        uncertainty: str = "entropy",
        layer_thresholds: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(threshold, uncertainty, layer_thresholds)
        if not _is_whole_number(window) or window < 0:
            raise ValueError(f"window must be a whole number >= 0, got {window!r}.")
        self.window = int(window)

    def exits(self, index, n_layers, uncertainty, active, words):
        values = window_max(torch.where(words, uncertainty, torch.zeros_like(uncertainty)), self.window)
        return active & (values < self.threshold_at(index, n_layers))

    def params(self) -> dict:
        return {"window": self.window, **super().params()}


class TokenPatience(ExitPolicy):
    """Patience per token: a word leaves once its predicted label (the argmax
    of its exit classifier) has stayed the same for `patience` consecutive
    layers, i.e. after layer i (0-based) when its labels at layers
    i - patience .. i are all equal; the earliest exit is after layer
    `patience` (0-based). PABEE (Zhou et al., 2020) applies this rule to a
    whole sequence's prediction; here each word counts its own.

    With `window` > 0 a word also waits for every word within `window` words on
    each side (clipped at the sequence edges) to be that stable; words that
    have already left (and padding) count as stable. Exits depend only on the
    labels, not on the uncertainty measure (entropy, reported as for every
    policy)."""

    name = "token_patience"
    needs_every_exit = True
    tracks_stability = True

    def __init__(self, patience: int = 2, window: int = 0) -> None:
        super().__init__()
        if not _is_whole_number(patience) or patience < 1:
            raise ValueError(f"patience must be a whole number >= 1, got {patience!r}.")
        if not _is_whole_number(window) or window < 0:
            raise ValueError(f"window must be a whole number >= 0, got {window!r}.")
        self.patience = int(patience)
        self.window = int(window)

    def exits(self, index, n_layers, uncertainty, active, words, stable: Optional[Tensor] = None):
        if stable is None:
            raise ValueError("token_patience needs each word's stability count: pass `stable=` (int64 [B, W]).")
        # only the running words can hold a window back: the others are infinitely stable
        counts = torch.where(active, stable.to(torch.float32), math.inf)
        return active & (window_min(counts, self.window) >= self.patience)

    def params(self) -> dict:
        return {"patience": self.patience, "window": self.window}


def upper_half_thresholds(threshold: float, upper_factor: float, n_layers: int) -> List[float]:
    """Per-layer thresholds that multiply `threshold` by `upper_factor` in the
    upper half of the layers (the reference's rule; `n_layers // 2` lower
    layers keep `threshold`)."""
    lower = n_layers // 2
    return [threshold] * lower + [threshold * upper_factor] * (n_layers - lower)


def upper_half_factor(index: int, n_layers: int, upper_factor: float) -> float:
    """The factor `upper_half_thresholds` applies at layer `index` (0-based)."""
    return upper_factor if index >= n_layers // 2 else 1.0


#: every policy by its short name (as operating points and configs name them)
POLICIES = {cls.name: cls for cls in (FullDepth, FixedDepth, SentenceExit, TokenWindowExit, TokenPatience)}


def make_policy(name: str, **params) -> ExitPolicy:
    """Build a policy by short name: full, fixed_depth, sentence, token_window,
    token_patience."""
    if name not in POLICIES:
        raise ValueError(f"Unknown exit policy '{name}': use one of {sorted(POLICIES)}.")
    return POLICIES[name](**params)
