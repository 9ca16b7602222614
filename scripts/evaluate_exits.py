"""Score of every exit of an early-exit pipeline on one or more corpora.

Exit l is evaluated by stopping every token after layer l (the
`spacy-earlyexit.fixed_depth.v1` policy), so exit L is the full-depth model.

    python scripts/evaluate_exits.py PIPELINE CORPUS.spacy [CORPUS.spacy ...] [--output FILE.json]
"""

import argparse
import json
from pathlib import Path

import spacy

from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler
from spacy_earlyexit.tools.evaluation import corpus_examples, measure, measurement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpora", nargs="+")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    nlp = spacy.load(args.pipeline)
    result = {}
    for name, component in nlp.pipeline:
        if not isinstance(component, EarlyExitLabeler) or component.listening:
            continue  # a shared encoder's tasks are scored through it
        n_layers = component.encoder.n_layers
        for corpus in args.corpora:
            examples = corpus_examples(nlp, corpus)
            scores = {}
            for layer in range(1, n_layers + 1):
                point = measure(nlp, name, examples, measurement("fixed_depth", layer=layer), batch_size=64)
                scores[layer] = point.task_scores if point.task_scores is not None else point.score
            result.setdefault(name, {})[Path(corpus).stem] = scores
            row = "  ".join(
                f"{100 * s:.2f}" if not isinstance(s, dict) else "/".join(f"{100 * v:.2f}" for v in s.values())
                for s in scores.values()
            )
            print(f"{name} {Path(corpus).stem:>6} exits 1..{n_layers}: {row}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


if __name__ == "__main__":
    main()
