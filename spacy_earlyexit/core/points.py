"""Operating points: how the encoder runs (exit policy, width, precision),
under a name or not, as one `OperatingPoint`.

A point is stored in configs and metas as a spec, `{"policy": name, **the
policy's parameters, "width": optional, "precision": optional}`: read by
`OperatingPoint.from_spec` and written by `OperatingPoint.to_spec`, nowhere
else. The settings a component's call runs with are a point too (its
precision set); `RunSettings` is the same class under its older name.

Plain Python and PyTorch, no spaCy: the policy names of a spec are resolved
by the `make` function given to `from_spec` (default: the built-in policies
of `policies.POLICIES`; the pipeline layer passes one that also knows the
policies registered by other packages).
"""

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Optional, Sequence

from .policies import POLICIES, ExitPolicy, FullDepth, make_policy
from .precision import check_precision
from .width import width_in_menu

#: keys of a spec that are not parameters of its policy
RUN_KEYS = ("width", "precision")

#: builds a policy from its name and parameters (ValueError on an unknown name)
PolicyMaker = Callable[..., ExitPolicy]


@dataclass(frozen=True)
class OperatingPoint:
    """How the encoder runs: its exit `policy`, `width` (a multiplier of the
    width menu), `precision` (a setting of `precision.py`; None: whatever
    the component runs in), and the `name` it goes by ("2x", "max-drop",
    "full"; None when set by hand)."""

    policy: ExitPolicy = field(default_factory=FullDepth)
    width: float = 1.0
    precision: Optional[str] = None
    name: Optional[str] = None

    @classmethod
    def from_spec(
        cls,
        spec: Dict[str, Any],
        *,
        name: Optional[str] = None,
        widths: Optional[Sequence[float]] = None,
        make: PolicyMaker = make_policy,
        what: str = "operating point",
    ) -> "OperatingPoint":
        """The point a spec describes. `widths`: the width menu its width must
        be on (unchecked when None); `make`: builds the policy from its name
        and parameters; `what` names the spec in error messages."""
        if not isinstance(spec, dict):
            raise ValueError(f"The {what} must be a dict with a 'policy', got {type(spec).__name__}: {spec!r}")
        params = {k: v for k, v in spec.items() if k not in RUN_KEYS}
        policy_name = params.pop("policy", None)
        if not policy_name:
            raise ValueError(f"The {what} has no 'policy' (one of {sorted(POLICIES)}): {spec}")
        try:
            policy = make(policy_name, **params)
        except TypeError as err:
            raise ValueError(f"The {what} has parameters its policy '{policy_name}' does not take: {err}") from err
        except ValueError as err:
            raise ValueError(f"The {what}: {err}") from err
        width = spec.get("width", 1.0)
        try:
            width = width_in_menu(width, widths) if widths is not None else float(width)
        except (TypeError, ValueError) as err:
            raise ValueError(f"The {what}: {err}") from err
        precision = spec.get("precision")
        if precision is not None:
            try:
                precision = check_precision(precision)
            except ValueError as err:
                raise ValueError(f"The {what}: {err}") from err
        return cls(policy, width, precision, name)

    def to_spec(self) -> Dict[str, Any]:
        """The spec of this point (what configs and metas store): the policy's
        name and parameters, the width when narrower than 1.0, the precision
        when the point names one. `from_spec(p.to_spec())` is `p` again."""
        spec: Dict[str, Any] = {"policy": self.policy.name, **self.policy.params()}
        if self.width < 1.0:
            spec["width"] = self.width
        if self.precision is not None:
            spec["precision"] = self.precision
        return spec

    @property
    def policy_name(self) -> str:
        return self.policy.name

    @property
    def label(self) -> str:
        """A short description for tables and plots: `token_window(window=1,
        threshold=0.1)@width=0.5` (the uncertainty measure left out)."""
        args = ",".join(f"{k}={v}" for k, v in self.policy.params().items() if k != "uncertainty")
        label = f"{self.policy.name}({args})" if args else self.policy.name
        return f"{label}@width={self.width:g}" if self.width < 1.0 else label

    def replace(self, **changes) -> "OperatingPoint":
        """A copy with `changes` (dataclass fields)."""
        return replace(self, **changes)

    def with_precision(self, default: str) -> "OperatingPoint":
        """This point, run in `default` where it names no precision."""
        return self if self.precision is not None else replace(self, precision=default)


#: the settings a component's call runs with: an operating point whose precision is set
RunSettings = OperatingPoint
