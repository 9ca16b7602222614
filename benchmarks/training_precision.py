"""What bf16 mixed precision buys a training step, against fp32.

One pipeline is built from a shipped config (its component block as it is,
`training_precision` aside) and trained on the first documents of a corpus in
rounds: every round runs the same batches once with fp32 steps and once with
bf16 steps (products under torch's bf16 autocast, see `core/precision.py`),
in alternating order, after a warm-up of both. Reports training words per
second per precision (medians of the rounds) and the median of the per-round
ratios bf16 / fp32. The weights keep training across rounds, so losses are
printed only as a sanity check, not compared.

    python benchmarks/training_precision.py configs/ner.cfg corpus/train.spacy \
        --rounds 3 --output benchmarks/results/training-precision-ner.json
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from thinc.api import Config

from spacy_earlyexit.core.precision import native_bf16


def build(config_path: str, corpus: str, n_docs: int):
    config = Config().from_disk(config_path)
    name, block = next(
        (name, dict(block))
        for name, block in config["components"].items()
        if str(block.get("factory", "")).startswith("earlyexit_")
    )
    factory = block.pop("factory")
    block.pop("training_precision", None)
    nlp = spacy.blank(config["nlp"]["lang"])
    nlp.add_pipe(factory, name=name, config=block)
    docs = list(DocBin().from_disk(corpus).get_docs(nlp.vocab))[:n_docs]
    if not docs:
        raise SystemExit(f"{corpus} holds no documents.")
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    optimizer = nlp.initialize(lambda: examples)
    return nlp, name, examples, optimizer


def run_steps(nlp, name, batches, optimizer, precision: str):
    nlp.get_pipe(name).training_precision = precision
    losses: dict = {}
    start = time.perf_counter()
    for batch in batches:
        nlp.update(batch, sgd=optimizer, losses=losses, drop=0.1)
    return time.perf_counter() - start, losses.get(name, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("corpus")
    parser.add_argument("--docs", type=int, default=100, help="documents trained on per round")
    parser.add_argument("--batch-docs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native_bf16():
        print("warning: this CPU has no native bf16; bf16 steps fall back to fp32 (set SPACY_EARLYEXIT_NATIVE_BF16=1)")
    nlp, name, examples, optimizer = build(args.config, args.corpus, args.docs)
    batches = [examples[i : i + args.batch_docs] for i in range(0, len(examples), args.batch_docs)]
    words = sum(len(eg.reference) for eg in examples)
    for precision in ("fp32", "bf16"):  # warm-up
        run_steps(nlp, name, batches[:2], optimizer, precision)
    seconds = {"fp32": [], "bf16": []}
    for round_ in range(args.rounds):
        order = ("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            elapsed, loss = run_steps(nlp, name, batches, optimizer, precision)
            seconds[precision].append(elapsed)
            print(f"round {round_} {precision}: {words / elapsed:,.0f} words/s (loss {loss:.1f})", flush=True)
    ratios = [f / b for f, b in zip(seconds["fp32"], seconds["bf16"])]
    result = {
        "config": args.config,
        "corpus": args.corpus,
        "docs": len(examples),
        "words_per_round": words,
        "steps_per_round": len(batches),
        "threads": args.threads,
        "rounds": args.rounds,
        "native_bf16": native_bf16(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "words_per_second": {p: words / statistics.median(s) for p, s in seconds.items()},
        "bf16_speedup": statistics.median(ratios),
        "bf16_speedup_per_round": ratios,
    }
    print(
        f"fp32 {result['words_per_second']['fp32']:,.0f} words/s, bf16 {result['words_per_second']['bf16']:,.0f} "
        f"words/s: bf16 {result['bf16_speedup']:.2f}x (median of {args.rounds} interleaved rounds)"
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
