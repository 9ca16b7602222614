"""Calibration's step 3: the search. Every candidate is simulated, the best
simulated ones are run for real, and the best that really reaches each
target (or stays within the allowed drop) is kept. The function that runs a
candidate for real is a parameter (`real`, default `real_run`).

Speed-up targets (2x, 3x, 4x) are analytic: FLOPs, the same on every
machine. The `max-drop` point is ranked by measured speed (`rank="speed"`,
the default): the fastest of each policy family within the drop on dev
(fixed depth, token_window, sentence, token_patience, at each width) are
run for real, and those that stay within it are timed against full depth
in interleaved rounds, in the precision calibration runs in, on this
machine; the fastest in wall-clock is kept. Its timed candidates are kept
in the pipeline's meta, so `retime` can choose again on another machine
without retraining or re-simulating. The timing function is a parameter
too (`timer`, default `timed_ratios`)."""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.training import Example

from ...core.points import OperatingPoint
from ...core.precision import cpu_name, resolve_precision
from ...pipeline.exit_policies import policy_named
from ...pipeline.labeler import EarlyExitLabeler
from ..evaluation import Measurement, measure, measure_interleaved, set_ratios
from .simulation import Candidate, candidates, simulate, simulated_score
from .tracing import trace

DEFAULT_TARGETS = (2.0, 3.0, 4.0)
DEFAULT_MAX_DROP = 0.5
#: speed-up targets are sought at this multiple on dev
DEFAULT_MARGIN = 1.05
#: score (in points, as max_drop) a candidate must gain per doubling of
#: speed-up beyond the target (a quarter point: on a CoNLL-sized dev set
#: smaller differences between neighbouring candidates are resampling noise)
DEFAULT_TOLERANCE = 0.25
#: real dev runs per target, at most
MAX_REAL_RUNS = 4
#: runs a point for real: (nlp, component name, examples, point) -> (score, speed-up)
RealRun = Callable[[Language, str, List[Example], OperatingPoint], Tuple[float, float]]
#: times points against full depth: (nlp, component name, examples, points) -> words/s ratios to full depth
Timer = Callable[[Language, str, List[Example], List[OperatingPoint]], List[float]]
#: how `max-drop` is ranked by default: "speed" (measured words/s) or "flops"
DEFAULT_RANK = "speed"
RANKS = ("speed", "flops")
#: candidates of each family (policy and width) timed for `max-drop`, at most
TIMED_PER_FAMILY = 2
#: interleaved rounds of the timing (words/s: the median of per-round ratios)
TIMING_ROUNDS = 3
#: the timing reads the first dev documents up to about this many words: a
#: ratio of speeds needs no whole dev set, and each round passes once per point
TIMING_WORDS = 20_000


@dataclass
class CalibratedPoint:
    name: str
    target: float  # speed-up, or the allowed score drop (kind "max_drop")
    kind: str  # "speedup" or "max_drop"
    search: str = "joint"  # "joint", or "exit" / "width" alone
    point: Optional[OperatingPoint] = None
    reached: bool = False
    dev_score: Optional[float] = None
    flops_speedup: Optional[float] = None
    dev_score_sentences: Optional[float] = None  # the point on dev's sentences, one doc each
    note: str = ""
    tried: List[Dict] = field(default_factory=list)
    ranked_by: str = "flops"  # "speed": the fastest measured of `timed`
    dev_wps_ratio: Optional[float] = None  # measured words/s relative to full depth on dev
    timed: List[Dict] = field(default_factory=list)  # spec, dev score and speed-up, words/s ratio

    def to_dict(self) -> Dict:
        spec = self.point.to_spec() if self.point else {}
        return {
            "name": self.name,
            "target": self.target,
            "kind": self.kind,
            "search": self.search,
            "policy": spec.pop("policy", None),
            "params": spec,
            "reached": self.reached,
            "dev_score": self.dev_score,
            "dev_flops_speedup": self.flops_speedup,
            "dev_score_sentences": self.dev_score_sentences,
            "note": self.note,
            "ranked_by": self.ranked_by,
            "dev_wps_ratio": self.dev_wps_ratio,
            "timed": list(self.timed),
        }


def real_run(nlp: Language, name: str, examples: List[Example], point: OperatingPoint) -> Tuple[float, float]:
    """Run `point` for real on `examples` through `nlp.pipe`: its score and
    analytic speed-up (the real-run function `choose` and `calibrate` take
    by default)."""
    run = measure(nlp, name, examples, Measurement(point), batch_size=64)
    return float(run.score or 0.0), float(run.flops_speedup or 1.0)


