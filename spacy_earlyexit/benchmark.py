"""Operating points of an early-exit pipeline: score, analytic speed-up and
measured words per second through `nlp.pipe`, side by side in one run."""
import contextlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from .encoder import EncoderBatch, ExitOutput, MultiExitEncoder
from .ner import EarlyExitNER
from .pipe import EarlyExitLabeler
from .policies import ExitPolicy
from .registrations import make_policy

DEFAULT_TOKEN_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
DEFAULT_SENTENCE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)


@dataclass
class OperatingPoint:
    policy: str
    params: Dict = field(default_factory=dict)
    score: Optional[float] = None
    flops_speedup: Optional[float] = None
    words_per_second: Optional[float] = None
    seconds: Optional[float] = None
    mean_exit_layer: Optional[float] = None
    wps_ratio_vs_full: Optional[float] = None

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items() if k != "uncertainty")
        return f"{self.policy}({args})" if args else self.policy


def default_sweep(n_layers: int, windows: Sequence[int] = (2,), token_thresholds=DEFAULT_TOKEN_THRESHOLDS,
                  sentence_thresholds=DEFAULT_SENTENCE_THRESHOLDS, fixed_depths: bool = True) -> List[OperatingPoint]:
    """full, every fixed depth, TOKEE per window and threshold, SENTEE per threshold."""
    points = [OperatingPoint("full")]
    if fixed_depths:
        points += [OperatingPoint("fixed_depth", {"layer": layer}) for layer in range(1, n_layers)]
    for window in windows:
        points += [OperatingPoint("token_window", {"threshold": t, "window": window}) for t in token_thresholds]
    points += [OperatingPoint("sentence", {"threshold": t}) for t in sentence_thresholds]
    return points


