"""Operating points calibrated on dev data.

For each target analytic speed-up (default 2x, 3x, 4x) and for a maximum
score drop (default 0.5 points), choose an exit policy on a dev corpus: TOKEE
parameters (window, threshold, threshold multiplier for the upper half of the
layers) or a fixed depth, and, when the encoder was rewired for adaptive
width, a width of its menu (the joint space of width and exit):

1. one full-depth pass per width records every exit's prediction and
   uncertainty for every word (`trace`);
2. every candidate of a grid is simulated from that trace in a fraction of a
   second (its exits, labels, score and analytic cost; exited neighbours are
   not frozen in the simulation, which is why step 3 exists);
3. the best simulated candidates are run for real on dev, and the best one
   that really reaches the target is kept; a target no candidate reaches is
   reported as not reached, with the best that was found.

Two guards keep dev noise from choosing the point: a speed-up target is
sought at `margin` times the target on dev (unseen text is less certain than
the dev set the thresholds were fitted on, so it exits later: on CoNLL-2003
test the speed-ups came out 6-10% below dev; a fixed depth, at any width,
costs the same on any text and is held to the target itself), and
candidates are ranked by their dev score less `tolerance` per doubling of
speed-up beyond the target (a flat dev curve otherwise picks far more speed
than was asked for, and that speed is not free on test), so extra speed is
taken only when dev says it is free by more than noise.

With more than one width, each target also gets the best point of exit
alone (full width) and of width alone (full depth), named "3x-exit" and
"3x-width", so that the three can be compared on test.

The chosen points are written into the pipeline's config (the component's
`operating_points` and its default `operating_point`) and into its meta, so a
saved or packaged pipeline loads with them and switches by name. The copy is
made beside the output and renamed into place when complete; an output at,
inside or around the pipeline or the dev corpus is refused, and so is an
existing directory that is not an earlier calibrated pipeline, unless
`--force` (`outputs.py`).
"""

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import spacy
import torch
import typer
from spacy import util
from spacy.language import Language
from spacy.training import Example
from wasabi import msg

from ..core.policies import TokenWindowExit, normalized_entropy, upper_half_thresholds
from ..core.precision import resolve_precision
from ..pipeline.labeler import EarlyExitLabeler
from ..pipeline.model import DocExits, sequence_batches
from .evaluation import OperatingPoint, corpus_examples, fresh_copy, keep_only_early_exit, measure, sentence_examples
from .options import CODE, COMPONENT, FORCE, GPU_ID, PRECISION, floats, prepare
from .outputs import check_output, exit_on_refusal, replacing_directory

DEFAULT_TARGETS = (2.0, 3.0, 4.0)
DEFAULT_MAX_DROP = 0.5
#: speed-up targets are sought at this multiple on dev
DEFAULT_MARGIN = 1.05
#: score (in points, as max_drop) a candidate must gain per doubling of
#: speed-up beyond the target (a quarter point: on a CoNLL-sized dev set
#: smaller differences between neighbouring candidates are resampling noise)
DEFAULT_TOLERANCE = 0.25
THRESHOLDS = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.07,
    0.1,
    0.13,
    0.16,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.7,
    0.8,
    0.9,
    1.01,
)
WINDOWS = (1, 2, 3)
UPPER_FACTORS = (1.0, 2.0)
#: real dev runs per target, at most
MAX_REAL_RUNS = 4


@dataclass
class Trace:
    """Every exit's prediction for every word of a corpus, per encoder sequence (padded)."""

    uncertainty: torch.Tensor  # [S, L, W]
    labels: torch.Tensor  # [S, L, W]
    word_mask: torch.Tensor  # [S, W]
    pieces: torch.Tensor  # [S, W] wordpieces of each word
    n_pieces: torch.Tensor  # [S] real pieces, specials included
    n_special: torch.Tensor  # [S]
    owner_sequence: List[numpy.ndarray]  # per doc: sequence of each token's labelling copy
    owner_word: List[numpy.ndarray]
    probs: Optional[torch.Tensor] = None  # [S, L, W, C], kept for components that decode from them


