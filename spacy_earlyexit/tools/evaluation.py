"""Measuring an early-exit pipeline on a corpus: score, analytic speed-up and
words per second through `nlp.pipe`, in interleaved rounds. The tools
(benchmark, calibrate, evaluate-points) and the scripts build on these."""

import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from ..core.engines import Engine
from ..core.points import OperatingPoint
from ..core.policies import FullDepth
from ..pipeline.exit_policies import policy_named
from ..pipeline.labeler import EarlyExitLabeler
from ..pipeline.model import OWN_LOOP
from .outputs import replacing_file

T = TypeVar("T")


@dataclass
class Measurement:
    """What runs of one operating point on a corpus measured: its score,
    analytic speed-up and words per second. `engine`: what runs the
    network's weights (None: the component's own layer loop; e.g.
    `HuggingFaceForward()` for the same weights through Hugging Face's
    forward)."""

    point: OperatingPoint = field(default_factory=OperatingPoint)
    engine: Optional[Engine] = None
    score: Optional[float] = None
    flops_speedup: Optional[float] = None
    words_per_second: Optional[float] = None
    seconds: Optional[float] = None
    mean_exit_layer: Optional[float] = None
    wps_ratio_vs_full: Optional[float] = None
    round_words_per_second: List[float] = field(default_factory=list)
    #: a shared encoder's: each task's main score (`score` is their mean)
    task_scores: Optional[Dict[str, Optional[float]]] = None

    @property
    def label(self) -> str:
        return f"{self.point.label} on {self.engine.name}" if self.engine else self.point.label

    @property
    def is_full(self) -> bool:
        """Full depth at full width on the component's own loop: what speed-ups are relative to."""
        return type(self.point.policy) is FullDepth and self.point.width == 1.0 and self.engine is None

    def to_dict(self) -> Dict:
        """The figures as metrics files store them (`policy`, `params`, `width`
        of the point, the engine's name, then the figures)."""
        return {
            "policy": self.point.policy.name,
            "params": self.point.policy.params(),
            "width": self.point.width,
            "engine": self.engine.name if self.engine else OWN_LOOP.name,
            "score": self.score,
            "flops_speedup": self.flops_speedup,
            "words_per_second": self.words_per_second,
            "seconds": self.seconds,
            "mean_exit_layer": self.mean_exit_layer,
            "wps_ratio_vs_full": self.wps_ratio_vs_full,
            "round_words_per_second": list(self.round_words_per_second),
            **({"task_scores": dict(self.task_scores)} if self.task_scores is not None else {}),
        }


def measurement(policy: str = "full", width: float = 1.0, engine: Optional[Engine] = None, **params) -> Measurement:
    """A measurement (not yet run) of the policy named `policy` (as specs
    name it) with `params`, at `width`, on `engine`."""
    return Measurement(OperatingPoint(policy_named(policy, **params), width), engine)


