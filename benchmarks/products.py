"""What this CPU's matrix units give: one [2048 x 384] x [384 x 1536] product
in fp32, bf16 (F.linear and oneDNN prepacked) and torch's dynamic int8, and
one attention call in fp32 and bf16, on one thread (medians of 5 rounds).

    python benchmarks/products.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

from spacy_earlyexit.core.precision import native_bf16
from spacy_earlyexit.core.projections import Projection


def timed(fn, n=10):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    torch.set_num_threads(1)
    x, w, b = torch.randn(2048, 384), torch.randn(1536, 384), torch.randn(1536)
    flops = 2 * 2048 * 384 * 1536
    products = {
        "fp32": (Projection(w, b, True, "fp32"), x),
        "bf16": (Projection(w, b, True, "bf16"), x.bfloat16()),
        "int8": (Projection(w, b, True, "int8"), x),
    }
    B, H, T, dh = 64, 12, 60, 32
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    mask[..., 50:] = False
    qkv = {dt: [torch.randn(B, H, T, dh).to(dt) for _ in range(3)] for dt in (torch.float32, torch.bfloat16)}
    rounds = {name: [] for name in [*products, "attention fp32", "attention bf16"]}
    with torch.inference_mode():
        for _ in range(5):
            for name, (projection, inputs) in products.items():
                rounds[name].append(flops / timed(lambda p=projection, i=inputs: p(i)) / 1e9)
            for dt, label in ((torch.float32, "attention fp32"), (torch.bfloat16, "attention bf16")):
                q, k, v = qkv[dt]
                call = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
                rounds[label].append(1000 * timed(call))
    print(f"native bf16: {native_bf16()}; torch {torch.__version__}")
    for name, values in rounds.items():
        unit = "ms" if name.startswith("attention") else "GFLOP/s"
        print(f"{name}: {statistics.median(values):,.1f} {unit}")


if __name__ == "__main__":
    main()
