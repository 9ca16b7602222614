"""Shape buckets: inference products and attention meet a bounded set of
shapes, whatever the batches, and labels and exits do not depend on them."""

import pytest
import torch

from spacy_earlyexit.core.encoder import MultiExitEncoder
from spacy_earlyexit.core.policies import FixedDepth, FullDepth, SentenceExit, TokenWindowExit
from spacy_earlyexit.core.precision import RESOLVED
from spacy_earlyexit.core.shapes import (
    ROW_CHUNK,
    ROW_REMAINDER,
    ShapeCounter,
    bucket_length,
    bucket_rows,
    by_row_chunks,
    ladder_sizes,
    pad_index,
    pad_rows,
)

from ..conftest import random_batch, tiny_backbone

POLICIES = [
    FullDepth(),
    FixedDepth(2),
    TokenWindowExit(0.4, window=1),
    TokenWindowExit(0.9, window=0),
    SentenceExit(0.5),
]


def test_ladders_round_up_within_their_bounds():
    for n in range(1, 20_000):
        rows, length = bucket_rows(n), bucket_length(n)
        assert rows >= n and length >= n
        assert rows - n <= 15 if n <= 256 else (rows - n) / n <= 1 / 16
        assert length - n <= 7 if n <= 64 else (length - n) / n <= 1 / 4
        assert bucket_rows(rows) == rows and bucket_length(length) == length  # sizes are fixed points
    assert bucket_rows(0) == bucket_length(0) == 0
    assert ladder_sizes(256) == list(range(16, 257, 16))
    # the number of sizes grows with the logarithm of the largest, not with it
    assert len(ladder_sizes(64 * 512)) < 140 and len(ladder_sizes(512, rows=False)) == 20


def test_rows_past_the_chunk_are_whole_chunks_and_a_rounded_remainder():
    assert ROW_CHUNK in ladder_sizes(ROW_CHUNK)  # a chunk is itself a size of the ladder
    small = set(ladder_sizes(ROW_CHUNK))
    remainders = set()
    for n in range(ROW_CHUNK + 1, 8 * ROW_CHUNK, 7):
        rows = bucket_rows(n)
        whole, rest = divmod(rows, ROW_CHUNK)
        assert rows >= n and rows - n < ROW_REMAINDER and bucket_rows(rows) == rows
        assert whole >= n // ROW_CHUNK and (rest == 0 or rest in small)
        remainders.add(rest)
    # past the chunk, few remainders: a large batch meets one of them per product
    assert len(remainders) <= ROW_CHUNK // ROW_REMAINDER
    assert bucket_rows(3 * ROW_CHUNK) == 3 * ROW_CHUNK
    assert bucket_rows(3 * ROW_CHUNK + 1) == 3 * ROW_CHUNK + ROW_REMAINDER


def test_row_chunks_give_the_whole_product_and_bound_the_rows_each_call_sees():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(8, 5)
    x, y = torch.randn(200, 8, generator=gen), torch.randn(200, 5, generator=gen)
    seen = []

    def product(a, b):
        seen.append(a.shape[0])
        return linear(a) + b

    with torch.no_grad():
        out = by_row_chunks(product, x, y, chunk=64)
        assert torch.allclose(out, linear(x) + y, atol=1e-6)
        assert seen == [64, 64, 64, 8]
        seen.clear()
        by_row_chunks(product, x[:64], y[:64], chunk=64)
        by_row_chunks(product, x, y, chunk=0)  # 0: never chunked
    assert seen == [64, 200]
    assert bucket_rows(200, chunk=64) == 4 * 64 and bucket_rows(200, chunk=0) == 208


def test_pad_rows_and_pad_index():
    x = torch.arange(6.0).view(3, 2)
    assert pad_rows(x, 3) is x
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], x) and not padded[3:].any()
    index = torch.tensor([4, 2])
    assert pad_index(index, 2) is index
    assert pad_index(index, 5).tolist() == [4, 2, 4, 4, 4]


def random_batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        size = int(torch.randint(1, 9, (1,), generator=gen))
        lengths = torch.randint(1, 37, (size,), generator=gen).tolist()
        yield random_batch(lengths, seed=seed * 1000 + i)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return MultiExitEncoder(tiny_backbone("bert"), 5, case_classes=0).eval()


def test_inference_shapes_come_from_the_ladders(encoder):
    """Whatever the batches and the policy, every product runs on a row count
    of the ladder and attention on lengths of the ladder: the number of
    distinct shapes is bounded independent of how many batches run."""
    encoder.shape_buckets = encoder.length_buckets = True
    rows_ok, lengths_ok = set(ladder_sizes(64 * 64)), set(ladder_sizes(64, rows=False))
    with ShapeCounter() as counter:
        for batch, policy in zip(random_batches(60), POLICIES * 12):
            encoder.predict(batch, policy)
        with torch.no_grad():  # calibration traces every exit this way
            encoder(next(random_batches(1, seed=3)))
    assert counter.shapes, "no kernels seen"
    for op, shapes in counter.shapes.items():
        for args in shapes:
            if "attention" in op:
                q_len, k_len, _ = args[0]
                assert q_len in lengths_ok and k_len in lengths_ok, (op, args)
            elif args[0][0] != 5:  # the one-time check that oneDNN fuses (a 5-row product)
                assert args[0][0] in rows_ok, (op, args)


