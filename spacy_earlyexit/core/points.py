"""Operating points: a named setting of how the encoder runs (exit policy,
width, precision), stored in configs as a spec `{"policy": short name, **its
parameters, "width": optional, "precision": optional}`.

Plain Python and PyTorch, no spaCy.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from .policies import POLICIES, ExitPolicy, make_policy
from .width import width_in_menu

#: keys of a spec that are not parameters of its policy
RUN_KEYS = ("width", "precision")


@dataclass(frozen=True)
class RunSettings:
    """How the encoder runs for one call: exit policy, width, precision
    setting (see `precision.py`), and the operating point's name they came
    from (None when set by hand)."""

    policy: ExitPolicy
    width: float = 1.0
    precision: str = "auto"
    name: Optional[str] = None


def policy_from_spec(spec: Dict[str, Any], what: str = "operating point") -> ExitPolicy:
    """The exit policy of an operating point's spec; the spec's run settings
    (its `width`) are not the policy's."""
    spec = {k: v for k, v in spec.items() if k not in RUN_KEYS}
    name = spec.pop("policy", None)
    if not name:
        raise ValueError(f"The {what} has no 'policy' (one of {sorted(POLICIES)}): {spec}")
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