def overshoot_adjusted(score: float, speedup: float, wanted: float, tolerance: float) -> float:
    """A candidate's dev score less `tolerance` per doubling of speed-up beyond
    what was asked for: speed past the target is taken only when it costs
    (almost) nothing on dev, because dev differences that small are noise and
    the extra speed does cost score on unseen text."""
    return score - tolerance / 100.0 * math.log2(max(speedup, wanted) / wanted)


def choose(
    nlp,
    name,
    examples,
    component,
    simulated: List[Candidate],
    point: CalibratedPoint,
    full_score: float,
    progress,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = DEFAULT_TOLERANCE,
    real: RealRun = real_run,
) -> None:
    """Run the best simulated candidates for real and keep the best that
    reaches the target; when the simulation misleads (a model not trained for
    frozen neighbours), bisect the threshold of the best family for real.
    `real(nlp, name, examples, point)` runs a candidate's point for real and
    returns its (score, speed-up)."""
    L = component.encoder.n_layers
    floor = full_score - point.target / 100.0
    wanted = point.target * margin

    def sought(candidate: Candidate) -> float:
        # a fixed depth (at any width) costs the same on any text: no margin
        return point.target if candidate.layer is not None else wanted

    if point.search != "joint":
        simulated = [c for c in simulated if c.family(L) == point.search]
    if point.kind == "speedup":
        pool = sorted(
            (c for c in simulated if c.speedup >= sought(c) * 0.995),
            key=lambda c: (-overshoot_adjusted(c.score, c.speedup, sought(c), tolerance), c.speedup),
        )
    else:
        pool = sorted((c for c in simulated if c.score >= floor), key=lambda c: (-c.speedup, -c.score))

    def ok(candidate: Candidate, score: float, speedup: float) -> bool:
        return speedup >= sought(candidate) * 0.995 if point.kind == "speedup" else score >= floor

    def run(candidate: Candidate) -> Tuple[float, float]:
        tried = candidate.point(L)
        score, speedup = real(nlp, name, examples, tried)
        point.tried.append(
            {"spec": tried.to_spec(), "simulated": [candidate.score, candidate.speedup], "real": [score, speedup]}
        )
        progress(f"  {point.name}: {candidate.describe()}: real {100 * score:.2f} at {speedup:.2f}x")
        return score, speedup

    found: List[Tuple[float, float, float, OperatingPoint]] = []  # score, speed-up, sought speed-up, point
    for candidate in pool[:2]:
        score, speedup = run(candidate)
        if ok(candidate, score, speedup):
            found.append((score, speedup, sought(candidate), candidate.point(L)))
    tokee = [c for c in pool if c.thresholded]
    if not found and tokee:
        # bisect the threshold of the best TOKEE family: speed-up rises and score falls with it
        best = tokee[0]
        lo, hi = (0.0, 1.01) if point.kind == "speedup" else (0.0, best.threshold)
        for _ in range(MAX_REAL_RUNS + 1):
            middle = Candidate(best.window, (lo + hi) / 2, best.upper_factor, width=best.width, sentence=best.sentence)
            score, speedup = run(middle)
            if ok(middle, score, speedup):
                found.append((score, speedup, wanted, middle.point(L)))
            if (point.kind == "speedup") == ok(middle, score, speedup):
                hi = middle.threshold
            else:
                lo = middle.threshold
    if not found:
        if not pool:
            fastest = max(c.speedup for c in simulated)
            point.note = (
                f"not reached: the fastest candidate reaches {fastest:.2f}x on dev "
                f"(sought {wanted:.2f}x: the target times the margin {margin:g})"
                if point.kind == "speedup"
                else "not reached: no candidate stays within the allowed drop on dev"
            )
        else:
            last = point.tried[-1]["real"]
            point.note = (
                f"not reached on dev after {len(point.tried)} real runs (last: {100 * last[0]:.2f} at {last[1]:.2f}x)"
            )
        return
    if point.kind == "speedup":
        chosen = max(found, key=lambda f: (overshoot_adjusted(f[0], f[1], f[2], tolerance), -f[1]))
    else:
        chosen = max(found, key=lambda f: (f[1], f[0]))
    point.dev_score, point.flops_speedup, _, chosen_point = chosen
    point.point = chosen_point.replace(name=point.name)
    point.reached = True


def timed_ratios(
    nlp: Language, name: str, examples: List[Example], points: List[OperatingPoint], rounds: int = TIMING_ROUNDS
) -> List[float]:
    """Words per second of each point relative to full depth on `examples`,
    each the median of its per-round ratios over `rounds` interleaved rounds
    (the timing function `calibrate` and `retime` take by default), in the
    precision the component runs in now. Only the first documents of
    `examples`, up to about TIMING_WORDS words, are timed."""
    examples = timing_sample(examples)
    full = Measurement(OperatingPoint())
    runs = [(nlp, name, full)] + [(nlp, name, Measurement(point)) for point in points]
    measure_interleaved(runs, examples, 64, rounds, progress=lambda line: None)
    set_ratios([run for _, _, run in runs], full)
    return [float(run.wps_ratio_vs_full) for _, _, run in runs[1:]]


