"""Long-running processes (issue 30): spaCy's `nlp.memory_zone()` frees the
strings and lexemes that new text adds; the early-exit components work inside
one, give what they give outside it, and keep nothing of a zone's words."""

import pytest
import spacy

from spacy_earlyexit.pipeline.wordpieces import case_class

from ..conftest import NER_DATA, TAG_DATA

TEXTS = [text for text, _ in NER_DATA + TAG_DATA] + ["Zorblax visited Quenthorp on Tuesday ."]
NEW_WORDS = ("Zorblax", "Quenthorp")


def answers(docs):
    return [
        ([(e.start, e.end, e.label_) for e in doc.ents], [t.tag_ for t in doc], [t._.exit_layers for t in doc])
        for doc in docs
    ]


@pytest.mark.issue(30)
def test_components_inside_a_memory_zone_give_the_same_output_and_keep_no_new_strings(saved_pipeline):
    nlp = spacy.load(saved_pipeline)
    assert not any(word in nlp.vocab.strings for word in NEW_WORDS)
    with nlp.memory_zone():
        inside = answers(nlp.pipe(TEXTS, batch_size=2))
        assert all(word in nlp.vocab.strings for word in NEW_WORDS)
    # the zone's words are gone from the vocabulary, the labels are not
    assert not any(word in nlp.vocab.strings for word in NEW_WORDS)
    assert all(label in nlp.vocab.strings for label in nlp.get_pipe("earlyexit_ner").labels)
    assert any(ents for ents, _, _ in inside) and all(any(tags) for _, tags, _ in inside)
    assert inside == answers(nlp.pipe(TEXTS, batch_size=2))
    with nlp.memory_zone():  # a second zone, after annotating outside one
        assert answers(nlp.pipe(TEXTS, batch_size=2)) == inside


def test_case_class_cache_is_bounded_and_the_classes_are_unchanged():
    assert case_class.cache_info().maxsize <= 1 << 12
    assert [case_class(t) for t in ("", "3.5", "word", "Word", "WORD", "wOrD", "ÉCOLE", "école", "Łódź")] == [
        1,
        1,
        2,
        3,
        4,
        5,
        4,
        2,
        3,
    ]
