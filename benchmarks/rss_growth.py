"""Does a long `nlp.pipe` run keep its memory flat? Streams N varied docs through
the pipeline in one process and samples the resident set size (RSS).

    python benchmarks/rss_growth.py PIPELINE [--docs 50000] [--corpus CORPUS.spacy]
        [--warmup 5000] [--every 1000] [--batch-size 64] [--heaps-k 40]
        [--point NAME] [--precision P] [--memory-zone] [--malloc-trim]
        [--tokenizer-only] [--output FILE.json]

Docs are 5-60 words: spans of the corpus sentences (--corpus) or of synthetic
Zipf-distributed text, cycled with variation; words never seen before are mixed
in at the rate of Heaps' law (about K * sqrt(tokens so far) distinct new words,
K = --heaps-k, 0 for none), so the string store keeps growing as on a real corpus. RSS comes from
/proc/self/status (VmRSS), else psutil. Reported: RSS after the warm-up vs at
the end, the growth in % (goal: under 5 %), the trend after the warm-up (the
least-squares slope, MiB per 10,000 docs: one sample is noisy, as the allocator
holds more or less memory after batches of different shapes), the growth of the
median of five samples (the first five from the warm-up on against the last
five: the level without one sample's swing), and words/s.

Docs go through `nlp.pipe` in chunks of --every docs. With --memory-zone each
chunk runs inside spaCy's `nlp.memory_zone()`, which frees the strings and
lexemes its new words added (what a long-running service uses, spaCy >= 3.8).
--tokenizer-only runs the same stream with every component disabled: the
growth spaCy's own vocabulary and tokenizer cache bring to any pipeline.
--malloc-trim reads RSS after glibc's `malloc_trim(0)`, which hands the
allocator's free pages back: what is left is memory in use, not memory the
allocator keeps after batches of different sizes.
"""

import argparse
import json
import math
import os
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import spacy

import spacy_earlyexit  # noqa: F401  registers the factories
from spacy_earlyexit.core.precision import cpu_name

SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vu", "el", "dan", "ri", "os", "bel", "ta", "ne", "gor", "lin"]
PUNCT = [",", ".", "(", ")", "-", ":", "'s", '"']


def malloc_trim() -> bool:
    """Hand glibc's free heap pages back to the system (False where there is no glibc)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def rss_mb() -> float:
    """The current resident set size of this process, in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def pseudo_word(index: int) -> str:
    """A distinct pronounceable word for each index (base-16 in syllables)."""
    parts = []
    while True:
        index, digit = divmod(index, len(SYLLABLES))
        parts.append(SYLLABLES[digit])
        if not index:
            return "".join(parts)
        index -= 1


