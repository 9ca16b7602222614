"""Is one pipeline more accurate than another, or is the gap one draw? Both
annotate the same corpus; the difference is tested on the same tokens.

    python benchmarks/paired.py PIPELINE_A PIPELINE_B CORPUS [--task tag|ner]
        [--shape documents|sentences] [--resamples 10000] [--output FILE]

Early-exit components run at full depth in fp32; other pipelines as they are.
Each pipeline annotates the corpus's own tokens (spaCy's `Example` alignment is
not needed, and tokenization differences cannot move the score).

- `tag`: token accuracy of `Token.tag_`. The two taggers disagree in
  correctness on some tokens; McNemar's exact test asks whether A-right-B-wrong
  and A-wrong-B-right are equally likely (two-sided binomial p-value).
- `ner`: entity F1 (exact spans and labels, as spaCy's scorer counts them).
- Both: a bootstrap over documents (tokens of one document are not
  independent) gives a 95% interval of the difference A - B.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy
import spacy
from spacy.tokens import Doc, DocBin

from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler
from spacy_earlyexit.tools.evaluation import fresh_copy, sentence_docs


def annotate(pipeline: str, docs: Sequence[Doc], batch_size: int = 64) -> List[Doc]:
    """`docs` re-annotated by `pipeline` (early-exit components at full depth, fp32)."""
    nlp = spacy.load(pipeline)
    component_cfg = {
        name: {"operating_point": "full", "precision": "fp32"}
        for name, pipe in nlp.pipeline
        if isinstance(pipe, EarlyExitLabeler) and not pipe.listening
    }
    inputs = [fresh_copy(doc, nlp.vocab) for doc in docs]
    return list(nlp.pipe(inputs, batch_size=batch_size, component_cfg=component_cfg))


def tag_correct(gold: Sequence[Doc], predicted: Sequence[Doc]) -> List[numpy.ndarray]:
    """Per document, whether each token's predicted tag is the gold one."""
    return [
        numpy.array([r.tag_ == p.tag_ for r, p in zip(ref, pred)], dtype=bool) for ref, pred in zip(gold, predicted)
    ]


def tag_counts(correct: Sequence[numpy.ndarray]) -> numpy.ndarray:
    """Per document (correct, total)."""
    return numpy.array([(right.sum(), len(right)) for right in correct], dtype="float64").reshape(-1, 2)


def ent_counts(gold: Sequence[Doc], predicted: Sequence[Doc]) -> numpy.ndarray:
    """Per document (true positives, predicted, gold) of exact labelled spans."""
    rows = []
    for ref, pred in zip(gold, predicted):
        ref_spans = {(e.start, e.end, e.label_) for e in ref.ents}
        pred_spans = {(e.start, e.end, e.label_) for e in pred.ents}
        rows.append((len(ref_spans & pred_spans), len(pred_spans), len(ref_spans)))
    return numpy.array(rows, dtype="float64").reshape(-1, 3)


def metric(task: str, totals: numpy.ndarray) -> numpy.ndarray:
    """Accuracy or F1 from summed counts (last axis: the count columns)."""
    if task == "tag":
        return totals[..., 0] / numpy.maximum(totals[..., 1], 1)
    tp, n_pred, n_gold = totals[..., 0], totals[..., 1], totals[..., 2]
    return 2 * tp / numpy.maximum(n_pred + n_gold, 1)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(n, 1/2) test of the discordant pairs."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(
    task: str, gold: Sequence[Doc], a: Sequence[Doc], b: Sequence[Doc], resamples: int = 10000, seed: int = 0
) -> Dict[str, object]:
    if task == "tag":
        right_a, right_b = tag_correct(gold, a), tag_correct(gold, b)
        counts_a, counts_b = tag_counts(right_a), tag_counts(right_b)
    else:
        counts_a, counts_b = ent_counts(gold, a), ent_counts(gold, b)
    score_a, score_b = float(metric(task, counts_a.sum(0))), float(metric(task, counts_b.sum(0)))
    rng = numpy.random.default_rng(seed)
    picks = rng.integers(0, len(gold), size=(resamples, len(gold)))
    diffs = metric(task, counts_a[picks].sum(1)) - metric(task, counts_b[picks].sum(1))
    result: Dict[str, object] = {
        "task": task,
        "n_docs": len(gold),
        "score_a": score_a,
        "score_b": score_b,
        "difference": score_a - score_b,
        "bootstrap_95": [float(numpy.percentile(diffs, 2.5)), float(numpy.percentile(diffs, 97.5))],
        "bootstrap_share_a_better": float((diffs > 0).mean()),
        "resamples": resamples,
    }
    if task == "tag":
        tokens_a = numpy.concatenate([numpy.zeros(0, bool), *right_a])
        tokens_b = numpy.concatenate([numpy.zeros(0, bool), *right_b])
        a_only, b_only = int((tokens_a & ~tokens_b).sum()), int((tokens_b & ~tokens_a).sum())
        result.update(
            n_tokens=int(len(tokens_a)),
            a_right_b_wrong=a_only,
            b_right_a_wrong=b_only,
            mcnemar_p=mcnemar_p(a_only, b_only),
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline_a")
    parser.add_argument("pipeline_b")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--task", choices=("tag", "ner"), default="tag")
    parser.add_argument("--shape", choices=("documents", "sentences"), default="documents")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    vocab = spacy.blank("en").vocab
    gold = list(DocBin().from_disk(args.corpus).get_docs(vocab))
    if args.shape == "sentences":
        gold = sentence_docs(gold) or gold
    result = compare(
        args.task,
        gold,
        annotate(args.pipeline_a, gold),
        annotate(args.pipeline_b, gold),
        resamples=args.resamples,
    )
    result = {
        "pipeline_a": args.pipeline_a,
        "pipeline_b": args.pipeline_b,
        "corpus": str(args.corpus),
        "shape": args.shape,
        **result,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
