"""Exit policies as registered functions (`@misc`), so configs can pick them."""
from typing import Any, Dict, List, Optional, Sequence

from spacy.util import registry

from .objective import SelfSampling
from .width_training import WidthTraining
from .policies import ExitPolicy, FixedDepth, FullDepth, SentenceExit, TokenWindowExit
from .width import width_in_menu


@registry.misc("spacy-earlyexit.full_depth.v1")
def make_full_depth() -> ExitPolicy:
    """Every token runs every layer."""
    return FullDepth()


@registry.misc("spacy-earlyexit.fixed_depth.v1")
def make_fixed_depth(layer: int) -> ExitPolicy:
    """Every token leaves after `layer` layers (static depth reduction)."""
    return FixedDepth(layer)


@registry.misc("spacy-earlyexit.sentence_exit.v1")
def make_sentence_exit(
    threshold: float, uncertainty: str = "entropy", layer_thresholds: Optional[List[float]] = None
) -> ExitPolicy:
    """SENTEE: a sequence leaves once its most uncertain word is below threshold."""
    return SentenceExit(threshold, uncertainty, layer_thresholds)


@registry.misc("spacy-earlyexit.token_window_exit.v1")
def make_token_window_exit(
    threshold: float,
    window: int = 2,
    uncertainty: str = "entropy",
    layer_thresholds: Optional[List[float]] = None,
) -> ExitPolicy:
    """TOKEE: a word leaves once its window's maximum uncertainty is below threshold."""
    return TokenWindowExit(threshold, window, uncertainty, layer_thresholds)


POLICY_MAKERS = {
    "full": make_full_depth,
    "fixed_depth": make_fixed_depth,
    "sentence": make_sentence_exit,
    "token_window": make_token_window_exit,
}


def make_policy(name: str, **params) -> ExitPolicy:
    """Build a policy by short name: full, fixed_depth, sentence, token_window."""
    if name not in POLICY_MAKERS:
        raise ValueError(f"Unknown exit policy '{name}': use one of {sorted(POLICY_MAKERS)}.")
    return POLICY_MAKERS[name](**params)


def policy_from_spec(spec: Dict[str, Any], what: str = "operating point") -> ExitPolicy:
    """An exit policy from an operating point's spec: `{"policy": short name,
    **its parameters}`, as operating points are stored in configs. The spec's
    `width`, if any, is not the policy's (see `width_from_spec`)."""
    spec = dict(spec)
    spec.pop("width", None)
    name = spec.pop("policy", None)
    if not name:
        raise ValueError(f"The {what} has no 'policy' (one of {sorted(POLICY_MAKERS)}): {spec}")
    try:
        return make_policy(name, **spec)
    except TypeError as err:
        raise ValueError(f"The {what} has parameters its policy '{name}' does not take: {err}") from err


def width_from_spec(spec: Dict[str, Any], menu: Sequence[float], what: str = "operating point") -> float:
    """The width of an operating point's spec (1.0 when it names none), which
    must be one of `menu`."""
    try:
        return width_in_menu(spec.get("width", 1.0), menu)
    except ValueError as err:
        raise ValueError(f"The {what}: {err}") from err


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
    return SelfSampling(min_window, max_window, min_threshold, max_threshold, upper_factor,
                        aggressive_share, full_depth_share)


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
