"""Figures for the early-exit experiments: the accuracy/speed trade-off of every
exit policy (from benchmark JSON) and where the tokens of each gold label leave
the encoder (from a pipeline run over a gold corpus).

matplotlib is an optional dependency: it is imported only when a figure is
drawn, and drawn on an Agg canvas without touching pyplot's global state.
"""

import json
import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from wasabi import msg

from ..core.points import OperatingPoint
from ..pipeline.labeler import EarlyExitLabeler
from ..pipeline.ner import EarlyExitNER
from ..pipeline.tagger import EarlyExitTagger
from .evaluation import fresh_copy
from .outputs import check_output, exit_on_refusal, replacing_file

MISSING = "(missing)"
METRIC_NAMES = {"ents_f": "entity F1", "tag_acc": "tag accuracy"}
# one colour and marker per policy family; stage 2 draws solid lines, stage 1 dashed
FAMILIES = {
    "token_window": ("TOKEE", "tab:blue", "o"),
    "sentence": ("SENTEE", "tab:orange", "s"),
    "fixed_depth": ("fixed depth", "tab:green", "^"),
    "full": ("full depth", "black", "*"),
    "hf_forward": ("HF forward, full depth", "tab:red", "x"),
}
STAGE_STYLES = {"stage2": ("stage 2", "-"), "stage1": ("stage 1", "--"), None: ("", "-")}
POINT_MARKERS = {"stage2": ("D", "tab:purple"), "stage1": ("P", "tab:brown")}


class MatplotlibMissing(ImportError):
    """Raised when a figure is asked for and matplotlib (>= 3.7) is not installed."""


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MatplotlibMissing(
            "Plotting needs matplotlib, an optional dependency of spacy-earlyexit: pip install matplotlib"
        ) from err
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path) -> Path:
    """Save `figure` to `path`, a regular file replaced once the new one is
    complete (`outputs.replacing_file`)."""
    path = Path(path)
    with replacing_file(path) as partial:
        figure.savefig(partial, dpi=150)
    return path


# -- trade-off ------------------------------------------------------------------
def load_json(path: Path) -> Dict:
    return json.loads(Path(path).read_text(encoding="utf8"))


def _stages(benchmarks: Sequence[Dict]) -> List[Optional[str]]:
    """Each benchmark's stage: its "stage" key, else by position (the first is
    the final, stage-2 model, the second stage 1); a lone benchmark without the
    key gets no stage name."""
    by_position = ["stage2", "stage1"] if len(benchmarks) > 1 else [None]
    return [result.get("stage") or by_position[min(i, len(by_position) - 1)] for i, result in enumerate(benchmarks)]


def series_name(point: Dict) -> Optional[str]:
    """The series a benchmark point is drawn in: its policy, or the engine
    that ran it when that is not the early-exit loop ("hf_forward"; files of
    earlier releases named it as the policy)."""
    engine = point.get("engine", "earlyexit")
    return point.get("policy") if engine == "earlyexit" else engine


def _series(points: Iterable[Dict]) -> Dict[Tuple[str, Optional[int]], List[Dict]]:
    """Points grouped by policy family (TOKEE also by window), in sweep order."""
    groups: Dict[Tuple[str, Optional[int]], List[Dict]] = {}
    for point in points:
        name = series_name(point)
        window = (point.get("params") or {}).get("window") if name == "token_window" else None
        groups.setdefault((name, window), []).append(point)
    return groups


def _xy(points: Sequence[Dict], x_key: str, log_x: bool) -> Tuple[List[float], List[float], List[Dict]]:
    """(x, score %) of the points that have both values, sorted by x."""
    kept = [
        p for p in points if p.get(x_key) is not None and p.get("score") is not None and (p[x_key] > 0 or not log_x)
    ]
    kept.sort(key=lambda p: p[x_key])
    return [p[x_key] for p in kept], [100 * p["score"] for p in kept], kept


