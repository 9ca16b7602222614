"""Cutting long docs into wordpiece windows: coverage, budget, context at cuts."""

import numpy
import pytest
import spacy

from spacy_earlyexit.pipeline.wordpieces import _windows, plan_sequences

from ..conftest import WORDS, model_config


@pytest.mark.parametrize("context", [0, 1, 4, 16, 100])
@pytest.mark.parametrize("seed", range(20))
def test_windows_cover_every_word_within_the_budget(seed, context):
    rng = numpy.random.default_rng(seed)
    budget = int(rng.integers(3, 40))
    sizes = rng.integers(1, budget + 1, size=int(rng.integers(1, 120)))
    windows = _windows(sizes, budget, context)
    covered = numpy.zeros(len(sizes), dtype=bool)
    for (start, end), (next_start, next_end) in zip(windows, windows[1:] + [(len(sizes), len(sizes) + 1)]):
        assert 0 <= start < end <= len(sizes)
        assert end - start == 1 or sizes[start:end].sum() <= budget
        assert next_start <= end and next_end > end  # no gap, always progress
        covered[start:end] = True
    assert covered.all()
    if context == 0:  # disjoint cuts, as before overlapping windows existed
        assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))


def _context_of_owners(plan, doc_index):
    """Pieces before and after each token in the sequence that labels it."""
    before, after = [], []
    for token, (seq_index, word) in enumerate(zip(plan.owner_sequence[doc_index], plan.owner_word[doc_index])):
        sequence = plan.sequences[seq_index]
        assert sequence.tokens[word] == token
        pieces = numpy.asarray(sequence.piece_words)
        mine = numpy.flatnonzero(pieces == word)
        before.append(int(((pieces >= 0) & (numpy.arange(len(pieces)) < mine[0])).sum()))
        after.append(int(((pieces >= 0) & (numpy.arange(len(pieces)) > mine[-1])).sum()))
    return numpy.array(before), numpy.array(after)


def test_every_token_of_a_long_doc_is_labelled_with_context_on_both_sides(trained_ner):
    tokenizer = trained_ner.get_pipe("earlyexit_ner").tokenizer
    rng = numpy.random.default_rng(0)
    words = [WORDS[i] if i < len(WORDS) else "x" * (i - len(WORDS) + 2) for i in rng.integers(0, len(WORDS) + 4, 300)]
    doc = spacy.tokens.Doc(trained_ner.vocab, words=words)
    per_word = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]
    pieces_before = numpy.cumsum([0] + per_word)[:-1]
    pieces_after = sum(per_word) - pieces_before - numpy.array(per_word)
    context = 8
    plan = plan_sequences([doc], tokenizer, 40, cut_context=context)
    assert all(len(sequence) <= 40 for sequence in plan.sequences)
    before, after = _context_of_owners(plan, 0)
    assert (before >= numpy.minimum(context, pieces_before)).all()
    assert (after >= numpy.minimum(context, pieces_after)).all()
    # disjoint cuts leave tokens next to a cut without context on one side
    disjoint = plan_sequences([doc], tokenizer, 40)
    before, after = _context_of_owners(disjoint, 0)
    assert ((before == 0) & (pieces_before > 0)).any() and ((after == 0) & (pieces_after > 0)).any()
    assert sum(len(s) for s in plan.sequences) > sum(len(s) for s in disjoint.sequences)


def test_short_docs_are_one_window_whatever_the_context(trained_ner):
    tokenizer = trained_ner.get_pipe("earlyexit_ner").tokenizer
    doc = trained_ner.make_doc("Angela Merkel visited Paris on Tuesday .")
    plan = plan_sequences([doc], tokenizer, 64, cut_context=16)
    assert len(plan.sequences) == 1 and list(plan.sequences[0].tokens) == list(range(len(doc)))


@pytest.mark.parametrize("value", [-1, 1.5, True, "16"])
def test_cut_context_must_be_a_whole_number(tiny_model_dir, value):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="cut_context"):
        nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, cut_context=value))


def test_overlapping_windows_keep_batches_and_pipe_consistent(trained_ner):
    ner = trained_ner.get_pipe("earlyexit_ner")
    assert ner.model.attrs["cut_context"] == 16  # the default
    texts = [" ".join(["Angela Merkel visited Paris on Tuesday ."] * n) for n in (1, 9, 20, 3, 15)]
    one_by_one = [trained_ner(text) for text in texts]
    batched = list(trained_ner.pipe(texts, batch_size=4))
    for a, b in zip(one_by_one, batched):
        assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
        assert [t._.exit_layer for t in a] == [t._.exit_layer for t in b]
        assert all(t._.exit_layer >= 1 for t in a)


def test_case_classes():
    from spacy_earlyexit.pipeline.wordpieces import case_class

    assert [case_class(t) for t in ["1996", "paris", "Paris", "EU", "McDonald", "I", "."]] == [1, 2, 3, 4, 5, 3, 1]
