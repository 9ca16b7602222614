"""Training steps for adaptive width (DynaBERT) together with token exit.

Plain PyTorch, no spaCy. Two phases, each a training stage of its own:

- `distill`: the encoder, rewired by importance, learns to work at every
  width of its menu by matching a frozen copy of itself at full width (the
  teacher): every exit's logits and every layer's hidden states, one
  forward/backward per width per step, gradients accumulated (DynaBERT).
- `self_sampling`: self-sampling fine-tuning (stage 2) with the sandwich
  spanning width and exit: each sequence runs at a sampled width with exits
  sampled per sentence; in every batch some sequences run at the narrowest
  width with the most aggressive exit, some at full width and full depth.
  The loss is the gold exit loss, as in stage 2.

On a shared encoder (`tasks.py`) both work per task: distillation matches
each task's distribution apart, self-sampling samples each task's exits and
sums the tasks' weighted losses (`TaskGold`). Both steps only accumulate
gradients; the caller applies them.
"""

import copy
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .batch import EncoderBatch
from .encoder import MultiExitEncoder
from .objective import SelfSampling, TaskGold, distillation_loss, sample_widths, task_exit_loss
from .width import check_width_menu

PHASES = ("distill", "self_sampling")


@dataclass
class WidthTraining:
    """How a width-adaptive training stage trains (see the module docstring).

    phase: "distill" or "self_sampling".
    widths: the widths trained, None for the component's `width_multipliers`.
    widths_per_step: distillation: how many widths each step trains (None:
        all, as DynaBERT); k keeps the sandwich rule: the narrowest and the
        full width every step, k - 2 others drawn at random.
    logits_weight, hidden_weight, temperature: the distillation loss.
    importance_examples: training examples used to rank heads and neurons
        when the stage starts from a model that was never rewired.
    """

    phase: str = "distill"
    widths: Optional[Sequence[float]] = None
    widths_per_step: Optional[int] = None
    logits_weight: float = 1.0
    hidden_weight: float = 1.0
    temperature: float = 1.0
    importance_examples: int = 200

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"width_training phase must be one of {', '.join(PHASES)}, got {self.phase!r}.")
        if self.widths is not None:
            self.widths = check_width_menu(self.widths)
        if self.widths_per_step is not None and (
            isinstance(self.widths_per_step, bool) or int(self.widths_per_step) < 2
        ):
            raise ValueError(
                f"widths_per_step must be >= 2 (the narrowest and the full width) or null, "
                f"got {self.widths_per_step!r}."
            )
        if self.logits_weight < 0 or self.hidden_weight < 0 or self.logits_weight + self.hidden_weight == 0:
            raise ValueError("width_training needs logits_weight and hidden_weight >= 0, not both 0.")
        if not self.temperature > 0:
            raise ValueError(f"width_training temperature must be > 0, got {self.temperature!r}.")
        if isinstance(self.importance_examples, bool) or int(self.importance_examples) < 1:
            raise ValueError(f"importance_examples must be >= 1, got {self.importance_examples!r}.")
        self.importance_examples = int(self.importance_examples)

    def to_dict(self) -> Dict:
        data = asdict(self)
        data["widths"] = list(self.widths) if self.widths is not None else None
        return data


def frozen_teacher(encoder: MultiExitEncoder) -> MultiExitEncoder:
    """A copy of `encoder` that never trains: the full-width teacher."""
    teacher = copy.deepcopy(encoder).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def step_widths(
    widths: Sequence[float], per_step: Optional[int], generator: Optional[torch.Generator] = None
) -> List[float]:
    """The widths one distillation step trains: all of them, or the narrowest,
    the widest and `per_step - 2` others at random."""
    ordered = sorted(widths)
    if per_step is None or per_step >= len(ordered):
        return ordered
    middle = ordered[1:-1]
    picked = torch.randperm(len(middle), generator=generator)[: per_step - 2].tolist()
    return [ordered[0]] + sorted(middle[i] for i in picked) + [ordered[-1]]


