"""`python -m spacy_earlyexit evaluate-points`: test figures of every
calibrated operating point beside its dev figures."""

from pathlib import Path
from typing import Callable, Dict, Optional

import spacy
import torch
import typer

from .evaluation import (
    Measurement,
    corpus_examples,
    fmt_value,
    format_rows,
    fresh_copy,
    keep_only_early_exit,
    measure,
    measure_interleaved,
    measurement,
    sentence_examples,
    set_ratios,
    write_result,
)
from .options import CODE, GPU_ID, PRECISION, prepare
from .outputs import check_output, exit_on_refusal


def evaluate_operating_points(
    pipeline: str,
    corpus: str,
    stage1: Optional[str] = None,
    batch_size: int = 64,
    rounds: int = 3,
    progress: Callable[[str], None] = print,
    precision: Optional[str] = None,
) -> Dict:
    """Test figures of a calibrated pipeline's operating points (and of a
    stage-1 pipeline calibrated the same way): score, analytic speed-up and
    words per second relative to full depth, measured in interleaved rounds.
    Dev figures come from the calibration stored in each pipeline's meta.
    `precision` (default: each component's own) applies to every point.
    Where the corpus marks sentences, every point is also run once on the
    corpus's sentences as docs of their own (`*_sentences`: score, analytic
    speed-up and that run's words per second)."""
    loaded = []
    for path in [pipeline] + ([stage1] if stage1 else []):
        nlp = spacy.load(path)
        meta = nlp.meta.get("earlyexit")
        if not meta:
            raise ValueError(f"'{path}' has no calibrated operating points: run `python -m spacy_earlyexit calibrate`.")
        name = keep_only_early_exit(nlp, meta["component"])
        if precision is not None:
            nlp.get_pipe(name).precision = precision
        loaded.append((nlp, name, meta))
    examples = corpus_examples(loaded[0][0], corpus)
    runs, per_pipeline = [], []
    for nlp, name, meta in loaded:
        list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples[:16]], batch_size=batch_size))  # warm-up
        full = measurement("full")
        component = nlp.get_pipe(name)
        chosen = [(p, Measurement(component.point(p["name"]))) for p in meta["points"] if p["reached"]]
        runs += [(nlp, name, full)] + [(nlp, name, point) for _, point in chosen]
        per_pipeline.append((meta, full, chosen))
    measure_interleaved(runs, examples, batch_size, rounds, progress)
    sentences = sentence_examples(loaded[0][0], examples)
    on_sentences = {}
    for nlp, name, point in runs if sentences else []:
        alone = measure(nlp, name, sentences, Measurement(point.point, point.engine), batch_size)
        on_sentences[id(point)] = alone
        progress(f"[sentences] {point.label}: score {fmt_value(alone.score, '.4f')}")
    result: Dict = {
        "pipeline": str(pipeline),
        "corpus": str(corpus),
        "rounds": rounds,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "n_words": sum(len(eg.predicted) for eg in examples),
    }
    for key, (meta, full, chosen) in zip(("points", "stage1_points"), per_pipeline):
        set_ratios([full] + [point for _, point in chosen], full)
        by_name = {p["name"]: point for p, point in chosen}
        rows = []
        for p in meta["points"]:
            point = by_name.get(p["name"])
            rows.append(
                {
                    "name": p["name"],
                    "target": p["target"],
                    "kind": p["kind"],
                    "search": p.get("search", "joint"),
                    "policy": p["policy"],
                    "params": p["params"],
                    "reached": p["reached"],
                    "note": p["note"],
                    "dev_score": p["dev_score"],
                    "dev_flops_speedup": p["dev_flops_speedup"],
                    "ranked_by": p.get("ranked_by", "flops"),
                    "dev_wps_ratio": p.get("dev_wps_ratio"),
                    "test_score": point.score if point else None,
                    "flops_speedup": point.flops_speedup if point else None,
                    "words_per_second": point.words_per_second if point else None,
                    "wps_ratio_vs_full": point.wps_ratio_vs_full if point else None,
                    "mean_exit_layer": point.mean_exit_layer if point else None,
                    "dev_score_sentences": p.get("dev_score_sentences"),
                    **_sentence_figures(on_sentences.get(id(point))),
                    **_task_figures(p, point, on_sentences.get(id(point))),
                }
            )
        result[key] = rows
        full_row = {
            "dev_score": meta["full"]["dev_score"],
            "test_score": full.score,
            "words_per_second": full.words_per_second,
            "default": meta["default"],
            "dev_score_sentences": meta["full"].get("dev_score_sentences"),
            **_sentence_figures(on_sentences.get(id(full))),
            **_task_figures(meta["full"], full, on_sentences.get(id(full))),
        }
        result["full" if key == "points" else "stage1_full"] = full_row
    result["metric"] = loaded[0][2]["metric"]
    return result


