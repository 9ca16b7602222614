"""What does each distinct row count cost in memory? Runs one fused oneDNN
product (the inference layers' feed-forward shape, 384 -> 1536 with GELU, as
`core/projections.py` runs it) over every size of the row ladder up to a
limit, several passes, and reads the resident memory after glibc's
`malloc_trim(0)` (so what is left is memory in use: the kernels and
computations oneDNN and torch cache per shape, not free heap).

    python benchmarks/kernel_cache_memory.py [--dtype float32] [--limit 16384] [--passes 3]

The first pass adds what the sizes cost; later passes over the same sizes
add nothing when every shape hits the caches. Run it with
`ONEDNN_PRIMITIVE_CACHE_CAPACITY` and `LRU_CACHE_CAPACITY` set to see which
cache holds what. Needs a torch build with oneDNN (x86 CPUs).
"""

import argparse
import ctypes
import json
import time

import torch

from spacy_earlyexit.core.precision import cpu_name
from spacy_earlyexit.core.shapes import ladder_sizes


def resident_mb() -> float:
    """VmRSS after handing glibc's free pages back, in MiB."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--limit", type=int, default=16384, help="the largest row count (ladder sizes up to it)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1536, 384, generator=generator).to(dtype)
    bias = torch.randn(1536, generator=generator).to(dtype)
    sizes = ladder_sizes(args.limit)
    rows = []
    with torch.inference_mode():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1024)
        x = torch.randn(sizes[-1], 384, generator=generator).to(dtype)
        start = resident_mb()
        for k in range(args.passes):
            began = time.perf_counter()
            for n in sizes:
                torch.ops.mkldnn._linear_pointwise(x[:n], packed, bias, "gelu", [], "none")
            rows.append(
                {
                    "pass": k + 1,
                    "held_mb": round(resident_mb() - start, 1),
                    "seconds": round(time.perf_counter() - began, 3),
                }
            )
            print(f"pass {k + 1}: {len(sizes)} row counts, memory held {rows[-1]['held_mb']} MiB", flush=True)
    result = {
        "cpu": cpu_name(),
        "dtype": args.dtype,
        "row_counts": len(sizes),
        "largest": sizes[-1],
        "passes": rows,
        "held_mb_per_row_count": round(rows[0]["held_mb"] / len(sizes), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
