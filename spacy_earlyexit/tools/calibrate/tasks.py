"""Calibration of a shared encoder (`earlyexit_transformer`): operating points
chosen on dev for all its tasks at once.

The search is the single-task one (`search.py`: the same candidates,
simulation, real runs and timing) on one figure per candidate: the worst of
the tasks' score changes from full depth, `min over tasks of (score - full
score)`, so that full depth is 0 and

- a speed-up target (2x, 3x, 4x: of the shared pass, in FLOPs) keeps the
  candidate whose worst-off task loses least;
- `max-drop` keeps the fastest candidate that keeps every task within the
  drop (ranked by measured speed, as for one task).

A candidate is one rule that every task applies to its own uncertainties
(each task leaves by itself; a word runs while any task needs it), or a
rule per task (`per_task`): tasks read their uncertainties on different
scales (nine entity labels, forty-five tags) and saturate at different
depths, so one rule for all can spend depth where one task no longer needs
it. Per-task candidates pair each task's own simulated frontier (its best
score at each speed-up of its own exits, at most `TASK_FRONTIER` rules per
task, at most `MAX_COMBINATIONS` pairings in all). Each task is simulated
from one traced pass (`trace_parts`), the pass's cost from the deepest of
the tasks' exits. An encoder rewired for adaptive width is traced at every
width of its menu, and the candidates of every width compete, with the
points of exit alone and width alone beside, as for one task.
"""

import itertools
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from spacy.language import Language
from spacy.training import Example

from ...core.points import OperatingPoint
from ...core.precision import resolve_precision
from ...core.tasks import TaskPolicies
from ..evaluation import Measurement, measure
from .search import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_DROP,
    DEFAULT_RANK,
    DEFAULT_TARGETS,
    DEFAULT_TOLERANCE,
    RANKS,
    RealRun,
    Timer,
    calibrate_labeler,
    choose,
    choose_fastest,
    real_run,
    searched_points,
    searched_widths,
    timed_ratios,
    timing_machine,
)
from .simulation import Candidate, candidates, simulated_exits, simulated_score, simulated_speedup
from .tracing import Trace, trace_parts
from .windows import Window, WindowTimer, choose_window, timed_windows

#: what a shared encoder's calibration scores a candidate by
METRIC = "worst_task_change"
#: per task, at most this many rules of its simulated frontier are paired
TASK_FRONTIER = 24
#: at most this many per-task candidates are simulated
MAX_COMBINATIONS = 2000


@dataclass
class TaskCandidate:
    """A rule per task (a `per_task` point at a width): each task's own
    `Candidate`, by task name. It quacks like a `Candidate` where the
    search reads one: no fixed depth, no threshold to bisect; its family is
    exit at full width, joint below."""

    rules: Dict[str, Candidate] = field(default_factory=dict)
    score: float = 0.0
    speedup: float = 1.0
    width: float = 1.0
    layer = None
    kind = "per_task"
    thresholded = False

    def family(self, n_layers: int) -> str:
        return "exit" if self.width >= 1.0 else "joint"

    def point(self, n_layers: int) -> OperatingPoint:
        policies = TaskPolicies({task: c.point(n_layers).policy for task, c in self.rules.items()})
        return OperatingPoint(policies, self.width)

    def describe(self) -> str:
        return "; ".join(f"{task}: {c.describe()}" for task, c in self.rules.items())


def frontier(speedups: Sequence[float], scores: Sequence[float], size: int = TASK_FRONTIER) -> List[int]:
    """Indices of the candidates no other beats on both speed-up and score
    (ties keep the first), fastest first, thinned evenly to at most `size`
    (the fastest and the best scoring always kept)."""
    order = sorted(range(len(scores)), key=lambda i: (-speedups[i], -scores[i], i))
    kept: List[int] = []
    for i in order:
        if not kept or scores[i] > scores[kept[-1]]:
            kept.append(i)
    if len(kept) <= size:
        return kept
    if size < 2:
        return kept[-size:] if size else []
    step = (len(kept) - 1) / (size - 1)
    return sorted({kept[round(k * step)] for k in range(size)}, key=kept.index)


