"""Calibration's step 1: one full-depth pass per width that keeps every
exit's labels and uncertainties for every word (`trace`)."""

from dataclasses import dataclass
from typing import List, Optional

import numpy
import torch
from spacy.language import Language
from spacy.training import Example

from ...core.policies import normalized_entropy
from ...pipeline.labeler import EarlyExitLabeler
from ...pipeline.model import sequence_batches
from ..evaluation import fresh_copy


@dataclass
class Trace:
    """Every exit's prediction for every word of a corpus, per encoder sequence (padded)."""

    uncertainty: torch.Tensor  # [S, L, W]
    labels: torch.Tensor  # [S, L, W]
    word_mask: torch.Tensor  # [S, W]
    pieces: torch.Tensor  # [S, W] wordpieces of each word
    n_pieces: torch.Tensor  # [S] real pieces, specials included
    n_special: torch.Tensor  # [S]
    owner_sequence: List[numpy.ndarray]  # per doc: sequence of each token's labelling copy
    owner_word: List[numpy.ndarray]
    probs: Optional[torch.Tensor] = None  # [S, L, W, C], kept for components that decode from them


def trace(
    nlp: Language, component: EarlyExitLabeler, examples: List[Example], width: float = 1.0, precision: str = "fp32"
) -> Trace:
    """One full-depth pass at `width`, batched as inference batches, that keeps
    every exit's labels and uncertainties, in a resolved `precision` (the
    layers run as inference runs them)."""
    docs = [fresh_copy(eg.predicted) for eg in examples]
    encoder = component.encoder
    plan, batches = sequence_batches(component.model, docs, component.batch_sequences)
    S = len(plan.sequences)
    L = encoder.n_layers
    W = max((len(s.word_starts) for s in plan.sequences), default=1)
    unc = torch.zeros(S, L, W)
    labels = torch.zeros(S, L, W, dtype=torch.long)
    word_mask = torch.zeros(S, W, dtype=torch.bool)
    pieces = torch.zeros(S, W)
    n_pieces = torch.zeros(S)
    n_special = torch.zeros(S)
    kept = torch.zeros(S, L, W, encoder.n_labels) if component.decodes_from_probs else None
    for indices, batch in batches:
        with torch.inference_mode():
            probs = encoder(batch, width=width, precision=precision).softmax(-1).cpu()  # [L, n_words, C]
        offset = 0
        for index in indices:
            sequence = plan.sequences[index]
            n = len(sequence.word_starts)
            unc[index, :, :n] = normalized_entropy(probs[:, offset : offset + n])
            labels[index, :, :n] = probs[:, offset : offset + n].argmax(-1)
            if kept is not None:
                kept[index, :, :n] = probs[:, offset : offset + n]
            offset += n
            word_mask[index, :n] = True
            piece_words = numpy.asarray(sequence.piece_words)
            pieces[index, :n] = torch.from_numpy(numpy.bincount(piece_words[piece_words >= 0], minlength=n)[:n]).float()
            n_pieces[index] = len(sequence)
            n_special[index] = int((piece_words < 0).sum())
    return Trace(unc, labels, word_mask, pieces, n_pieces, n_special, plan.owner_sequence, plan.owner_word, kept)
