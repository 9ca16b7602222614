"""Score a trained pipeline at full depth on a corpus's documents and on its
sentences as docs of their own (the two shapes users call it with).

    python scripts/evaluate_shapes.py PIPELINE CORPUS [--output FILE]
"""

import argparse
import json
from pathlib import Path

import spacy

from spacy_earlyexit.tools.evaluation import (
    OperatingPoint,
    corpus_examples,
    keep_only_early_exit,
    measure,
    sentence_examples,
)


def evaluate_shapes(pipeline: str, corpus: str, batch_size: int = 64) -> dict:
    nlp = spacy.load(pipeline)
    name = keep_only_early_exit(nlp)
    documents = corpus_examples(nlp, corpus)
    result = {"pipeline": pipeline, "corpus": corpus, "metric": nlp.get_pipe(name).score_key}
    for shape, examples in (("documents", documents), ("sentences", sentence_examples(nlp, documents))):
        if examples:
            point = measure(nlp, name, examples, OperatingPoint("full"), batch_size)
            result[shape] = {"score": point.score, "n_docs": len(examples)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    result = evaluate_shapes(args.pipeline, args.corpus)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf8")


if __name__ == "__main__":
    main()