def _draw_benchmark(ax, result: Dict, stage: Optional[str], x_key: str, log_x: bool) -> None:
    stage_name, linestyle = STAGE_STYLES.get(stage, (str(stage), ":"))
    suffix = f", {stage_name}" if stage_name else ""
    hollow = stage == "stage1"
    for (policy, window), points in _series(result.get("points", [])).items():
        name, colour, marker = FAMILIES.get(policy, (str(policy), "tab:gray", "v"))
        if policy == "token_window" and window is not None:
            name = f"{name} (window {window})"
        xs, ys, kept = _xy(points, x_key, log_x)
        if not xs:
            continue
        style = dict(color=colour, marker=marker, label=name + suffix)
        if policy in ("full", "hf_forward"):  # single reference points, no line
            size = 16 if policy == "full" else 9
            face = "none" if hollow and policy == "full" else colour
            ax.plot(xs, ys, linestyle="none", markersize=size, markerfacecolor=face, **style)
            continue
        ax.plot(
            xs,
            ys,
            linestyle=linestyle,
            markersize=5,
            markerfacecolor="none" if hollow else colour,
            linewidth=1.5,
            **style,
        )
        if policy == "fixed_depth" and not hollow:
            for x, y, point in zip(xs, ys, kept):
                layer = (point.get("params") or {}).get("layer")
                if layer is not None:
                    ax.annotate(
                        f"L{layer}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour
                    )


def _draw_operating_points(ax, points: Sequence[Dict], stage: str, x_key: str, score_key: str, log_x: bool) -> None:
    marker, colour = POINT_MARKERS[stage]
    stage_name = STAGE_STYLES[stage][0]
    drawn = [
        p for p in points if p.get(x_key) is not None and p.get(score_key) is not None and (p[x_key] > 0 or not log_x)
    ]
    if not drawn:
        return
    score_name = score_key.replace("_score", "")
    ax.plot(
        [p[x_key] for p in drawn],
        [100 * p[score_key] for p in drawn],
        linestyle="none",
        marker=marker,
        markersize=9,
        color=colour,
        markerfacecolor="none" if stage == "stage1" else colour,
        label=f"operating points, {stage_name} ({score_name} score)",
    )
    for p in drawn:
        name = str(p.get("name", ""))
        if p.get("reached") is False:
            name += " (not reached)"
        ax.annotate(
            name,
            (p[x_key], 100 * p[score_key]),
            textcoords="offset points",
            xytext=(6, 6 if stage == "stage2" else -12),
            fontsize=8,
            color=colour,
            fontweight="bold",
        )