def base_sentences(corpus: Optional[Path], rng: random.Random) -> List[List[str]]:
    """Word lists to draw spans from: the corpus sentences, or synthetic Zipf text."""
    if corpus is not None:
        from spacy.tokens import DocBin

        docs = DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab)
        return [[t.text for t in sent if not t.is_space] for doc in docs for sent in doc.sents if len(sent) >= 5]
    vocab = [pseudo_word(i) for i in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    sentences = []
    for _ in range(2000):
        words = rng.choices(vocab, weights, k=rng.randint(5, 60))
        for i in range(len(words)):
            if rng.random() < 0.12:
                words[i] = words[i].capitalize()
            elif rng.random() < 0.06:
                words[i] = rng.choice(PUNCT + [str(rng.randint(0, 3000))])
        sentences.append([words[0].capitalize()] + words[1:] + ["."])
    return sentences


def stream_texts(sentences: List[List[str]], n_docs: int, heaps_k: float, seed: int = 0) -> Iterator[str]:
    """n_docs texts of 5-60 words: spans of the cycled sentences (joined when one
    is too short), with new words mixed in as Heaps' law has them appear."""
    rng = random.Random(seed)
    pool = [w for sentence in sentences for w in sentence]
    n_tokens = n_new = 0
    order = list(range(len(sentences)))
    for i in range(n_docs):
        if i % len(order) == 0:
            rng.shuffle(order)
        length = rng.randint(5, 60)
        words = list(sentences[order[i % len(order)]])
        while len(words) < length:
            start = rng.randrange(len(pool))
            words += pool[start : start + length - len(words)]
        start = rng.randint(0, len(words) - length)
        words = words[start : start + length]
        n_tokens += length
        while n_new < heaps_k * math.sqrt(n_tokens):
            word = pseudo_word(100_000 + n_new)
            words[rng.randrange(length)] = word.capitalize() if rng.random() < 0.5 else word
            n_new += 1
        yield " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--corpus", type=Path, default=None, help="a .spacy corpus whose sentences make the texts")
    parser.add_argument("--warmup", type=int, default=5000, help="docs before the baseline RSS (at most docs / 5)")
    parser.add_argument("--every", type=int, default=1000, help="sample RSS every this many docs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--heaps-k", type=float, default=40.0, help="new words: K * sqrt(tokens) (0: none)")
    parser.add_argument("--point", default=None, help="operating point (default: the pipeline's own)")
    parser.add_argument("--precision", default=None, help="fp32, bf16, int8 or auto (default: the component's)")
    parser.add_argument("--memory-zone", action="store_true", help="each chunk inside nlp.memory_zone()")
    parser.add_argument("--malloc-trim", action="store_true", help="read RSS after glibc's malloc_trim(0)")
    parser.add_argument("--tokenizer-only", action="store_true", help="every component disabled")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    warmup = min(args.warmup, args.docs // 5)
    warmup -= warmup % args.every  # on a sample
    nlp = spacy.load(args.pipeline)
    run_cfg = {k: v for k, v in (("operating_point", args.point), ("precision", args.precision)) if v is not None}
    names = [name for name, pipe in nlp.pipeline if hasattr(pipe, "operating_points")]
    component_cfg = {name: run_cfg for name in names} if run_cfg else None
    if args.tokenizer_only:
        component_cfg = None
    disable = [name for name, _ in nlp.pipeline] if args.tokenizer_only else []
    sentences = base_sentences(args.corpus, random.Random(0))

    def read_rss() -> float:
        if args.malloc_trim and not malloc_trim():
            raise SystemExit("--malloc-trim needs glibc")
        return rss_mb()

    def lengths() -> Iterator[int]:
        """Each doc's length, the docs run in chunks of --every (in a memory zone with --memory-zone)."""
        texts = stream_texts(sentences, args.docs, args.heaps_k)
        while True:
            chunk = [text for _, text in zip(range(args.every), texts)]
            if not chunk:
                return
            with nlp.memory_zone() if args.memory_zone else nullcontext():
                for doc in nlp.pipe(chunk, batch_size=args.batch_size, component_cfg=component_cfg, disable=disable):
                    yield len(doc)

    samples: List[Dict[str, Any]] = [
        {"docs": 0, "words": 0, "seconds": 0.0, "rss_mb": read_rss(), "n_strings": len(nlp.vocab.strings)}
    ]
    n_words = 0
    start = time.perf_counter()
    for i, length in enumerate(lengths(), start=1):
        n_words += length
        if i % args.every == 0 or i == args.docs:
            samples.append(
                {
                    "docs": i,
                    "words": n_words,
                    "seconds": time.perf_counter() - start,
                    "rss_mb": read_rss(),
                    "n_strings": len(nlp.vocab.strings),
                }
            )
            print(
                f"{i:>7} docs  {samples[-1]['rss_mb']:8.1f} MiB  {samples[-1]['n_strings']:>8} strings  "
                f"{n_words / samples[-1]['seconds']:,.0f} words/s",
                flush=True,
            )
    base = next(s for s in samples if s["docs"] >= warmup)
    end = samples[-1]
    growth = 100 * (end["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
    after = [(s["docs"], s["rss_mb"]) for s in samples if s["docs"] >= base["docs"]]
    mean_x, mean_y = sum(x for x, _ in after) / len(after), sum(y for _, y in after) / len(after)
    var_x = sum((x - mean_x) ** 2 for x, _ in after)
    slope = 1e4 * sum((x - mean_x) * (y - mean_y) for x, y in after) / var_x if var_x else None
    steady_wps = (end["words"] - base["words"]) / (end["seconds"] - base["seconds"]) if end is not base else None
    # one sample moves by what the allocator holds after the last batches:
    # the median of the first five samples from the warm-up on against that
    # of the last five reads the level, not the swing
    levels = [y for _, y in after]
    first, last = statistics.median(levels[:5]), statistics.median(levels[-5:])
    median_growth = 100 * (last - first) / first
    result = {
        "pipeline": args.pipeline,
        "corpus": str(args.corpus) if args.corpus else None,
        "docs": args.docs,
        "words": n_words,
        "batch_size": args.batch_size,
        "heaps_k": args.heaps_k,
        "point": args.point,
        "precision": args.precision,
        "shape_buckets": os.environ.get("SPACY_EARLYEXIT_SHAPE_BUCKETS", "1") != "0",
        "memory_zone": args.memory_zone,
        "malloc_trim": args.malloc_trim,
        "tokenizer_only": args.tokenizer_only,
        "cpu": cpu_name(),
        "warmup_docs": base["docs"],
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_after_warmup_mb": base["rss_mb"],
        "rss_end_mb": end["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "growth_pct": growth,
        "under_5pct": growth < 5,
        "growth_of_medians_pct": median_growth,
        "slope_mb_per_10k_docs_after_warmup": slope,
        "words_per_second": n_words / end["seconds"],
        "words_per_second_after_warmup": steady_wps,
        "samples": samples,
    }
    print(
        f"\nRSS after {base['docs']} docs (warm-up): {base['rss_mb']:.1f} MiB; after {end['docs']}: "
        f"{end['rss_mb']:.1f} MiB; growth {growth:+.2f} % ({'under' if growth < 5 else 'NOT under'} 5 %), "
        f"of the medians of five samples {median_growth:+.2f} %; "
        f"trend {'n/a' if slope is None else format(slope, '+.1f')} MiB per 10k docs; "
        f"strings {base['n_strings']} -> {end['n_strings']}; {result['words_per_second']:,.0f} words/s "
        f"({n_words:,} words, {args.docs} docs, torch threads {result['torch_threads']})"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
