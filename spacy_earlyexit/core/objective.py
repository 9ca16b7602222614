"""The training objective, in one place (plain PyTorch, no spaCy).

- Stage 1: every exit is trained jointly; the per-exit cross-entropies are
  combined with layer weights (`layer_loss_weights`; Li et al. 2021 weigh exit
  l by l).
- Stage 2, self-sampling fine-tuning: the encoder's training forward lets words
  leave as at inference (TOKEE: normalized entropy, window maximum, a
  threshold), with a window and a threshold sampled per sentence
  (`SelfSampling`), and each exit's loss counts only the words still running
  at that exit (`exit_loss` with `exit_layers`).

- Adaptive width (DynaBERT): `distillation_loss` matches a narrower sub-network's
  exit logits and hidden states to the full-width teacher's; `SelfSampling`
  with a width menu samples a width per sequence as well (`sample_widths`).
- A shared encoder's tasks (`tasks.py`): each task's loss on its slice of
  the classifiers' outputs, weighted and summed (`TaskGold`,
  `task_exit_loss`); distillation matches each task's distribution apart.

Where exits come from: the model's own predictions in the same forward pass,
layer by layer, as inference makes them (dropout-free classifier outputs on
the current states, with exited neighbours frozen). The reference code
simulates exits from predictions of the stage-1 model cached once; deciding
them on the fly costs one extra classifier call per layer, follows the model
as it changes, and reproduces the frozen-neighbour states that inference sees.
"""

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .policies import normalized_entropy, upper_half_factor, window_max


def layer_loss_weights(n_layers: int, scheme: str = "linear") -> List[float]:
    """Weights of the per-exit losses: `linear` (l / sum l, Li et al. 2021),
    `uniform`, or `last` (a standard single-exit model)."""
    if scheme == "linear":
        raw = [float(depth) for depth in range(1, n_layers + 1)]
    elif scheme == "uniform":
        raw = [1.0] * n_layers
    elif scheme == "last":
        raw = [0.0] * (n_layers - 1) + [1.0]
    else:
        raise ValueError(f"Unknown layer weighting '{scheme}': use linear, uniform or last.")
    total = sum(raw)
    return [w / total for w in raw]


@dataclass
class SampledExits:
    """Per-word exit settings for one training batch; the encoder's forward
    decides exits with them and writes the result to `exit_layers`."""

    thresholds: Tensor  # [B, W] float: uncertainty threshold of each word's sentence (0: never exits)
    half_windows: Tensor  # [B, W] long: window half-width of each word's sentence
    upper_factor: float = 2.0  # threshold multiplier in the upper half of the layers
    exit_layers: Optional[Tensor] = None  # [B, W] long, 1-based: filled by the forward
    #: [T, B, W] long, 1-based: each task's exits on a shared encoder (the forward fills it)
    task_exit_layers: Optional[Tensor] = None

    def exits(self, index: int, n_layers: int, probs: Tensor, active: Tensor, words: Tensor) -> Tensor:
        """Which active words leave after layer `index` (0-based), from the
        classifier's probabilities `probs` [B, W, C]."""
        uncertainty = torch.where(words, normalized_entropy(probs), torch.zeros_like(active, dtype=probs.dtype))
        pooled = torch.zeros_like(uncertainty)
        for k in torch.unique(self.half_windows[words]).tolist():
            chosen = self.half_windows == k
            pooled = torch.where(chosen, window_max(uncertainty, int(k)), pooled)
        factor = upper_half_factor(index, n_layers, self.upper_factor)
        return active & (pooled < self.thresholds * factor)


