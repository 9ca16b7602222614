"""Constrained BIO decoding: valid sequences and exact Viterbi (the NER
component's use of it: tests/pipeline/test_ner_decoding.py; calibration's:
tests/tools/test_calibrate.py)."""

import itertools

import numpy
import pytest

from spacy_earlyexit.core import decoding
from spacy_earlyexit.core.decoding import bio_transitions, viterbi

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _valid(ids, labels=LABELS) -> bool:
    previous = "O"
    for i in ids:
        prefix, _, kind = labels[i].partition("-")
        if prefix == "I" and previous not in (f"B-{kind}", f"I-{kind}"):
            return False
        previous = labels[i]
    return True


def _brute_force(probs: numpy.ndarray) -> numpy.ndarray:
    logp = numpy.log(numpy.maximum(probs, 1e-12))
    best, best_score = None, -numpy.inf
    for seq in itertools.product(range(len(LABELS)), repeat=len(probs)):
        if not _valid(seq):
            continue
        score = sum(logp[t, j] for t, j in enumerate(seq))
        if score > best_score:
            best, best_score = seq, score
    return numpy.array(best)


def test_transitions_allow_inside_only_after_the_same_type():
    start, step = bio_transitions(LABELS)
    assert start.tolist() == [True, True, False, True, False]
    assert step[LABELS.index("B-PER"), LABELS.index("I-PER")]
    assert step[LABELS.index("I-PER"), LABELS.index("I-PER")]
    assert not step[LABELS.index("O"), LABELS.index("I-PER")]
    assert not step[LABELS.index("B-LOC"), LABELS.index("I-PER")]
    assert step[:, LABELS.index("O")].all() and step[:, LABELS.index("B-LOC")].all()


def test_viterbi_is_exact_and_valid_for_docs_of_any_length():
    rng = numpy.random.default_rng(0)
    docs = [rng.dirichlet(numpy.full(len(LABELS), 0.3), size=n) for n in (4, 1, 0, 3, 5, 2)]
    start, step = bio_transitions(LABELS)
    decoded = viterbi(docs, start, step)
    assert [len(d) for d in decoded] == [len(d) for d in docs]
    for probs, ids in zip(docs, decoded):
        assert _valid(ids)
        if len(probs):
            assert ids.tolist() == _brute_force(probs).tolist()
    # decoded alone or among others: the same
    assert [d.tolist() for d in viterbi(docs[:1], start, step)] == [decoded[0].tolist()]


def test_viterbi_keeps_a_valid_argmax():
    probs = numpy.array([[0.1, 0.8, 0.05, 0.03, 0.02], [0.1, 0.1, 0.7, 0.05, 0.05], [0.9, 0.02, 0.04, 0.02, 0.02]])
    start, step = bio_transitions(LABELS)
    assert viterbi([probs], start, step)[0].tolist() == probs.argmax(1).tolist()


def _whole_doc_viterbi(probs: numpy.ndarray) -> numpy.ndarray:
    start, step = bio_transitions(LABELS)
    return decoding._decode_all([probs], [start], decoding._bio_shape(step))[0]


@pytest.mark.parametrize("margin", [0, 1, 4])
def test_region_decoding_equals_whole_doc_viterbi(monkeypatch, margin):
    """Decoding only around forbidden moves gives the whole-doc optimum, for
    docs from nearly certain (few forbidden moves) to diffuse (many, and
    regions that do not join their neighbours, decoded whole)."""
    monkeypatch.setattr(decoding, "_REGION_MARGIN", margin)
    rng = numpy.random.default_rng(margin)
    start, step = bio_transitions(LABELS)
    docs = [
        rng.dirichlet(numpy.full(len(LABELS), alpha), size=n)
        for alpha in (0.05, 0.3, 1.0, 3.0)
        for n in rng.integers(1, 80, size=60)
    ]
    decoded = viterbi(docs, start, step)
    changed = 0
    for probs, ids in zip(docs, decoded):
        assert _valid(ids)
        assert ids.tolist() == _whole_doc_viterbi(probs).tolist()
        changed += ids.tolist() != probs.argmax(1).tolist()
    assert changed > 50  # the check covers docs that decoding changes


def test_a_region_that_does_not_join_its_neighbours_falls_back_to_the_whole_doc():
    # argmax: O I-LOC I-LOC I-LOC I-LOC I-LOC I-LOC: forbidden only at the
    # start; cheapest inside [0, 6) is to turn the weak I-LOCs into O, which
    # leaves I-LOC after O at the region's right edge
    o, b_loc, i_loc = LABELS.index("O"), LABELS.index("B-LOC"), LABELS.index("I-LOC")
    probs = numpy.full((7, len(LABELS)), 0.05)
    probs[0, [o, b_loc]] = [0.75, 0.05]
    probs[1:, [o, i_loc]] = [0.38, 0.42]
    probs[:, b_loc] = [0.05, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02]
    probs /= probs.sum(1, keepdims=True)
    start, step = bio_transitions(LABELS)
    region = decoding._decode_all([probs[:6]], [start], decoding._bio_shape(step))[0]
    assert not step[region[-1], i_loc]  # the region alone would not join
    assert viterbi([probs], start, step)[0].tolist() == _brute_force(probs).tolist()
