"""The calibration of a saved pipeline on a dev corpus, written as a
calibrated copy (what the command runs)."""

from pathlib import Path
from typing import Dict, Optional, Sequence

import spacy

from ..evaluation import corpus_examples, keep_only_early_exit, sentence_examples
from .search import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_DROP,
    DEFAULT_RANK,
    DEFAULT_TARGETS,
    DEFAULT_TOLERANCE,
    Timer,
    retime,
    timed_ratios,
)
from .tasks import calibrate
from .windows import Window, WindowTimer, timed_windows
from .writing import check_calibration_output, write_calibrated


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
    rank: str = DEFAULT_RANK,
    timer: Timer = timed_ratios,
    windows: Sequence[Window] = (),
    window_timer: WindowTimer = timed_windows,
) -> Dict:
    """Load `pipeline`, calibrate its component on the dev corpus (first its
    reading window among `windows`, when given) and write the calibrated
    copy to `output`. An output that is or holds an input, or
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
        nlp,
        component_name,
        examples,
        targets,
        max_drop,
        progress,
        margin,
        tolerance,
        precision,
        sentences,
        rank=rank,
        timer=timer,
        windows=windows,
        window_timer=window_timer,
    )
    write_calibrated(pipeline, output, result, dev_path, force, code_path)
    return result


def run_retime(
    pipeline: str,
    dev_path: str,
    output: Path,
    progress=print,
    precision: Optional[str] = None,
    force: bool = False,
    code_path: Optional[Path] = None,
    timer: Timer = timed_ratios,
) -> Dict:
    """Load a calibrated `pipeline`, choose its speed-ranked points again by
    timing their kept candidates on the dev corpus on this machine (in
    `precision`, default the component's own), and write the re-timed copy
    to `output` (refused as `run_calibration` refuses)."""
    check_calibration_output(pipeline, output, dev_path, force, code_path)
    nlp = spacy.load(pipeline)
    meta = nlp.meta.get("earlyexit")
    if not isinstance(meta, dict) or "points" not in meta:
        raise ValueError(f"'{pipeline}' is not a calibrated pipeline: run `python -m spacy_earlyexit calibrate` first.")
    if not any(p.get("ranked_by") == "speed" and p.get("timed") for p in meta["points"]):
        raise ValueError(f"'{pipeline}' has no speed-ranked points to time again (calibrated with --rank flops?).")
    component_name = keep_only_early_exit(nlp, meta["component"])
    if precision is not None:
        nlp.get_pipe(component_name).precision = precision
    examples = corpus_examples(nlp, dev_path)
    result = {k: v for k, v in meta.items() if k != "calibrated_on"}
    result = retime(nlp, component_name, examples, result, progress, timer)
    write_calibrated(pipeline, output, result, meta.get("calibrated_on", dev_path), force, code_path)
    return result
