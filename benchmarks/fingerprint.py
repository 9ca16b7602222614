"""A fingerprint of what a pipeline writes at every operating point and
precision: one hash per (point, precision, shape) of every token's labels
and exit layer and every doc's cost, so that a restructure can show its
outputs unchanged (run it before and after, on the same machine, and
compare the files).

    python benchmarks/fingerprint.py PIPELINE CORPUS --output before.json
    python benchmarks/fingerprint.py PIPELINE CORPUS --output after.json --compare before.json

It uses the public API only (`spacy.load`, `component.using`, `nlp.pipe`,
the extension attributes), so the same file runs against an older release.
Shapes: the corpus's documents, and its sentences as docs of their own.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List

import spacy
from spacy.tokens import Doc, DocBin

import spacy_earlyexit  # noqa: F401  registers the factories

PRECISIONS = ("fp32", "bf16", "int8")


def token_docs(nlp, path: str, sentences: bool) -> List[Doc]:
    """Unannotated docs with the corpus's own tokens (or one per sentence)."""
    docs = [doc for doc in DocBin().from_disk(path).get_docs(nlp.vocab) if len(doc)]
    if sentences:
        docs = [s.as_doc() for doc in docs for s in (doc.sents if doc.has_annotation("SENT_START") else [doc[:]])]
    return [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in docs]


def fingerprint(docs: List[Doc], name: str) -> Dict:
    """The hash of every token's annotation and exit layer and every doc's
    cost record, and the figures it hides (for a readable diff)."""
    digest = hashlib.sha256()
    layers = 0
    for doc in docs:
        for token in doc:
            row = (token.tag_, token.ent_iob_, token.ent_type_, token._.exit_layer)
            digest.update(repr(row).encode("utf8"))
            layers += token._.exit_layer or 0
        digest.update(repr(sorted((doc._.earlyexit or {}).get(name, {}).items())).encode("utf8"))
    n_tokens = sum(len(doc) for doc in docs)
    return {"sha256": digest.hexdigest(), "tokens": n_tokens, "mean_exit_layer": layers / max(1, n_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--compare", type=Path, default=None, help="an earlier fingerprint: exit 1 on any difference")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--limit", type=int, default=0, help="the first N docs only (0: all)")
    args = parser.parse_args()
    nlp = spacy.load(args.pipeline)
    names = [n for n, p in nlp.pipeline if hasattr(p, "operating_points")]
    result: Dict = {"pipeline": args.pipeline, "corpus": args.corpus, "runs": {}}
    for sentences in (False, True):
        inputs = token_docs(nlp, args.corpus, sentences)
        inputs = inputs[: args.limit] if args.limit else inputs
        for name in names:
            component = nlp.get_pipe(name)
            for point in ["full", *component.operating_points]:
                for precision in args.precisions.split(","):
                    with component.using(point, precision=precision):
                        docs = list(nlp.pipe([d.copy() for d in inputs], batch_size=64))
                    key = f"{name}/{point}/{precision}/{'sentences' if sentences else 'documents'}"
                    result["runs"][key] = fingerprint(docs, name)
                    print(key, result["runs"][key], flush=True)
    args.output.write_text(json.dumps(result, indent=2), encoding="utf8")
    if args.compare:
        before = json.loads(args.compare.read_text(encoding="utf8"))["runs"]
        differ = [k for k in result["runs"] if k not in before or before[k]["sha256"] != result["runs"][k]["sha256"]]
        missing = [k for k in before if k not in result["runs"]]
        print(f"{len(result['runs']) - len(differ)} of {len(result['runs'])} identical; differ: {differ or 'none'}")
        if missing:
            print(f"not run now: {missing}")
        sys.exit(1 if differ or missing else 0)


if __name__ == "__main__":
    main()
