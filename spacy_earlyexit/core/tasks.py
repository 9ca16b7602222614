"""Several tasks on one encoder. Plain PyTorch, no spaCy.

A shared encoder's exit classifiers output every task's labels side by side:
task t owns a slice of each classifier's outputs (`TaskRules.slices`), its own
softmax over that slice, and its own exit policy. After a layer, each task
decides for itself which of its words leave, with its own uncertainties (and
its own window and stability counts); a word's pieces keep running in the
encoder while any task still needs the word, and each task takes its label
at its own exit layer. A word's encoder exit is the deepest of its tasks'
exits, and that is what the pass costs.

`TaskPolicies` is how an operating point names a rule per task (by task
name); `TaskRules` is what the encoder's loop runs: the rules in the order
of the classifier's slices.
"""

from typing import Dict, List, Mapping, Optional, Sequence

from .policies import ExitPolicy, FullDepth


class TaskPolicies(ExitPolicy):
    """An exit policy per task, by task name (`policy` in a spec: `per_task`,
    with `tasks: {name: spec}`). A task it does not name runs `default`
    (full depth unless given). On a single-task encoder it is not used:
    there the task's own policy is the point's policy."""

    name = "per_task"

    def __init__(self, tasks: Mapping[str, ExitPolicy], default: Optional[ExitPolicy] = None) -> None:
        super().__init__()
        if not isinstance(tasks, Mapping):
            raise ValueError(f"per_task needs a mapping of task name to exit policy, got {type(tasks).__name__}.")
        for task, policy in tasks.items():
            if not isinstance(task, str) or not task:
                raise ValueError(f"per_task: a task is named by a non-empty string, got {task!r}.")
            if not isinstance(policy, ExitPolicy) or isinstance(policy, TaskPolicies):
                raise ValueError(f"per_task: the rule of task '{task}' must be a single exit policy, got {policy!r}.")
        self.tasks: Dict[str, ExitPolicy] = dict(tasks)
        self.default = default if default is not None else FullDepth()

    def for_task(self, task: str) -> ExitPolicy:
        """The rule of task `task`."""
        return self.tasks.get(task, self.default)

    @property
    def needs_every_exit(self) -> bool:  # type: ignore[override]
        return any(p.needs_every_exit for p in (*self.tasks.values(), self.default))

    def check_depth(self, n_layers: int) -> None:
        for task, policy in self.tasks.items():
            try:
                policy.check_depth(n_layers)
            except ValueError as err:
                raise ValueError(f"the rule of task '{task}': {err}") from err
        self.default.check_depth(n_layers)

    def last_layer(self, n_layers: int) -> int:
        return max(p.last_layer(n_layers) for p in (*self.tasks.values(), self.default))

    def exits(self, index, n_layers, uncertainty, active, words):
        raise TypeError("per_task holds one rule per task: the encoder runs them through TaskRules.")

    def params(self) -> dict:
        out: dict = {"tasks": {task: {"policy": p.name, **p.params()} for task, p in self.tasks.items()}}
        if type(self.default) is not FullDepth:
            out["default"] = {"policy": self.default.name, **self.default.params()}
        return out


class TaskRules:
    """What the encoder's loop runs for a shared encoder: task t's labels are
    `slices[t]` of every exit classifier's outputs and it leaves by
    `policies[t]`. One task whose slice is the whole output is exactly the
    single-task loop."""

    def __init__(self, sizes: Sequence[int], policies: Sequence[ExitPolicy]) -> None:
        sizes = [int(n) for n in sizes]
        policies = list(policies)
        if not sizes or len(sizes) != len(policies):
            raise ValueError(f"TaskRules needs one policy per task, got {len(sizes)} tasks, {len(policies)} policies.")
        if any(n < 1 for n in sizes):
            raise ValueError(f"Every task needs at least one label, got sizes {sizes}.")
        for policy in policies:
            if not isinstance(policy, ExitPolicy) or isinstance(policy, TaskPolicies):
                raise ValueError(f"TaskRules takes one single exit policy per task, got {policy!r}.")
        self.sizes = sizes
        self.policies = policies
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        self.slices: List[slice] = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self.n_labels = bounds[-1]

    @classmethod
    def single(cls, n_labels: int, policy: ExitPolicy) -> "TaskRules":
        """One task over the whole output (a single-task encoder)."""
        return cls([n_labels], [policy])

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def needs_every_exit(self) -> bool:
        return any(p.needs_every_exit for p in self.policies)

    def check_depth(self, n_layers: int) -> None:
        for policy in self.policies:
            policy.check_depth(n_layers)

    def __repr__(self) -> str:
        return f"TaskRules(sizes={self.sizes}, policies={self.policies})"
