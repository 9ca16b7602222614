"""How many distinct kernel shapes does a pass create? Counts, on any CPU, the
distinct shapes that the product and attention kernels meet while a pipeline
labels a corpus at each operating point, with the shape buckets off and on,
after a growing number of docs (so a count that keeps growing with the corpus
shows, and one that is bounded levels off).

    python benchmarks/shapes.py PIPELINE CORPUS.spacy [--points full,2x,3x,4x]
        [--precision auto] [--docs 0] [--passes 4] [--sentences] [--batch-size 64]
        [--component NAME] [--speed-rounds 0] [--compare-chunk] [--output FILE.json]

With --compare-chunk, "off" is the buckets without row chunks (products
over any number of rows at once) instead of no buckets at all.

With --speed-rounds N, also words per second at every point with the buckets
off and on, N interleaved rounds on the corpus (medians; the ratio on/off is
the median of per-round ratios), through the package's own measuring code.

Each pass runs the corpus's docs (or, with --sentences, its sentences, each a
doc) in a new random order, so batches hold new mixes of lengths as a stream
of new text would; the counts after each pass show whether the shapes keep
coming.

oneDNN makes (and caches) a kernel per shape, and AMX's brgemm micro-kernels
are generated per shape too: the count is the machine-independent proxy of
that cost and of the caches' memory. Products are counted by their tensor
arguments' shapes, attention by (queries, keys, head size); `core/shapes.py`
says how shapes are rounded up.
"""

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

import spacy
from spacy.tokens import Doc, DocBin

import spacy_earlyexit  # noqa: F401  registers the factories
from spacy_earlyexit.core.precision import cpu_name
from spacy_earlyexit.core.shapes import ROW_CHUNK, ShapeCounter, ladder_sizes
from spacy_earlyexit.tools.evaluation import (
    Measurement,
    corpus_examples,
    measure_interleaved,
    sentence_docs,
    sentence_examples,
)


def corpus_tokens(nlp, path: Path, limit: int, sentences: bool) -> List[Tuple[List[str], List[bool]]]:
    """The corpus's docs (or sentences) as (words, spaces), its own tokens."""
    docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    if sentences:
        docs = sentence_docs(docs)
    docs = docs[:limit] if limit else docs
    return [([t.text for t in doc], [bool(t.whitespace_) for t in doc]) for doc in docs]


def count(nlp, component: str, tokens, point: str, precision: str, passes: int, batch_size: int) -> List[Dict]:
    """Distinct product and attention shapes after each of `passes` passes
    over the docs `tokens` (each in a new random order), at `point` in
    `precision`."""
    cfg = {component: {"operating_point": point, "precision": precision}}
    rows = []
    with ShapeCounter() as counter:
        for k in range(passes):
            order = list(range(len(tokens)))
            random.Random(k).shuffle(order)
            docs = [Doc(nlp.vocab, words=tokens[i][0], spaces=tokens[i][1]) for i in order]
            for _ in nlp.pipe(docs, batch_size=batch_size, component_cfg=cfg):
                pass
            rows.append({"docs": (k + 1) * len(docs), **counter.by_kind(), "distinct": counter.distinct()})
    return rows


def settings(compare_chunk: bool) -> List[Tuple[str, bool, int]]:
    """(label, shape buckets, row chunk) of the setting compared and of the
    shipped one: no buckets, or with --compare-chunk buckets without chunks."""
    return [("no-chunk", True, 0) if compare_chunk else ("off", False, 0), ("on", True, ROW_CHUNK)]


def speed(args, name: str, points: List[str]) -> List[Dict]:
    """Words per second at each point with the buckets off and on (or, with
    --compare-chunk, on without row chunks and on as shipped), measured in
    interleaved rounds (two copies of the pipeline, one per setting)."""
    compared = settings(args.compare_chunk)
    pipelines = {}
    for label, buckets, chunk in compared:
        nlp = spacy.load(args.pipeline)
        component = nlp.get_pipe(name)
        component.precision = args.precision
        component.encoder.shape_buckets, component.encoder.row_chunk = buckets, chunk
        pipelines[label] = nlp
    examples = corpus_examples(pipelines["on"], str(args.corpus), limit=args.docs)
    if args.sentences:
        examples = sentence_examples(pipelines["on"], examples)
    runs = []
    for point in points:
        for label, _, _ in compared:
            runs.append((pipelines[label], name, Measurement(pipelines[label].get_pipe(name).point(point))))
    measure_interleaved(runs, examples, args.batch_size, args.speed_rounds)
    rows = []
    for point, (off, on) in zip(points, zip(runs[::2], runs[1::2])):
        ratios = [b / a for a, b in zip(off[2].round_words_per_second, on[2].round_words_per_second)]
        row = {
            "point": point,
            "off": "buckets without row chunks" if args.compare_chunk else "buckets off",
            "score_off": off[2].score,
            "score_on": on[2].score,
            "flops_speedup": on[2].flops_speedup,
            "words_per_second_off": off[2].words_per_second,
            "words_per_second_on": on[2].words_per_second,
            "ratio_on_off": statistics.median(ratios),
        }
        rows.append(row)
        print(
            f"{point:>8}: score {row['score_off']:.4f} / {row['score_on']:.4f}, "
            f"words/s off {row['words_per_second_off']:,.0f} on {row['words_per_second_on']:,.0f} "
            f"(x{row['ratio_on_off']:.3f})",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--points", default="full,2x,3x,4x", help="operating points (those the pipeline has)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--docs", type=int, default=0, help="first N docs of the corpus (0: all)")
    parser.add_argument("--passes", type=int, default=4, help="passes over the corpus, each in a new order")
    parser.add_argument("--sentences", action="store_true", help="every sentence its own doc")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--component", default=None)
    parser.add_argument("--speed-rounds", type=int, default=0, help="also time every point, buckets off and on")
    parser.add_argument(
        "--compare-chunk", action="store_true", help="count and time buckets without row chunks against shipped"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    nlp = spacy.load(args.pipeline)
    name = args.component or next(n for n, p in nlp.pipeline if hasattr(p, "operating_points"))
    component = nlp.get_pipe(name)
    encoder = component.encoder
    docs = corpus_tokens(nlp, args.corpus, args.docs, args.sentences)
    points = [p for p in args.points.split(",") if p == "full" or p in component.operating_points]
    result: Dict = {
        "pipeline": args.pipeline,
        "corpus": str(args.corpus),
        "docs": len(docs),
        "words": sum(len(words) for words, _ in docs),
        "sentences": args.sentences,
        "precision": args.precision,
        "cpu": cpu_name(),
        "row_sizes_possible": len(ladder_sizes(min(ROW_CHUNK, args.batch_size * 512))),
        "length_sizes_possible": len(ladder_sizes(512, rows=False)),
        "runs": [],
    }
    for label, buckets, chunk in settings(args.compare_chunk):
        encoder.shape_buckets, encoder.row_chunk = buckets, chunk
        for point in points:
            rows = count(nlp, name, docs, point, args.precision, args.passes, args.batch_size)
            result["runs"].append({"buckets": buckets, "row_chunk": chunk, "point": point, "checkpoints": rows})
            growth = " ".join(f"{r['docs']}:{r['distinct']}" for r in rows)
            print(f"{label:>8} {point:>8}: distinct shapes after docs {growth}", flush=True)
    if args.speed_rounds:
        result["speed"] = speed(args, name, points)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