def timing_sample(examples: List[Example], words: int = TIMING_WORDS) -> List[Example]:
    """The first of `examples` that hold about `words` words (at least one)."""
    total = 0
    for i, example in enumerate(examples):
        total += len(example.predicted)
        if total >= words:
            return examples[: i + 1]
    return examples


def fastest_timed(timed: List[Dict]) -> int:
    """The index of the fastest timed candidate (`dev_wps_ratio`; the better
    dev score among equals): what `choose_fastest` and `retime` keep."""
    return max(range(len(timed)), key=lambda i: (timed[i]["dev_wps_ratio"], timed[i]["dev_score"]))


def choose_fastest(
    nlp,
    name,
    examples,
    component,
    simulated: List[Candidate],
    point: CalibratedPoint,
    full_score: float,
    progress,
    real: RealRun = real_run,
    timer: Timer = timed_ratios,
) -> None:
    """`max-drop` ranked by measured speed: the `TIMED_PER_FAMILY` fastest
    simulated candidates of each family (policy and width) within the drop
    are run for real; those that stay within it on dev are timed
    (`timer`) and the fastest is kept. Without any, the analytic choice
    (`choose`) decides."""
    L = component.encoder.n_layers
    floor = full_score - point.target / 100.0
    families: Dict[Tuple[str, float], List[Candidate]] = {}
    for candidate in sorted(simulated, key=lambda c: (-c.speedup, -c.score)):
        if candidate.score >= floor and (point.search == "joint" or candidate.family(L) == point.search):
            families.setdefault((candidate.kind, candidate.width), []).append(candidate)
    within: List[Tuple[OperatingPoint, float, float]] = []  # point, dev score, FLOPs speed-up
    for group in families.values():
        for candidate in group[:TIMED_PER_FAMILY]:
            tried = candidate.point(L)
            score, speedup = real(nlp, name, examples, tried)
            point.tried.append(
                {"spec": tried.to_spec(), "simulated": [candidate.score, candidate.speedup], "real": [score, speedup]}
            )
            progress(f"  {point.name}: {candidate.describe()}: real {100 * score:.2f} at {speedup:.2f}x")
            if score >= floor:
                within.append((tried, score, speedup))
    if not within:
        choose(nlp, name, examples, component, simulated, point, full_score, progress, real=real)
        return
    ratios = timer(nlp, name, examples, [tried for tried, _, _ in within])
    point.timed = [
        {"spec": tried.to_spec(), "dev_score": score, "dev_flops_speedup": speedup, "dev_wps_ratio": ratio}
        for (tried, score, speedup), ratio in zip(within, ratios)
    ]
    for entry in point.timed:
        progress(f"  {point.name}: {entry['spec']}: {entry['dev_wps_ratio']:.2f}x full depth's words/s")
    fastest = fastest_timed(point.timed)
    chosen, point.dev_score, point.flops_speedup = within[fastest]
    point.point = chosen.replace(name=point.name)
    point.dev_wps_ratio = ratios[fastest]
    point.ranked_by = "speed"
    point.reached = True


def searched_points(
    targets: Sequence[float], max_drop: Optional[float], widths: Sequence[float]
) -> List[CalibratedPoint]:
    """The points a calibration seeks: one per speed-up target (and, with
    several widths, per target the best at full width and at full depth
    too), and `max-drop`."""
    # names are config section keys: no dots ("2.5x" becomes "2_5x")
    names = [f"{t:g}x".replace(".", "_") for t in targets]
    points = [CalibratedPoint(name, float(t), "speedup") for name, t in zip(names, targets)]
    if len(widths) > 1:
        for search in ("exit", "width"):
            points += [
                CalibratedPoint(f"{name}-{search}", float(t), "speedup", search) for name, t in zip(names, targets)
            ]
    if max_drop is not None:
        points.append(CalibratedPoint("max-drop", float(max_drop), "max_drop"))
    return points


