"""Does one calibration serve every precision? Exits, labels and scores of a
calibrated pipeline at each operating point, run in fp32 and in each reduced
precision, token by token.

    python benchmarks/precision_agreement.py training/ner-calibrated corpus/dev.spacy \
        [--precisions bf16,int8] [--output benchmarks/results/precision-agreement.json]

Per point and precision: the share of tokens whose exit layer and whose label
equal fp32's, the score and the analytic speed-up beside fp32's. Scores and
exits do not depend on timing, so one pass each suffices.
"""

import argparse
import json
from pathlib import Path

import spacy
from spacy.training import Example

from spacy_earlyexit.tools.evaluation import corpus_examples, fresh_copy, keep_only_early_exit


def run(nlp, name, examples, point, precision):
    component = nlp.get_pipe(name)
    cfg = {name: {"operating_point": point, "precision": precision}}
    docs = list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples], batch_size=64, component_cfg=cfg))
    scores = component.score([Example(doc, eg.reference) for doc, eg in zip(docs, examples)])
    exits = [layer for doc in docs for layer in (t._.exit_layers.get(name) for t in doc)]
    if component.score_key == "ents_f":
        labels = [f"{t.ent_iob_}-{t.ent_type_}" for doc in docs for t in doc]
    else:
        labels = [t.tag_ for doc in docs for t in doc]
    return {
        "score": scores.get(component.score_key),
        "flops_speedup": scores.get(f"{name}_flops_speedup"),
        "exits": exits,
        "labels": labels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--precisions", default="bf16,int8")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    nlp = spacy.load(args.pipeline)
    name = keep_only_early_exit(nlp)
    examples = corpus_examples(nlp, args.corpus, args.limit)
    points = ["full", *nlp.get_pipe(name).operating_points]
    rows = []
    for point in points:
        reference = run(nlp, name, examples, point, "fp32")
        n = len(reference["exits"])
        row = {"point": point, "fp32": {k: reference[k] for k in ("score", "flops_speedup")}}
        for precision in [p for p in args.precisions.split(",") if p]:
            got = run(nlp, name, examples, point, precision)
            row[precision] = {
                "score": got["score"],
                "flops_speedup": got["flops_speedup"],
                "same_exit": sum(a == b for a, b in zip(got["exits"], reference["exits"])) / n,
                "same_label": sum(a == b for a, b in zip(got["labels"], reference["labels"])) / n,
            }
        rows.append(row)
        print(json.dumps(row))
    result = {"pipeline": args.pipeline, "corpus": args.corpus, "n_docs": len(examples), "rows": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


if __name__ == "__main__":
    main()