@dataclass
class Candidate:
    """A TOKEE setting, or (with `layer`) a fixed depth, at a width."""

    window: int = 1
    threshold: float = 0.0
    upper_factor: float = 1.0
    score: float = 0.0
    speedup: float = 1.0
    width: float = 1.0
    layer: Optional[int] = None  # fixed depth (the encoder's depth: full depth)

    def spec(self, n_layers: int) -> Dict:
        if self.layer is not None:
            spec = {"policy": "full"} if self.layer >= n_layers else {"policy": "fixed_depth", "layer": self.layer}
        else:
            layers = upper_half_thresholds(self.threshold, self.upper_factor, n_layers)
            spec = {
                "policy": "token_window",
                "threshold": self.threshold,
                "window": self.window,
                "layer_thresholds": [round(t, 6) for t in layers],
            }
        if self.width < 1.0:
            spec["width"] = self.width
        return spec

    def policy(self, n_layers: int) -> TokenWindowExit:
        """The TOKEE policy of this candidate (not for fixed depths)."""
        return TokenWindowExit(
            self.threshold,
            self.window,
            layer_thresholds=upper_half_thresholds(self.threshold, self.upper_factor, n_layers),
        )

    def family(self, n_layers: int) -> str:
        """ "exit" (full width), "width" (full depth, narrower) or "joint"."""
        if self.width >= 1.0:
            return "exit"
        return "width" if self.layer is not None and self.layer >= n_layers else "joint"

    def describe(self) -> str:
        what = (
            f"fixed depth {self.layer}"
            if self.layer is not None
            else f"window={self.window} threshold={self.threshold:.4g} upper x{self.upper_factor:g}"
        )
        return f"{what}, width {self.width:g}" if self.width < 1.0 else what


@dataclass
class CalibratedPoint:
    name: str
    target: float  # speed-up, or the allowed score drop (kind "max_drop")
    kind: str  # "speedup" or "max_drop"
    search: str = "joint"  # "joint", or "exit" / "width" alone
    spec: Optional[Dict] = None
    reached: bool = False
    dev_score: Optional[float] = None
    flops_speedup: Optional[float] = None
    dev_score_sentences: Optional[float] = None  # the point on dev's sentences, one doc each
    note: str = ""
    tried: List[Dict] = field(default_factory=list)

    def to_dict(self) -> Dict:
        spec = dict(self.spec or {})
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
        }


def trace(
    nlp: Language, component: EarlyExitLabeler, examples: List[Example], width: float = 1.0, precision: str = "fp32"
) -> Trace:
    """One full-depth pass at `width`, batched as inference batches, that keeps
    every exit's labels and uncertainties, in a resolved `precision` (the
    layers run as inference runs them)."""
    docs = [fresh_copy(eg.predicted) for eg in examples]
    encoder = component.encoder
    plan, batches = sequence_batches(component.model, docs, component.batch_sequences)
    S = len(plan.sequences)
    L = encoder.n_layers
    W = max((len(s.word_starts) for s in plan.sequences), default=1)
    unc = torch.zeros(S, L, W)
    labels = torch.zeros(S, L, W, dtype=torch.long)
    word_mask = torch.zeros(S, W, dtype=torch.bool)
    pieces = torch.zeros(S, W)
    n_pieces = torch.zeros(S)
    n_special = torch.zeros(S)
    kept = torch.zeros(S, L, W, encoder.n_labels) if component.decodes_from_probs else None
    for indices, batch in batches:
        with torch.inference_mode():
            probs = encoder(batch, width=width, precision=precision).softmax(-1).cpu()  # [L, n_words, C]
        offset = 0
        for index in indices:
            sequence = plan.sequences[index]
            n = len(sequence.word_starts)
            unc[index, :, :n] = normalized_entropy(probs[:, offset : offset + n])
            labels[index, :, :n] = probs[:, offset : offset + n].argmax(-1)
            if kept is not None:
                kept[index, :, :n] = probs[:, offset : offset + n]
            offset += n
            word_mask[index, :n] = True
            piece_words = numpy.asarray(sequence.piece_words)
            pieces[index, :n] = torch.from_numpy(numpy.bincount(piece_words[piece_words >= 0], minlength=n)[:n]).float()
            n_pieces[index] = len(sequence)
            n_special[index] = int((piece_words < 0).sum())
    return Trace(unc, labels, word_mask, pieces, n_pieces, n_special, plan.owner_sequence, plan.owner_word, kept)