def calibrate_labeler(
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
) -> Dict:
    """Operating points for `component_name`, chosen on `examples` (dev), in
    `precision` (default: the component's own), the precision they will run
    in: simulation and real runs alike. With `sentences` (dev's sentences as
    docs of their own), full depth and every chosen point are also scored
    on them: points are chosen on documents, reported on both shapes.
    `real` runs a point for real (`real_run`; see `choose`); `rank` says
    how `max-drop` is chosen ("speed": measured by `timer`, see
    `choose_fastest`; "flops": analytic)."""
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}.")
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    if component.takes_task_policies:
        raise ValueError(f"'{component_name}' is a shared encoder: calibrate it with `calibrate` (tasks.py).")
    precision = precision or component.precision
    resolved = resolve_precision(precision, component.encoder.device)
    n_layers = component.encoder.n_layers
    widths = searched_widths(component)
    simulated = []
    with component.using("full", precision=precision):
        full_score, _ = real(nlp, component_name, examples, OperatingPoint())
        progress(f"full depth on dev ({resolved}): {100 * full_score:.2f}")
        for width in widths:
            tr = trace(nlp, component, examples, width, resolved)
            for candidate in candidates(width=width, n_layers=n_layers):
                exits, candidate.speedup = simulate(tr, component, candidate)
                candidate.score = simulated_score(tr, component, examples, exits)
                simulated.append(candidate)
            progress(
                f"width {width:g}: simulated {len(simulated)} candidates so far; "
                f"fastest {max(c.speedup for c in simulated):.2f}x"
            )
    points = searched_points(targets, max_drop, widths)
    with component.using("full", precision=precision):
        for point in points:
            args = (nlp, component_name, examples, component, simulated, point, full_score, progress)
            if point.kind == "max_drop" and rank == "speed":
                choose_fastest(*args, real=real, timer=timer)
            else:
                choose(*args, margin, tolerance, real)
            status = f"{100 * point.dev_score:.2f} at {point.flops_speedup:.2f}x" if point.reached else point.note
            if point.dev_wps_ratio is not None:
                status += f" ({point.dev_wps_ratio:.2f}x full depth's words/s on dev)"
            progress(f"{point.name}: {status}")
        full_sentences = None
        if sentences:
            full_sentences, _ = real(nlp, component_name, sentences, OperatingPoint())
            for point in points:
                if point.reached:
                    point.dev_score_sentences, _ = real(nlp, component_name, sentences, point.point)
            progress(
                f"dev sentences: full {100 * full_sentences:.2f}; "
                + ", ".join(f"{p.name} {100 * p.dev_score_sentences:.2f}" for p in points if p.reached)
            )
    reached = [p for p in points if p.reached]
    default = next((p.name for p in reversed(reached) if p.kind == "max_drop"), "full")
    return {
        "component": component_name,
        "metric": component.score_key,
        "full": {"dev_score": full_score, "dev_score_sentences": full_sentences},
        "default": default,
        "margin": margin,
        "tolerance": tolerance,
        "precision": precision,
        "resolved_precision": resolved,
        "rank": rank,
        "timed_on": timing_machine() if rank == "speed" else None,
        "widths": list(widths),
        "points": [p.to_dict() for p in points],
    }


def retime(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    result: Dict,
    progress=print,
    timer: Timer = timed_ratios,
) -> Dict:
    """A calibration `result` (as `calibrate` returns it and a calibrated
    pipeline's meta keeps it) with its speed-ranked points chosen again by
    timing their kept candidates (`timed`) on this machine, in the precision
    the component runs in now: no training, no simulation, no real runs for
    score (the candidates' dev scores stay). The default point stays the
    same name."""
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    result = {**result, "points": [dict(p) for p in result["points"]]}
    widths = component.width_multipliers
    with component.using("full"):
        for entry in result["points"]:
            timed = entry.get("timed") or []
            if entry.get("ranked_by") != "speed" or not timed:
                continue
            points = [OperatingPoint.from_spec(t["spec"], widths=widths, make=policy_named) for t in timed]
            ratios = timer(nlp, component_name, examples, points)
            entry["timed"] = [{**t, "dev_wps_ratio": ratio} for t, ratio in zip(timed, ratios)]
            fastest = fastest_timed(entry["timed"])
            spec = dict(timed[fastest]["spec"])
            entry.update(
                policy=spec.pop("policy"),
                params=spec,
                dev_score=timed[fastest]["dev_score"],
                dev_flops_speedup=timed[fastest]["dev_flops_speedup"],
                dev_wps_ratio=ratios[fastest],
            )
            progress(
                f"{entry['name']}: {entry['policy']} {entry['params']}: {ratios[fastest]:.2f}x full depth's words/s"
            )
    result["timed_on"] = timing_machine()
    result["resolved_precision"] = resolve_precision(component.precision, component.encoder.device)
    return result


def timing_machine() -> Dict:
    """Where timings were taken: the CPU (and whether it has AMX), torch's threads."""
    import platform

    import torch

    return {"cpu": cpu_name() or platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


def searched_widths(component: EarlyExitLabeler) -> Tuple[float, ...]:
    """The component's width menu when its encoder was rewired for adaptive
    width (narrower widths of an unranked encoder keep arbitrary heads), else
    full width only."""
    if component.encoder.width_rewired:
        return tuple(sorted(component.width_multipliers, reverse=True))
    return (1.0,)
