"""Training steps of a shipped config as `spacy train` makes them, with
attention in float32 (shipped) or in bf16 with torch's own kernel choice.

The pipeline is initialized from the config (its corpus reader, augmenter and
batcher, so documents and single sentences mix as in training); the first
`--steps` batches of the shuffled training corpus are run in rounds, each
round once per variant in alternating order, after a warm-up of both. Only
bf16 training on a CPU without AMX differs between the variants (see
`core/encoder.attend`). Reports training words per second per variant
(medians of the rounds) and the median of the per-round ratios.

    python benchmarks/training_steps.py configs/ner.cfg corpus/train.spacy corpus/dev.spacy \
        --steps 30 --rounds 3 --output benchmarks/results/training-steps-ner.json
"""

import argparse
import itertools
import json
import random
import statistics
import time
from pathlib import Path

import torch
from spacy.schemas import ConfigSchemaTraining
from spacy.training.initialize import init_nlp
from spacy.util import load_config, registry, resolve_dot_names

from spacy_earlyexit.core import encoder as encoder_module
from spacy_earlyexit.core.precision import cpu_name

VARIANTS = {"float32": True, "bf16": False}


def batches_of(config_path: str, train: str, dev: str, steps: int, seed: int):
    config = load_config(config_path, overrides={"paths.train": train, "paths.dev": dev}, interpolate=False)
    nlp = init_nlp(config)
    resolved = nlp.config.interpolate()
    T = registry.resolve(resolved["training"], schema=ConfigSchemaTraining)
    (corpus,) = resolve_dot_names(resolved, [T["train_corpus"]])
    examples = list(corpus(nlp))
    random.Random(seed).shuffle(examples)
    batches = list(itertools.islice(T["batcher"](examples), steps))
    return nlp, batches, T["optimizer"]


def run_steps(nlp, batches, optimizer) -> float:
    start = time.perf_counter()
    for batch in batches:
        nlp.update(batch, sgd=optimizer, drop=0.1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("train")
    parser.add_argument("dev")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nlp, batches, optimizer = batches_of(args.config, args.train, args.dev, args.steps, args.seed)
    words = sum(len(eg.reference) for batch in batches for eg in batch)
    seconds = {name: [] for name in VARIANTS}
    for round_ in range(-1, args.rounds):  # round -1: warm-up
        order = list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            encoder_module.FLOAT32_TRAINING_ATTENTION = VARIANTS[name]
            elapsed = run_steps(nlp, batches if round_ >= 0 else batches[:3], optimizer)
            if round_ >= 0:
                seconds[name].append(elapsed)
                print(f"round {round_} {name} attention: {words / elapsed:,.0f} words/s", flush=True)
    encoder_module.FLOAT32_TRAINING_ATTENTION = True
    ratios = [b / f for f, b in zip(seconds["float32"], seconds["bf16"])]
    result = {
        "config": args.config,
        "train": args.train,
        "steps": len(batches),
        "words_per_round": words,
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "words_per_second": {name: words / statistics.median(s) for name, s in seconds.items()},
        "float32_attention_speedup": statistics.median(ratios),
        "speedup_per_round": ratios,
    }
    print(
        f"{result['cpu']}: float32 attention {result['words_per_second']['float32']:,.0f}, bf16 attention "
        f"{result['words_per_second']['bf16']:,.0f} training words/s: {result['float32_attention_speedup']:.2f}x"
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
