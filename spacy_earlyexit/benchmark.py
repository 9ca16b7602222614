"""Operating points of an early-exit pipeline: score, analytic speed-up and
measured words per second through `nlp.pipe`, side by side in one run."""
import contextlib
import json
import platform
import statistics
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


def default_sweep(n_layers: int, windows: Sequence[int] = (2,), token_thresholds=DEFAULT_TOKEN_THRESHOLDS,
                  sentence_thresholds=DEFAULT_SENTENCE_THRESHOLDS, fixed_depths: bool = True,
                  widths: Sequence[float] = (1.0,)) -> List[OperatingPoint]:
    """full, every fixed depth, TOKEE per window and threshold, SENTEE per
    threshold; at every width of `widths` (full width first)."""
    points = []
    for width in sorted(widths, reverse=True):
        points.append(OperatingPoint("full", width=width))
        if fixed_depths:
            points += [OperatingPoint("fixed_depth", {"layer": layer}, width) for layer in range(1, n_layers)]
        for window in windows:
            points += [OperatingPoint("token_window", {"threshold": t, "window": window}, width)
                       for t in token_thresholds]
        points += [OperatingPoint("sentence", {"threshold": t}, width) for t in sentence_thresholds]
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


def _score_key(component: EarlyExitLabeler) -> str:
    return "ents_f" if isinstance(component, EarlyExitNER) else "tag_acc"


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


def corpus_examples(nlp: Language, path: str, limit: int = 0) -> List[Example]:
    """Examples as `spacy evaluate` builds them (spacy.Corpus.v1): the gold
    tokens where the corpus has no whitespace information, else the text
    tokenized by `nlp`; empty docs are skipped."""
    references = [doc for doc in DocBin().from_disk(path).get_docs(nlp.vocab) if len(doc)]
    if limit:
        references = references[:limit]
    return [
        Example(fresh_copy(ref) if ref.has_unknown_spaces else nlp.make_doc(ref.text), ref)
        for ref in references
    ]


def _timed_pipe(nlp: Language, examples: List[Example], batch_size: int) -> tuple:
    inputs = [fresh_copy(eg.predicted) for eg in examples]  # tokenized, unannotated
    start = time.perf_counter()
    docs = list(nlp.pipe(inputs, batch_size=batch_size))
    return docs, time.perf_counter() - start


def _policy_context(component: EarlyExitLabeler, point: OperatingPoint, policy: Optional[ExitPolicy]):
    if point.policy == "hf_forward":
        stack = contextlib.ExitStack()
        stack.enter_context(component.using("full"))
        stack.enter_context(huggingface_forward(component.model.shims[0].encoder))
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
    point.score = scores.get(_score_key(component))
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
    for round_index in range(max(1, rounds)):
        for nlp, name, point in runs:
            if round_index == 0:
                measure(nlp, name, examples, point, batch_size)
            else:
                with _policy_context(nlp.get_pipe(name), point, None):
                    _, seconds = _timed_pipe(nlp, examples, batch_size)
                point.round_words_per_second.append(n_words / seconds)
            progress(f"[round {round_index + 1}/{rounds}] {point.label}: score {_fmt(point.score, '.4f')}, "
                     f"FLOPs speed-up {_fmt(point.flops_speedup, '.2f')}x, "
                     f"{_fmt(point.round_words_per_second[-1], ',.0f')} words/s")
    for _, _, point in runs:
        point.words_per_second = statistics.median(point.round_words_per_second)
        point.seconds = n_words / point.words_per_second


def run_benchmark(
    pipeline: str,
    corpus: str,
    component_name: Optional[str] = None,
    points: Optional[Callable[[int], List[OperatingPoint]]] = None,
    batch_size: int = 64,
    limit: int = 0,
    compare_huggingface: bool = True,
    progress: Callable[[str], None] = print,
    rounds: int = 3,
) -> Dict:
    """Measure every operating point (`points(n_layers)`, default: `default_sweep`)
    on `corpus` with `pipeline`, in one process, after one warm-up, in
    `rounds` interleaved rounds (words per second: the median)."""
    nlp = spacy.load(pipeline)
    component_name = early_exit_component(nlp, component_name)
    other = [name for name in nlp.pipe_names if name != component_name]
    nlp.select_pipes(disable=other)
    encoder: MultiExitEncoder = nlp.get_pipe(component_name).model.shims[0].encoder
    examples = corpus_examples(nlp, corpus, limit)
    points = (points or default_sweep)(encoder.n_layers)
    if not any(p.policy == "full" and p.width == 1.0 for p in points):
        points = [OperatingPoint("full")] + points
    if compare_huggingface:
        points.append(OperatingPoint("hf_forward", {"note": "same weights through Hugging Face forward, full depth"}))
    # warm-up: allocator, thread pools, tokenizer caches
    list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples[:16]], batch_size=batch_size))
    measure_interleaved([(nlp, component_name, p) for p in points], examples, batch_size, rounds, progress)
    results = points
    set_ratios(results, next(p for p in results if p.policy == "full" and p.width == 1.0))
    return {
        "pipeline": str(pipeline),
        "corpus": str(corpus),
        "component": component_name,
        "metric": _score_key(nlp.get_pipe(component_name)),
        "n_docs": len(examples),
        "n_words": sum(len(eg.predicted) for eg in examples),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "machine": platform.processor() or platform.machine(),
        "n_layers": encoder.n_layers,
        "points": [asdict(p) for p in results],
    }


