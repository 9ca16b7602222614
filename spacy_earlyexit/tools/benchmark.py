"""`python -m spacy_earlyexit benchmark`: sweep exit policies (and widths) of an
early-exit pipeline: score, analytic speed-up and measured words per second
through `nlp.pipe`, side by side in one run."""

import platform
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import spacy
import torch
import typer

from ..core.engines import HuggingFaceForward
from .evaluation import (
    Measurement,
    corpus_examples,
    fmt_value,
    format_rows,
    fresh_copy,
    keep_only_early_exit,
    measure_interleaved,
    measurement,
    set_ratios,
    write_result,
)
from .options import CODE, COMPONENT, GPU_ID, PRECISION, floats, prepare
from .outputs import check_output, exit_on_refusal

DEFAULT_TOKEN_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
DEFAULT_SENTENCE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)


def default_sweep(
    n_layers: int,
    windows: Sequence[int] = (2,),
    token_thresholds=DEFAULT_TOKEN_THRESHOLDS,
    sentence_thresholds=DEFAULT_SENTENCE_THRESHOLDS,
    fixed_depths: bool = True,
    widths: Sequence[float] = (1.0,),
) -> List[Measurement]:
    """full, every fixed depth, token_window (TOKEE) per window and
    threshold, sentence (SENTEE) per threshold; at every width of `widths`
    (full width first)."""
    points = []
    for width in sorted(widths, reverse=True):
        points.append(measurement("full", width))
        if fixed_depths:
            points += [measurement("fixed_depth", width, layer=layer) for layer in range(1, n_layers)]
        for window in windows:
            points += [measurement("token_window", width, threshold=t, window=window) for t in token_thresholds]
        points += [measurement("sentence", width, threshold=t) for t in sentence_thresholds]
    return points


def run_benchmark(
    pipeline: str,
    corpus: str,
    component_name: Optional[str] = None,
    points: Optional[Callable[[int], List[Measurement]]] = None,
    batch_size: int = 64,
    limit: int = 0,
    compare_huggingface: bool = True,
    progress: Callable[[str], None] = print,
    rounds: int = 3,
    precision: Optional[str] = None,
) -> Dict:
    """Measure every operating point (`points(n_layers)`, default: `default_sweep`)
    on `corpus` with `pipeline`, in one process, after one warm-up, in
    `rounds` interleaved rounds (words per second: the median), in
    `precision` (default: the component's own)."""
    nlp = spacy.load(pipeline)
    component_name = keep_only_early_exit(nlp, component_name)
    if precision is not None:
        nlp.get_pipe(component_name).precision = precision
    encoder = nlp.get_pipe(component_name).encoder
    examples = corpus_examples(nlp, corpus, limit)
    points = (points or default_sweep)(encoder.n_layers)
    if not any(p.is_full for p in points):
        points = [measurement("full")] + points
    if compare_huggingface:
        # the same weights through Hugging Face's forward, full depth
        points.append(measurement("full", engine=HuggingFaceForward()))
    # warm-up: allocator, thread pools, tokenizer caches
    list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples[:16]], batch_size=batch_size))
    measure_interleaved([(nlp, component_name, p) for p in points], examples, batch_size, rounds, progress)
    results = points
    set_ratios(results, next(p for p in results if p.is_full))
    return {
        "pipeline": str(pipeline),
        "corpus": str(corpus),
        "component": component_name,
        "metric": nlp.get_pipe(component_name).score_key,
        "n_docs": len(examples),
        "n_words": sum(len(eg.predicted) for eg in examples),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "machine": platform.processor() or platform.machine(),
        "device": _device_name(encoder.device),
        "torch": torch.__version__,
        "n_layers": encoder.n_layers,
        "precision": nlp.get_pipe(component_name).precision,
        "points": [p.to_dict() for p in results],
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def format_table(result: Dict) -> str:
    header = ("policy", "params", result["metric"], "FLOPs x", "words/s", "wall x", "mean layer")
    rows = []
    for p in result["points"]:
        params = ", ".join(f"{k}={v}" for k, v in p["params"].items() if k not in ("uncertainty", "note"))
        if p.get("width", 1.0) < 1.0:
            params = f"{params}, width={p['width']:g}" if params else f"width={p['width']:g}"
        engine = p.get("engine", "earlyexit")
        rows.append(
            (
                p["policy"] if engine == "earlyexit" else f"{p['policy']} on {engine}",
                params,
                fmt_value(p["score"], ".4f"),
                fmt_value(p["flops_speedup"], ".2f"),
                fmt_value(p["words_per_second"], ",.0f"),
                fmt_value(p["wps_ratio_vs_full"], ".2f"),
                fmt_value(p["mean_exit_layer"], ".2f"),
            )
        )
    return format_rows(header, rows)


def benchmark(
    pipeline: Path = typer.Argument(..., help="Trained pipeline directory or package name", exists=False),
    corpus: Path = typer.Argument(..., help="Evaluation corpus (.spacy DocBin)", exists=True, dir_okay=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON"),
    component: Optional[str] = COMPONENT,
    thresholds: str = typer.Option(
        ",".join(map(str, DEFAULT_TOKEN_THRESHOLDS)), "--thresholds", help="TOKEE thresholds"
    ),
    windows: str = typer.Option("2", "--windows", help="TOKEE window half-widths, comma-separated"),
    sentence_thresholds: str = typer.Option(
        ",".join(map(str, DEFAULT_SENTENCE_THRESHOLDS)), "--sentence-thresholds", help="SENTEE thresholds ('' for none)"
    ),
    fixed_depths: bool = typer.Option(True, "--fixed-depths/--no-fixed-depths", help="Include every truncated depth"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    limit: int = typer.Option(0, "--limit", help="Use only the first N docs (0: all)"),
    compare_hf: bool = typer.Option(
        True, "--hf/--no-hf", help="Also time Hugging Face's forward with the same weights"
    ),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved timing rounds (words/s: the median)"),
    widths: str = typer.Option(
        "1",
        "--widths",
        help="Widths to sweep every policy at, comma-separated (from the component's width_multipliers)",
    ),
    precision: Optional[str] = PRECISION,
    code_path: Optional[Path] = CODE,
    gpu_id: int = GPU_ID,
) -> None:
    """Score, analytic speed-up and words per second for each exit policy (and width)."""
    inputs = (pipeline, corpus, code_path)
    if output:
        with exit_on_refusal():
            check_output(output, inputs)
    prepare(code_path, gpu_id)

    def points(n_layers: int):
        return default_sweep(
            n_layers,
            windows=[int(w) for w in windows.split(",") if w.strip()],
            token_thresholds=floats(thresholds),
            sentence_thresholds=floats(sentence_thresholds),
            fixed_depths=fixed_depths,
            widths=floats(widths) or [1.0],
        )

    result = run_benchmark(
        str(pipeline),
        str(corpus),
        component,
        points,
        batch_size,
        limit,
        compare_hf,
        progress=lambda line: typer.echo(line, err=True),
        rounds=rounds,
        precision=precision,
    )
    typer.echo(
        f"\n{result['component']} on {result['corpus']}: {result['n_docs']} docs, {result['n_words']} words, "
        f"batch size {batch_size}, {result['torch_threads']} torch threads, median of {rounds} interleaved rounds"
    )
    typer.echo(format_table(result))
    if output:
        with exit_on_refusal():
            write_result(result, output, inputs)
        typer.echo(f"\nSaved to {output}")
