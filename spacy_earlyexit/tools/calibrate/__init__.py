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

The `max-drop` point is ranked by measured speed (`--rank speed`, the
default): the fastest candidates of each policy family within the drop are
run for real and timed against full depth on dev, in the precision and on
the machine calibration runs on, and the fastest in wall-clock is kept
(speed-up targets stay analytic: FLOPs, the same on any machine). Its timed
candidates are kept in the meta: `--retime` times them again on another
machine and chooses anew, without simulation or training. The grid holds
token_window (TOKEE), sentence (SENTEE), token_patience and fixed depths.

The chosen points are written into the pipeline's config (the component's
`operating_points` and its default `operating_point`) and into its meta, so a
saved or packaged pipeline loads with them and switches by name. The copy is
made beside the output and renamed into place when complete; an output at,
inside or around the pipeline or the dev corpus is refused, and so is an
existing directory that is not an earlier calibrated pipeline, unless
`--force` (`outputs.py`).

A shared encoder (`earlyexit_transformer`) is calibrated for all its tasks
at once (`tasks.py`): each candidate scores as its worst-off task's change
from full depth, so a speed-up target keeps the point whose worst task
loses least and `max-drop` the fastest that keeps every task within the
drop.

With `--windows`, a step 0 comes first: the reading window (wordpieces per
sequence and the context windows overlap by) is chosen on dev among the
trained one and the candidates (`windows.py`), and written into the copy's
config with the points.

The package: `windows.py` (step 0), `tracing.py` (step 1), `simulation.py` (the grid and step 2),
`search.py` (step 3: `calibrate_labeler`, `choose`, with the real-run
function as a parameter), `tasks.py` (a shared encoder's, and `calibrate`,
which takes either), `writing.py` (the calibrated copy), `run.py`
(`run_calibration`), and here the command.
"""

from pathlib import Path
from typing import Optional

import typer
from wasabi import msg

from ..options import CODE, COMPONENT, FORCE, GPU_ID, PRECISION, floats, prepare
from ..outputs import exit_on_refusal
from .run import run_calibration, run_retime
from .search import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_DROP,
    DEFAULT_RANK,
    DEFAULT_TARGETS,
    DEFAULT_TOLERANCE,
    MAX_REAL_RUNS,
    RANKS,
    CalibratedPoint,
    RealRun,
    Timer,
    calibrate_labeler,
    choose,
    choose_fastest,
    overshoot_adjusted,
    real_run,
    retime,
    searched_widths,
    timed_ratios,
)
from .simulation import (
    PATIENCES,
    SENTENCE_THRESHOLDS,
    THRESHOLDS,
    UPPER_FACTORS,
    WINDOWS,
    Candidate,
    candidates,
    simulate,
    simulated_score,
)
from .tasks import calibrate, calibrate_tasks
from .tracing import Trace, trace, trace_parts
from .windows import SPEED_FLOOR, Window, choose_window, parse_windows, timed_windows
from .writing import check_calibration_output, is_calibrated_pipeline, write_calibrated


def calibrate_command(
    pipeline: str = typer.Argument(..., help="Trained pipeline directory or package name"),
    dev: Path = typer.Argument(..., help="Dev corpus (.spacy); never the test set", exists=True, dir_okay=False),
    output: Path = typer.Argument(..., help="Directory for the calibrated pipeline (a copy with the points)"),
    component: Optional[str] = COMPONENT,
    targets: str = typer.Option(
        ",".join(f"{t:g}" for t in DEFAULT_TARGETS), "--targets", help="Target analytic speed-ups, comma-separated"
    ),
    max_drop: float = typer.Option(
        DEFAULT_MAX_DROP, "--max-drop", help="Also: the fastest point within this score drop (points; <0: none)"
    ),
    margin: float = typer.Option(
        DEFAULT_MARGIN, "--margin", help="Seek each speed-up target at this multiple on dev (test text exits later)"
    ),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE,
        "--tolerance",
        help="Dev score (points) a point must gain per doubling of speed-up beyond the target",
    ),
    rank: str = typer.Option(
        DEFAULT_RANK, "--rank", help="How max-drop is chosen: speed (measured words/s on dev) or flops"
    ),
    retime_only: bool = typer.Option(
        False,
        "--retime",
        help="Only time a calibrated pipeline's kept candidates again on this machine and choose its "
        "speed-ranked points anew (no simulation, no training)",
    ),
    windows: str = typer.Option(
        "",
        "--windows",
        help="Reading windows to try on dev first, PIECES[:CONTEXT] comma-separated (e.g. 128:8,96:8): the one "
        "that reads dev best, at least as well as the trained window and no slower, is kept",
    ),
    precision: Optional[str] = PRECISION,
    code_path: Optional[Path] = CODE,
    gpu_id: int = GPU_ID,
    force: bool = FORCE,
) -> None:
    """Choose operating points on dev and write them into a copy of the pipeline."""
    if margin < 1.0 or tolerance < 0:
        raise typer.BadParameter("--margin must be >= 1 and --tolerance >= 0")
    if rank not in RANKS:
        raise typer.BadParameter(f"--rank must be one of {', '.join(RANKS)}")
    try:
        tried_windows = parse_windows(windows)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if tried_windows and retime_only:
        raise typer.BadParameter("--windows chooses a window before the points; --retime keeps the pipeline's")
    with exit_on_refusal():
        check_calibration_output(pipeline, output, str(dev), force, code_path)
        prepare(code_path, gpu_id)
        if retime_only:
            result = run_retime(
                pipeline,
                str(dev),
                output,
                progress=lambda line: typer.echo(line, err=True),
                precision=precision,
                force=force,
                code_path=code_path,
            )
            msg.good(f"Re-timed on {result['timed_on']['cpu']}; saved to {output}")
            return
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
            rank=rank,
            windows=tried_windows,
        )
    for point in result["points"]:
        if point["reached"]:
            typer.echo(
                f"{point['name']}: dev {100 * point['dev_score']:.2f} at {point['dev_flops_speedup']:.2f}x "
                f"({point['policy']} {point['params']})"
            )
        else:
            msg.warn(f"{point['name']}: {point['note']}")
    if result.get("window"):
        kept = result["window"]["kept"]
        typer.echo(f"reading window: {kept['max_wordpieces']} wordpieces, context {kept['cut_context']}")
    msg.good(f"Saved to {output} (default operating point: {result['default']})")


__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_MAX_DROP",
    "DEFAULT_RANK",
    "DEFAULT_TARGETS",
    "DEFAULT_TOLERANCE",
    "MAX_REAL_RUNS",
    "PATIENCES",
    "RANKS",
    "SENTENCE_THRESHOLDS",
    "SPEED_FLOOR",
    "THRESHOLDS",
    "UPPER_FACTORS",
    "WINDOWS",
    "Window",
    "CalibratedPoint",
    "Candidate",
    "RealRun",
    "Timer",
    "Trace",
    "calibrate",
    "calibrate_command",
    "calibrate_labeler",
    "calibrate_tasks",
    "candidates",
    "check_calibration_output",
    "choose",
    "choose_window",
    "choose_fastest",
    "is_calibrated_pipeline",
    "overshoot_adjusted",
    "parse_windows",
    "real_run",
    "retime",
    "run_retime",
    "run_calibration",
    "searched_widths",
    "simulate",
    "simulated_score",
    "timed_ratios",
    "timed_windows",
    "trace",
    "trace_parts",
    "write_calibrated",
]
