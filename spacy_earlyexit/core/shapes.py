"""Shapes the CPU kernels can reuse: the row counts of the layer products and
the sequence lengths of attention, rounded up to a bounded ladder of sizes.

Plain PyTorch, no spaCy. oneDNN (torch's CPU kernels: the fused fp32 and
bf16 products, AMX's brgemm micro-kernels under bf16 products and CPU flash
attention) makes and caches a kernel for every input shape it meets, and
torch keeps its own cache of oneDNN computations per shape. Early exit makes
shapes that never repeat: every count of still-active pieces, every batch
shortened when sequences finish. Unbounded, those caches either miss (a new
kernel for nearly every product) or grow the resident memory without bound.

Rounded up to the sizes below, a pass over any corpus at any operating point
meets a bounded set of row counts and sequence lengths, whatever the corpus
size; the padding is at most a sixteenth of the rows past 256 rows (at most 15
rows below that) and at most a quarter of a sequence's pieces (at most 7 below
64), and it is masked (attention) or dropped (rows), so labels and exits do
not depend on it. Products over more than ROW_CHUNK rows run in chunks of
ROW_CHUNK rows and one rounded remainder, so the row counts kernels meet are
the ladder's sizes up to ROW_CHUNK (past it, 16 of them), however large a
batch: the large sizes, which few batches reach, would otherwise each add
kernels (and their cached memory) late in a long run. (The encoder runs
int8 products whole: they quantize each call's input with one scale, so
chunks would change results.)
Lengths are rounded only where attention makes kernels per length (bf16 on
AMX CPUs; `MultiExitEncoder.length_buckets`).
`SPACY_EARLYEXIT_SHAPE_BUCKETS=0` turns all of it off (for measuring what it
does).
"""

import os
from typing import Callable, List, Optional

import torch
from torch import Tensor

#: products' row counts: multiples of ROW_GRANULE up to ROW_GRANULE * ROW_STEPS,
#: then ROW_STEPS sizes per doubling (AMX tiles hold 16 rows)
ROW_GRANULE, ROW_STEPS = 16, 16
#: attention's sequence lengths: multiples of LENGTH_GRANULE up to 64, then
#: LENGTH_STEPS sizes per doubling
LENGTH_GRANULE, LENGTH_STEPS = 8, 4
#: products over more rows than this run in chunks of this many (a size of the
#: row ladder); each distinct row count costs oneDNN's caches about 0.6 MiB
#: per product kind (docs/results.md), so fewer, always-met sizes keep a long
#: run's memory flat
ROW_CHUNK = 1024
#: past ROW_CHUNK, the rows after the whole chunks are rounded up to a multiple
#: of this (16 sizes, all on the ladder): a large batch meets one remainder per
#: product, and 16 sizes come within a few dozen batches where the ladder's 48
#: would take hundreds (full depth meets few other row counts)
ROW_REMAINDER = 64


def buckets_enabled() -> bool:
    """Whether inference rounds its shapes up (`SPACY_EARLYEXIT_SHAPE_BUCKETS`,
    on unless set to 0)."""
    return os.environ.get("SPACY_EARLYEXIT_SHAPE_BUCKETS", "1") != "0"