def test_batches_past_the_chunk_meet_only_row_counts_up_to_it(encoder):
    """Products over more rows than the chunk run chunk by chunk: the row
    counts met are the ladder's up to the chunk, and labels and exits are
    those of products over all rows at once."""
    encoder.shape_buckets, encoder.length_buckets, encoder.row_chunk = True, None, 64
    rows_ok = set(ladder_sizes(64))
    largest = 0
    for batch, policy in zip(random_batches(10, seed=4), POLICIES * 2):
        largest = max(largest, int(batch.piece_mask.numel()))
        with ShapeCounter() as counter:
            on = encoder.predict(batch, policy)
        for op, met in counter.shapes.items():
            if "attention" not in op:
                assert all(args[0][0] in rows_ok for args in met), (op, met)
        encoder.shape_buckets = False
        off = encoder.predict(batch, policy)
        encoder.shape_buckets = True
        assert torch.equal(off.labels, on.labels) and torch.equal(off.exit_layers, on.exit_layers)
        assert torch.allclose(off.probs, on.probs, atol=1e-5)
    encoder.row_chunk = ROW_CHUNK
    assert largest > 2 * 64  # the batches did need chunks


def test_int8_products_run_whole(encoder):
    """int8 products quantize each call's input with one scale: chunks would
    change their results, so the chunk does not apply to them."""
    encoder.shape_buckets, encoder.length_buckets = True, None
    batch = next(random_batches(1, seed=5))
    assert batch.piece_mask.numel() > 64
    outs = []
    for chunk in (64, 0):
        encoder.row_chunk = chunk
        outs.append(encoder.predict(batch, TokenWindowExit(0.4, window=1), precision="int8"))
    encoder.row_chunk = ROW_CHUNK
    assert torch.equal(outs[0].probs, outs[1].probs) and torch.equal(outs[0].exit_layers, outs[1].exit_layers)


def test_fewer_distinct_shapes_with_buckets(encoder):
    counts = {}
    encoder.length_buckets = True
    for buckets in (False, True):
        encoder.shape_buckets = buckets
        with ShapeCounter() as counter:
            for batch, policy in zip(random_batches(40, seed=1), POLICIES * 8):
                encoder.predict(batch, policy)
        counts[buckets] = counter.distinct()
    encoder.shape_buckets, encoder.length_buckets = True, None
    assert counts[True] < counts[False] / 2, counts


@pytest.mark.parametrize("lengths", [True, None], ids=["lengths", "rows"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: type(p).__name__)
def test_labels_exits_and_cost_do_not_depend_on_buckets(encoder, policy, lengths):
    encoder.length_buckets = lengths
    for batch in random_batches(6, seed=2):
        outs = []
        for buckets in (False, True):
            encoder.shape_buckets = buckets
            outs.append(encoder.predict(batch, policy))
        off, on = outs
        assert torch.equal(off.labels, on.labels) and torch.equal(off.exit_layers, on.exit_layers)
        assert torch.equal(off.cost, on.cost) and torch.equal(off.full_cost, on.full_cost)
        assert torch.allclose(off.probs, on.probs, atol=1e-5)
    encoder.shape_buckets, encoder.length_buckets = True, None


def test_lengths_are_rounded_where_attention_makes_kernels_per_length(encoder, monkeypatch):
    """By default only bf16 on an AMX CPU pads attention's lengths; rows are
    rounded at every precision; the switches override both."""
    encoder.shape_buckets, encoder.length_buckets = True, None
    for flag, expected in (("1", {"bf16": True, "fp32": False, "int8": False}), ("0", dict.fromkeys(RESOLVED, False))):
        monkeypatch.setenv("SPACY_EARLYEXIT_AMX", flag)
        assert {p: encoder._rounds_lengths(p) for p in RESOLVED} == expected
    encoder.length_buckets = True
    assert encoder._rounds_lengths("fp32")
    encoder.shape_buckets = False
    assert not encoder._rounds_lengths("bf16")
    encoder.shape_buckets, encoder.length_buckets = True, None


def test_a_sequence_is_labelled_alike_alone_and_in_any_batch(encoder):
    encoder.shape_buckets = encoder.length_buckets = True
    batch = random_batch([5, 17, 9, 30])
    together = encoder.predict(batch, TokenWindowExit(0.4, window=1))
    for row, n in enumerate([5, 17, 9, 30]):
        single = batch.select_rows(torch.tensor([row]))
        alone = encoder.predict(single, TokenWindowExit(0.4, window=1))
        assert torch.equal(alone.labels[0, :n], together.labels[row, :n])
        assert torch.equal(alone.exit_layers[0, :n], together.exit_layers[row, :n])
    encoder.length_buckets = None


def test_padded_batch_gives_the_same_words():
    batch = random_batch([3, 6])
    padded = batch.padded_to(16)
    assert padded.input_ids.shape == (2, 16) and padded.piece_mask[:, 8:].sum() == 0
    assert (padded.piece_words[:, 8:] == -1).all() and torch.equal(padded.word_starts, batch.word_starts)
    assert batch.padded_to(4) is batch
