"""Words per second of a pipeline's operating points with the oneDNN-fused
projections and with plain `F.linear` products, side by side: same weights,
same process, interleaved rounds (medians), and every label compared.

    python benchmarks/projections.py training/ner-width/model-last corpus/test.spacy \
        --points full,4x,5x,6x --widths 0.25 [--rounds 5] [--output benchmarks/results/projections-ner.json]

`--points` names operating points of the pipeline (`full` always works);
`--widths` adds width-alone points (full depth at that width).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import spacy
import torch

from spacy_earlyexit.core.projections import onednn_available
from spacy_earlyexit.tools.evaluation import corpus_examples, fresh_copy, keep_only_early_exit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--points", default="full")
    parser.add_argument("--widths", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if not onednn_available():
        raise SystemExit("This torch build has no usable oneDNN linear products: nothing to compare.")
    torch.set_num_threads(args.threads)
    nlp = spacy.load(args.pipeline)
    name = keep_only_early_exit(nlp)
    component = nlp.get_pipe(name)
    encoder = component.encoder
    examples = corpus_examples(nlp, args.corpus)
    n_words = sum(len(eg.predicted) for eg in examples)
    points = [(p, None) for p in args.points.split(",") if p] + [
        ("full", float(w)) for w in args.widths.split(",") if w
    ]
    runs = [(point, width, onednn) for point, width in points for onednn in (True, False)]
    seconds = {run: [] for run in runs}
    labels = {}
    for round_index in range(max(1, args.rounds)):
        for run in runs:
            point, width, onednn = run
            encoder.use_onednn = onednn
            with component.using(point, width=width):
                list(nlp.pipe([fresh_copy(eg.predicted) for eg in examples[:8]]))  # packs this width's projections
                docs = [fresh_copy(eg.predicted) for eg in examples]
                start = time.perf_counter()
                docs = list(nlp.pipe(docs, batch_size=args.batch_size))
                seconds[run].append(time.perf_counter() - start)
            if round_index == 0:
                labels[run] = [[(t.ent_iob_, t.ent_type_, t.tag_) for t in doc] for doc in docs]
            print(
                f"[round {round_index + 1}/{args.rounds}] {_label(run)}: {n_words / seconds[run][-1]:,.0f} words/s",
                flush=True,
            )
    full_fused, full_plain = ("full", None, True), ("full", None, False)
    rows = []
    for point, width in points:
        fused, plain = (point, width, True), (point, width, False)
        differ = sum(a != b for doc_a, doc_b in zip(labels[fused], labels[plain]) for a, b in zip(doc_a, doc_b))
        rows.append(
            {
                "point": point,
                "width": width,
                "words_per_second_fused": n_words / statistics.median(seconds[fused]),
                "words_per_second_plain": n_words / statistics.median(seconds[plain]),
                "fused_vs_plain": statistics.median(b / a for a, b in zip(seconds[fused], seconds[plain])),
                "vs_full_fused": statistics.median(f / a for a, f in zip(seconds[fused], seconds[full_fused])),
                "vs_full_plain": statistics.median(f / a for a, f in zip(seconds[plain], seconds[full_plain])),
                "tokens_labelled_differently": differ,
            }
        )
    print(
        f"{'point':<14} {'fused words/s':>14} {'plain words/s':>14} {'fused/plain':>12} "
        f"{'vs full (fused)':>16} {'vs full (plain)':>16} {'labels differ':>14}"
    )
    for row in rows:
        print(
            f"{_label((row['point'], row['width'], None)):<14} {row['words_per_second_fused']:>14,.0f} "
            f"{row['words_per_second_plain']:>14,.0f} {row['fused_vs_plain']:>11.2f}x "
            f"{row['vs_full_fused']:>15.2f}x {row['vs_full_plain']:>15.2f}x {row['tokens_labelled_differently']:>14}"
        )
    if args.output:
        result = {
            "pipeline": args.pipeline,
            "corpus": args.corpus,
            "n_words": n_words,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "rows": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


def _label(run) -> str:
    point, width, onednn = run
    label = point if width is None else f"width {width:g}"
    return label if onednn is None else f"{label} ({'fused' if onednn else 'plain'})"


if __name__ == "__main__":
    main()