def _task_figures(calibrated: Dict, point: Optional[Measurement], sentences: Optional[Measurement]) -> Dict:
    """A shared encoder's: each task's dev score (from the calibration) and
    test score, on documents and on sentences (`score` is then their mean,
    and the dev score the worst task's change from full depth)."""
    if "dev_task_scores" not in calibrated:
        return {}
    return {
        "dev_task_scores": calibrated.get("dev_task_scores"),
        "test_task_scores": point.task_scores if point else None,
        "test_task_scores_sentences": sentences.task_scores if sentences else None,
    }


def _sentence_figures(point: Optional[Measurement]) -> Dict:
    return {
        "test_score_sentences": point.score if point else None,
        "flops_speedup_sentences": point.flops_speedup if point else None,
        "words_per_second_sentences": point.words_per_second if point else None,
    }


def format_points_table(result: Dict) -> str:
    header = ("stage", "point", "params", "dev", "test", "FLOPs x", "words/s", "wall x", "dev sents", "test sents")
    rows = []
    for stage, key, full_key in (("2", "points", "full"), ("1", "stage1_points", "stage1_full")):
        if key not in result:
            continue
        full = result[full_key]
        rows.append(
            (
                stage,
                "full",
                "",
                fmt_value(full["dev_score"], ".4f"),
                fmt_value(full["test_score"], ".4f"),
                "1.00",
                fmt_value(full["words_per_second"], ",.0f"),
                "1.00",
                fmt_value(full.get("dev_score_sentences"), ".4f"),
                fmt_value(full.get("test_score_sentences"), ".4f"),
            )
        )
        for p in result[key]:
            params = ", ".join(
                f"{k}={v}" for k, v in p["params"].items() if k not in ("uncertainty", "layer_thresholds")
            )
            rows.append(
                (
                    stage,
                    p["name"] + ("" if p["reached"] else " (not reached)"),
                    params,
                    fmt_value(p["dev_score"], ".4f"),
                    fmt_value(p["test_score"], ".4f"),
                    fmt_value(p["flops_speedup"], ".2f"),
                    fmt_value(p["words_per_second"], ",.0f"),
                    fmt_value(p["wps_ratio_vs_full"], ".2f"),
                    fmt_value(p.get("dev_score_sentences"), ".4f"),
                    fmt_value(p.get("test_score_sentences"), ".4f"),
                )
            )
    return format_rows(header, rows)


def evaluate_points(
    pipeline: str = typer.Argument(..., help="Calibrated pipeline"),
    corpus: Path = typer.Argument(..., help="Test corpus (.spacy)", exists=True, dir_okay=False),
    stage1: Optional[str] = typer.Option(None, "--stage1", help="A stage-1 pipeline calibrated the same way"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved timing rounds (words/s: the median)"),
    precision: Optional[str] = PRECISION,
    code_path: Optional[Path] = CODE,
    gpu_id: int = GPU_ID,
) -> None:
    """Test figures of every calibrated operating point beside their dev figures."""
    inputs = (pipeline, corpus, stage1, code_path)
    if output:
        with exit_on_refusal():
            check_output(output, inputs)
    prepare(code_path, gpu_id)
    result = evaluate_operating_points(
        pipeline,
        str(corpus),
        stage1,
        batch_size,
        rounds,
        progress=lambda line: typer.echo(line, err=True),
        precision=precision,
    )
    typer.echo(format_points_table(result))
    if output:
        with exit_on_refusal():
            write_result(result, output, inputs)
        typer.echo(f"\nSaved to {output}")
