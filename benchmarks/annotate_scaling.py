"""Words per second of corpus annotation: 1 process, 2 processes (`annotate -n 2`)
and Ray Data with 2 actors, on the texts of a .spacy corpus (one doc per line).

    python benchmarks/annotate_scaling.py PIPELINE CORPUS.spacy [--rounds 3]
        [--batch-size 64] [--chunk-size N] [--output FILE.json]

Rounds are interleaved (1 proc, 2 procs, ray; 1 proc, ...); each run writes a
fresh JSONL output in a temporary directory. Per setting: the median words/s
over the rounds (start-up included: pipeline load in the process(es) or
actors), the median of the per-round ratios to 1 process, the start-up time
(until each worker has delivered its first chunk, Ray: its first output block:
pipeline load + one chunk) and the steady-state words/s after it (n/a when the
output came in too few pieces). The pipeline's load time is also measured
alone, in this process (so the 1-process runs, made in this process, find
spacy and torch imported; worker processes and actors import them). A local
Ray (2 CPUs) is started here and shut down at the end; its actors note how
many docs each annotated. All outputs are checked against round 1's 1-process
output, doc by doc.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from spacy_earlyexit.tools.annotate import annotate_corpus, available_cores, load_pipeline
from spacy_earlyexit.tools.ray_annotate import RayAnnotator, annotate_with_ray, require_ray

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ("1 process", "2 processes", "ray, 2 actors")
WORDS = re.compile(r"([\d,]+) words")


class LoggingAnnotator(RayAnnotator):
    """RayAnnotator that also notes which actor (pid) annotated how many docs."""

    def __init__(self, pipeline: str, *, log_path: str, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.log_path = log_path

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, list]:
        out = super().__call__(batch)
        with open(self.log_path, "a", encoding="utf8") as file:
            file.write(f"{os.getpid()} {len(out['id'])}\n")
        return out


def write_input(corpus: Path, path: Path) -> int:
    """The corpus docs' texts, one per line (line breaks inside a doc become spaces)."""
    import spacy
    from spacy.tokens import DocBin

    texts = [
        doc.text.replace("\r", " ").replace("\n", " ")
        for doc in DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab)
    ]
    texts = [text for text in texts if text.strip()]
    path.write_text("".join(text + "\n" for text in texts), encoding="utf8")
    return len(texts)


def timed_run(run: Callable[[Callable[[str], None]], Any], workers: int) -> Dict[str, Any]:
    """Run one annotation, noting when each progress line came and its word count;
    the first `workers` pieces of output are the start-up wave."""
    marks: List[tuple] = []
    start = time.perf_counter()
    summary = run(lambda line: marks.append((time.perf_counter() - start, int(WORDS.search(line)[1].replace(",", "")))))
    seconds = time.perf_counter() - start
    words = summary.words_this_run
    result = {
        "seconds": seconds,
        "docs": summary.docs_this_run,
        "words": words,
        "wps": words / seconds,
        "n_outputs": len(marks),
        "startup_s": None,
        "steady_wps": None,
    }
    if len(marks) > workers:
        result["startup_s"], done = marks[workers - 1]
        result["steady_wps"] = (words - done) / (seconds - result["startup_s"])
    return result


def compare(reference: List[str], path: Path) -> Dict[str, Any]:
    """Doc by doc comparison of a JSONL output with the reference lines."""
    lines = path.read_text(encoding="utf8").splitlines()
    differ = [json.loads(line)["id"] for line, ref in zip(lines, reference) if json.loads(line) != json.loads(ref)]
    return {
        "identical": not differ and len(lines) == len(reference),
        "n_docs": len(lines),
        "differing_ids": differ[:20],
        "byte_identical": lines == reference,
    }


