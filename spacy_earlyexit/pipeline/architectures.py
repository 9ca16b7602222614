"""Every registered function of spacy-earlyexit but the exit policies (which
have a registry of their own, `exit_policies.py`): the model architecture,
the earlier names of the exit policies, training settings, the learning-rate schedule,
the run-length functions of `[training]`, the corpus augmenter and span getters. Names are namespaced and versioned
(`spacy-earlyexit.X.v1`); a v2 keeps its v1 registered beside it.

Importing this module registers them (the package's `__init__` does); the
package's entry points name them too, so a config that uses one loads
without importing the package first.
"""

from typing import Callable, List, Optional

from spacy.tokens import Doc, Span
from spacy.util import registry

from ..core.objective import SelfSampling
from ..core.width_training import WidthTraining
from . import exit_policies
from .augment import sentence_windows as build_sentence_windows
from .model import EarlyExitListener as build_listener
from .model import MultiExitTransformer as build_multi_exit_transformer
from .schedules import epoch_eval_frequency as build_epoch_eval_frequency
from .schedules import epochs_as_steps as build_epochs_as_steps
from .schedules import warmup_linear_epochs as build_warmup_linear_epochs

# -- model ---------------------------------------------------------------------


#: see `pipeline.model.MultiExitTransformer` for its settings
MultiExitTransformer = registry.architectures("spacy-earlyexit.MultiExitTransformer.v1")(build_multi_exit_transformer)
#: a task component's model that reads a shared encoder (`earlyexit_transformer`, pipeline/shared.py)
EarlyExitListener = registry.architectures("spacy-earlyexit.EarlyExitListener.v1")(build_listener)

# -- exit policies -----------------------------------------------------------------
# They have a registry of their own (`exit_policies.py`: `@exit_policies =
# "spacy-earlyexit.token_window.v1"`). The names of the first releases stay
# registered under misc, so configs that use them still load.

make_full_depth = registry.misc("spacy-earlyexit.full_depth.v1")(exit_policies.full)
make_fixed_depth = registry.misc("spacy-earlyexit.fixed_depth.v1")(exit_policies.fixed_depth)
make_sentence_exit = registry.misc("spacy-earlyexit.sentence_exit.v1")(exit_policies.sentence)
make_token_window_exit = registry.misc("spacy-earlyexit.token_window_exit.v1")(exit_policies.token_window)


# -- training ----------------------------------------------------------------------


@registry.misc("spacy-earlyexit.self_sampling.v1")
def make_self_sampling(
    min_window: int = 5,
    max_window: int = 15,
    min_threshold: float = 0.01,
    max_threshold: float = 0.25,
    upper_factor: float = 2.0,
    aggressive_share: float = 0.2,
    full_depth_share: float = 0.4,
) -> SelfSampling:
    """Self-sampling fine-tuning (stage 2): exits sampled per sentence in training."""
    return SelfSampling(
        min_window, max_window, min_threshold, max_threshold, upper_factor, aggressive_share, full_depth_share
    )


@registry.misc("spacy-earlyexit.width_training.v1")
def make_width_training(
    phase: str = "distill",
    widths: Optional[List[float]] = None,
    widths_per_step: Optional[int] = None,
    logits_weight: float = 1.0,
    hidden_weight: float = 1.0,
    temperature: float = 1.0,
    importance_examples: int = 200,
) -> WidthTraining:
    """A width-adaptive training stage (DynaBERT): `distill` every width from
    the full-width model, or `self_sampling` across width and exit."""
    return WidthTraining(phase, widths, widths_per_step, logits_weight, hidden_weight, temperature, importance_examples)


#: warm-up, then linear decay over a run whose length follows the corpus
warmup_linear_epochs = registry.schedules("spacy-earlyexit.warmup_linear_epochs.v1")(build_warmup_linear_epochs)

#: `[training.eval_frequency]`: one epoch of the training corpus (or a part of one), in steps
epoch_eval_frequency = registry.misc("spacy-earlyexit.epoch_eval_frequency.v1")(build_epoch_eval_frequency)

#: `[training.max_steps]`: a number of epochs as steps, ending on an evaluated step
epochs_as_steps = registry.misc("spacy-earlyexit.epochs_as_steps.v1")(build_epochs_as_steps)

# -- corpus augmenters ------------------------------------------------------------

#: documents, and sometimes their sentences alone (see `pipeline.augment`)
sentence_windows = registry.augmenters("spacy-earlyexit.sentence_windows.v1")(build_sentence_windows)


# -- span getters (spacy-transformers', imported when one is built) -----------------


@registry.misc("spacy-earlyexit.sent_spans.v1")
def make_sent_spans() -> Callable[[List[Doc]], List[List[Span]]]:
    """Read each sentence as its own context window (spacy-transformers'
    `sent_spans`). Needs sentence boundaries on the docs."""
    from spacy_transformers.span_getters import configure_get_sent_spans

    return configure_get_sent_spans()


@registry.misc("spacy-earlyexit.strided_spans.v1")
def make_strided_spans(window: int = 128, stride: int = 96) -> Callable[[List[Doc]], List[List[Span]]]:
    """Read docs in windows of `window` tokens every `stride` tokens
    (spacy-transformers' `strided_spans`)."""
    from spacy_transformers.span_getters import configure_strided_spans

    return configure_strided_spans(window, stride)


__all__ = [
    "MultiExitTransformer",
    "make_full_depth",
    "make_fixed_depth",
    "make_sentence_exit",
    "make_token_window_exit",
    "make_self_sampling",
    "make_width_training",
    "warmup_linear_epochs",
    "epoch_eval_frequency",
    "epochs_as_steps",
    "sentence_windows",
    "make_sent_spans",
    "make_strided_spans",
]
