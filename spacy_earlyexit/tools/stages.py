"""Which training stage a task keeps: stage 1 (every exit trained jointly)
or stage 2 (self-sampling), chosen on dev at the task's calibrated points.

Self-sampling (stage 2) does not pay for every task and corpus: on
CoNLL-2003 it raises NER's exits but left the tagger's points up to 3x where
stage 1 had them. So a workflow calibrates both stages on dev, and this
command keeps stage 2 only where it wins there:

    python -m spacy_earlyexit choose-stage STAGE1_CALIBRATED STAGE2_CALIBRATED OUTPUT
        [--metrics FILE] [--force]

The comparison reads what calibration already measured (both pipelines'
meta), so it runs nothing: at full depth and at every speed-up point
(2x, 3x, 4x...) both stages reached, the dev score of stage 2 less that of
stage 1. Stage 2 is kept when that change, averaged over those points (and,
for a shared encoder, over its tasks: one encoder serves them all), is
above zero; a tie keeps stage 1, the shorter training. The `max-drop`
point is reported beside but not counted: it is chosen by speed within a
drop, so its score says little about the stage. The kept pipeline is copied
to OUTPUT (beside it, renamed into place when complete) with the choice in
its meta (`earlyexit.stage_choice`); `--metrics` writes the same as JSON.
"""

import json
import shutil
from pathlib import Path
from statistics import fmean
from typing import Dict, List, Optional

import typer
from wasabi import msg

from .calibrate.writing import is_calibrated_pipeline
from .options import FORCE
from .outputs import OutputRefused, check_output, exit_on_refusal, replacing_directory, replacing_file

STAGES = ("stage1", "stage2")
COMMAND = "choose-stage"


def calibration_of(pipeline: Path) -> Dict:
    """What `calibrate` recorded in a calibrated pipeline's meta."""
    try:
        meta = json.loads((Path(pipeline) / "meta.json").read_text(encoding="utf8"))
    except (OSError, ValueError):
        meta = None
    calibration = meta.get("earlyexit") if isinstance(meta, dict) else None
    if not isinstance(calibration, dict) or not isinstance(calibration.get("full"), dict):
        raise ValueError(f"{pipeline} is not a calibrated pipeline (run `calibrate` on it first).")
    return calibration


def _task_scores(row: Dict, metric: str) -> Dict[str, float]:
    """A point's dev score per task (one task, named by the metric, for a
    single-task component)."""
    scores = row.get("dev_task_scores")
    if isinstance(scores, dict):
        return {task: float(score) for task, score in scores.items()}
    return {metric: float(row["dev_score"])}


def _compared_points(calibration: Dict) -> Dict[str, Dict]:
    """Full depth and the reached speed-up points, by name."""
    rows = {"full": calibration["full"]}
    for row in calibration.get("points", []):
        if row.get("reached") and row.get("kind") == "speedup":
            rows[row["name"]] = row
    return rows


def compare_stages(stage1: Dict, stage2: Dict) -> Dict:
    """Which stage to keep, from the two calibrations (`calibration_of`): the
    dev change of stage 2 over stage 1 at each point both reached, per task,
    their mean, and the stage kept (stage 2 only when the mean is above 0)."""
    if stage1.get("component") != stage2.get("component"):
        raise ValueError(
            f"the two pipelines were calibrated for different components "
            f"({stage1.get('component')!r}, {stage2.get('component')!r})."
        )
    if stage1.get("metric") != stage2.get("metric"):
        metrics = (stage1.get("metric"), stage2.get("metric"))
        raise ValueError(f"the two calibrations use different metrics {metrics}.")
    metric = stage1["metric"]
    rows1, rows2 = _compared_points(stage1), _compared_points(stage2)
    names = [name for name in rows1 if name in rows2]
    points: Dict[str, Dict] = {}
    changes: List[float] = []
    for name in names:
        scores1, scores2 = _task_scores(rows1[name], metric), _task_scores(rows2[name], metric)
        if set(scores1) != set(scores2):
            raise ValueError(f"the two calibrations score different tasks ({sorted(scores1)}, {sorted(scores2)}).")
        change = {task: scores2[task] - scores1[task] for task in scores1}
        changes.extend(change.values())
        points[name] = {
            "stage1": scores1,
            "stage2": scores2,
            "change": change,
            "stage1_flops_speedup": rows1[name].get("dev_flops_speedup", 1.0),
            "stage2_flops_speedup": rows2[name].get("dev_flops_speedup", 1.0),
        }
    mean_change = fmean(changes)
    drops = {}
    for stage, calibration in zip(STAGES, (stage1, stage2)):
        row = next((r for r in calibration.get("points", []) if r.get("kind") == "max_drop" and r.get("reached")), None)
        if row is not None:
            drops[stage] = {
                "name": row["name"],
                "scores": _task_scores(row, metric),
                "dev_flops_speedup": row.get("dev_flops_speedup"),
                "dev_wps_ratio": row.get("dev_wps_ratio"),
            }
    return {
        "component": stage1["component"],
        "metric": metric,
        "kept": "stage2" if mean_change > 0 else "stage1",
        "mean_change": mean_change,
        "compared": names,
        "points": points,
        "max_drop": drops,
        "rule": "stage 2 when its dev change over stage 1, averaged over full depth and the speed-up "
        "points both reached (and over tasks), is above 0",
    }


def choose_stage(stage1: Path, stage2: Path, output: Path, metrics: Optional[Path] = None, force: bool = False) -> Dict:
    """Compare the two calibrated pipelines (`compare_stages`), copy the kept
    one to `output` with the choice in its meta, and write the choice to
    `metrics` when given."""
    choice = compare_stages(calibration_of(stage1), calibration_of(stage2))
    kept = Path(stage1 if choice["kept"] == "stage1" else stage2)
    choice["pipelines"] = {"stage1": str(stage1), "stage2": str(stage2)}
    inputs = (stage1, stage2)
    if metrics is not None:  # refused before anything is written (the directory checks itself)
        check_output(metrics, (*inputs, output))
    with replacing_directory(output, inputs, command=COMMAND, force=force, earlier=is_calibrated_pipeline) as partial:
        shutil.copytree(kept, partial, dirs_exist_ok=True)
        meta = json.loads((partial / "meta.json").read_text(encoding="utf8"))
        meta["earlyexit"]["stage_choice"] = choice
        (partial / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf8")
    if metrics is not None:
        with replacing_file(metrics, (*inputs, output)) as partial_file:
            partial_file.write_text(json.dumps(choice, indent=2), encoding="utf8")
    return choice


def choose_stage_command(
    stage1: Path = typer.Argument(..., help="The calibrated stage-1 pipeline", exists=True, file_okay=False),
    stage2: Path = typer.Argument(
        ..., help="The calibrated stage-2 (self-sampled) pipeline", exists=True, file_okay=False
    ),
    output: Path = typer.Argument(..., help="Directory for a copy of the pipeline kept"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Write the comparison and the choice as JSON"),
    force: bool = FORCE,
) -> None:
    """Keep stage 2 only where it wins on dev at the calibrated points."""
    with exit_on_refusal():
        try:
            choice = choose_stage(stage1, stage2, output, metrics, force)
        except ValueError as error:
            if isinstance(error, OutputRefused):
                raise
            msg.fail(str(error), exits=1)
    for name, point in choice["points"].items():
        change = ", ".join(f"{task} {100 * value:+.2f}" for task, value in point["change"].items())
        typer.echo(f"{name}: stage 2 - stage 1 on dev: {change}")
    msg.good(f"Kept {choice['kept']} (mean change {100 * choice['mean_change']:+.2f}); saved to {output}")