@dataclass
class SelfSampling:
    """How stage 2 samples exit settings (design notes section 5).

    Each sentence gets a window of `min_window`..`max_window` words (odd) and a
    threshold in [`min_threshold`, `max_threshold`], doubled (`upper_factor`)
    in the upper half of the layers. Per batch, a "sandwich": a share of the
    sentences at the most aggressive setting (smallest window, largest
    threshold), a share at full depth, the rest sampled."""

    min_window: int = 5
    max_window: int = 15
    min_threshold: float = 0.01
    max_threshold: float = 0.25
    upper_factor: float = 2.0
    aggressive_share: float = 0.2
    full_depth_share: float = 0.4

    def __post_init__(self) -> None:
        self.min_window, self.max_window = int(self.min_window), int(self.max_window)
        if not (1 <= self.min_window <= self.max_window) or self.min_window % 2 == 0 or self.max_window % 2 == 0:
            raise ValueError("self-sampling windows must be odd numbers of words with min_window <= max_window.")
        if not (0 <= self.min_threshold <= self.max_threshold):
            raise ValueError("self-sampling thresholds need 0 <= min_threshold <= max_threshold.")
        if self.aggressive_share < 0 or self.full_depth_share < 0 or self.aggressive_share + self.full_depth_share > 1:
            raise ValueError("aggressive_share and full_depth_share must be >= 0 and add up to at most 1.")

    def to_dict(self) -> Dict:
        return asdict(self)

    def sample(
        self, groups: Tensor, words: Tensor, generator: Optional[torch.Generator] = None, sandwich: bool = True
    ) -> SampledExits:
        """Settings for every word of a batch; `groups` [B, W] numbers the
        sentences (words of one sentence share a setting). `sandwich=False`
        samples every sentence (the width sandwich works per sequence)."""
        keys = groups + (groups.max() + 1) * torch.arange(groups.shape[0])[:, None]
        unique, inverse = torch.unique(keys, return_inverse=True)
        n = len(unique)
        order = torch.randperm(n, generator=generator)
        n_aggressive = int(round(self.aggressive_share * n)) if sandwich else 0
        n_full = int(round(self.full_depth_share * n)) if sandwich else 0
        half = torch.randint(self.min_window // 2, self.max_window // 2 + 1, (n,), generator=generator)
        thresholds = self.min_threshold + (self.max_threshold - self.min_threshold) * torch.rand(n, generator=generator)
        aggressive, full = order[:n_aggressive], order[n_aggressive : n_aggressive + n_full]
        half[aggressive] = self.min_window // 2
        thresholds[aggressive] = self.max_threshold
        thresholds[full] = 0.0
        return SampledExits(
            thresholds=torch.where(words, thresholds[inverse], torch.zeros(())),
            half_windows=half[inverse],
            upper_factor=self.upper_factor,
        )


def exit_loss(
    logits: Tensor, gold: Tensor, weights: Tensor, exit_layers: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Layer-weighted cross-entropy of every exit and its gradient.

    logits [L, N, C]; gold [N] (class ids, -1 unknown: skipped); weights [L];
    exit_layers [N] (1-based): exit l counts a word only while it is still
    running (l <= its exit layer). The sum is divided by the number of words
    with known gold, so the scale does not depend on the batch size.
    Returns (loss, d_logits); the loss is differentiable as well."""
    L, N, C = logits.shape
    known = gold >= 0
    counts = torch.ones(L, N, dtype=logits.dtype, device=logits.device) * known.to(logits.dtype)
    if exit_layers is not None:
        layer_numbers = torch.arange(1, L + 1, device=logits.device)[:, None]
        counts = counts * (layer_numbers <= exit_layers[None, :]).to(logits.dtype)
    scale = weights[:, None].to(logits) * counts / max(1, int(known.sum()))
    log_probs = torch.log_softmax(logits, -1)
    target = gold.clamp(min=0)
    picked = log_probs.gather(-1, target[None, :, None].expand(L, N, 1))[..., 0]
    loss = -(scale * picked).sum()
    grad = log_probs.detach().exp()
    grad.scatter_add_(-1, target[None, :, None].expand(L, N, 1), -torch.ones_like(grad[..., :1]))
    return loss, grad * scale[..., None]


@dataclass
class TaskGold:
    """One task's gold for a training batch: class ids [N] over the task's
    own labels (-1: unknown), its slice of the exit classifiers' outputs
    (None: all of them, a single task), the weight of its loss, and its
    position among a shared encoder's tasks (which of the sampled exits,
    `SampledExits.task_exit_layers`, are its own)."""

    gold: Tensor
    part: Optional[slice] = None
    weight: float = 1.0
    index: int = 0


def task_exit_loss(
    logits: Tensor, tasks: Sequence[TaskGold], weights: Tensor, exit_layers: Optional[Tensor] = None
) -> Tensor:
    """The tasks' `exit_loss` on their slices of `logits` [L, N, C], each
    times its weight, summed (differentiable). `exit_layers`: [N], every
    task's, or [T, N], each task's own (by `TaskGold.index`)."""
    total = logits.new_zeros(())
    for task in tasks:
        layers = exit_layers
        if exit_layers is not None and exit_layers.dim() == 2:
            layers = exit_layers[task.index]
        scores = logits if task.part is None else logits[..., task.part]
        loss, _ = exit_loss(scores, task.gold.to(logits.device), weights, layers)
        total = total + task.weight * loss
    return total


def sample_widths(
    sampled: SampledExits,
    sampling: SelfSampling,
    groups: Tensor,
    words: Tensor,
    menu: Sequence[float],
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """A width per sequence [B] for self-sampling across width and exit, and
    the sandwich at the sequence level: `aggressive_share` of the sequences at
    the narrowest width with every sentence at the most aggressive exit
    setting, `full_depth_share` at full width and full depth, the rest at a
    width drawn from `menu` with the exits `sampled` per sentence (sampled
    with `sandwich=False`; this updates them in place for the sandwich rows)."""
    B = groups.shape[0]
    menu = sorted(float(w) for w in menu)
    order = torch.randperm(B, generator=generator)
    n_aggressive = int(round(sampling.aggressive_share * B))
    n_full = int(round(sampling.full_depth_share * B))
    picks = torch.randint(0, len(menu), (B,), generator=generator)
    widths = torch.tensor(menu, dtype=torch.float64)[picks]
    aggressive, full = order[:n_aggressive], order[n_aggressive : n_aggressive + n_full]
    widths[aggressive] = menu[0]
    widths[full] = 1.0
    sampled.thresholds[aggressive] = torch.where(words[aggressive], sampling.max_threshold, 0.0).to(sampled.thresholds)
    sampled.half_windows[aggressive] = sampling.min_window // 2
    sampled.thresholds[full] = 0.0
    return widths


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    weights: Tensor,
    logits_weight: float = 1.0,
    hidden_weight: float = 1.0,
    temperature: float = 1.0,
    parts: Optional[Sequence[slice]] = None,
) -> Tensor:
    """DynaBERT's width distillation: every exit's predicted distribution
    against the teacher's (KL divergence at `temperature`, exits combined
    with the layer `weights` [L]), plus the mean squared error between every
    layer's hidden states (summed over layers, averaged over pieces and
    dimensions). logits [L, N, C]; hidden [L, P, d]. With `parts` (a shared
    encoder's tasks), each slice of the outputs is a distribution of its own
    and their divergences are summed."""
    t = float(temperature)
    kl = student_logits.new_zeros(student_logits.shape[0])  # [L]
    for part in parts or [slice(None)]:
        log_student = torch.log_softmax(student_logits[..., part] / t, -1)
        log_teacher = torch.log_softmax(teacher_logits[..., part] / t, -1)
        kl = kl + (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean(-1)
    logits_term = (weights.to(kl) * kl).sum() * t * t
    hidden_term = ((student_hidden - teacher_hidden) ** 2).mean((1, 2)).sum()
    return logits_weight * logits_term + hidden_weight * hidden_term
