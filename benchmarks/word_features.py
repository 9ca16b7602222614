"""What the word representation costs in words per second.

A pipeline trained with `word_pooling = "first_last"` and lexical features
(the shipped configs) is timed against the same pipeline with both switched
off at inference (words read from their first piece, no lexical rows
computed or added): the same network and the same layer loop, so the
difference is the cost of the features alone (the labels of the switched-off
copy are not meaningful; its score is not reported). Points: full depth, the
fixed depth with half the layers (2x FLOPs, exits independent of the labels)
and the pipeline's calibrated 2x point (its exits differ between the two
copies, so this ratio also carries that); both shapes (the corpus's documents
and its sentences as docs of their own), medians of interleaved rounds.

    python benchmarks/word_features.py training/ner-calibrated corpus/test.spacy \
        --rounds 3 --output benchmarks/results/word-features-ner.json
"""

import argparse
import json
import statistics
from pathlib import Path

import spacy
import torch

from spacy_earlyexit.core.points import OperatingPoint
from spacy_earlyexit.core.policies import FixedDepth
from spacy_earlyexit.pipeline.wordpieces import LexicalFeatures
from spacy_earlyexit.tools.evaluation import (
    Measurement,
    corpus_examples,
    keep_only_early_exit,
    measure_interleaved,
    sentence_examples,
)


def load(path: str, features: bool):
    nlp = spacy.load(path)
    name = keep_only_early_exit(nlp)
    component = nlp.get_pipe(name)
    if not features:
        component.encoder.word_pooling = "first"
        component.model.attrs["lexical"] = LexicalFeatures()
    return nlp, name


def points_of(nlp, name) -> list:
    """(label, point): full depth, half depth, and the calibrated 2x point if there is one."""
    component = nlp.get_pipe(name)
    half = component.encoder.n_layers // 2
    points = [("full", component.point("full")), (f"fixed-{half}", OperatingPoint(FixedDepth(half)))]
    if "2x" in component.operating_points:
        points.append(("2x", component.point("2x")))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with_features, name = load(args.pipeline, True)
    without, _ = load(args.pipeline, False)
    encoder = with_features.get_pipe(name).encoder
    if encoder.word_pooling == "first" and encoder.lexical_embedding is None:
        raise SystemExit(f"{args.pipeline} has no word features to time.")
    documents = corpus_examples(with_features, args.corpus)
    shapes = {"documents": documents, "sentences": sentence_examples(with_features, documents)}
    result = {
        "pipeline": args.pipeline,
        "corpus": args.corpus,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "word_pooling": encoder.word_pooling,
        "lexical_rows": encoder.lexical_embedding.num_embeddings if encoder.lexical_embedding is not None else 0,
        "shapes": {},
    }
    for shape, examples in shapes.items():
        if not examples:
            continue
        runs = []
        for label, point in points_of(with_features, name):
            runs.append((label, (with_features, name, Measurement(point))))
            runs.append((label, (without, name, Measurement(point))))
        for nlp in (with_features, without):
            list(nlp.pipe([eg.predicted.copy() for eg in examples[:16]]))  # warm-up
        measure_interleaved([run for _, run in runs], examples, args.batch_size, args.rounds, progress=print)
        rows = {}
        for index in range(0, len(runs), 2):
            label, (_, _, on) = runs[index]
            _, (_, _, off) = runs[index + 1]
            ratios = [a / b for a, b in zip(on.round_words_per_second, off.round_words_per_second)]
            rows[label] = {
                "score": on.score,
                "words_per_second": on.words_per_second,
                "words_per_second_without_features": off.words_per_second,
                "ratio": statistics.median(ratios),
                "flops_speedup": on.flops_speedup,
            }
            print(
                f"{shape:9s} {label:8s} with {on.words_per_second:9,.0f} words/s, without {off.words_per_second:9,.0f}"
                f" -> {rows[label]['ratio']:.3f}x"
            )
        result["shapes"][shape] = rows
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")
        print(f"Saved to {args.output}")


if __name__ == "__main__":
    main()
