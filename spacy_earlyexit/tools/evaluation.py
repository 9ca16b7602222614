"""Measuring an early-exit pipeline on a corpus: score, analytic speed-up and
words per second through `nlp.pipe`, in interleaved rounds. The tools
(benchmark, calibrate, evaluate-points) and the scripts build on these."""

import contextlib
import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from ..core.batch import EncoderBatch, ExitOutput
from ..core.encoder import MultiExitEncoder
from ..core.policies import ExitPolicy, make_policy
from ..pipeline.labeler import EarlyExitLabeler
from .outputs import replacing_file

T = TypeVar("T")


@dataclass
class OperatingPoint:
    policy: str
    params: Dict = field(default_factory=dict)
    width: float = 1.0
    score: Optional[float] = None
    flops_speedup: Optional[float] = None
    words_per_second: Optional[float] = None
    seconds: Optional[float] = None
    mean_exit_layer: Optional[float] = None
    wps_ratio_vs_full: Optional[float] = None
    round_words_per_second: List[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items() if k != "uncertainty")
        label = f"{self.policy}({args})" if args else self.policy
        return f"{label}@width={self.width:g}" if self.width < 1.0 else label


@contextlib.contextmanager
def huggingface_forward(encoder: MultiExitEncoder) -> Iterator[None]:
    """Run the same weights through Hugging Face's own `forward` (every layer,
    padded batches) instead of the early-exit loop, for a like-for-like
    timing; at precision bf16, through a bf16 copy of the backbone (the usual
    way to run a Hugging Face model in bf16), int8 is not offered."""
    copies: Dict[str, torch.nn.Module] = {}

    def backbone_for(precision: str) -> torch.nn.Module:
        if precision != "bf16":
            return encoder.backbone
        if "bf16" not in copies:
            copies["bf16"] = copy.deepcopy(encoder.backbone).to(torch.bfloat16).eval()
        return copies["bf16"]

    @torch.inference_mode()
    def predict(
        batch: EncoderBatch, policy: Optional[ExitPolicy] = None, width: float = 1.0, precision: str = "fp32"
    ) -> ExitOutput:
        backbone = backbone_for(precision)
        # the casing and lexical embeddings join the embedding output, as in the own loop
        hook = backbone.embeddings.register_forward_hook(
            lambda m, i, out: encoder.add_token_features(out.float(), batch).to(out.dtype)
        )
        try:
            hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.piece_mask.long()).last_hidden_state
        finally:
            hook.remove()
        states = encoder.word_states(hidden, batch).float()
        probs = encoder.heads[-1](states).softmax(-1)
        labels = probs.argmax(-1)
        n = batch.piece_mask.sum(1).double()
        full = encoder.layer_cost.full(n, batch.word_mask.sum(1).double(), encoder.n_layers)
        layers = torch.full_like(labels, encoder.n_layers)
        return ExitOutput(labels, layers, torch.zeros(labels.shape), full, full, probs)

    encoder.predict = predict
    try:
        yield
    finally:
        del encoder.predict


def fresh_copy(doc: Doc, vocab=None) -> Doc:
    """The doc's tokens and whitespace, without annotation (in `vocab`, default the doc's)."""
    return Doc(vocab or doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


def early_exit_component(nlp: Language, name: Optional[str] = None) -> str:
    """`name`, checked, or the pipeline's first early-exit component."""
    names = [n for n, proc in nlp.pipeline if isinstance(proc, EarlyExitLabeler)]
    if not names:
        raise ValueError("The pipeline has no earlyexit_ner or earlyexit_tagger component.")
    if name is None:
        return names[0]
    if name not in names:
        raise ValueError(f"'{name}' is not an early-exit component of the pipeline: {names}")
    return name


def keep_only_early_exit(nlp: Language, name: Optional[str] = None) -> str:
    """Disable every component but the early-exit one (`name`, checked, or
    the first) and return its name: measurements time that component alone."""
    name = early_exit_component(nlp, name)
    nlp.select_pipes(disable=[n for n in nlp.pipe_names if n != name])
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


def timed_pipe(nlp: Language, inputs: List[Doc], batch_size: int) -> Tuple[List[Doc], float]:
    """The docs `nlp.pipe` makes of `inputs`, and the seconds it took."""
    start = time.perf_counter()
    docs = list(nlp.pipe(inputs, batch_size=batch_size))
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


def _policy_context(component: EarlyExitLabeler, point: OperatingPoint, policy: Optional[ExitPolicy]):
    if point.policy == "hf_forward":
        stack = contextlib.ExitStack()
        stack.enter_context(component.using("full"))
        stack.enter_context(huggingface_forward(component.encoder))
        return stack
    return component.using(policy or make_policy(point.policy, **point.params), width=point.width)


def measure(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    point: OperatingPoint,
    batch_size: int,
    policy: Optional[ExitPolicy] = None,
) -> OperatingPoint:
    """Run the corpus through `nlp.pipe` under the point's policy once; fill in
    its score, analytic speed-up and (this run's) words per second."""
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    with _policy_context(component, point, policy) as used:
        docs, seconds = _timed_pipe(nlp, examples, batch_size)
        if isinstance(used, ExitPolicy) and point.policy not in ("full", "hf_forward"):
            point.params = used.params()
    predicted = [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]
    scores = component.score(predicted)
    n_words = sum(len(doc) for doc in docs)
    point.score = scores.get(component.score_key)
    point.flops_speedup = scores.get(f"{component_name}_flops_speedup")
    point.mean_exit_layer = scores.get(f"{component_name}_mean_exit_layer")
    point.seconds = seconds
    point.words_per_second = n_words / seconds if seconds else None
    point.round_words_per_second = [point.words_per_second]
    return point


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
            with _policy_context(nlp.get_pipe(name), point, None):
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


def set_ratios(points: List[OperatingPoint], full: OperatingPoint) -> None:
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
