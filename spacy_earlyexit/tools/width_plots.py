"""The Pareto fronts of adaptive width alone, token exit alone and both, from a
benchmark swept over widths (`python -m spacy_earlyexit benchmark ... --widths`)."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import typer
from wasabi import msg

from .outputs import check_output, exit_on_refusal
from .plots import METRIC_NAMES, MatplotlibMissing, load_json, log_words_axis, new_figure, save_figure, series_name

#: (label, colour, marker) of each front
FRONTS = {
    "width": ("width alone (full depth)", "tab:green", "s"),
    "exit": ("exit alone (full width)", "tab:blue", "o"),
    "joint": ("width and exit", "tab:red", "D"),
}


def family(point: Dict) -> Optional[str]:
    """Which fronts a benchmark point belongs to: "width" (full depth at any
    width), "exit" (full width, any exit policy) or None (only the joint one)."""
    if series_name(point) == "hf_forward":
        return "skip"
    width = point.get("width", 1.0)
    if point.get("policy") == "full":
        return "width"  # full width, full depth is on every front
    return "exit" if width >= 1.0 else None


def pareto_front(points: Sequence[Dict], x_key: str) -> List[Dict]:
    """The points no other point beats in both `x_key` and score, by x."""
    usable = sorted(
        (p for p in points if p.get(x_key) and p.get("score") is not None), key=lambda p: (-p[x_key], -p["score"])
    )
    front, best = [], float("-inf")
    for point in usable:
        if point["score"] > best:
            front.append(point)
            best = point["score"]
    return front[::-1]


def fronts(points: Sequence[Dict], x_key: str) -> Dict[str, List[Dict]]:
    """The three fronts; full depth at full width starts each of them."""
    points = [p for p in points if family(p) != "skip"]
    start = [p for p in points if p.get("policy") == "full" and p.get("width", 1.0) >= 1.0]
    members = {
        "width": [p for p in points if family(p) == "width"],
        "exit": start + [p for p in points if family(p) == "exit"],
        "joint": points,
    }
    return {name: pareto_front(chosen, x_key) for name, chosen in members.items()}


def plot_width_fronts(benchmark: Dict, output: Path, operating_points: Optional[Dict] = None) -> Path:
    """Score against analytic speed-up (left) and measured words per second
    (right, log scale): every swept point faintly, the Pareto front of width
    alone, exit alone and both, and the calibrated points by name."""
    figure = new_figure(14, 6)
    axes = figure.subplots(1, 2)
    metric = benchmark.get("metric") or "score"
    panels = (
        (axes[0], "flops_speedup", False, "analytic FLOPs speed-up vs full (x)"),
        (axes[1], "words_per_second", True, "measured words per second (log scale)"),
    )
    points = benchmark.get("points", [])
    for ax, x_key, log_x, x_label in panels:
        usable = [p for p in points if p.get(x_key) and p.get("score") is not None and family(p) != "skip"]
        ax.scatter(
            [p[x_key] for p in usable],
            [100 * p["score"] for p in usable],
            s=10,
            color="lightgray",
            label="every swept point",
        )
        for name, front in fronts(points, x_key).items():
            label, colour, marker = FRONTS[name]
            ax.plot(
                [p[x_key] for p in front],
                [100 * p["score"] for p in front],
                marker=marker,
                color=colour,
                markersize=5,
                linewidth=1.8,
                label=f"Pareto front: {label}",
            )
        for p in (operating_points or {}).get("points", []):
            if p.get(x_key) is None or p.get("test_score") is None:
                continue
            ax.annotate(
                p["name"],
                (p[x_key], 100 * p["test_score"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
                color="tab:purple",
            )
            ax.plot([p[x_key]], [100 * p["test_score"]], marker="x", color="tab:purple", linestyle="none")
        if log_x:
            log_words_axis(ax)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} ({metric}, %)")
        ax.grid(True, alpha=0.4)
    axes[0].set_title("Score vs analytic speed-up")
    axes[1].set_title("Score vs measured throughput")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    widths = sorted({p.get("width", 1.0) for p in points})
    figure.suptitle(
        f"Adaptive width and token exit: {benchmark.get('component', '?')} in "
        f"{benchmark.get('pipeline', '?')}, widths {', '.join(f'{w:g}' for w in widths)}"
    )
    return save_figure(figure, output)


def plot_width(
    benchmark: Path = typer.Argument(
        ..., help="Benchmark JSON swept over widths (benchmark --widths)", exists=True, dir_okay=False
    ),
    output: Path = typer.Option(..., "--output", "-o", help="The PNG to write"),
    points: Optional[Path] = typer.Option(
        None, "--points", help="Operating points JSON (evaluate-points) to mark", exists=True, dir_okay=False
    ),
) -> None:
    """Plot the Pareto fronts of adaptive width alone, token exit alone and both."""
    with exit_on_refusal():
        check_output(output, (benchmark, points))
    try:
        path = plot_width_fronts(load_json(benchmark), output, load_json(points) if points else None)
    except MatplotlibMissing as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Saved {path}")