def simulate(tr: Trace, component: EarlyExitLabeler, candidate: Candidate) -> Tuple[torch.Tensor, float]:
    """Exit layers [S, W] of a candidate and its analytic speed-up, from the
    trace: the exit rule of `TokenWindowExit` on the traced uncertainties, the
    cost counted as inference counts it (`LayerCost.of_exits`)."""
    S, L, W = tr.uncertainty.shape
    if candidate.layer is not None:
        exits = torch.full((S, W), min(candidate.layer, L), dtype=torch.long)
    else:
        policy = candidate.policy(L)
        values = torch.where(tr.word_mask[:, None, :], tr.uncertainty, torch.zeros(()))
        below = torch.stack(
            [policy.exits(index, L, values[:, index], tr.word_mask, tr.word_mask) for index in range(L)], dim=1
        )
        below[:, -1, :] = True  # the last layer labels every word still running
        exits = below.float().argmax(1) + 1  # first layer where the word may leave, 1-based
    layer_cost = component.encoder.layer_cost
    word_pieces = tr.pieces * tr.word_mask
    cost = layer_cost.of_exits(
        tr.n_pieces, tr.n_special, word_pieces, exits, L, candidate.width, every_exit=candidate.layer is None
    )
    full = layer_cost.full(tr.n_pieces.double(), tr.word_mask.sum(1).double(), L)
    return exits, float(full.sum() / cost.sum())


def simulated_score(tr: Trace, component: EarlyExitLabeler, examples: List[Example], exits: torch.Tensor) -> float:
    """The component's score when every word is labelled at its exit (decoded
    as the component decodes)."""
    at_exit = (exits - 1)[:, None, :]
    label_ids = tr.labels.gather(1, at_exit)[:, 0, :].numpy()
    probs = None
    if tr.probs is not None:
        C = tr.probs.shape[-1]
        probs = tr.probs.gather(1, at_exit[..., None].expand(-1, -1, -1, C))[:, 0].numpy()
    L = tr.labels.shape[1]
    exits_np = exits.numpy()
    per_doc = []
    for d in range(len(examples)):
        where = (numpy.asarray(tr.owner_sequence[d], dtype="int64"), numpy.asarray(tr.owner_word[d], dtype="int64"))
        n = len(tr.owner_word[d])
        per_doc.append(
            DocExits(
                label_ids=label_ids[where],
                exit_layers=exits_np[where],
                uncertainty=numpy.zeros(n, "float32"),
                cost=0.0,
                full_cost=0.0,
                n_layers=L,
                label_probs=probs[where] if probs is not None else None,
            )
        )
    classes = component.output_labels
    predicted = []
    for eg, ids in zip(examples, component.decode(per_doc)):
        doc = fresh_copy(eg.predicted)
        component.write_labels(doc, [classes[i] for i in ids])
        predicted.append(Example(doc, eg.reference))
    return float(component.scorer(predicted)[component.score_key] or 0.0)


def candidates(
    windows: Sequence[int] = WINDOWS,
    thresholds: Sequence[float] = THRESHOLDS,
    upper_factors: Sequence[float] = UPPER_FACTORS,
    width: float = 1.0,
    n_layers: Optional[int] = None,
) -> List[Candidate]:
    """The TOKEE grid at `width`, and every fixed depth up to `n_layers` (the
    full depth included) when it is given."""
    grid = [Candidate(w, t, f, width=width) for w in windows for f in upper_factors for t in thresholds]
    if n_layers is not None:
        grid += [Candidate(width=width, layer=layer) for layer in range(1, n_layers + 1)]
    return grid


def _real(nlp: Language, name: str, examples: List[Example], spec: Dict) -> Tuple[float, float]:
    params = {k: v for k, v in spec.items() if k not in ("policy", "width")}
    point = OperatingPoint(spec["policy"], params, width=float(spec.get("width", 1.0)))
    measure(nlp, name, examples, point, batch_size=64)
    return float(point.score or 0.0), float(point.flops_speedup or 1.0)


def overshoot_adjusted(score: float, speedup: float, wanted: float, tolerance: float) -> float:
    """A candidate's dev score less `tolerance` per doubling of speed-up beyond
    what was asked for: speed past the target is taken only when it costs
    (almost) nothing on dev, because dev differences that small are noise and
    the extra speed does cost score on unseen text."""
    return score - tolerance / 100.0 * math.log2(max(speedup, wanted) / wanted)


