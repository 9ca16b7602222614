"""Calibration's step 0: the reading window chosen on dev.

A document longer than a sequence is read in windows of `max_wordpieces`
pieces that overlap by `cut_context` pieces on each side. Both are settings
of reading, not of the weights: a trained pipeline reads as well with
another window, and some tasks read better with a shorter one (a tagger
needs little context beyond its sentence) while attention's cost per piece
grows with the window. So `calibrate --windows 128:8,96:8` reads dev at
full depth with the trained window and with each candidate, times them
against each other in interleaved rounds (in the precision calibration runs
in, on this machine), and keeps the candidate that reads dev best among
those that read it at least as well as the trained window and are no
slower than it (within SPEED_FLOOR). Without a better one, the trained
window stays. The operating points are then calibrated with the kept
window, which is written into the calibrated pipeline's config.
"""

import contextlib
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from spacy.language import Language
from spacy.training import Example

from ...core.points import OperatingPoint
from ...pipeline.labeler import EarlyExitLabeler
from ...pipeline.model import MIN_WORDPIECES, check_wordpiece_budget
from ..evaluation import fresh_copy, interleaved_rounds, timed_pipe
from .search import TIMING_ROUNDS, RealRun, real_run, timing_sample

#: a candidate must run at least this share of the trained window's words/s
#: (the timer resolves about 2% on a quiet machine)
SPEED_FLOOR = 0.98


@dataclass(frozen=True)
class Window:
    """How documents are cut into sequences: at most `pieces` wordpieces,
    overlapping by `context` pieces on each side."""

    pieces: int
    context: Optional[int]  # None: the trained window's

    def to_dict(self) -> Dict[str, int]:
        return {"max_wordpieces": self.pieces, "cut_context": self.context}

    def __str__(self) -> str:
        return f"{self.pieces}:{self.context}"


def parse_windows(text: str) -> List[Window]:
    """Windows from "PIECES[:CONTEXT],..." ("128:8,96:8"; without a context,
    the trained window's); empty text: none."""
    windows = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        pieces, _, context = item.partition(":")
        try:
            window = Window(int(pieces), int(context) if context else None)
        except ValueError:
            raise ValueError(f"A window is PIECES or PIECES:CONTEXT in whole numbers, got {item!r}.") from None
        if window.pieces < MIN_WORDPIECES or (window.context or 0) < 0:
            raise ValueError(f"A window needs at least {MIN_WORDPIECES} wordpieces and a context >= 0, got {item!r}.")
        windows.append(window)
    return windows


def reading_window(component: EarlyExitLabeler) -> Window:
    """The window `component` reads documents with now."""
    attrs = component.model.attrs
    return Window(int(attrs["max_wordpieces"]), int(attrs["cut_context"]))


def set_window(component: EarlyExitLabeler, window: Window) -> None:
    """Read documents with `window` from now on (checked against the
    tokenizer's special pieces)."""
    attrs = component.model.attrs
    previous = reading_window(component)
    attrs["max_wordpieces"], attrs["cut_context"] = window.pieces, window.context
    try:
        check_wordpiece_budget(component.model)
    except ValueError:
        attrs["max_wordpieces"], attrs["cut_context"] = previous.pieces, previous.context
        raise


@contextlib.contextmanager
def reading_with(component: EarlyExitLabeler, window: Window) -> Iterator[None]:
    """Read with `window` for the duration of a `with` block."""
    previous = reading_window(component)
    set_window(component, window)
    try:
        yield
    finally:
        set_window(component, previous)


#: times windows against the first: (nlp, component name, examples, windows) -> words/s ratios
WindowTimer = Callable[[Language, str, List[Example], List[Window]], List[float]]


def timed_windows(
    nlp: Language, name: str, examples: List[Example], windows: List[Window], rounds: int = TIMING_ROUNDS
) -> List[float]:
    """Words per second of each window relative to the first, at the
    operating point and precision the component runs at now: the median of
    per-round ratios over `rounds` interleaved rounds after a warm-up, on the
    first dev documents (`timing_sample`)."""
    component: EarlyExitLabeler = nlp.get_pipe(name)
    examples = timing_sample(examples)
    seconds: Dict[int, List[float]] = {i: [] for i in range(len(windows))}
    for round_index, i in interleaved_rounds(range(len(windows)), rounds + 1):
        with reading_with(component, windows[i]):
            _, elapsed = timed_pipe(nlp, [fresh_copy(eg.predicted) for eg in examples], 64)
        if round_index:  # round 0 warms up every window's shapes
            seconds[i].append(elapsed)
    return [statistics.median(a / b for a, b in zip(seconds[0], seconds[i])) for i in range(len(windows))]


def choose_window(
    nlp: Language,
    name: str,
    examples: List[Example],
    windows: Sequence[Window],
    progress=print,
    real: RealRun = real_run,
    timer: WindowTimer = timed_windows,
) -> Optional[Dict]:
    """Read dev at full depth with the trained window and every window of
    `windows`, time them, and keep (set on the component) the one that
    reads best among those reading at least as well as the trained window
    and no slower than SPEED_FLOOR of it; the trained one without such a
    window. Returns what was measured and kept (None without candidates).
    Runs at the point and precision the component runs at now."""
    component: EarlyExitLabeler = nlp.get_pipe(name)
    trained = reading_window(component)
    windows = [Window(w.pieces, trained.context if w.context is None else w.context) for w in windows]
    tried = [trained] + [w for w in dict.fromkeys(windows) if w != trained]
    if len(tried) == 1:
        return None
    scores = []
    for window in tried:
        with reading_with(component, window):
            score, _ = real(nlp, name, examples, OperatingPoint())
        scores.append(score)
    ratios = timer(nlp, name, examples, tried)
    rows = [{**w.to_dict(), "dev_score": s, "dev_wps_ratio": r} for w, s, r in zip(tried, scores, ratios)]
    for window, row in zip(tried, rows):
        progress(
            f"window {window}: dev {100 * row['dev_score']:.2f} at full depth, "
            f"{row['dev_wps_ratio']:.2f}x the trained window's words/s"
        )
    eligible = [i for i in range(len(tried)) if scores[i] >= scores[0] and (i == 0 or ratios[i] >= SPEED_FLOOR)]
    kept = max(eligible, key=lambda i: (scores[i], ratios[i]))
    set_window(component, tried[kept])
    progress(f"reading window kept: {tried[kept]}" + (" (the trained one)" if kept == 0 else ""))
    return {"trained": trained.to_dict(), "kept": tried[kept].to_dict(), "tried": rows}
