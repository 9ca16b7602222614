"""What installing the plugin costs every `python -m spacy ...` command.

spaCy loads every `spacy_cli` entry point at start-up, so `python -m spacy
info` imports `spacy_earlyexit.tools.cli` (and with it the package). This
times, in fresh interpreters, `import spacy, spacy.cli` alone and followed by
that import, in interleaved rounds (medians), and lists the heavy modules the
plugin adds. Run: `python benchmarks/import_time.py --rounds 7`.
"""

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import sys, time
start = time.perf_counter()
import spacy, spacy.cli
base = time.perf_counter()
before = set(sys.modules)
if {plugin}:
    import spacy_earlyexit.tools.cli
end = time.perf_counter()
added = sorted(m.split(".")[0] for m in set(sys.modules) - before)
print(base - start, end - base, ",".join(sorted(set(added))))
"""


def run(plugin: bool):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(plugin=plugin)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), (out[2].split(",") if len(out) > 2 else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    spacy_seconds, plugin_seconds, added = [], [], set()
    for _ in range(args.rounds):
        base, _, _ = run(False)
        spacy_seconds.append(base)
        _, extra, modules = run(True)
        plugin_seconds.append(extra)
        added.update(modules)
    heavy = sorted(added & {"transformers", "spacy_transformers", "tokenizers", "safetensors", "matplotlib", "ray"})
    result = {
        "spacy_and_cli_seconds": statistics.median(spacy_seconds),
        "plugin_extra_seconds": statistics.median(plugin_seconds),
        "rounds": args.rounds,
        "heavy_modules_added": heavy,
        "top_level_modules_added": sorted(added),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf8") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