def _choose(
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
) -> None:
    """Run the best simulated candidates for real and keep the best that
    reaches the target; when the simulation misleads (a model not trained for
    frozen neighbours), bisect the threshold of the best family for real."""
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
        spec = candidate.spec(L)
        score, speedup = _real(nlp, name, examples, spec)
        point.tried.append({"spec": spec, "simulated": [candidate.score, candidate.speedup], "real": [score, speedup]})
        progress(f"  {point.name}: {candidate.describe()}: real {100 * score:.2f} at {speedup:.2f}x")
        return score, speedup

    found: List[Tuple[float, float, float, Dict]] = []  # score, speed-up, sought speed-up, spec
    for candidate in pool[:2]:
        score, speedup = run(candidate)
        if ok(candidate, score, speedup):
            found.append((score, speedup, sought(candidate), candidate.spec(L)))
    tokee = [c for c in pool if c.layer is None]
    if not found and tokee:
        # bisect the threshold of the best TOKEE family: speed-up rises and score falls with it
        best = tokee[0]
        lo, hi = (0.0, 1.01) if point.kind == "speedup" else (0.0, best.threshold)
        for _ in range(MAX_REAL_RUNS + 1):
            middle = Candidate(best.window, (lo + hi) / 2, best.upper_factor, width=best.width)
            score, speedup = run(middle)
            if ok(middle, score, speedup):
                found.append((score, speedup, wanted, middle.spec(L)))
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
    point.dev_score, point.flops_speedup, _, point.spec = chosen
    point.reached = True


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
) -> Dict:
    """Operating points for `component_name`, chosen on `examples` (dev), in
    `precision` (default: the component's own), the precision they will run
    in: simulation and real runs alike. With `sentences` (dev's sentences as
    docs of their own), full depth and every chosen point are also scored
    on them: points are chosen on documents, reported on both shapes."""
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    precision = precision or component.precision
    resolved = resolve_precision(precision, component.encoder.device)
    n_layers = component.encoder.n_layers
    widths = searched_widths(component)
    simulated = []
    with component.using("full", precision=precision):
        full_score, _ = _real(nlp, component_name, examples, {"policy": "full"})
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
    with component.using("full", precision=precision):
        for point in points:
            _choose(nlp, component_name, examples, component, simulated, point, full_score, progress, margin, tolerance)
            status = f"{100 * point.dev_score:.2f} at {point.flops_speedup:.2f}x" if point.reached else point.note
            progress(f"{point.name}: {status}")
        full_sentences = None
        if sentences:
            full_sentences, _ = _real(nlp, component_name, sentences, {"policy": "full"})
            for point in points:
                if point.reached:
                    point.dev_score_sentences, _ = _real(nlp, component_name, sentences, point.spec)
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
        "widths": list(widths),
        "points": [p.to_dict() for p in points],
    }


def searched_widths(component: EarlyExitLabeler) -> Tuple[float, ...]:
    """The component's width menu when its encoder was rewired for adaptive
    width (narrower widths of an unranked encoder keep arbitrary heads), else
    full width only."""
    if component.encoder.width_rewired:
        return tuple(sorted(component.width_multipliers, reverse=True))
    return (1.0,)


