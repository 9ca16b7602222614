"""Score a trained pipeline at full depth on a corpus's documents and on its
sentences as docs of their own (the two shapes users call it with).

    python scripts/evaluate_shapes.py PIPELINE CORPUS [--precision fp32] [--output FILE]

--precision runs it in that precision (default: the pipeline's own setting).
"""

import argparse
import json
from pathlib import Path
from typing import Optional

import spacy

from spacy_earlyexit.core.precision import PRECISIONS
from spacy_earlyexit.tools.evaluation import (
    corpus_examples,
    keep_only_early_exit,
    measure,
    measurement,
    sentence_examples,
)


def evaluate_shapes(pipeline: str, corpus: str, batch_size: int = 64, precision: Optional[str] = None) -> dict:
    nlp = spacy.load(pipeline)
    name = keep_only_early_exit(nlp)
    if precision is not None:
        nlp.get_pipe(name).precision = precision
    documents = corpus_examples(nlp, corpus)
    result = {
        "pipeline": pipeline,
        "corpus": corpus,
        "metric": nlp.get_pipe(name).score_key,
        "precision": nlp.get_pipe(name).precision,
    }
    for shape, examples in (("documents", documents), ("sentences", sentence_examples(nlp, documents))):
        if examples:
            point = measure(nlp, name, examples, measurement("full"), batch_size)
            result[shape] = {"score": point.score, "n_docs": len(examples)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--precision", choices=PRECISIONS, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    result = evaluate_shapes(args.pipeline, args.corpus, precision=args.precision)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf8")


if __name__ == "__main__":
    main()
