"""Calibration's step 1: one full-depth pass per width that keeps every
exit's labels and uncertainties for every word (`trace`)."""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

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
    #: the examples candidates are scored on, built by the first `simulated_score`
    scoring: Optional[Any] = field(default=None, repr=False, compare=False)


def trace(
    nlp: Language, component: EarlyExitLabeler, examples: List[Example], width: float = 1.0, precision: str = "fp32"
) -> Trace:
    """One full-depth pass at `width`, batched as inference batches, that keeps
    every exit's labels and uncertainties, in a resolved `precision` (the
    layers run as inference runs them)."""
    part = slice(0, component.encoder.n_labels)
    return trace_parts(component, examples, [(part, component.decodes_from_probs)], width, precision)[0]


def trace_parts(
    component: EarlyExitLabeler,
    examples: List[Example],
    parts: Sequence[Tuple[slice, bool]],
    width: float = 1.0,
    precision: str = "fp32",
) -> List[Trace]:
    """`trace` of several label sets read from one pass: each `(slice of the
    exit classifiers' outputs, keep its distributions)` gets its own trace,
    its softmax and uncertainties over its slice alone (a shared encoder's
    tasks, `core/tasks.py`)."""
    docs = [fresh_copy(eg.predicted) for eg in examples]
    encoder = component.encoder
    plan, batches = sequence_batches(component.model, docs, component.batch_sequences)
    S = len(plan.sequences)
    L = encoder.n_layers
    W = max((len(s.word_starts) for s in plan.sequences), default=1)
    word_mask = torch.zeros(S, W, dtype=torch.bool)
    pieces = torch.zeros(S, W)
    n_pieces = torch.zeros(S)
    n_special = torch.zeros(S)
    unc = [torch.zeros(S, L, W) for _ in parts]
    labels = [torch.zeros(S, L, W, dtype=torch.long) for _ in parts]
    kept = [torch.zeros(S, L, W, part.stop - part.start) if keep else None for part, keep in parts]
    for indices, batch in batches:
        with torch.inference_mode():
            logits = encoder(batch, width=width, precision=precision)  # [L, n_words, C]
            all_probs = [logits[..., part].softmax(-1).cpu() for part, _ in parts]
        offset = 0
        for index in indices:
            sequence = plan.sequences[index]
            n = len(sequence.word_starts)
            for t, probs in enumerate(all_probs):
                unc[t][index, :, :n] = normalized_entropy(probs[:, offset : offset + n])
                labels[t][index, :, :n] = probs[:, offset : offset + n].argmax(-1)
                if kept[t] is not None:
                    kept[t][index, :, :n] = probs[:, offset : offset + n]
            offset += n
            word_mask[index, :n] = True
            piece_words = numpy.asarray(sequence.piece_words)
            pieces[index, :n] = torch.from_numpy(numpy.bincount(piece_words[piece_words >= 0], minlength=n)[:n]).float()
            n_pieces[index] = len(sequence)
            n_special[index] = int((piece_words < 0).sum())
    return [
        Trace(unc[t], labels[t], word_mask, pieces, n_pieces, n_special, plan.owner_sequence, plan.owner_word, kept[t])
        for t in range(len(parts))
    ]