def is_calibrated_pipeline(path: Path) -> bool:
    """Whether `path` is a pipeline `calibrate` wrote (its meta says where it
    was calibrated): how an output written before outputs carried a marker
    (`outputs.MARKER_NAME`) is recognized."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("earlyexit"), dict) and "calibrated_on" in meta["earlyexit"]


def check_calibration_output(
    source: str, output: Path, dev_path: str, force: bool = False, code_path: Optional[Path] = None
) -> None:
    """Refuse (`outputs.OutputRefused`) an output `calibrate` must not write:
    the pipeline, the dev corpus or the code file, a path inside or around
    one, or an existing directory that is not an earlier calibrated pipeline
    (unless `force`)."""
    check_output(
        output, (source, dev_path, code_path), command="calibrate", force=force, earlier=is_calibrated_pipeline
    )


def write_calibrated(
    source: str, output: Path, result: Dict, dev_path: str, force: bool = False, code_path: Optional[Path] = None
) -> None:
    """Copy the pipeline to `output` with the points in its config and meta.
    The copy is made beside `output` and replaces it only when complete (see
    `check_calibration_output` for which outputs are refused)."""
    with replacing_directory(
        output, (source, dev_path, code_path), command="calibrate", force=force, earlier=is_calibrated_pipeline
    ) as partial:
        shutil.copytree(source, partial, dirs_exist_ok=True)
        name = result["component"]
        config = util.load_config(partial / "config.cfg", interpolate=False)
        specs = {p["name"]: {"policy": p["policy"], **p["params"]} for p in result["points"] if p["reached"]}
        config["components"][name]["operating_points"] = specs
        config["components"][name]["operating_point"] = result["default"] if result["default"] in specs else None
        config.to_disk(partial / "config.cfg")
        meta = json.loads((partial / "meta.json").read_text(encoding="utf8"))
        meta.setdefault("requirements", [])
        from .. import __version__

        requirement = f"spacy-earlyexit>={__version__}"
        if not any(r.startswith("spacy-earlyexit") for r in meta["requirements"]):
            meta["requirements"].append(requirement)
        meta["earlyexit"] = {**result, "calibrated_on": str(dev_path)}
        (partial / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf8")


def run_calibration(
    pipeline: str,
    dev_path: str,
    output: Path,
    component_name: Optional[str] = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
    max_drop: Optional[float] = DEFAULT_MAX_DROP,
    progress=print,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = DEFAULT_TOLERANCE,
    precision: Optional[str] = None,
    force: bool = False,
    code_path: Optional[Path] = None,
) -> Dict:
    """Load `pipeline`, calibrate its component on the dev corpus and write
    the calibrated copy to `output`. An output that is or holds an input, or
    an existing directory that is not an earlier calibrated pipeline (unless
    `force`), is refused first (`outputs.OutputRefused`), with nothing
    touched. (`code_path`: the user's code, imported by the caller, which
    the output may not touch either.)"""
    check_calibration_output(pipeline, output, dev_path, force, code_path)
    nlp = spacy.load(pipeline)
    component_name = keep_only_early_exit(nlp, component_name)
    examples = corpus_examples(nlp, dev_path)
    sentences = sentence_examples(nlp, examples)
    result = calibrate(
        nlp, component_name, examples, targets, max_drop, progress, margin, tolerance, precision, sentences
    )
    write_calibrated(pipeline, output, result, dev_path, force, code_path)
    return result


def calibrate_command(
    pipeline: str = typer.Argument(..., help="Trained pipeline directory or package name"),
    dev: Path = typer.Argument(..., help="Dev corpus (.spacy); never the test set", exists=True, dir_okay=False),
    output: Path = typer.Argument(..., help="Directory for the calibrated pipeline (a copy with the points)"),
    component: Optional[str] = COMPONENT,
    targets: str = typer.Option("2,3,4", "--targets", help="Target analytic speed-ups, comma-separated"),
    max_drop: float = typer.Option(
        0.5, "--max-drop", help="Also: the fastest point within this score drop (points; <0: none)"
    ),
    margin: float = typer.Option(
        1.05, "--margin", help="Seek each speed-up target at this multiple on dev (test text exits later)"
    ),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE,
        "--tolerance",
        help="Dev score (points) a point must gain per doubling of speed-up beyond the target",
    ),
    precision: Optional[str] = PRECISION,
    code_path: Optional[Path] = CODE,
    gpu_id: int = GPU_ID,
    force: bool = FORCE,
) -> None:
    """Choose operating points on dev and write them into a copy of the pipeline."""
    if margin < 1.0 or tolerance < 0:
        raise typer.BadParameter("--margin must be >= 1 and --tolerance >= 0")
    with exit_on_refusal():
        check_calibration_output(pipeline, output, str(dev), force, code_path)
        prepare(code_path, gpu_id)
        result = run_calibration(
            pipeline,
            str(dev),
            output,
            component,
            floats(targets),
            max_drop if max_drop >= 0 else None,
            progress=lambda line: typer.echo(line, err=True),
            margin=margin,
            tolerance=tolerance,
            precision=precision,
            force=force,
            code_path=code_path,
        )
    for point in result["points"]:
        if point["reached"]:
            typer.echo(
                f"{point['name']}: dev {100 * point['dev_score']:.2f} at {point['dev_flops_speedup']:.2f}x "
                f"({point['policy']} {point['params']})"
            )
        else:
            msg.warn(f"{point['name']}: {point['note']}")
    msg.good(f"Saved to {output} (default operating point: {result['default']})")
