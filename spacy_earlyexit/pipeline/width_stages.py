"""The component's adaptive-width work: preparing a width-adaptive training
stage, one step of it (distillation or self-sampling across width and exit,
`core/width_training.py`), and rewiring the encoder for width (ranking heads
and neurons, `core/importance.py`). `EarlyExitLabeler` calls these with itself as `component`;
a shared encoder (`shared.py`) too, its tasks' gold and slices given by its
`_width_tasks` and `_width_parts`."""

from itertools import islice
from typing import Callable, Iterable, List

import torch
from spacy import util
from spacy.training import Example, validate_examples

from ..core.importance import Importance, compute_importance, rewire
from ..core.objective import SelfSampling, layer_loss_weights, task_exit_loss
from ..core.width import width_in_menu
from ..core.width_training import distill_step, frozen_teacher, width_self_sampling_step
from .model import training_batch, training_inputs


def trained_widths(component) -> tuple:
    """The widths a width-adaptive stage trains (checked against the menu)."""
    widths = component.width_training.widths or component.width_multipliers
    for width in widths:
        width_in_menu(width, component.width_multipliers)
    return tuple(widths)


def prepare_width_training(component, get_examples: Callable[[], Iterable[Example]]) -> None:
    """Before a width-adaptive stage: rank heads and neurons on training
    examples unless the encoder is already rewired, and keep a frozen
    full-width copy as the distillation teacher."""
    settings = component.width_training
    widths = trained_widths(component)
    encoder = component.encoder
    if len(widths) > 1 and not encoder.width_rewired:
        rewire_width(component, islice(get_examples(), settings.importance_examples))
    component._teacher = frozen_teacher(encoder) if settings.phase == "distill" else None


def width_update(component, examples: List[Example], drop: float) -> float:
    """One step of the width-adaptive stage (`width_training.py`):
    gradients accumulate on the encoder's parameters; returns the loss."""
    model = component.model
    inputs = training_inputs(model, [eg.predicted for eg in examples])
    if inputs is None:
        return 0.0
    batch, rows, groups = inputs
    encoder = component.encoder
    encoder.set_dropout(model.attrs.get("dropout_rate"))
    weights = torch.tensor(layer_loss_weights(encoder.n_layers, model.attrs["layer_weighting"]))
    widths = trained_widths(component)
    precision = model.attrs["training_precision"]
    try:
        if component.width_training.phase == "distill":
            if component._teacher is None:  # update without initialize: the current weights teach
                component._teacher = frozen_teacher(encoder)
            return distill_step(
                encoder,
                component._teacher,
                batch,
                widths,
                component.width_training,
                weights,
                precision=precision,
                parts=component._width_parts(),
            )
        tasks = component._width_tasks(examples, rows, batch.n_words)
        sampling = SelfSampling(**model.attrs["self_sampling"])
        return width_self_sampling_step(
            encoder,
            batch,
            groups,
            tasks,
            sampling,
            widths,
            weights,
            precision=precision,
            task_sizes=model.attrs.get("task_sizes"),
        )
    finally:
        encoder.set_dropout(None)


def rewire_width(component, examples: Iterable[Example], *, batch_size: int = 32) -> Importance:
    """`EarlyExitLabeler.rewire_for_width`: rank the heads and neurons of the
    component's encoder on `examples` and permute its weights; the optimizer's
    state and the weight averages, which follow the old order, are dropped."""
    examples = list(examples)
    validate_examples(examples, f"{type(component).__name__}.rewire_for_width")
    model = component.model
    shim = model.shims[0]
    encoder = shim.encoder
    weights = torch.tensor(layer_loss_weights(encoder.n_layers, model.attrs["layer_weighting"]))

    def batches():
        for chunk in util.minibatch(examples, batch_size):
            built = training_batch(model, [eg.predicted for eg in chunk])
            if built is None:
                continue
            batch, rows = built
            tasks = component._width_tasks(chunk, rows, batch.n_words)
            if any(bool((task.gold >= 0).any()) for task in tasks):
                yield batch, lambda logits, tasks=tasks: task_exit_loss(logits, tasks, weights)

    importance = compute_importance(encoder, batches())
    if not bool(importance.heads.any()):
        raise ValueError(
            f"'{component.name}' cannot rewire for width: the examples have no gold "
            "annotation it learns from, so no head or neuron has an importance."
        )
    rewire(encoder, importance)
    shim._torch_optimizer = None  # its moments belong to the old order of the weights
    shim.forget_averages()  # and so do the averages
    return importance
