"""The settings a component's `predict` runs with (exit policy, width,
precision, and the name of the operating point they came from: one
`OperatingPoint`), who sees which, and the component's table of named points.

- The default is state of the component: `use()` changes it for every
  thread, and it is what a copy, a pickle or a worker process of
  `nlp.pipe(n_process=...)` starts from.
- Inside a `using()` block the calling thread runs with its own settings, on
  a stack of its own (`threading.local`), until the block ends. Nothing of it
  is copied or pickled: another process or copy has no such block open.
- Settings given per call (spaCy's `component_cfg`) are resolved by
  `point_settings` and passed to `predict`; they touch no shared state.
"""

import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Dict, Iterator, List, Optional, Sequence

from ..core.points import OperatingPoint
from ..core.policies import FullDepth
from ..core.precision import check_precision
from ..core.width import width_in_menu
from .exit_policies import policy_named


class PointTable(dict):
    """A component's named operating points: name -> spec, as the config
    stores them, each parsed into its `OperatingPoint` once, when it is
    set (a bad spec is refused then, with the component and point named).

    `owner` names the component in errors; `widths` is its width menu."""

    def __init__(
        self, specs: Optional[Dict[str, Dict]] = None, widths: Sequence[float] = (1.0,), owner: str = ""
    ) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.owner = owner
        self._points: Dict[str, OperatingPoint] = {}
        for name, spec in (specs or {}).items():
            self[name] = spec

    def __setitem__(self, name: str, spec: Dict) -> None:
        name = str(name)
        what = f"operating point '{name}' of {self.owner or 'the component'}"
        point = OperatingPoint.from_spec(spec, name=name, widths=self.widths, make=policy_named, what=what)
        self._points[name] = point
        super().__setitem__(name, dict(spec))

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        del self._points[name]

    def point(self, name: str) -> OperatingPoint:
        """The parsed point named `name` (a KeyError if there is none)."""
        return self._points[name]

    def update(self, *args, **kwargs) -> None:
        for name, spec in dict(*args, **kwargs).items():
            self[name] = spec

    def setdefault(self, name: str, spec: Dict):
        if name not in self:
            self[name] = spec
        return self[name]

    def __ior__(self, other):
        self.update(other)
        return self

    def pop(self, name, *default):
        self._points.pop(name, None)
        return super().pop(name, *default)

    def clear(self) -> None:
        self._points.clear()
        super().clear()

    def copy(self) -> Dict[str, Dict]:
        return {name: dict(spec) for name, spec in self.items()}

    def __reduce__(self):
        return (type(self), (self.copy(), self.widths, self.owner))


class ThreadRunSettings:
    """A component's run settings: one default shared by every thread and,
    per thread, the stack of its open `using` blocks.

    Copies and pickles carry the default only (`__getstate__`): a thread's
    `using` blocks belong to that thread, and a `threading.local` cannot be
    pickled anyway."""

    def __init__(self, default: OperatingPoint) -> None:
        self.default = default
        self._local = threading.local()

    def _stack(self) -> List[OperatingPoint]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    @property
    def current(self) -> OperatingPoint:
        """The settings the calling thread runs with now: its innermost
        `using` block's, else the default."""
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else self.default

    def update(self, **changes) -> bool:
        """Change the current settings: the calling thread's inside a `using`
        block, else the default. Returns whether the default changed."""
        stack = getattr(self._local, "stack", None)
        if stack:
            stack[-1] = replace(stack[-1], **changes)
            return False
        self.default = replace(self.default, **changes)
        return True

    @contextmanager
    def pushed(self, settings: OperatingPoint) -> Iterator[OperatingPoint]:
        """Run with `settings` in the calling thread for the duration of a
        `with` block; the previous ones come back after it."""
        stack = self._stack()
        stack.append(settings)
        try:
            yield settings
        finally:
            stack.pop()

    def __getstate__(self) -> Dict:
        return {"default": self.default}

    def __setstate__(self, state: Dict) -> None:
        self.default = state["default"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(default={self.default!r})"


def point_settings(
    current: OperatingPoint,
    operating_point: Optional[str],
    operating_points: PointTable,
    width_multipliers: Sequence[float],
    *,
    width: Optional[float] = None,
    precision: Optional[str] = None,
    owner: str = "the component",
) -> OperatingPoint:
    """The settings of a named operating point (calibrated, in
    `operating_points`, or "full"), with `width` or `precision` overriding
    it; what is not given is taken from `current`. `owner` names the
    component in error messages. Changes nothing."""
    if operating_point is not None:
        check_point_name(operating_point, owner)
        if operating_point == "full":
            current = OperatingPoint(FullDepth(), 1.0, current.precision, "full")
        elif operating_point in operating_points:
            current = operating_points.point(operating_point).with_precision(current.precision)
        else:
            known = ", ".join(["full", *operating_points]) or "full"
            raise ValueError(
                f"{owner} has no operating point '{operating_point}': use one of {known} "
                "(calibrate with `python -m spacy_earlyexit calibrate`)."
            )
    if width is not None:
        checked = checked_width(width, width_multipliers, owner)
        if checked != current.width:
            current = replace(current, width=checked, name=None)
    if precision is not None:
        current = replace(current, precision=check_precision(precision))
    return current


def check_point_name(operating_point, owner: str = "the component") -> str:
    """An operating point is named by a string ("full", "2x", ...)."""
    if not isinstance(operating_point, str):
        raise TypeError(
            f"{owner}: an operating point is a name such as 'full' or '2x', got {type(operating_point).__name__}."
        )
    return operating_point


def checked_width(width: float, width_multipliers: Sequence[float], owner: str = "the component") -> float:
    """`width` as it appears in the width menu; a ValueError naming `owner` if
    it is not there."""
    try:
        return width_in_menu(width, width_multipliers)
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from err
