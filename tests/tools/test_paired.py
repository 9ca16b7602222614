"""benchmarks/paired.py: two pipelines compared on the same tokens."""

import math

import pytest
import spacy
from spacy.tokens import Doc

from benchmarks import paired

VOCAB = spacy.blank("en").vocab


def _tagged(tags, ents=()):
    doc = Doc(VOCAB, words=[f"w{i}" for i in range(len(tags))], tags=list(tags))
    doc.ents = [doc.char_span(doc[s].idx, doc[e - 1].idx + len(doc[e - 1]), label=label) for s, e, label in ents]
    return doc


def test_mcnemar_exact_values():
    assert paired.mcnemar_p(0, 0) == 1.0
    assert paired.mcnemar_p(5, 5) == 1.0
    # all 6 discordant pairs on one side: 2 * (1/2)^6
    assert paired.mcnemar_p(6, 0) == pytest.approx(2 / 64)
    assert paired.mcnemar_p(0, 6) == paired.mcnemar_p(6, 0)
    # 8 against 2: 2 * P(X <= 2), X ~ Bin(10, 1/2)
    assert paired.mcnemar_p(8, 2) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 1024)


def test_tag_comparison_counts_discordant_tokens():
    gold = [_tagged("ABCD"), _tagged("ABAB")]
    a = [_tagged("ABCD"), _tagged("ABAA")]  # 7 of 8 right
    b = [_tagged("AACD"), _tagged("BBAA")]  # 5 of 8 right
    result = paired.compare("tag", gold, a, b, resamples=500)
    assert result["score_a"] == pytest.approx(7 / 8)
    assert result["score_b"] == pytest.approx(5 / 8)
    assert result["difference"] == pytest.approx(2 / 8)
    assert (result["a_right_b_wrong"], result["b_right_a_wrong"]) == (2, 0)
    assert result["mcnemar_p"] == pytest.approx(paired.mcnemar_p(2, 0))
    low, high = result["bootstrap_95"]
    assert low <= result["difference"] <= high
    assert result["n_tokens"] == 8


def test_identical_pipelines_differ_by_nothing():
    gold = [_tagged("ABCD"), _tagged("ABAB")]
    pred = [_tagged("ABCC"), _tagged("ABAB")]
    result = paired.compare("tag", gold, pred, pred, resamples=200)
    assert result["difference"] == 0.0
    assert result["bootstrap_95"] == [0.0, 0.0]
    assert result["mcnemar_p"] == 1.0


def test_ner_comparison_uses_exact_labelled_spans():
    gold = [_tagged("AAAA", ents=[(0, 2, "PER"), (3, 4, "LOC")])]
    a = [_tagged("AAAA", ents=[(0, 2, "PER"), (3, 4, "LOC")])]
    b = [_tagged("AAAA", ents=[(0, 1, "PER"), (3, 4, "ORG")])]  # wrong boundary, wrong label
    result = paired.compare("ner", gold, a, b, resamples=100)
    assert result["score_a"] == pytest.approx(1.0)
    assert result["score_b"] == pytest.approx(0.0)
    assert "mcnemar_p" not in result
