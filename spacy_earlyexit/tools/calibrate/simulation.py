"""Calibration's step 2: the candidate grid, each candidate simulated from a
trace (its exits, analytic speed-up and score) in a fraction of a second."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.attrs import ENT_IOB, ENT_TYPE, TAG
from spacy.tokens import Doc
from spacy.training import Example

from ...core.points import OperatingPoint
from ...core.policies import (
    ExitPolicy,
    FixedDepth,
    FullDepth,
    SentenceExit,
    TokenPatience,
    TokenWindowExit,
    stability_counts,
    upper_half_thresholds,
)
from ...pipeline.labeler import EarlyExitLabeler
from ...pipeline.model import DocExits
from ..evaluation import fresh_copy
from .tracing import Trace

THRESHOLDS = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.07,
    0.1,
    0.13,
    0.16,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.7,
    0.8,
    0.9,
    1.01,
)
WINDOWS = (1, 2, 3)
UPPER_FACTORS = (1.0, 2.0)
#: token_patience's patiences (each below the encoder's depth is tried)
PATIENCES = (1, 2, 3)
#: sentence (SENTEE) thresholds: the token grid, every other one
SENTENCE_THRESHOLDS = THRESHOLDS[::2]


@dataclass
class Candidate:
    """A token_window (TOKEE) setting, or (with `sentence`) a sentence
    (SENTEE) one, or (with `patience`) a token_patience one, or (with
    `layer`) a fixed depth, at a width."""

    window: int = 1
    threshold: float = 0.0
    upper_factor: float = 1.0
    score: float = 0.0
    speedup: float = 1.0
    width: float = 1.0
    layer: Optional[int] = None  # fixed depth (the encoder's depth: full depth)
    patience: Optional[int] = None  # token_patience
    sentence: bool = False  # sentence exit with `threshold` and `upper_factor`

    @property
    def kind(self) -> str:
        """The policy's name (fixed depths at the encoder's depth included)."""
        if self.layer is not None:
            return "fixed_depth"
        if self.patience is not None:
            return "token_patience"
        return "sentence" if self.sentence else "token_window"

    @property
    def thresholded(self) -> bool:
        """Whether the candidate exits below an uncertainty threshold (its
        threshold can be bisected)."""
        return self.layer is None and self.patience is None

    def point(self, n_layers: int) -> OperatingPoint:
        """The operating point of this candidate on an encoder of `n_layers`."""
        if self.layer is None:
            policy: ExitPolicy = self.policy(n_layers, digits=6)  # as written in configs
        else:
            policy = FullDepth() if self.layer >= n_layers else FixedDepth(self.layer)
        return OperatingPoint(policy, self.width)

    def policy(self, n_layers: int, digits: Optional[int] = None) -> ExitPolicy:
        """The exit policy of this candidate (not for fixed depths), its
        per-layer thresholds rounded to `digits` if given."""
        if self.patience is not None:
            return TokenPatience(self.patience)
        layers = upper_half_thresholds(self.threshold, self.upper_factor, n_layers)
        if digits is not None:
            layers = [round(t, digits) for t in layers]
        if self.sentence:
            return SentenceExit(self.threshold, layer_thresholds=layers)
        return TokenWindowExit(self.threshold, self.window, layer_thresholds=layers)

    def family(self, n_layers: int) -> str:
        """ "exit" (full width), "width" (full depth, narrower) or "joint"."""
        if self.width >= 1.0:
            return "exit"
        return "width" if self.layer is not None and self.layer >= n_layers else "joint"

    def describe(self) -> str:
        if self.layer is not None:
            what = f"fixed depth {self.layer}"
        elif self.patience is not None:
            what = f"patience {self.patience}"
        elif self.sentence:
            what = f"sentence threshold={self.threshold:.4g} upper x{self.upper_factor:g}"
        else:
            what = f"window={self.window} threshold={self.threshold:.4g} upper x{self.upper_factor:g}"
        return f"{what}, width {self.width:g}" if self.width < 1.0 else what


def simulate(tr: Trace, component: EarlyExitLabeler, candidate: Candidate) -> Tuple[torch.Tensor, float]:
    """Exit layers [S, W] of a candidate and its analytic speed-up, from the
    trace: its policy's exit rule on the traced uncertainties (and, for
    token_patience, on how long each traced label has held), the cost counted
    as inference counts it (`LayerCost.of_exits`)."""
    exits = simulated_exits(tr, candidate)
    return exits, simulated_speedup(tr, component, candidate, exits)


def simulated_exits(tr: Trace, candidate: Candidate) -> torch.Tensor:
    """Exit layers [S, W] (1-based) of a candidate, from the trace."""
    S, L, W = tr.uncertainty.shape
    if candidate.layer is not None:
        exits = torch.full((S, W), min(candidate.layer, L), dtype=torch.long)
    else:
        policy = candidate.policy(L)
        values = torch.where(tr.word_mask[:, None, :], tr.uncertainty, torch.zeros(()))
        stable = stability_counts(tr.labels) if policy.tracks_stability else None

        def allowed(index: int) -> torch.Tensor:
            extra = {"stable": stable[:, index]} if stable is not None else {}
            return policy.exits(index, L, values[:, index], tr.word_mask, tr.word_mask, **extra)

        below = torch.stack([allowed(index) for index in range(L)], dim=1)
        below[:, -1, :] = True  # the last layer labels every word still running
        exits = below.float().argmax(1) + 1  # first layer where the word may leave, 1-based
    return exits


def simulated_speedup(tr: Trace, component: EarlyExitLabeler, candidate: Candidate, exits: torch.Tensor) -> float:
    """The analytic speed-up of a pass whose words leave at `exits` [S, W]
    (a shared encoder's: the deepest of its tasks' exits)."""
    L = tr.uncertainty.shape[1]
    layer_cost = component.encoder.layer_cost
    word_pieces = tr.pieces * tr.word_mask
    cost = layer_cost.of_exits(
        tr.n_pieces, tr.n_special, word_pieces, exits, L, candidate.width, every_exit=candidate.layer is None
    )
    full = layer_cost.full(tr.n_pieces.double(), tr.word_mask.sum(1).double(), L)
    return float(full.sum() / cost.sum())


class ScoringExamples:
    """The examples every simulated candidate is scored on, built once per
    trace: one unannotated copy of each document, paired with its reference
    in an `Example` whose alignment is computed once. Each candidate's labels
    are written over the same documents, their tags and entities reset to
    none first, so scoring a candidate costs the scorer alone."""

    #: what the components write, reset before each candidate
    RESET = (TAG, ENT_IOB, ENT_TYPE)

    def __init__(self, examples: List[Example]) -> None:
        self.examples = [Example(fresh_copy(eg.predicted), eg.reference) for eg in examples]
        self._none = [numpy.zeros((len(eg.predicted), len(self.RESET)), dtype="uint64") for eg in self.examples]

    def reset(self) -> List[Doc]:
        """The documents, unannotated again."""
        for eg, none in zip(self.examples, self._none):
            eg.predicted.from_array(list(self.RESET), none)
        return [eg.predicted for eg in self.examples]

    def serve(self, examples: List[Example]) -> bool:
        """Whether these are the examples this was built for."""
        return len(examples) == len(self.examples) and all(
            ours.reference is theirs.reference for ours, theirs in zip(self.examples, examples)
        )


def simulated_score(tr: Trace, component: EarlyExitLabeler, examples: List[Example], exits: torch.Tensor) -> float:
    """The component's score when every word is labelled at its exit (decoded
    as the component decodes)."""
    at_exit = (exits - 1)[:, None, :]
    label_ids = tr.labels.gather(1, at_exit)[:, 0, :].numpy()
    probs = None
    if tr.probs is not None:
        C = tr.probs.shape[-1]
        probs = tr.probs.gather(1, at_exit[..., None].expand(-1, -1, -1, C))[:, 0].numpy()
    L = tr.labels.shape[1]
    exits_np = exits.numpy()
    per_doc = []
    for d in range(len(examples)):
        where = (numpy.asarray(tr.owner_sequence[d], dtype="int64"), numpy.asarray(tr.owner_word[d], dtype="int64"))
        n = len(tr.owner_word[d])
        per_doc.append(
            DocExits(
                label_ids=label_ids[where],
                exit_layers=exits_np[where],
                uncertainty=numpy.zeros(n, "float32"),
                cost=0.0,
                full_cost=0.0,
                n_layers=L,
                label_probs=probs[where] if probs is not None else None,
            )
        )
    if tr.scoring is None or not tr.scoring.serve(examples):
        tr.scoring = ScoringExamples(examples)
    classes = component.output_labels
    for doc, ids in zip(tr.scoring.reset(), component.decode(per_doc)):
        component.write_labels(doc, [classes[i] for i in ids])
    return float(component.scorer(tr.scoring.examples)[component.score_key] or 0.0)


def candidates(
    windows: Sequence[int] = WINDOWS,
    thresholds: Sequence[float] = THRESHOLDS,
    upper_factors: Sequence[float] = UPPER_FACTORS,
    width: float = 1.0,
    n_layers: Optional[int] = None,
    sentence_thresholds: Sequence[float] = SENTENCE_THRESHOLDS,
    patiences: Sequence[int] = PATIENCES,
) -> List[Candidate]:
    """The token_window (TOKEE) grid at `width`, and, when `n_layers` is
    given, the sentence (SENTEE) grid, every patience below `n_layers` and
    every fixed depth up to `n_layers` (the full depth included)."""
    grid = [Candidate(w, t, f, width=width) for w in windows for f in upper_factors for t in thresholds]
    if n_layers is not None:
        grid += [Candidate(0, t, f, width=width, sentence=True) for f in upper_factors for t in sentence_thresholds]
        grid += [Candidate(width=width, patience=p) for p in patiences if p < n_layers]
        grid += [Candidate(width=width, layer=layer) for layer in range(1, n_layers + 1)]
    return grid