@contextlib.contextmanager
def huggingface_forward(encoder: MultiExitEncoder) -> Iterator[None]:
    """Run the same weights through Hugging Face's own `forward` (every layer,
    padded batches) instead of the early-exit loop, for a like-for-like timing."""
    @torch.inference_mode()
    def predict(batch: EncoderBatch, policy: Optional[ExitPolicy] = None) -> ExitOutput:
        # the casing embedding joins the embedding output, as in the own loop
        hook = encoder.backbone.embeddings.register_forward_hook(lambda m, i, out: encoder.add_case(out, batch))
        try:
            hidden = encoder.backbone(input_ids=batch.input_ids, attention_mask=batch.piece_mask.long()).last_hidden_state
        finally:
            hook.remove()
        states = hidden.gather(1, batch.word_starts.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        labels = encoder.heads[-1](states).argmax(-1)
        n = batch.piece_mask.sum(1).double()
        full = encoder.layer_cost.full(n, batch.word_mask.sum(1).double(), encoder.n_layers)
        layers = torch.full_like(labels, encoder.n_layers)
        return ExitOutput(labels, layers, torch.zeros(labels.shape), full, full)

    encoder.predict = predict
    try:
        yield
    finally:
        del encoder.predict


def _score_key(component: EarlyExitLabeler) -> str:
    return "ents_f" if isinstance(component, EarlyExitNER) else "tag_acc"


def _fresh_copy(doc: Doc) -> Doc:
    return Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


def corpus_examples(nlp: Language, path: str, limit: int = 0) -> List[Example]:
    """Examples as `spacy evaluate` builds them (spacy.Corpus.v1): the gold
    tokens where the corpus has no whitespace information, else the text
    tokenized by `nlp`; empty docs are skipped."""
    references = [doc for doc in DocBin().from_disk(path).get_docs(nlp.vocab) if len(doc)]
    if limit:
        references = references[:limit]
    return [
        Example(_fresh_copy(ref) if ref.has_unknown_spaces else nlp.make_doc(ref.text), ref)
        for ref in references
    ]


def measure(
    nlp: Language,
    component_name: str,
    examples: List[Example],
    point: OperatingPoint,
    batch_size: int,
    policy: Optional[ExitPolicy] = None,
) -> OperatingPoint:
    """Run the corpus through `nlp.pipe` under the point's policy; fill in its figures."""
    component: EarlyExitLabeler = nlp.get_pipe(component_name)
    previous = component.exit_policy
    policy = policy or make_policy(point.policy, **point.params)
    component.exit_policy = policy
    inputs = [_fresh_copy(eg.predicted) for eg in examples]  # tokenized, unannotated
    try:
        start = time.perf_counter()
        docs = list(nlp.pipe(inputs, batch_size=batch_size))
        point.seconds = time.perf_counter() - start
    finally:
        component.exit_policy = previous
    predicted = [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]
    scores = component.score(predicted)
    n_words = sum(len(doc) for doc in docs)
    point.score = scores.get(_score_key(component))
    point.flops_speedup = scores.get(f"{component_name}_flops_speedup")
    point.mean_exit_layer = scores.get(f"{component_name}_mean_exit_layer")
    point.words_per_second = n_words / point.seconds if point.seconds else None
    if point.policy not in ("full", "hf_forward"):
        point.params = policy.params()
    return point


def run_benchmark(
    pipeline: str,
    corpus: str,
    component_name: Optional[str] = None,
    points: Optional[Callable[[int], List[OperatingPoint]]] = None,
    batch_size: int = 64,
    limit: int = 0,
    compare_huggingface: bool = True,
    progress: Callable[[str], None] = print,
) -> Dict:
    """Measure every operating point (`points(n_layers)`, default: `default_sweep`)
    on `corpus` with `pipeline`, in one process, after one warm-up."""
    nlp = spacy.load(pipeline)
    names = [name for name, proc in nlp.pipeline if isinstance(proc, EarlyExitLabeler)]
    if not names:
        raise ValueError(f"Pipeline '{pipeline}' has no earlyexit_ner or earlyexit_tagger component.")
    component_name = component_name or names[0]
    if component_name not in names:
        raise ValueError(f"'{component_name}' is not an early-exit component of '{pipeline}': {names}")
    other = [name for name in nlp.pipe_names if name != component_name]
    nlp.select_pipes(disable=other)
    encoder: MultiExitEncoder = nlp.get_pipe(component_name).model.shims[0].encoder
    examples = corpus_examples(nlp, corpus, limit)
    points = (points or default_sweep)(encoder.n_layers)
    if not any(p.policy == "full" for p in points):
        points = [OperatingPoint("full")] + points
    # warm-up: allocator, thread pools, tokenizer caches
    list(nlp.pipe([_fresh_copy(eg.predicted) for eg in examples[:16]], batch_size=batch_size))
    results = []
    for index, point in enumerate(points, 1):
        measure(nlp, component_name, examples, point, batch_size)
        results.append(point)
        progress(f"[{index}/{len(points)}] {point.label}: score {_fmt(point.score, '.4f')}, "
                 f"FLOPs speed-up {_fmt(point.flops_speedup, '.2f')}x, {_fmt(point.words_per_second, ',.0f')} words/s")
    if compare_huggingface:
        reference = OperatingPoint("hf_forward", {"note": "same weights through Hugging Face forward, full depth"})
        with huggingface_forward(encoder):
            measure(nlp, component_name, examples, reference, batch_size, policy=make_policy("full"))
        results.append(reference)
        progress(f"[ref] {reference.label}: {_fmt(reference.words_per_second, ',.0f')} words/s")
    full = next(p for p in results if p.policy == "full")
    for point in results:
        if point.words_per_second and full.words_per_second:
            point.wps_ratio_vs_full = point.words_per_second / full.words_per_second
    return {
        "pipeline": str(pipeline),
        "corpus": str(corpus),
        "component": component_name,
        "metric": _score_key(nlp.get_pipe(component_name)),
        "n_docs": len(examples),
        "n_words": sum(len(eg.predicted) for eg in examples),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "n_layers": encoder.n_layers,
        "points": [asdict(p) for p in results],
    }


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: Dict) -> str:
    header = ("policy", "params", result["metric"], "FLOPs x", "words/s", "wall x", "mean layer")
    rows = []
    for p in result["points"]:
        params = ", ".join(f"{k}={v}" for k, v in p["params"].items() if k not in ("uncertainty", "note"))
        rows.append((p["policy"], params, _fmt(p["score"], ".4f"), _fmt(p["flops_speedup"], ".2f"),
                     _fmt(p["words_per_second"], ",.0f"), _fmt(p["wps_ratio_vs_full"], ".2f"),
                     _fmt(p["mean_exit_layer"], ".2f")))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def write_result(result: Dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2), encoding="utf8")
