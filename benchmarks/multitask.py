"""One shared encoder against two single-task pipelines (issue 32): entities
and tags of the same documents, in one run.

    python benchmarks/multitask.py SHARED NER TAGGER CORPUS [--points full,2x]
        [--rounds 3] [--batch-size 64] [--precision auto] [--output FILE]

- SHARED: a pipeline whose `earlyexit_transformer` runs `earlyexit_ner` and
  `earlyexit_tagger` (the `multitask` workflow's).
- NER, TAGGER: single-task pipelines (the `all` workflow's); their two
  components run one after the other in one pipeline (the tagger sourced
  into the NER pipeline), as a user who wants both runs them today.

At each point (a name each pipeline's early-exit components know: `full`,
`2x`...), both pipelines annotate the corpus's documents through `nlp.pipe`
in interleaved rounds (words/s: the median); entity F1 and tag accuracy are
scored on the same tokens. The saved sizes of the pipelines' directories are
reported beside. Prints a table; `--output` writes the figures as JSON with
the CPU named.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List

import spacy
import torch
from spacy.training import Example

from spacy_earlyexit.core.precision import cpu_name
from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler
from spacy_earlyexit.tools.evaluation import corpus_examples, fresh_copy, interleaved_rounds, timed_pipe


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def both_tasks(ner_path: str, tagger_path: str):
    """The NER pipeline with the tagger pipeline's tagger added after it."""
    nlp = spacy.load(ner_path)
    tagger_nlp = spacy.load(tagger_path)
    (name,) = [n for n, proc in tagger_nlp.pipeline if isinstance(proc, EarlyExitLabeler)]
    nlp.add_pipe(name, source=tagger_nlp, name="tagger" if name in nlp.pipe_names else name)
    return nlp


def settings(nlp, point: str, precision: str) -> Dict[str, Dict]:
    """Per-call settings (spaCy's `component_cfg`) that run every early-exit
    component that takes them (a shared encoder's tasks take its) at `point`."""
    return {
        name: {"operating_point": point, "precision": precision}
        for name, proc in nlp.pipeline
        if isinstance(proc, EarlyExitLabeler) and not proc.listening
    }


def scores(docs, examples: List[Example]) -> Dict[str, float]:
    """Entity F1 and tag accuracy of `docs` against the examples' references (same tokens)."""
    from spacy.scorer import Scorer

    predicted = [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]
    ents = Scorer.score_spans(predicted, "ents")
    tags = Scorer.score_token_attr(predicted, "tag")
    return {"ents_f": ents["ents_f"], "tag_acc": tags["tag_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared")
    parser.add_argument("ner")
    parser.add_argument("tagger")
    parser.add_argument("corpus")
    parser.add_argument("--points", default="full,2x")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    pipelines = {"shared": spacy.load(args.shared), "two single-task": both_tasks(args.ner, args.tagger)}
    examples = corpus_examples(pipelines["shared"], args.corpus)
    n_words = sum(len(eg.predicted) for eg in examples)
    points = [p for p in args.points.split(",") if p]
    runs = [(kind, point) for point in points for kind in pipelines]
    seconds: Dict[tuple, List[float]] = {run: [] for run in runs}
    figures: Dict[tuple, Dict] = {}
    for _, (kind, point) in interleaved_rounds(runs, args.rounds, rotate=True):
        nlp = pipelines[kind]
        inputs = [fresh_copy(eg.predicted, nlp.vocab) for eg in examples]
        cfg = settings(nlp, point, args.precision)
        docs, spent = timed_pipe(nlp, inputs, args.batch_size, cfg)
        seconds[(kind, point)].append(spent)
        if (kind, point) not in figures:
            figures[(kind, point)] = scores(docs, examples)
    rows = []
    for kind, point in runs:
        wps = [n_words / s for s in seconds[(kind, point)]]
        rows.append(
            {"pipeline": kind, "point": point, "words_per_second": statistics.median(wps), **figures[(kind, point)]}
        )
    for row in rows:
        same_point = next(r for r in rows if r["point"] == row["point"] and r["pipeline"] == "two single-task")
        row["wps_ratio_vs_two_single_task"] = row["words_per_second"] / same_point["words_per_second"]
    sizes = {
        "shared": directory_size(Path(args.shared)),
        "two single-task": directory_size(Path(args.ner)) + directory_size(Path(args.tagger)),
    }
    print(f"{'pipeline':<16} {'point':<6} {'words/s':>9} {'x two':>6} {'ents_f':>7} {'tag_acc':>8}")
    for row in rows:
        print(
            f"{row['pipeline']:<16} {row['point']:<6} {row['words_per_second']:>9,.0f} "
            f"{row['wps_ratio_vs_two_single_task']:>6.2f} {100 * row['ents_f']:>7.2f} {100 * row['tag_acc']:>8.2f}"
        )
    print(
        f"saved size: shared {sizes['shared'] / 1e6:.1f} MB, two single-task {sizes['two single-task'] / 1e6:.1f} MB "
        f"({sizes['shared'] / sizes['two single-task']:.0%})"
    )
    if args.output:
        result = {
            "shared": args.shared,
            "ner": args.ner,
            "tagger": args.tagger,
            "corpus": args.corpus,
            "n_words": n_words,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_name(),
            "rows": rows,
            "sizes": sizes,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


if __name__ == "__main__":
    main()
