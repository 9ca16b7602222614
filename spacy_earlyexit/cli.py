"""Command line: `python -m spacy_earlyexit train|benchmark ...`; the benchmark
is also available as `python -m spacy benchmark earlyexit ...`."""
import json
import time
from pathlib import Path
from typing import List, Optional

import torch
import typer
from spacy import util
from spacy.cli._util import benchmark_cli, parse_config_overrides
from wasabi import msg

from .annotate import annotate
from .plots import plot
from .width_plots import plot_width

from .benchmark import (
    DEFAULT_SENTENCE_THRESHOLDS, DEFAULT_TOKEN_THRESHOLDS, default_sweep, format_table, run_benchmark, write_result,
)

#: written by `train` into its output directory: how long the run took
TRAINING_TIME_FILE = "training-time.json"

app = typer.Typer(name="spacy_earlyexit", help="spacy-earlyexit commands", no_args_is_help=True)


@app.callback()
def main() -> None:
    """spacy-earlyexit: early-exit transformer sequence labelling for spaCy."""


def _floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def benchmark(
    pipeline: Path = typer.Argument(..., help="Trained pipeline directory or package name", exists=False),
    corpus: Path = typer.Argument(..., help="Evaluation corpus (.spacy DocBin)", exists=True, dir_okay=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON"),
    component: Optional[str] = typer.Option(None, "--component", "-c", help="Early-exit component to sweep (default: first)"),
    thresholds: str = typer.Option(",".join(map(str, DEFAULT_TOKEN_THRESHOLDS)), "--thresholds", help="TOKEE thresholds"),
    windows: str = typer.Option("2", "--windows", help="TOKEE window half-widths, comma-separated"),
    sentence_thresholds: str = typer.Option(",".join(map(str, DEFAULT_SENTENCE_THRESHOLDS)), "--sentence-thresholds", help="SENTEE thresholds ('' for none)"),
    fixed_depths: bool = typer.Option(True, "--fixed-depths/--no-fixed-depths", help="Include every truncated depth"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    limit: int = typer.Option(0, "--limit", help="Use only the first N docs (0: all)"),
    compare_hf: bool = typer.Option(True, "--hf/--no-hf", help="Also time Hugging Face's forward with the same weights"),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved timing rounds (words/s: the median)"),
    widths: str = typer.Option("1", "--widths", help="Widths to sweep every policy at, comma-separated (from the component's width_multipliers)"),
) -> None:
    """Score, analytic speed-up and words per second for each exit policy (and width)."""
    def points(n_layers: int):
        return default_sweep(
            n_layers,
            windows=[int(w) for w in windows.split(",") if w.strip()],
            token_thresholds=_floats(thresholds),
            sentence_thresholds=_floats(sentence_thresholds),
            fixed_depths=fixed_depths,
            widths=_floats(widths) or [1.0],
        )

    result = run_benchmark(str(pipeline), str(corpus), component, points, batch_size, limit, compare_hf,
                           progress=lambda line: typer.echo(line, err=True), rounds=rounds)
    typer.echo(f"\n{result['component']} on {result['corpus']}: {result['n_docs']} docs, {result['n_words']} words, "
               f"batch size {batch_size}, {result['torch_threads']} torch threads, median of {rounds} interleaved rounds")
    typer.echo(format_table(result))
    if output:
        write_result(result, output)
        typer.echo(f"\nSaved to {output}")


app.command("benchmark")(benchmark)


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Training config", exists=True, dir_okay=False),
    output_path: Optional[Path] = typer.Option(None, "--output", "-o", help="Output directory"),
    code_path: Optional[Path] = typer.Option(None, "--code", "-c", help="Python file with registered functions"),
    use_gpu: int = typer.Option(-1, "--gpu-id", "-g", help="GPU ID or -1 for CPU"),
    evals_per_epoch: int = typer.Option(1, "--evals-per-epoch", help="Dev evaluations per epoch (and one at the end)"),
) -> None:
    """`spacy train` with a run length that follows the corpus: `max_epochs`
    becomes a step count measured on the training corpus, with the dev set
    evaluated at least once per epoch and at the last step. Other options and
    `--section.key value` overrides are those of `spacy train`."""
    from spacy.cli.train import train as spacy_train

    from .training_plan import plan_training

    if code_path:
        util.import_file("functions", code_path)
    overrides = parse_config_overrides(ctx.args)
    config = util.load_config(config_path, overrides=overrides, interpolate=True)
    plan, per_epoch = plan_training(config, evals_per_epoch, overrides)
    if plan:
        msg.info(
            f"Corpus: {per_epoch} steps per epoch; {config['training']['max_epochs']} epochs -> "
            f"max_steps {plan['training.max_steps']}, evaluating every {plan['training.eval_frequency']} "
            "steps and at the last one"
        )
    started = time.perf_counter()
    spacy_train(config_path, output_path, use_gpu=use_gpu, overrides={**overrides, **plan})
    if output_path is not None:
        seconds = time.perf_counter() - started
        record = {"seconds": round(seconds, 1), "config": str(config_path), "torch_threads": torch.get_num_threads(),
                  "max_steps": plan.get("training.max_steps")}
        (Path(output_path) / TRAINING_TIME_FILE).write_text(json.dumps(record, indent=2), encoding="utf8")
        msg.info(f"Training took {seconds / 60:.1f} minutes")
benchmark_cli.command("earlyexit")(benchmark)


@app.command("calibrate")
def calibrate(
    pipeline: str = typer.Argument(..., help="Trained pipeline directory or package name"),
    dev: Path = typer.Argument(..., help="Dev corpus (.spacy); never the test set", exists=True, dir_okay=False),
    output: Path = typer.Argument(..., help="Directory for the calibrated pipeline (a copy with the points)"),
    component: Optional[str] = typer.Option(None, "--component", "-c", help="Early-exit component (default: first)"),
    targets: str = typer.Option("2,3,4", "--targets", help="Target analytic speed-ups, comma-separated"),
    max_drop: float = typer.Option(0.5, "--max-drop", help="Also: the fastest point within this score drop (points; <0: none)"),
    margin: float = typer.Option(1.05, "--margin", help="Seek each speed-up target at this multiple on dev (test text exits later)"),
    tolerance: float = typer.Option(0.25, "--tolerance", help="Dev score (points) a point must gain per doubling of speed-up beyond the target"),
) -> None:
    """Choose operating points on dev and write them into a copy of the pipeline."""
    from .calibrate import run_calibration

    if margin < 1.0 or tolerance < 0:
        raise typer.BadParameter("--margin must be >= 1 and --tolerance >= 0")
    result = run_calibration(pipeline, str(dev), output, component, _floats(targets),
                             max_drop if max_drop >= 0 else None, progress=lambda line: typer.echo(line, err=True),
                             margin=margin, tolerance=tolerance / 100.0)
    for point in result["points"]:
        if point["reached"]:
            typer.echo(f"{point['name']}: dev {100 * point['dev_score']:.2f} at {point['dev_flops_speedup']:.2f}x "
                       f"({point['policy']} {point['params']})")
        else:
            msg.warn(f"{point['name']}: {point['note']}")
    msg.good(f"Saved to {output} (default operating point: {result['default']})")


@app.command("evaluate-points")
def evaluate_points(
    pipeline: str = typer.Argument(..., help="Calibrated pipeline"),
    corpus: Path = typer.Argument(..., help="Test corpus (.spacy)", exists=True, dir_okay=False),
    stage1: Optional[str] = typer.Option(None, "--stage1", help="A stage-1 pipeline calibrated the same way"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved timing rounds (words/s: the median)"),
) -> None:
    """Test figures of every calibrated operating point beside their dev figures."""
    from .benchmark import evaluate_operating_points, format_points_table

    result = evaluate_operating_points(pipeline, str(corpus), stage1, batch_size, rounds,
                                       progress=lambda line: typer.echo(line, err=True))
    typer.echo(format_points_table(result))
    if output:
        write_result(result, output)
        typer.echo(f"\nSaved to {output}")


app.command("plot")(plot)  # matplotlib is imported only when the command runs
app.command("plot-width")(plot_width)
app.command("annotate")(annotate)
