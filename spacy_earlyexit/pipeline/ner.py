"""`earlyexit_ner`: named entities from a multi-exit encoder (BIO tags per token)."""

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy
from spacy.attrs import ENT_IOB
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Config, Model

from ..core.decoding import bio_transitions, viterbi
from ..core.objective import SelfSampling
from ..core.policies import ExitPolicy
from ..core.width_training import WidthTraining
from .labeler import DEFAULT_MODEL_CONFIG, SHARED_DEFAULTS, EarlyExitLabeler
from .model import DocExits

BILUO_TO_BIO = {"B": "B", "I": "I", "L": "I", "U": "B", "O": "O"}


def bio_tags_to_spans(doc: Doc, tags: List[str]) -> List[Span]:
    """Valid, non-overlapping entity spans from possibly inconsistent BIO tags:
    an I- tag that does not continue an entity of its type starts one, and
    whitespace at an entity's edges is left out."""
    spans: List[Span] = []
    start, label = None, None

    def close(end: int) -> None:
        if start is None:
            return
        first, last = start, end
        while first < last and doc[first].is_space:
            first += 1
        while last > first and doc[last - 1].is_space:
            last -= 1
        if first < last:
            spans.append(Span(doc, first, last, label=label))

    for i, tag in enumerate(tags):
        if tag == "O":  # most tokens: nothing to close unless an entity is open
            if start is not None:
                close(i)
                start, label = None, None
            continue
        prefix, _, kind = tag.partition("-")
        if prefix == "O" or not kind:
            close(i)
            start, label = None, None
        elif prefix == "B" or start is None or kind != label:
            close(i)
            start, label = i, kind
    close(len(tags))
    return spans


