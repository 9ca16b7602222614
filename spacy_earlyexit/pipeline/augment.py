"""Training on the shapes users call the pipeline with.

A model trained on whole documents only learns to lean on document context,
and reads a lone sentence worse than a model that has seen lone sentences.
`sentence_windows` is a spaCy corpus augmenter: with probability
`probability` a training document is replaced by consecutive windows of 1 to
`max_sentences` of its sentences (each window its own example), otherwise it
is kept whole. Each epoch draws again (spaCy seeds Python's `random` with
`system.seed`), so the model sees every document both ways. Documents without
sentence boundaries (or with one sentence) are kept whole: windows are cut
only where the corpus marks sentences.
"""

import random
from typing import Callable, Iterator

from spacy.language import Language
from spacy.training import Example

Augmenter = Callable[[Language, Example], Iterator[Example]]


def _check(probability: float, max_sentences: int) -> None:
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be a number in [0, 1], got {probability!r}.")
    if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences must be a whole number >= 1, got {max_sentences!r}.")


def sentence_windows(probability: float = 0.5, max_sentences: int = 1) -> Augmenter:
    """An augmenter that replaces a document, with probability `probability`,
    by windows of 1 to `max_sentences` consecutive sentences (uniformly drawn
    lengths; 1: single sentences)."""
    _check(probability, max_sentences)

    def augment(nlp: Language, example: Example) -> Iterator[Example]:
        reference = example.reference
        if probability <= 0.0 or random.random() >= probability or not reference.has_annotation("SENT_START"):
            yield example
            return
        sentences = list(reference.sents)
        if len(sentences) < 2:
            yield example
            return
        first = 0
        while first < len(sentences):
            last = min(len(sentences), first + random.randint(1, max_sentences))
            window = reference[sentences[first].start : sentences[last - 1].end].as_doc()
            yield Example(nlp.make_doc(window.text), window)
            first = last

    return augment
