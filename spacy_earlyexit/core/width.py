"""Adaptive width (DynaBERT, Hou et al. 2020): the width menu.

Plain PyTorch, no spaCy. A width m in (0, 1] keeps in every layer the first
`kept(m, n_heads)` attention heads and the first `kept(m, ff_size)`
feed-forward neurons; the hidden size never changes, so every exit classifier
serves every width. Which heads and neurons come first is
decided by `importance.rewire`.
"""

import math
import numbers
from typing import Iterable, Sequence, Tuple

#: the sub-network menu of DynaBERT
DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)


def check_width(width) -> float:
    """`width` as a float in (0, 1]; anything else is a ValueError."""
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or math.isnan(width) or not 0.0 < width <= 1.0:
        raise ValueError(f"A width multiplier must be a number in (0, 1], got {width!r}.")
    return float(width)


def check_width_menu(widths: Iterable) -> Tuple[float, ...]:
    """A menu of widths, sorted and without repeats; it must hold 1.0 (the
    full model, which the "full" operating point uses)."""
    try:
        values = list(widths) if not isinstance(widths, (str, bytes)) else None
    except TypeError:
        values = None
    if values is None:
        raise ValueError(f"width_multipliers must be a list of numbers in (0, 1], got {widths!r}.")
    menu = tuple(sorted({check_width(w) for w in values}))
    if 1.0 not in menu:
        raise ValueError(f"width_multipliers must include 1.0 (the full model), got {list(menu)}.")
    return menu


def width_in_menu(width, menu: Sequence[float]) -> float:
    """`width` as the menu's own value; a ValueError if the menu lacks it."""
    width = check_width(width)
    for choice in menu:
        if math.isclose(width, choice, rel_tol=0.0, abs_tol=1e-9):
            return choice
    raise ValueError(f"width {width:g} is not in the width menu {list(menu)} (width_multipliers).")


def kept(width: float, n: int) -> int:
    """How many of `n` heads or neurons width `width` keeps: m x n rounded
    half up, at least 1."""
    return max(1, min(n, int(math.floor(width * n + 0.5))))
