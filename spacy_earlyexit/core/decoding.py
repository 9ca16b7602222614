"""Constrained decoding of per-token label distributions (BIO tags).

Each token leaves the encoder with its own distribution over BIO tags; taking
the argmax per token can produce sequences no entity annotation has (an
``I-PER`` after ``O`` or after ``B-LOC``). Viterbi decoding under the BIO
transition constraints picks the most probable valid sequence instead. It
changes no exit decision; only short regions around the argmax's forbidden
moves are decoded, so it costs well under a microsecond per token.
"""

from typing import List, Sequence

import numpy

#: log-probability floor, so that a zero probability stays finite
_LOG_FLOOR = 1e-12
#: docs decoded together, at most this many padded positions per group
_GROUP_CELLS = 1 << 16


def bio_transitions(labels: Sequence[str]) -> tuple:
    """Allowed moves between BIO tags: (start [C] bool, step [C, C] bool with
    step[i, j] true when tag j may follow tag i). ``I-X`` may only follow
    ``B-X`` or ``I-X`` and may not start a doc; everything else is free."""
    n = len(labels)
    start = numpy.ones(n, dtype=bool)
    step = numpy.ones((n, n), dtype=bool)
    for j, tag in enumerate(labels):
        prefix, _, kind = tag.partition("-")
        if prefix != "I":
            continue
        start[j] = False
        for i, prev in enumerate(labels):
            prev_prefix, _, prev_kind = prev.partition("-")
            step[i, j] = prev_prefix in ("B", "I") and prev_kind == kind
    return start, step


def viterbi(probs: List[numpy.ndarray], start: numpy.ndarray, step: numpy.ndarray) -> List[numpy.ndarray]:
    """The most probable allowed label sequence of each doc ([n_tokens, C]
    probabilities each).

    Most of a doc's argmax is already allowed, and an allowed argmax is the
    answer, so only short regions around each forbidden move are decoded
    (with a free first and last tag), docs of similar length together. A
    region's result is kept when it joins its argmax neighbours by allowed
    moves: the pieces then maximise a relaxation of the whole problem and
    form an allowed sequence, so they are the exact optimum. A doc where some
    region does not join is decoded whole.

    `step` must have BIO's shape: every tag may follow any tag, except tags
    that may only follow themselves and one other tag (``I-X``: ``B-X``)."""
    shape = _bio_shape(step)
    results: List[numpy.ndarray] = [numpy.zeros(0, dtype="int64")] * len(probs)
    regions: List[tuple] = []  # (doc, lo, hi)
    for i, doc_probs in enumerate(probs):
        if not len(doc_probs):
            continue
        best = numpy.asarray(doc_probs).argmax(1).astype("int64")
        results[i] = best
        forbidden = numpy.flatnonzero(~step[best[:-1], best[1:]]) + 1  # t: the move t-1 -> t
        if not start[best[0]]:
            forbidden = numpy.concatenate([[0], forbidden])
        regions.extend((i, lo, hi) for lo, hi in _regions(forbidden, len(best)))
    free_start = numpy.ones_like(start)
    paths = _decode_all(
        [probs[i][lo:hi] for i, lo, hi in regions], [start if lo == 0 else free_start for _, lo, _ in regions], shape
    )
    redo = set()
    for (i, lo, hi), path in zip(regions, paths):
        best = results[i]  # positions outside every region still hold the argmax
        joins = (lo == 0 or step[best[lo - 1], path[0]]) and (hi == len(best) or step[path[-1], best[hi]])
        if not joins:
            redo.add(i)
    for (i, lo, hi), path in zip(regions, paths):
        if i not in redo:
            results[i][lo:hi] = path
    redone = sorted(redo)
    for i, path in zip(redone, _decode_all([probs[i] for i in redone], [start] * len(redone), shape)):
        results[i] = path
    return results


#: tokens of argmax context decoded on each side of a forbidden move
_REGION_MARGIN = 4


def _regions(forbidden: numpy.ndarray, n: int) -> List[tuple]:
    """[lo, hi) spans around each forbidden move (t-1 -> t), merged so that
    at least one argmax token separates two spans."""
    spans: List[list] = []
    for t in forbidden.tolist():
        lo, hi = max(0, t - 1 - _REGION_MARGIN), min(n, t + 1 + _REGION_MARGIN)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    return [tuple(span) for span in spans]


def _decode_all(probs: List[numpy.ndarray], starts: List[numpy.ndarray], shape: tuple) -> List[numpy.ndarray]:
    """Viterbi over every sequence (none empty), each with its own allowed
    first tags, sequences of similar length decoded together."""
    results: List[numpy.ndarray] = [numpy.zeros(0, dtype="int64")] * len(probs)
    order = sorted(range(len(probs)), key=lambda i: len(probs[i]))
    group: List[int] = []
    for i in order:
        if group and (len(group) + 1) * len(probs[i]) > _GROUP_CELLS:
            _decode_group(probs, starts, group, shape, results)
            group = []
        group.append(i)
    if group:
        _decode_group(probs, starts, group, shape, results)
    return results


def _bio_shape(step: numpy.ndarray) -> tuple:
    """(free tags, restricted tags, the other predecessor of each restricted tag)."""
    C = step.shape[0]
    free, inside, begin = [], [], []
    for j in range(C):
        allowed = numpy.nonzero(step[:, j])[0]
        if len(allowed) == C:
            free.append(j)
        elif len(allowed) == 2 and j in allowed:
            inside.append(j)
            begin.append(int(allowed[allowed != j][0]))
        else:
            raise ValueError(f"Transitions into tag {j} do not have the BIO shape.")
    return numpy.array(free, dtype="int64"), numpy.array(inside, dtype="int64"), numpy.array(begin, dtype="int64")


def _decode_group(probs, starts, group, shape, results) -> None:
    """Sequences of `group`, in ascending length: those still running at step
    t are a suffix of the group, so each step only touches those rows."""
    free, inside, begin = shape
    lengths = numpy.array([len(probs[i]) for i in group])
    D, T, C = len(group), int(lengths[-1]), len(starts[group[0]])
    emit = numpy.zeros((D, T, C))
    for row, i in enumerate(group):
        emit[row, : lengths[row]] = numpy.log(numpy.maximum(probs[i], _LOG_FLOOR))
    back = numpy.zeros((D, T, C), dtype="int64")
    best = emit[:, 0] + numpy.where(numpy.stack([starts[i] for i in group]), 0.0, -numpy.inf)
    first_running = numpy.searchsorted(lengths, numpy.arange(T), side="right")  # rows with length > t
    for t in range(1, T):
        k = first_running[t]
        run = best[k:]
        top = run.argmax(1)
        top_score = run[numpy.arange(len(run)), top]
        stay = run[:, inside] >= run[:, begin]
        score = numpy.empty_like(run)
        score[:, free] = top_score[:, None]
        score[:, inside] = numpy.where(stay, run[:, inside], run[:, begin])
        best[k:] = score + emit[k:, t]
        back[k:, t, free] = top[:, None]
        back[k:, t, inside] = numpy.where(stay, inside, begin)
    path = numpy.zeros((D, T), dtype="int64")
    path[numpy.arange(D), lengths - 1] = best.argmax(1)
    for t in range(T - 1, 0, -1):
        k = first_running[t]
        path[k:, t - 1] = back[numpy.arange(k, D), t, path[k:, t]]
    for row, i in enumerate(group):
        results[i] = path[row, : lengths[row]]
