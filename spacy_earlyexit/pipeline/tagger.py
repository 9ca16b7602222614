"""`earlyexit_tagger`: fine-grained part-of-speech tags (`token.tag_`) from a
multi-exit encoder."""

from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy
from spacy.attrs import TAG
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Config, Model

from ..core.objective import SelfSampling
from ..core.policies import ExitPolicy
from ..core.width_training import WidthTraining
from .labeler import DEFAULT_MODEL_CONFIG, SHARED_DEFAULTS, EarlyExitLabeler


@Language.factory(
    "earlyexit_tagger",
    assigns=["token.tag"],
    default_config={
        "model": Config().from_str(DEFAULT_MODEL_CONFIG)["model"],
        **SHARED_DEFAULTS,
        "scorer": {"@scorers": "spacy.tagger_scorer.v1"},
        "overwrite": False,
    },
    default_score_weights={"tag_acc": 1.0},
)
def make_earlyexit_tagger(
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
    overwrite: bool = False,
) -> "EarlyExitTagger":
    """Part-of-speech tagger whose tokens leave the encoder early.

    overwrite: replace tags that earlier components set (False: keep them and
        tag only untagged tokens, as spaCy's tagger does).
    Other settings: see `earlyexit_ner`.
    """
    return EarlyExitTagger(
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
        overwrite=overwrite,
    )


class EarlyExitTagger(EarlyExitLabeler):
    """Sets `token.tag_`; labels are the tag names. Tokens that already have a
    tag keep it unless `overwrite` is true."""

    def __init__(self, vocab, model, name, *, overwrite: bool = False, **kwargs) -> None:
        super().__init__(vocab, model, name, **kwargs)
        self.overwrite = overwrite

    @property
    def score_key(self) -> str:
        return "tag_acc"

    @property
    def output_labels(self) -> List[str]:
        return list(self.labels)

    def _labels_from_example(self, example: Example) -> Iterable[str]:
        return [token.tag_ for token in example.reference if token.tag_]

    def _gold_labels(self, example: Example) -> List[Optional[str]]:
        return [tag or None for tag in example.get_aligned("TAG", as_string=True)]

    def write_labels(self, doc: Doc, labels: List[str]) -> None:
        if not len(doc):
            return
        strings = self.vocab.strings
        ids = numpy.array([strings.add(tag) for tag in labels], dtype="uint64")
        if not self.overwrite:
            current = doc.to_array(TAG).astype("uint64")
            ids = numpy.where(current != 0, current, ids)
        doc.from_array([TAG], ids.reshape(-1, 1))