def median(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size, and Ray's batch size")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="annotate's docs per chunk (default: n_docs / 16, at most 1000: work for both processes)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    ray = require_ray()
    start = time.perf_counter()
    load_pipeline(args.pipeline)
    load_s = time.perf_counter() - start
    results: Dict[str, List[Dict[str, Any]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="annotate-scaling-") as tmp:
        tmp_dir = Path(tmp)
        input_path = tmp_dir / "corpus.txt"
        n_docs = write_input(args.corpus, input_path)
        chunk_size = args.chunk_size or max(1, min(1000, math.ceil(n_docs / 16)))
        python_path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
        start = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            runtime_env={"env_vars": {"PYTHONPATH": python_path}},
            log_to_driver=False,
            configure_logging=False,
        )
        ray_init_s = time.perf_counter() - start
        ray.data.DataContext.get_current().enable_progress_bars = False
        reference: List[str] = []
        try:
            for round_ in range(1, args.rounds + 1):
                out = tmp_dir / f"round{round_}"
                log = out / "ray-actors.log"
                out.mkdir()
                for index, name in enumerate(SETTINGS):
                    output = out / f"setting{index}.jsonl"
                    if index < 2:
                        run = partial(
                            annotate_corpus,
                            args.pipeline,
                            input_path,
                            output,
                            n_process=index + 1,
                            batch_size=args.batch_size,
                            chunk_size=chunk_size,
                        )
                    else:
                        run = partial(
                            annotate_with_ray,
                            args.pipeline,
                            input_path,
                            output,
                            num_actors=2,
                            batch_size=args.batch_size,
                            annotator=LoggingAnnotator,
                            annotator_kwargs={"log_path": str(log)},
                        )
                    result = timed_run(lambda say, run=run: run(progress=say), 1 if index == 0 else 2)
                    if not reference:
                        reference = output.read_text(encoding="utf8").splitlines()
                    result.update(compare(reference, output))
                    results[name].append(result)
                    print(
                        f"round {round_}, {name}: {result['wps']:,.0f} words/s, identical: {result['identical']}",
                        flush=True,
                    )
                actors: Dict[str, int] = {}
                for line in log.read_text().splitlines() if log.exists() else []:
                    pid, count = line.split()
                    actors[pid] = actors.get(pid, 0) + int(count)
                results[SETTINGS[2]][-1]["docs_per_actor"] = sorted(actors.values(), reverse=True)
        finally:
            ray.shutdown()

    summary: Dict[str, Any] = {}
    for name in SETTINGS:
        rounds = results[name]
        ratios = [r["wps"] / base["wps"] for r, base in zip(rounds, results[SETTINGS[0]])]
        steady = [
            r["steady_wps"] / base["steady_wps"]
            for r, base in zip(rounds, results[SETTINGS[0]])
            if r["steady_wps"] and base["steady_wps"]
        ]
        summary[name] = {
            "median_wps": median([r["wps"] for r in rounds]),
            "ratio": median(ratios),
            "median_steady_wps": median([r["steady_wps"] for r in rounds]),
            "steady_ratio": median(steady),
            "median_startup_s": median([r["startup_s"] for r in rounds]),
            "all_identical": all(r["identical"] for r in rounds),
            "rounds": rounds,
        }
    n_words = results[SETTINGS[0]][0]["words"]
    identical = all(s["all_identical"] for s in summary.values())
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    print(
        f"\n{n_docs} docs, {n_words:,} words, {args.rounds} round(s), chunk size {chunk_size}, batch size "
        f"{args.batch_size}; {available_cores()} cores, torch threads {torch.get_num_threads()}; pipeline load "
        f"{load_s:.2f} s; ray.init {ray_init_s:.1f} s (not timed in the runs)\n"
    )
    print(
        "| setting | words/s (median, incl. start-up) | ratio to 1 proc | start-up (s) | steady words/s | steady ratio |"  # noqa: E501
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['median_wps']:,.0f} | {s['ratio']:.2f} | {fmt(s['median_startup_s'], '.2f')} "
            f"| {fmt(s['median_steady_wps'], ',.0f')} | {fmt(s['steady_ratio'], '.2f')} |"
        )
    print(f"\nOutputs identical document for document (all settings, all rounds): {'yes' if identical else 'NO'}")
    print(f"Ray docs per actor, round by round: {[r.get('docs_per_actor') for r in results[SETTINGS[2]]]}")
    if args.output:
        machine = {
            "cores": available_cores(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        }
        data = {
            "machine": machine,
            "pipeline": args.pipeline,
            "corpus": str(args.corpus),
            "rounds": args.rounds,
            "n_docs": n_docs,
            "n_words": n_words,
            "batch_size": args.batch_size,
            "chunk_size": chunk_size,
            "pipeline_load_s": load_s,
            "ray_init_s": ray_init_s,
            "outputs_identical": identical,
            "settings": summary,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf8")
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
