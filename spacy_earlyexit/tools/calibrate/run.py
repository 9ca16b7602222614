"""The calibration of a saved pipeline on a dev corpus, written as a
calibrated copy (what the command runs)."""

from pathlib import Path
from typing import Dict, Optional, Sequence

import spacy

from ..evaluation import corpus_examples, keep_only_early_exit, sentence_examples
from .search import DEFAULT_MARGIN, DEFAULT_MAX_DROP, DEFAULT_TARGETS, DEFAULT_TOLERANCE, calibrate
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
