"""The exit-policy registry: `registry.exit_policies`, as spacy-transformers
keeps `registry.span_getters`, with entry points (group
`spacy_exit_policies`), so another package can add a policy that configs and
operating points name without this package knowing it.

One name per policy, everywhere: a policy class's `name` (`full`,
`fixed_depth`, `sentence`, `token_window`, ...) is what operating-point
specs, the CLI, metrics and docs call it, and it is registered as
`spacy-earlyexit.<name>.v1`. In a config:

    [components.earlyexit_ner.exit_policy]
    @exit_policies = "spacy-earlyexit.token_window.v1"
    threshold = 0.1

and in an operating point's spec: `{"policy": "token_window", "threshold":
0.1}`. The paper's names: SENTEE is `sentence`, TOKEE `token_window`.

A policy of another package is registered under its full name
(`"acme.my_policy.v1"`, with that as its class's `name`) and named so in
specs. The names of the first releases (`@misc = "spacy-earlyexit.
token_window_exit.v1"`, ...) still load (`architectures.py`).
"""

from typing import Dict, List, Optional

import catalogue
from spacy.util import registry

from ..core.policies import ExitPolicy, FixedDepth, FullDepth, SentenceExit, TokenPatience, TokenWindowExit
from ..core.tasks import TaskPolicies

if not hasattr(registry, "exit_policies"):
    registry.exit_policies = catalogue.create("spacy", "exit_policies", entry_points=True)

#: the namespace of this package's registered names
NAMESPACE = "spacy-earlyexit"


def registered_name(name: str) -> str:
    """The registered name of a policy named `name` in a spec: a short name
    is one of this package's (`spacy-earlyexit.<name>.v1`), a dotted one is
    registered as it is."""
    return name if "." in name else f"{NAMESPACE}.{name}.v1"


def policy_named(name: str, **params) -> ExitPolicy:
    """The policy a spec names, built with `params`: how operating points
    resolve their `policy` (a ValueError names the known ones)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"An exit policy is named by a string, got {name!r}.")
    try:
        make = registry.exit_policies.get(registered_name(name))
    except catalogue.RegistryError:
        raise ValueError(f"Unknown exit policy '{name}': use one of {', '.join(known_policies())}.") from None
    return make(**params)


def known_policies() -> List[str]:
    """The names specs can use: this package's short names, then the full
    names of policies other packages registered."""
    names = []
    for full in sorted(registry.exit_policies.get_all()):
        namespace, _, rest = full.partition(".")
        short, _, version = rest.rpartition(".")
        names.append(short if namespace == NAMESPACE and version == "v1" else full)
    return names


@registry.exit_policies(f"{NAMESPACE}.full.v1")
def full() -> ExitPolicy:
    """Every token runs every layer."""
    return FullDepth()


@registry.exit_policies(f"{NAMESPACE}.fixed_depth.v1")
def fixed_depth(layer: int) -> ExitPolicy:
    """Every token leaves after `layer` layers (a statically truncated network)."""
    return FixedDepth(layer)


@registry.exit_policies(f"{NAMESPACE}.sentence.v1")
def sentence(
    threshold: float, uncertainty: str = "entropy", layer_thresholds: Optional[List[float]] = None
) -> ExitPolicy:
    """SENTEE: a sequence leaves once its most uncertain word is below `threshold`."""
    return SentenceExit(threshold, uncertainty, layer_thresholds)


@registry.exit_policies(f"{NAMESPACE}.token_window.v1")
def token_window(
    threshold: float, window: int = 2, uncertainty: str = "entropy", layer_thresholds: Optional[List[float]] = None
) -> ExitPolicy:
    """TOKEE: a word leaves once the maximum uncertainty of its window is below `threshold`."""
    return TokenWindowExit(threshold, window, uncertainty, layer_thresholds)


@registry.exit_policies(f"{NAMESPACE}.token_patience.v1")
def token_patience(patience: int = 2, window: int = 0) -> ExitPolicy:
    """Patience per token (PABEE's rule, per word): a word leaves once its
    label has not changed for `patience` layers (and, with `window`, neither
    have its neighbours')."""
    return TokenPatience(patience, window)


def _task_rule(task: str, spec) -> ExitPolicy:
    if isinstance(spec, ExitPolicy):
        return spec
    if not isinstance(spec, dict) or "policy" not in spec:
        raise ValueError(f"per_task: the rule of task '{task}' must be a spec with a 'policy', got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "policy"}
    return policy_named(spec["policy"], **params)


@registry.exit_policies(f"{NAMESPACE}.per_task.v1")
def per_task(tasks: Dict[str, Dict], default: Optional[Dict] = None) -> ExitPolicy:
    """A rule per task of a shared encoder (`earlyexit_transformer`): `tasks`
    maps a task component's name to a policy spec (`{"policy": "token_window",
    "threshold": 0.1}`); tasks not named run `default` (full depth)."""
    if not isinstance(tasks, dict):
        raise ValueError(f"per_task needs tasks as a mapping of component name to policy spec, got {tasks!r}.")
    rules = {task: _task_rule(task, spec) for task, spec in tasks.items()}
    return TaskPolicies(rules, _task_rule("default", default) if default is not None else None)