def distill_step(
    student: MultiExitEncoder,
    teacher: MultiExitEncoder,
    batch: EncoderBatch,
    widths: Sequence[float],
    settings: WidthTraining,
    layer_weights: Tensor,
    precision: str = "fp32",
    parts: Optional[Sequence[slice]] = None,
) -> float:
    """One distillation step: the teacher once at full width, the student at
    every width (widest first), each loss backpropagated at once so that only
    one width's graph is alive; the student's products in `precision` (fp32,
    or bf16 under autocast), the teacher in float32; `parts`: a shared
    encoder's task slices, each distilled as a distribution of its own.
    Returns the summed loss."""
    with torch.no_grad():
        teacher.eval()
        teacher_logits, teacher_hidden = teacher(batch, return_hidden=True)
    student.train()
    total = 0.0
    for width in sorted(step_widths(widths, settings.widths_per_step), reverse=True):
        logits, hidden = student(batch, width=width, return_hidden=True, precision=precision)
        loss = distillation_loss(
            logits,
            teacher_logits,
            hidden,
            teacher_hidden,
            layer_weights,
            settings.logits_weight,
            settings.hidden_weight,
            settings.temperature,
            parts,
        )
        loss.backward()
        total += float(loss.detach())
    return total


def width_self_sampling_step(
    encoder: MultiExitEncoder,
    batch: EncoderBatch,
    groups: Tensor,
    gold: Union[Tensor, Sequence[TaskGold]],
    sampling: SelfSampling,
    widths: Sequence[float],
    layer_weights: Tensor,
    generator: Optional[torch.Generator] = None,
    precision: str = "fp32",
    task_sizes: Optional[Sequence[int]] = None,
) -> float:
    """One self-sampling step across width and exit: sequences grouped by
    their sampled width, each group one forward with its sampled exits and
    the gold exit loss (each task's weighted by its share of the batch's gold
    words), backpropagated group by group; products in `precision` (fp32,
    or bf16 under autocast). `gold` [n_words] follows the batch's word order
    (-1: unknown); on a shared encoder, one `TaskGold` per task, with
    `task_sizes` (every task's number of labels, in the order of the
    classifiers' outputs): each task samples its own exits with the
    sequence's settings, as in stage 2. Returns the loss."""
    tasks = [TaskGold(gold)] if isinstance(gold, Tensor) else list(gold)
    several = task_sizes is not None and len(task_sizes) > 1
    words = batch.word_mask.cpu()
    sampled = sampling.sample(groups, words, generator, sandwich=False)
    row_widths = sample_widths(sampled, sampling, groups, words, widths, generator)
    grids = []
    for task in tasks:
        grid = torch.full(words.shape, -1, dtype=torch.long)
        grid[words] = task.gold.cpu()
        grids.append(grid)
    n_known = [max(1, int((task.gold >= 0).sum())) for task in tasks]
    encoder.train()
    total = 0.0
    for width in torch.unique(row_widths).tolist():
        rows = (row_widths == width).nonzero(as_tuple=True)[0]
        part = batch.select_rows(rows.to(batch.input_ids.device))
        part_words = part.word_mask.cpu()
        part_tasks = []
        for task, grid, known in zip(tasks, grids, n_known):
            part_gold = grid[rows, : part_words.shape[1]][part_words]
            share = int((part_gold >= 0).sum()) / known  # the part's share of the task's gold words
            part_tasks.append(TaskGold(part_gold, task.part, task.weight * share, task.index))
        if not any(bool((task.gold >= 0).any()) for task in part_tasks):
            continue
        exits = type(sampled)(
            thresholds=sampled.thresholds[rows, : part_words.shape[1]].to(part.input_ids.device),
            half_windows=sampled.half_windows[rows, : part_words.shape[1]].to(part.input_ids.device),
            upper_factor=sampled.upper_factor,
        )
        extra = {"task_sizes": list(task_sizes)} if several else {}
        logits = encoder(part, sampled_exits=exits, width=float(width), precision=precision, **extra)
        if exits.task_exit_layers is not None:
            run_layers = exits.task_exit_layers[:, part.word_mask]  # [T, n_words]: each task's own
        else:
            run_layers = exits.exit_layers[part.word_mask]
        loss = task_exit_loss(logits, part_tasks, layer_weights, run_layers)
        loss.backward()
        total += float(loss.detach())
    return total
