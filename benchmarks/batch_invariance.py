"""Does a doc get the same labels and exit layers alone as in a batch of 64
mixed-length docs? Counts the tokens that differ, on real sentences.

    python benchmarks/batch_invariance.py PIPELINE CORPUS.spacy [--sentences 500]
        [--policy token_window] [--threshold 0.3] [--window 2]
"""

import argparse
import random

import spacy
from spacy.tokens import DocBin

from spacy_earlyexit import make_policy
from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--policy", default="token_window")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=2)
    args = parser.parse_args()
    nlp = spacy.load(args.pipeline)
    params = {"threshold": args.threshold}
    if args.policy == "token_window":
        params["window"] = args.window
    for _, component in nlp.pipeline:
        if isinstance(component, EarlyExitLabeler) and not component.listening:
            component.exit_policy = make_policy(args.policy, **params)
    docs = DocBin().from_disk(args.corpus).get_docs(nlp.vocab)
    texts = [sent.text for doc in docs for sent in doc.sents][: args.sentences]
    random.Random(0).shuffle(texts)  # batches of mixed lengths
    alone = [nlp(text) for text in texts]
    batched = list(nlp.pipe(texts, batch_size=64))
    n_tokens = sum(len(doc) for doc in alone)
    differ = {"labels": 0, "exit_layers": 0}
    for a_doc, b_doc in zip(alone, batched):
        for a, b in zip(a_doc, b_doc):
            differ["labels"] += (a.ent_iob_, a.ent_type_, a.tag_) != (b.ent_iob_, b.ent_type_, b.tag_)
            differ["exit_layers"] += a._.exit_layer != b._.exit_layer
    print(
        f"{len(texts)} sentences, {n_tokens} tokens, policy {args.policy} {params}: "
        f"{differ['labels']} tokens with a different label, {differ['exit_layers']} with a different exit layer "
        "(alone vs. batches of 64)"
    )


if __name__ == "__main__":
    main()
