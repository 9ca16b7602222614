"""Score and wordpiece cost of a pipeline's early-exit component at several
`cut_context` values (same weights, same operating point).

    python benchmarks/cut_context.py training/ner-calibrated corpus/dev.spacy \
        --values 0,8,16,32 [--point full] [--output benchmarks/results/cut-context.json]

`cut_context` is read at prediction time, so one loaded pipeline serves every
value; wordpieces count every encoded piece (overlapping copies included).
"""

import argparse
import json
from pathlib import Path

import spacy
import torch
from spacy.training import Example

from spacy_earlyexit.pipeline.model import _plan
from spacy_earlyexit.tools.evaluation import corpus_examples, early_exit_component, fresh_copy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--values", default="0,8,16,32")
    parser.add_argument("--point", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nlp = spacy.load(args.pipeline)
    component = nlp.get_pipe(early_exit_component(nlp))
    component.use(args.point)
    examples = corpus_examples(nlp, args.corpus)
    configured = component.model.attrs["cut_context"]
    rows = []
    for value in [int(v) for v in args.values.split(",")]:
        component.model.attrs["cut_context"] = value
        docs = [fresh_copy(eg.predicted) for eg in examples]
        pieces = sum(len(sequence) for sequence in _plan(component.model, docs)[2].sequences)
        predicted = list(nlp.pipe(docs))
        scores = component.score([Example(p, eg.reference) for p, eg in zip(predicted, examples)])
        metric = "ents_f" if "ents_f" in scores else "tag_acc"
        rows.append({"cut_context": value, "score": scores[metric], "wordpieces": pieces})
    component.model.attrs["cut_context"] = configured
    for row in rows:
        row["wordpieces_vs_first"] = row["wordpieces"] / rows[0]["wordpieces"]
        print(
            f"cut_context {row['cut_context']:>3}: {metric} {row['score'] * 100:.2f}, "
            f"wordpieces {row['wordpieces']:,} ({row['wordpieces_vs_first']:.2f}x)"
        )
    if args.output:
        result = {"pipeline": args.pipeline, "corpus": args.corpus, "point": args.point, "metric": metric, "rows": rows}
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


if __name__ == "__main__":
    main()