@Language.factory(
    "earlyexit_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": Config().from_str(DEFAULT_MODEL_CONFIG)["model"],
        **SHARED_DEFAULTS,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
        "overwrite_ents": False,
        "constrained_decoding": True,
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_earlyexit_ner(
    nlp: Language,
    name: str,
    model: Model,
    exit_policy: ExitPolicy,
    scorer: Optional[Callable],
    batch_sequences: int,
    operating_points: Dict[str, Dict[str, Any]],
    operating_point: Optional[str],
    self_sampling: Optional[SelfSampling],
    width_training: Optional[WidthTraining],
    width_multipliers: List[float],
    width: float,
    precision: str = "auto",
    training_precision: str = "fp32",
    overwrite_ents: bool = False,
    constrained_decoding: bool = True,
) -> "EarlyExitNER":
    """Named entity recognizer whose tokens leave the encoder early.

    operating_points: named exit policies ({"policy": short name, **params,
        optionally "width": one of width_multipliers}),
        written by `python -m spacy_earlyexit calibrate`; "full" always exists.
    operating_point: the one to use (overrides exit_policy); None: exit_policy.
    self_sampling: stage-2 training with exits sampled per sentence (None: off).
    width_training: a width-adaptive training stage (distillation across
        widths, or self-sampling across width and exit); None: off.
    width_multipliers: the widths this component may run at (each keeps that
        share of every layer's heads and feed-forward neurons; must hold 1.0).
        An operating point may name one as "width"; see `rewire_for_width`.
    width: the width used when no operating point is chosen.
    precision: "auto" (bf16 where the CPU multiplies bf16 natively, else
        fp32), "fp32", "bf16" or "int8"; an operating point may name its own.
    training_precision: what training steps multiply in: "fp32", "bf16"
        (mixed precision: bf16 products under autocast, float32 weights and
        classifiers) or "auto" (bf16 where the CPU or GPU multiplies bf16
        natively, else fp32).
    overwrite_ents: replace the entities that earlier components set (False:
        keep them and add predicted entities around them, as spaCy's ner does).
    constrained_decoding: read each doc's tags as the most probable valid BIO
        sequence of its tokens' exit distributions (Viterbi; exits unchanged).
        False: each token's most probable tag, invalid sequences repaired.
    """
    return EarlyExitNER(
        nlp.vocab,
        model,
        name,
        exit_policy=exit_policy,
        scorer=scorer,
        batch_sequences=batch_sequences,
        operating_points=operating_points,
        operating_point=operating_point,
        self_sampling=self_sampling,
        width_training=width_training,
        width_multipliers=width_multipliers,
        width=width,
        precision=precision,
        training_precision=training_precision,
        overwrite_ents=overwrite_ents,
        constrained_decoding=constrained_decoding,
    )


class EarlyExitNER(EarlyExitLabeler):
    """Sets `doc.ents` from per-token BIO tags; labels are entity types.

    Entities already on the doc (from an entity_ruler or another ner before
    it) are kept, as spaCy's ner keeps them: predicted entities fill the rest,
    and a predicted entity that overlaps an existing one is dropped. Tokens
    that earlier components blocked (`doc.set_ents(blocked=...)`) stay blocked
    and no predicted entity may touch them. Tokens an earlier component marked
    as outside (O) or left missing are predicted like any other token, again
    as spaCy's ner does: an O from an earlier component is a default, not a
    constraint. Afterwards no token is missing: tokens in no entity are O.
    With `overwrite_ents=True` the predicted entities replace all entity
    annotation of the doc.
    """

    def __init__(
        self, vocab, model, name, *, overwrite_ents: bool = False, constrained_decoding: bool = True, **kwargs
    ) -> None:
        super().__init__(vocab, model, name, **kwargs)
        self.overwrite_ents = overwrite_ents
        self.constrained_decoding = constrained_decoding
        self._transitions: Tuple[Tuple[str, ...], Any] = ((), None)

    @property
    def decodes_from_probs(self) -> bool:
        return self.constrained_decoding

    def decode(self, predictions: List[DocExits]) -> List[numpy.ndarray]:
        if not self.constrained_decoding or any(p.label_probs is None for p in predictions):
            return super().decode(predictions)
        classes = tuple(self.output_labels)
        if self._transitions[0] != classes:
            self._transitions = (classes, bio_transitions(classes))
        start, step = self._transitions[1]
        return viterbi([p.label_probs for p in predictions], start, step)

    @property
    def score_key(self) -> str:
        return "ents_f"

    @property
    def output_labels(self) -> List[str]:
        return ["O"] + [f"{prefix}-{label}" for label in self.labels for prefix in ("B", "I")]

    def _labels_from_example(self, example: Example) -> Iterable[str]:
        return [ent.label_ for ent in example.reference.ents]

    def _gold_labels(self, example: Example) -> List[Optional[str]]:
        tags = []
        for tag in example.get_aligned_ner():
            if tag is None or tag == "-":
                tags.append(None)
            else:
                prefix, _, kind = tag.partition("-")
                tags.append(BILUO_TO_BIO[prefix] + ("-" + kind if kind else ""))
        return tags

    def write_labels(self, doc: Doc, labels: List[str]) -> None:
        predicted = bio_tags_to_spans(doc, labels)
        # tokens in an existing entity, or blocked (ent_iob B or I); read as one
        # array: a Token object per token costs more than the decoding itself
        taken = numpy.isin(doc.to_array(ENT_IOB), (1, 3))
        if self.overwrite_ents or not taken.any():
            doc.set_ents(predicted, default="outside")
            return
        free = [span for span in predicted if not taken[span.start : span.end].any()]
        doc.set_ents(free, default="unmodified")
        # tokens that still have no annotation (ent_iob 0) are outside
        unset = numpy.concatenate(([False], doc.to_array(ENT_IOB) == 0, [False])).astype("int8")
        edges = numpy.flatnonzero(numpy.diff(unset))
        missing = [doc[start:end] for start, end in zip(edges[::2].tolist(), edges[1::2].tolist())]
        doc.set_ents([], outside=missing, default="unmodified")