def fresh_copy(doc: Doc, vocab=None) -> Doc:
    """The doc's tokens and whitespace, without annotation (in `vocab`, default the doc's)."""
    return Doc(vocab or doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


def early_exit_component(nlp: Language, name: Optional[str] = None) -> str:
    """`name`, checked, or the pipeline's first early-exit component."""
    # a shared encoder's tasks are measured through it
    names = [n for n, proc in nlp.pipeline if isinstance(proc, EarlyExitLabeler) and not proc.listening]
    if not names:
        raise ValueError("The pipeline has no earlyexit_ner or earlyexit_tagger component.")
    if name is None:
        return names[0]
    if name not in names:
        proc = nlp.get_pipe(name) if name in nlp.component_names else None
        if isinstance(proc, EarlyExitLabeler) and proc.listening:
            raise ValueError(f"'{name}' is a task of the shared encoder '{proc.upstream.name}': name that one.")
        raise ValueError(f"'{name}' is not an early-exit component of the pipeline: {names}")
    return name


def keep_only_early_exit(nlp: Language, name: Optional[str] = None) -> str:
    """Disable every component but the early-exit one (`name`, checked, or
    the first; a shared encoder with the tasks that listen to it) and
    return its name: measurements time that component alone."""
    name = early_exit_component(nlp, name)
    keep = {name, *getattr(nlp.get_pipe(name), "tasks", ())}
    nlp.select_pipes(disable=[n for n in nlp.pipe_names if n not in keep])
    return name


def corpus_examples(nlp: Language, path: str, limit: int = 0) -> List[Example]:
    """Examples as `spacy evaluate` builds them (spacy.Corpus.v1): the gold
    tokens where the corpus has no whitespace information, else the text
    tokenized by `nlp`; empty docs are skipped."""
    references = [doc for doc in DocBin().from_disk(path).get_docs(nlp.vocab) if len(doc)]
    if limit:
        references = references[:limit]
    return [_example_of(nlp, ref) for ref in references]


def _example_of(nlp: Language, reference: Doc) -> Example:
    return Example(fresh_copy(reference) if reference.has_unknown_spaces else nlp.make_doc(reference.text), reference)


def sentence_docs(docs: List[Doc]) -> List[Doc]:
    """Every sentence of `docs` as a doc of its own (the shape of `nlp(text)`
    on one sentence); a doc without sentence marks stays whole; [] when no
    doc marks sentences."""
    if not any(doc.has_annotation("SENT_START") for doc in docs):
        return []
    return [
        sent.as_doc()
        for doc in docs
        for sent in (doc.sents if doc.has_annotation("SENT_START") else [doc[:]])
        if len(sent)
    ]


def sentence_examples(nlp: Language, examples: List[Example]) -> List[Example]:
    """`sentence_docs` of the examples' references, as examples built the way
    `corpus_examples` builds them."""
    return [_example_of(nlp, doc) for doc in sentence_docs([eg.reference for eg in examples])]


def timed_pipe(
    nlp: Language, inputs: List[Doc], batch_size: int, component_cfg: Optional[Dict[str, Dict]] = None
) -> Tuple[List[Doc], float]:
    """The docs `nlp.pipe` makes of `inputs` (with spaCy's per-call
    `component_cfg`), and the seconds it took."""
    start = time.perf_counter()
    docs = list(nlp.pipe(inputs, batch_size=batch_size, component_cfg=component_cfg))
    return docs, time.perf_counter() - start


def _timed_pipe(nlp: Language, examples: List[Example], batch_size: int) -> tuple:
    return timed_pipe(nlp, [fresh_copy(eg.predicted) for eg in examples], batch_size)  # tokenized, unannotated


def interleaved_rounds(runs: Sequence[T], rounds: int, rotate: bool = False) -> Iterator[Tuple[int, T]]:
    """(round index, run) for every run in turn, round after round, so that a
    noisy stretch of time hits every run alike; with `rotate`, each round
    starts one run later than the one before."""
    runs = list(runs)
    for round_index in range(rounds):
        shift = round_index % len(runs) if rotate and runs else 0
        for run in runs[shift:] + runs[:shift]:
            yield round_index, run


def _running(component: EarlyExitLabeler, run: Measurement) -> contextlib.ExitStack:
    """Run the component at the measurement's point, on its engine."""
    stack = contextlib.ExitStack()
    point = run.point
    stack.enter_context(component.using(point.policy, width=point.width, precision=point.precision))
    if run.engine is not None:
        stack.enter_context(component.running_on(run.engine))
    return stack


def measure(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    run: Measurement,
    batch_size: int,
) -> Measurement:
    """Run the corpus through `nlp.pipe` at the measurement's point once; fill
    in its score, analytic speed-up and (this run's) words per second."""
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    with _running(component, run):
        docs, seconds = _timed_pipe(nlp, examples, batch_size)
    predicted = [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]
    scores = component.score(predicted)
    n_words = sum(len(doc) for doc in docs)
    run.score = scores.get(component.score_key)
    run.flops_speedup = scores.get(f"{component_name}_flops_speedup")
    run.mean_exit_layer = scores.get(f"{component_name}_mean_exit_layer")
    run.task_scores = scores.get(f"{component_name}_task_scores")
    run.seconds = seconds
    run.words_per_second = n_words / seconds if seconds else None
    run.round_words_per_second = [run.words_per_second]
    return run


def measure_interleaved(
    runs: List[tuple],
    examples: List[Example],
    batch_size: int,
    rounds: int = 3,
    progress: Callable[[str], None] = print,
) -> None:
    """Measure every run `(nlp, component_name, point)` `rounds` times, round
    by round (every point once per round), so that a noisy stretch of time
    hits all points alike; words per second is the median over rounds, the
    score and analytic speed-up come from the first round (they do not vary)."""
    n_words = sum(len(eg.predicted) for eg in examples)
    for round_index, (nlp, name, point) in interleaved_rounds(runs, max(1, rounds)):
        if round_index == 0:
            measure(nlp, name, examples, point, batch_size)
        else:
            with _running(nlp.get_pipe(name), point):
                _, seconds = _timed_pipe(nlp, examples, batch_size)
            point.round_words_per_second.append(n_words / seconds)
        progress(
            f"[round {round_index + 1}/{rounds}] {point.label}: score {fmt_value(point.score, '.4f')}, "
            f"FLOPs speed-up {fmt_value(point.flops_speedup, '.2f')}x, "
            f"{fmt_value(point.round_words_per_second[-1], ',.0f')} words/s"
        )
    for _, _, point in runs:
        point.words_per_second = statistics.median(point.round_words_per_second)
        point.seconds = n_words / point.words_per_second


def set_ratios(points: List[Measurement], full: Measurement) -> None:
    """Words per second relative to `full`: the median of the per-round ratios."""
    for point in points:
        pairs = list(zip(point.round_words_per_second, full.round_words_per_second))
        if pairs:
            point.wps_ratio_vs_full = statistics.median(a / b for a, b in pairs)


def format_rows(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in list(rows) + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def fmt_value(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_result(result: Dict, output: Path, inputs=()) -> None:
    """Write `result` as JSON to `output`, a regular file (replaced once the
    new one is complete) that is none of `inputs` nor inside one
    (`outputs.replacing_file`)."""
    with replacing_file(output, inputs) as partial:
        partial.write_text(json.dumps(result, indent=2), encoding="utf8")