def set_ratios(points: List[OperatingPoint], full: OperatingPoint) -> None:
    """Words per second relative to `full`: the median of the per-round ratios."""
    for point in points:
        pairs = list(zip(point.round_words_per_second, full.round_words_per_second))
        if pairs:
            point.wps_ratio_vs_full = statistics.median(a / b for a, b in pairs)


def evaluate_operating_points(
    pipeline: str,
    corpus: str,
    stage1: Optional[str] = None,
    batch_size: int = 64,
    rounds: int = 3,
    progress: Callable[[str], None] = print,
) -> Dict:
    """Test figures of a calibrated pipeline's operating points (and of a
    stage-1 pipeline calibrated the same way): score, analytic speed-up and
    words per second relative to full depth, measured in interleaved rounds.
    Dev figures come from the calibration stored in each pipeline's meta."""
    loaded = []
    for path in [pipeline] + ([stage1] if stage1 else []):
        nlp = spacy.load(path)
        meta = nlp.meta.get("earlyexit")
        if not meta:
            raise ValueError(f"'{path}' has no calibrated operating points: run `python -m spacy_earlyexit calibrate`.")
        name = early_exit_component(nlp, meta["component"])
        nlp.select_pipes(disable=[n for n in nlp.pipe_names if n != name])
        loaded.append((nlp, name, meta))
    examples = corpus_examples(loaded[0][0], corpus)
    runs, per_pipeline = [], []
    for nlp, name, meta in loaded:
        list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples[:16]], batch_size=batch_size))  # warm-up
        full = OperatingPoint("full")
        chosen = [(p, _calibrated_point(p)) for p in meta["points"] if p["reached"]]
        runs += [(nlp, name, full)] + [(nlp, name, point) for _, point in chosen]
        per_pipeline.append((meta, full, chosen))
    measure_interleaved(runs, examples, batch_size, rounds, progress)
    result: Dict = {"pipeline": str(pipeline), "corpus": str(corpus), "rounds": rounds, "batch_size": batch_size,
                    "torch_threads": torch.get_num_threads(), "n_words": sum(len(eg.predicted) for eg in examples)}
    for key, (meta, full, chosen) in zip(("points", "stage1_points"), per_pipeline):
        set_ratios([full] + [point for _, point in chosen], full)
        by_name = {p["name"]: point for p, point in chosen}
        rows = []
        for p in meta["points"]:
            point = by_name.get(p["name"])
            rows.append({
                "name": p["name"], "target": p["target"], "kind": p["kind"], "search": p.get("search", "joint"),
                "policy": p["policy"],
                "params": p["params"], "reached": p["reached"], "note": p["note"],
                "dev_score": p["dev_score"], "dev_flops_speedup": p["dev_flops_speedup"],
                "test_score": point.score if point else None,
                "flops_speedup": point.flops_speedup if point else None,
                "words_per_second": point.words_per_second if point else None,
                "wps_ratio_vs_full": point.wps_ratio_vs_full if point else None,
                "mean_exit_layer": point.mean_exit_layer if point else None,
            })
        result[key] = rows
        full_row = {"dev_score": meta["full"]["dev_score"], "test_score": full.score,
                    "words_per_second": full.words_per_second, "default": meta["default"]}
        result["full" if key == "points" else "stage1_full"] = full_row
    result["metric"] = loaded[0][2]["metric"]
    return result


def _calibrated_point(entry: Dict) -> OperatingPoint:
    params = {k: v for k, v in entry["params"].items() if k != "width"}
    return OperatingPoint(entry["policy"], params, float(entry["params"].get("width", 1.0)))


def format_points_table(result: Dict) -> str:
    header = ("stage", "point", "params", "dev", "test", "FLOPs x", "words/s", "wall x")
    rows = []
    for stage, key, full_key in (("2", "points", "full"), ("1", "stage1_points", "stage1_full")):
        if key not in result:
            continue
        full = result[full_key]
        rows.append((stage, "full", "", _fmt(full["dev_score"], ".4f"), _fmt(full["test_score"], ".4f"), "1.00",
                     _fmt(full["words_per_second"], ",.0f"), "1.00"))
        for p in result[key]:
            params = ", ".join(f"{k}={v}" for k, v in p["params"].items() if k not in ("uncertainty", "layer_thresholds"))
            rows.append((stage, p["name"] + ("" if p["reached"] else " (not reached)"), params,
                         _fmt(p["dev_score"], ".4f"), _fmt(p["test_score"], ".4f"), _fmt(p["flops_speedup"], ".2f"),
                         _fmt(p["words_per_second"], ",.0f"), _fmt(p["wps_ratio_vs_full"], ".2f")))
    return _table(header, rows)


def _table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in list(rows) + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: Dict) -> str:
    header = ("policy", "params", result["metric"], "FLOPs x", "words/s", "wall x", "mean layer")
    rows = []
    for p in result["points"]:
        params = ", ".join(f"{k}={v}" for k, v in p["params"].items() if k not in ("uncertainty", "note"))
        if p.get("width", 1.0) < 1.0:
            params = f"{params}, width={p['width']:g}" if params else f"width={p['width']:g}"
        rows.append((p["policy"], params, _fmt(p["score"], ".4f"), _fmt(p["flops_speedup"], ".2f"),
                     _fmt(p["words_per_second"], ",.0f"), _fmt(p["wps_ratio_vs_full"], ".2f"),
                     _fmt(p["mean_exit_layer"], ".2f")))
    return _table(header, rows)


def write_result(result: Dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2), encoding="utf8")