def log_words_axis(ax) -> None:
    """Log x axis labelled in plain words per second (800, 1k, 2k, 3k, 5k, 10k)."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position) -> str:
        if value <= 0:
            return ""
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        if round(mantissa, 6) not in (1, 2, 3, 5, 8):
            return ""
        return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(label))
    ax.xaxis.set_minor_formatter(FuncFormatter(label))


def plot_tradeoff(
    benchmarks: Sequence[Dict],
    output: Path,
    operating_points: Optional[Dict] = None,
    point_score: str = "test",
) -> Path:
    """Draw score against analytic FLOPs speed-up (left) and against measured
    words per second (right, log scale) for every policy in `benchmarks`
    (benchmark JSON, the final/stage-2 model's first, then stage 1's), with the
    calibrated operating points of `operating_points` annotated by name.

    benchmarks (Sequence[Dict]): One or two results of `spacy_earlyexit benchmark`.
    output (Path): The PNG to write.
    operating_points (Optional[Dict]): Calibrated points ("points" for stage 2,
        "stage1_points" for stage 1).
    point_score (str): "test" or "dev": which score of the operating points to draw.
    RETURNS (Path): The PNG written.
    """
    if not benchmarks:
        raise ValueError("plot_tradeoff needs at least one benchmark result.")
    if point_score not in ("dev", "test"):
        raise ValueError(f"point_score must be 'dev' or 'test', not '{point_score}'.")
    figure = new_figure(14, 6)
    axes = figure.subplots(1, 2)
    first = benchmarks[0]
    metric = first.get("metric") or "score"
    metric_label = f"{METRIC_NAMES.get(metric, metric)} ({metric}, %)"
    panels = (
        (axes[0], "flops_speedup", False, "analytic FLOPs speed-up vs full depth (x)"),
        (axes[1], "words_per_second", True, "measured words per second (log scale)"),
    )
    score_key = f"{point_score}_score"
    for ax, x_key, log_x, x_label in panels:
        for result, stage in zip(benchmarks, _stages(benchmarks)):
            _draw_benchmark(ax, result, stage, x_key, log_x)
        if operating_points:
            for key, stage in (("points", "stage2"), ("stage1_points", "stage1")):
                _draw_operating_points(ax, operating_points.get(key) or [], stage, x_key, score_key, log_x)
            full_score = (operating_points.get("full") or {}).get(score_key)
            if full_score is not None:
                ax.axhline(
                    100 * full_score,
                    color="gray",
                    linestyle=":",
                    linewidth=1,
                    label=f"full depth, {point_score} score (operating points file)",
                )
        if log_x:
            log_words_axis(ax)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric_label)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.15)
    axes[0].set_title("Score vs analytic speed-up")
    axes[1].set_title("Score vs measured throughput")
    handles, labels = axes[0].get_legend_handles_labels()
    more_handles, more_labels = axes[1].get_legend_handles_labels()
    for handle, label in zip(more_handles, more_labels):  # a series may be drawable in one panel only
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    n_layers = first.get("n_layers")
    depth = f", {n_layers} layers" if n_layers else ""
    figure.suptitle(f"Early-exit trade-off: {first.get('component', '?')} in {first.get('pipeline', '?')}{depth}")
    return save_figure(figure, output)


# -- exit layers per gold label ---------------------------------------------------
def _gold_label_getter(component: EarlyExitLabeler):
    if isinstance(component, EarlyExitNER):

        def entity(token) -> str:
            if token.ent_iob_ in ("B", "I"):
                return token.ent_type_
            return "O" if token.ent_iob_ == "O" else MISSING

        return entity
    if isinstance(component, EarlyExitTagger):
        return lambda token: token.tag_ or MISSING
    raise ValueError(f"Don't know the gold labels of a {type(component).__name__}.")


def exit_layers_by_label(
    nlp: Language, component_name: str, gold_docs: Iterable[Doc], batch_size: int = 64
) -> Dict[str, Counter]:
    """Run the gold docs' words through `nlp` (only `component_name`, at its
    configured exit policy) and count, per gold label of each token, the layers
    where the tokens exit. An NER component's label is the type of the gold
    entity the token is in ("O" outside any); a tagger's is the gold tag.
    Tokens without gold annotation count under "(missing)".

    nlp (Language): The pipeline.
    component_name (str): An earlyexit_ner or earlyexit_tagger component of `nlp`.
    gold_docs (Iterable[Doc]): Annotated reference docs.
    batch_size (int): nlp.pipe batch size.
    RETURNS (Dict[str, Counter]): label -> Counter of exit layer (1..L) -> tokens.
    """
    component = nlp.get_pipe(component_name)
    if not isinstance(component, EarlyExitLabeler):
        raise ValueError(f"'{component_name}' is not an early-exit component.")
    gold_label = _gold_label_getter(component)
    gold_docs = [doc for doc in gold_docs if len(doc)]
    inputs = [fresh_copy(doc, nlp.vocab) for doc in gold_docs]
    counts: Dict[str, Counter] = {}
    with nlp.select_pipes(enable=[component_name]):
        for gold, predicted in zip(gold_docs, nlp.pipe(inputs, batch_size=batch_size)):
            layers = [token._.exit_layers[component_name] for token in predicted]
            for token, layer in zip(gold, layers):
                counts.setdefault(gold_label(token), Counter())[layer] += 1
    return counts


def plot_exit_layers(
    counts: Dict[str, Counter],
    n_layers: int,
    output: Path,
    title: str = "Exit layers per gold label",
    max_labels: int = 15,
) -> Path:
    """Draw, for each label (most frequent first, at most `max_labels`), a
    stacked horizontal bar of the share of its tokens exiting at each layer,
    with the token count and mean exit layer in the tick label.

    counts (Dict[str, Counter]): The result of `exit_layers_by_label`.
    n_layers (int): The encoder's depth L (the bars cover layers 1..L).
    output (Path): The PNG to write.
    title (str): Figure title.
    max_labels (int): How many of the most frequent labels to show.
    RETURNS (Path): The PNG written.
    """
    totals = {label: sum(counter.values()) for label, counter in counts.items()}
    labels = sorted((label for label in counts if totals[label]), key=lambda label: (-totals[label], label))
    shown = labels[:max_labels]
    if len(shown) < len(labels):
        title += f" ({len(shown)} most frequent of {len(labels)} labels)"
    title = "\n".join(textwrap.fill(line, 110) for line in title.split("\n"))
    layers = range(1, n_layers + 1)
    figure = new_figure(11, 1.2 + 0.42 * max(len(shown), 1))
    ax = figure.subplots()
    colours = _layer_colours(n_layers)
    left = [0.0] * len(shown)
    for layer, colour in zip(layers, colours):
        shares = [100 * counts[label][layer] / totals[label] for label in shown]
        ax.barh(
            range(len(shown)), shares, left=left, color=colour, edgecolor="white", linewidth=0.5, label=f"layer {layer}"
        )
        left = [a + b for a, b in zip(left, shares)]
    ticks = []
    for label in shown:
        mean = sum(layer * n for layer, n in counts[label].items()) / totals[label]
        ticks.append(f"{label}  (n={totals[label]:,}, mean {mean:.2f})")
    ax.set_yticks(range(len(shown)), ticks)
    ax.invert_yaxis()  # most frequent at the top
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the label's tokens exiting at each layer (%)")
    ax.grid(True, axis="x", alpha=0.4)
    ax.set_axisbelow(True)
    figure.legend(*ax.get_legend_handles_labels(), title="exit layer", loc="outside right upper", fontsize=8)
    figure.suptitle(title, fontsize=11)
    return save_figure(figure, output)


def _layer_colours(n_layers: int) -> List:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n_layers - 1, 1)) for i in range(n_layers)]


def _encoder_depth(nlp: Language, component_name: str) -> int:
    return nlp.get_pipe(component_name).encoder.n_layers


# -- command ----------------------------------------------------------------------
def plot(
    benchmarks: List[Path] = typer.Argument(
        ..., help="Benchmark JSON of the final (stage 2) model, then optionally of stage 1", exists=True, dir_okay=False
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Prefix: writes PREFIX-tradeoff.png and PREFIX-exit-layers.png"
    ),
    points: Optional[Path] = typer.Option(
        None, "--points", help="Operating points JSON to annotate", exists=True, dir_okay=False
    ),
    pipeline: Optional[str] = typer.Option(
        None, "--pipeline", help="Pipeline (directory or package) for the exit-layer histogram"
    ),
    corpus: Optional[Path] = typer.Option(
        None, "--corpus", help="Gold corpus (.spacy DocBin) for the exit-layer histogram", exists=True, dir_okay=False
    ),
    point_score: str = typer.Option("test", "--point-score", help="Operating points' score to draw: test or dev"),
    limit: int = typer.Option(0, "--limit", help="Histogram: use only the first N docs of the corpus (0: all)"),
    max_labels: int = typer.Option(15, "--max-labels", help="Histogram: the most frequent labels to show"),
) -> None:
    """Plot the accuracy/speed trade-off of every exit policy and, given a
    pipeline and a gold corpus, the exit layers per gold label."""
    if len(benchmarks) > 2:
        raise typer.BadParameter("at most two benchmark files: stage 2, then stage 1", param_hint="BENCHMARKS")
    if (pipeline is None) != (corpus is None):
        raise typer.BadParameter("--pipeline and --corpus go together", param_hint="--pipeline/--corpus")
    with exit_on_refusal():
        for written in [f"{output}-tradeoff.png"] + ([f"{output}-exit-layers.png"] if pipeline else []):
            check_output(written, [*benchmarks, points, pipeline, corpus])
    try:
        new_figure(1, 1)  # fail before any slow work
    except MatplotlibMissing as err:
        msg.fail(str(err), exits=1)
    results = [load_json(path) for path in benchmarks]
    operating_points = load_json(points) if points else None
    tradeoff = plot_tradeoff(results, Path(f"{output}-tradeoff.png"), operating_points, point_score)
    msg.good(f"Saved {tradeoff}")
    if pipeline is None:
        msg.info("No --pipeline and --corpus given: no exit-layer histogram.")
        return
    import spacy

    nlp = spacy.load(pipeline)
    names = [name for name, proc in nlp.pipeline if isinstance(proc, EarlyExitLabeler)]
    component_name = results[0].get("component")
    if component_name not in names:
        if not names:
            msg.fail(f"Pipeline '{pipeline}' has no earlyexit_ner or earlyexit_tagger component.", exits=1)
        msg.warn(f"Benchmark component '{component_name}' is not in '{pipeline}': using '{names[0]}'.")
        component_name = names[0]
    gold = list(DocBin().from_disk(corpus).get_docs(nlp.vocab))
    if limit:
        gold = gold[:limit]
    counts = exit_layers_by_label(nlp, component_name, gold)
    kind = "gold entity label" if isinstance(nlp.get_pipe(component_name), EarlyExitNER) else "gold tag"
    policy = nlp.get_pipe(component_name).exit_policy
    policy_label = OperatingPoint(policy).label
    if policy.name == "full":
        msg.warn(f"'{component_name}' in '{pipeline}' runs at full depth: every token exits at the last layer.")
    docs = f"the first {len(gold)} docs of {corpus.name}" if limit else corpus.name
    title = f"Exit layers per {kind}\n{component_name} in {pipeline}, exit policy {policy_label}, on {docs}"
    histogram = plot_exit_layers(
        counts, _encoder_depth(nlp, component_name), Path(f"{output}-exit-layers.png"), title, max_labels
    )
    msg.good(f"Saved {histogram}")
