"""Where a pass's time goes outside the encoder layers: wall-clock of
`nlp.pipe` split into the layers themselves, the rest of the encoder's loop
(embeddings, exit classifiers, uncertainty, exit decisions, batch shrinking)
and everything outside the encoder (tokenizer, wordpieces and alignment,
collation, decoding, annotation), per operating point.

    python benchmarks/outside_layers.py PIPELINE CORPUS.spacy [--points full,3x]
        [--precision auto] [--docs 0] [--sentences] [--rounds 3] [--batch-size 64]

The layer time is measured around each call of the encoder's layer function
(CPU work is synchronous), the loop's around `predict`; medians over rounds.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List

import spacy
import torch
from spacy.tokens import DocBin

import spacy_earlyexit  # noqa: F401  registers the factories
from spacy_earlyexit.tools.evaluation import sentence_docs


class Timer:
    """Seconds spent in calls of one function, accumulated."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--points", default="full,3x")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--docs", type=int, default=0)
    parser.add_argument("--sentences", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    nlp = spacy.load(args.pipeline)
    name = next(n for n, p in nlp.pipeline if hasattr(p, "operating_points"))
    encoder = nlp.get_pipe(name).encoder
    docs = list(DocBin().from_disk(args.corpus).get_docs(nlp.vocab))
    docs = sentence_docs(docs) if args.sentences else docs
    docs = docs[: args.docs] if args.docs else docs
    texts = [doc.text for doc in docs]
    n_words = sum(len(nlp.make_doc(t)) for t in texts)
    layer, loop = Timer(encoder._run_layer), Timer(encoder.predict)
    encoder._run_layer, encoder.predict = layer, loop  # instance attributes: timing only
    rows: Dict[str, List[Dict]] = {}
    points = args.points.split(",")
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for point in points:
            cfg = {name: {"operating_point": point, "precision": args.precision}}
            layer.seconds = loop.seconds = 0.0
            start = time.perf_counter()
            for _ in nlp.pipe(texts, batch_size=args.batch_size, component_cfg=cfg):
                pass
            total = time.perf_counter() - start
            if round_index:
                rows.setdefault(point, []).append({"total": total, "layers": layer.seconds, "loop": loop.seconds})
    result = {"pipeline": args.pipeline, "words": n_words, "threads": torch.get_num_threads(), "points": {}}
    for point, runs in rows.items():
        total = statistics.median(r["total"] for r in runs)
        layers = statistics.median(r["layers"] for r in runs)
        loop_rest = statistics.median(r["loop"] - r["layers"] for r in runs)
        outside = statistics.median(r["total"] - r["loop"] for r in runs)
        result["points"][point] = {
            "seconds": total,
            "words_per_second": n_words / total,
            "layers": layers,
            "loop_outside_layers": loop_rest,
            "outside_encoder": outside,
            "share_outside_layers": (total - layers) / total,
        }
        print(
            f"{point:>6}: {n_words / total:,.0f} words/s; layers {layers:.2f} s, rest of the loop {loop_rest:.2f} s, "
            f"outside the encoder {outside:.2f} s: {100 * (total - layers) / total:.1f}% outside the layers",
            flush=True,
        )
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