def _deepest(exits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each word's deepest exit over the tasks' exits [S, W]."""
    out = exits[0]
    for other in exits[1:]:
        out = out.maximum(other)
    return out


def simulate_tasks(
    traces: List[Trace],
    component,
    tasks,
    examples: List[Example],
    full: Dict[str, float],
    n_layers: int,
    width: float = 1.0,
) -> Tuple[List, int]:
    """Every candidate of the grid at `width` (the traces' width) as one rule
    for all tasks, then rules per task paired from each task's frontier:
    each with its speed-up (of the deepest exits) and its worst task change
    from full depth at full width. Returns them and how many are per task.
    Exits are kept only for the frontiers' rules."""
    grid = candidates(width=width, n_layers=n_layers)
    paired = len(traces) > 1
    changes = [[0.0] * len(grid) for _ in traces]  # [task][candidate]: score change from full depth
    own = [[1.0] * len(grid) for _ in traces]  # [task][candidate]: speed-up of the task's exits alone
    for i, candidate in enumerate(grid):
        exits = [simulated_exits(tr, candidate) for tr in traces]
        for t, (tr, task, task_exits) in enumerate(zip(traces, tasks, exits)):
            changes[t][i] = simulated_score(tr, task, examples, task_exits) - full[task.name]
            if paired:
                own[t][i] = simulated_speedup(tr, component, candidate, task_exits)
        candidate.speedup = simulated_speedup(traces[0], component, candidate, _deepest(exits))
        candidate.score = min(task_changes[i] for task_changes in changes)
    simulated: List = list(grid)
    if not paired:
        return simulated, 0
    size = min(TASK_FRONTIER, max(2, int(MAX_COMBINATIONS ** (1.0 / len(traces)))))
    fronts = [frontier(own[t], changes[t], size) for t in range(len(traces))]
    front_exits = [{i: simulated_exits(tr, grid[i]) for i in front} for tr, front in zip(traces, fronts)]
    n_per_task = 0
    for indices in itertools.product(*fronts):
        if len(set(indices)) == 1:
            continue  # one rule for all: simulated above
        pair = TaskCandidate({task.name: grid[i] for task, i in zip(tasks, indices)}, width=width)
        deepest = _deepest([front_exits[t][i] for t, i in enumerate(indices)])
        pair.speedup = simulated_speedup(traces[0], component, pair, deepest)
        pair.score = min(changes[t][i] for t, i in enumerate(indices))
        simulated.append(pair)
        n_per_task += 1
    return simulated, n_per_task


class TaskRuns:
    """The real-run function of a shared encoder's calibration: each task's
    score, and the worst change from full depth as the one figure the search
    ranks by; it remembers every task's scores per point."""

    def __init__(self) -> None:
        self.full: Dict[str, float] = {}
        self.seen: Dict[str, Dict[str, float]] = {}

    def task_scores(self, nlp: Language, name: str, examples: List[Example], point: OperatingPoint):
        run = measure(nlp, name, examples, Measurement(point), batch_size=64)
        scores = {task: float(value or 0.0) for task, value in (run.task_scores or {}).items()}
        self.seen[_key(point)] = scores
        return scores, float(run.flops_speedup or 1.0)

    def __call__(self, nlp: Language, name: str, examples: List[Example], point: OperatingPoint) -> Tuple[float, float]:
        scores, speedup = self.task_scores(nlp, name, examples, point)
        return worst_change(scores, self.full), speedup

    def scores_of(self, point: Optional[OperatingPoint]) -> Optional[Dict[str, float]]:
        return self.seen.get(_key(point)) if point is not None else None


def _key(point: OperatingPoint) -> str:
    return json.dumps(point.replace(name=None).to_spec(), sort_keys=True)


def worst_change(scores: Dict[str, float], full: Dict[str, float]) -> float:
    """The worst of the tasks' score changes from full depth (0 at full depth)."""
    return min(scores[task] - full[task] for task in full)


def calibrate_tasks(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    targets: Sequence[float],
    max_drop: Optional[float],
    progress=print,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = DEFAULT_TOLERANCE,
    precision: Optional[str] = None,
    sentences: Optional[List[Example]] = None,
    rank: str = "speed",
    timer=timed_ratios,
) -> Dict:
    """`calibrate` for a shared encoder and the tasks that listen to it (see
    the module's docstring); the same result, with `metric`
    "worst_task_change" and every task's dev scores beside."""
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}.")
    component = nlp.get_pipe(component_name)
    tasks = [nlp.get_pipe(task) for task in component.tasks if task in nlp.component_names]
    if [task.name for task in tasks] != component.tasks:
        raise ValueError(f"'{component_name}' has tasks {component.tasks}, not all in the pipeline.")
    precision = precision or component.precision
    resolved = resolve_precision(precision, component.encoder.device)
    n_layers = component.encoder.n_layers
    widths = searched_widths(component)
    runs = TaskRuns()
    simulated: List = []
    n_per_task = 0
    with component.using("full", precision=precision):
        runs.full, _ = runs.task_scores(nlp, component_name, examples, OperatingPoint())
        progress(f"full depth on dev ({resolved}): " + ", ".join(f"{t} {100 * s:.2f}" for t, s in runs.full.items()))
        parts = [(part, task.decodes_from_probs) for part, task in zip(component._slices(), tasks)]
        for width in widths:
            traces = trace_parts(component, examples, parts, width, resolved)
            found, n_found = simulate_tasks(traces, component, tasks, examples, runs.full, n_layers, width)
            simulated += found
            n_per_task += n_found
            progress(
                f"width {width:g}: simulated {len(simulated)} candidates so far ({n_per_task} with a rule per "
                f"task); fastest {max(c.speedup for c in simulated):.2f}x"
            )
    points = searched_points(targets, max_drop, widths)
    with component.using("full", precision=precision):
        for point in points:
            args = (nlp, component_name, examples, component, simulated, point, 0.0, progress)
            if point.kind == "max_drop" and rank == "speed":
                choose_fastest(*args, real=runs, timer=timer)
            else:
                choose(*args, margin, tolerance, runs)
            status = point.note
            if point.reached:
                scores = runs.scores_of(point.point) or {}
                status = ", ".join(f"{t} {100 * s:.2f}" for t, s in scores.items()) + f" at {point.flops_speedup:.2f}x"
            progress(f"{point.name}: {status}")
        full_sentences = None
        sentence_scores: Dict[str, Dict[str, float]] = {}
        if sentences:
            full_sentences, _ = runs.task_scores(nlp, component_name, sentences, OperatingPoint())
            for point in points:
                if point.reached:
                    sentence_scores[point.name], _ = runs.task_scores(nlp, component_name, sentences, point.point)
                    point.dev_score_sentences = worst_change(sentence_scores[point.name], full_sentences)
    reached = [p for p in points if p.reached]
    default = next((p.name for p in reversed(reached) if p.kind == "max_drop"), "full")
    rows = []
    for point in points:
        row = point.to_dict()
        row["dev_task_scores"] = runs.scores_of(point.point)
        row["dev_task_scores_sentences"] = sentence_scores.get(point.name)
        rows.append(row)
    return {
        "component": component_name,
        "metric": METRIC,
        "tasks": component.tasks,
        "task_metrics": {task.name: task.score_key for task in tasks},
        "full": {
            "dev_score": 0.0,
            "dev_task_scores": dict(runs.full),
            "dev_task_scores_sentences": full_sentences,
        },
        "default": default,
        "margin": margin,
        "tolerance": tolerance,
        "precision": precision,
        "resolved_precision": resolved,
        "rank": rank,
        "timed_on": timing_machine() if rank == "speed" else None,
        "widths": list(widths),
        "points": rows,
    }


def calibrate(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    targets: Sequence[float] = DEFAULT_TARGETS,
    max_drop: Optional[float] = DEFAULT_MAX_DROP,
    progress=print,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = DEFAULT_TOLERANCE,
    precision: Optional[str] = None,
    sentences: Optional[List[Example]] = None,
    real: RealRun = real_run,
    rank: str = DEFAULT_RANK,
    timer: Timer = timed_ratios,
    windows: Sequence[Window] = (),
    window_timer: WindowTimer = timed_windows,
) -> Dict:
    """Operating points for `component_name`, chosen on `examples` (dev): a
    single-task component's by `search.calibrate_labeler` (see there for
    every argument), a shared encoder's for all its tasks at once by
    `calibrate_tasks` (which scores by its tasks and takes no `real`).
    With `windows`, the reading window is chosen first (`windows.py`), at
    full depth in `precision`, and the points are calibrated with it; the
    result's "window" says what was tried and kept (`window_timer` times
    the windows, see `windows.timed_windows`)."""
    component = nlp.get_pipe(component_name)
    window = None
    if windows:
        with component.using("full", precision=precision):
            window = choose_window(nlp, component_name, examples, windows, progress, real, window_timer)
    args = (nlp, component_name, examples, targets, max_drop, progress, margin, tolerance, precision, sentences)
    if component.takes_task_policies:
        result = calibrate_tasks(*args, rank=rank, timer=timer)
    else:
        result = calibrate_labeler(*args, real=real, rank=rank, timer=timer)
    return {**result, "window": window}