def _ladder(n: int, granule: int, steps: int) -> int:
    """`n` rounded up to a multiple of `granule` while n <= granule * steps,
    past that to one of `steps` evenly spaced sizes per doubling."""
    if n <= granule * steps:
        return max(granule, -(-n // granule) * granule)
    step = 1 << ((n - 1).bit_length() - 1 - (steps.bit_length() - 1))  # (2 ** floor(log2(n-1))) / steps
    return -(-n // step) * step


def bucket_rows(n: int, chunk: Optional[int] = None) -> int:
    """The row count a product over `n` rows runs at (n >= 0; 0 stays 0):
    past `chunk` rows (ROW_CHUNK; 0: none), whole chunks and the remainder
    rounded up to a multiple of ROW_REMAINDER."""
    if n <= 0:
        return 0
    n, chunk = int(n), ROW_CHUNK if chunk is None else chunk
    if not chunk or n <= chunk:
        return _ladder(n, ROW_GRANULE, ROW_STEPS)
    whole, rest = divmod(n, chunk)
    granule = min(ROW_REMAINDER, chunk)
    return whole * chunk + -(-rest // granule) * granule


def by_row_chunks(product: Callable[..., Tensor], *inputs: Tensor, chunk: Optional[int] = None) -> Tensor:
    """`product(*inputs)` over the inputs' rows (all the same count), in
    chunks of `chunk` rows (ROW_CHUNK; 0: none) when there are more: row-wise
    products give the same rows, and kernels meet one shape for every whole
    chunk."""
    n, chunk = inputs[0].shape[0], ROW_CHUNK if chunk is None else chunk
    if not chunk or n <= chunk:
        return product(*inputs)
    return torch.cat([product(*(x[start : start + chunk] for x in inputs)) for start in range(0, n, chunk)])


def bucket_length(n: int) -> int:
    """The sequence length (pieces, queries) attention runs at (0 stays 0)."""
    return 0 if n <= 0 else _ladder(int(n), LENGTH_GRANULE, LENGTH_STEPS)


def ladder_sizes(limit: int, rows: bool = True) -> List[int]:
    """Every size of the row ladder (or `bucket_length`) up to the one that
    holds `limit`: the row counts products meet are those up to ROW_CHUNK."""
    round_up = (lambda n: _ladder(n, ROW_GRANULE, ROW_STEPS)) if rows else bucket_length
    sizes, n = [], 1
    while n <= limit:
        size = round_up(n)
        sizes.append(size)
        n = size + 1
    return sizes


def pad_rows(x: Tensor, n: int) -> Tensor:
    """`x` [r, k] with rows appended up to `n` >= r: `x` itself when r == n,
    else a copy whose extra rows are zeros."""
    r = x.shape[0]
    if n == r:
        return x
    out = x.new_empty(n, *x.shape[1:])
    out[:r] = x
    out[r:] = 0
    return out


def pad_index(index: Tensor, n: int) -> Tensor:
    """`index` [r] (r >= 1) extended to `n` entries by repeating its first:
    gathering with it reads real rows twice instead of copying a padded
    tensor (the repeated rows' results are dropped)."""
    r = index.shape[0]
    if n == r:
        return index
    return torch.cat([index, index[:1].expand(n - r)])


#: the kernels whose shapes matter: products (oneDNN's fused and plain ones,
#: BLAS, int8) and attention, by the name torch dispatches them under
KERNEL_OPS = (
    "mkldnn._linear_pointwise",
    "aten.linear",
    "aten.addmm",
    "aten.mm",
    "aten.bmm",
    "aten.baddbmm",
    "quantized.linear_dynamic",
    "aten.scaled_dot_product_attention",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_flash_attention",
)


class ShapeCounter:
    """Record the distinct shapes that product and attention kernels meet
    while active (`with ShapeCounter() as counter: ...`), on any device:
    `counter.shapes` maps each kernel (op and overload) to the set of its
    tensor arguments' shapes (for attention: query length, key length and
    head size, the sizes its kernels are made for). A TorchDispatchMode, so it sees every call
    below Python, the layer loop's and Hugging Face's alike."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)  # e.g. "aten.linear.default"
                if name.rsplit(".", 1)[0] in KERNEL_OPS:
                    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
                    if "attention" in name:  # batch and heads are the kernel's outer loops
                        shapes = [(shapes[0][-2], shapes[1][-2], shapes[0][-1])]  # queries, keys, head size
                    counter.shapes.setdefault(name, set()).add(tuple(shapes))
                return func(*args, **(kwargs or {}))

        self.shapes: dict = {}
        self._mode = _Mode()

    def __enter__(self) -> "ShapeCounter":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def distinct(self) -> int:
        """How many distinct (kernel, shapes) pairs were met."""
        return sum(len(shapes) for shapes in self.shapes.values())

    def by_kind(self) -> dict:
        """Distinct shapes per kind: `products` and `attention`."""
        attention = sum(len(v) for k, v in self.shapes.items() if "attention" in k)
        return {"products": self.distinct() - attention, "attention": attention}
