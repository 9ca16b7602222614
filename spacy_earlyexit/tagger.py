"""`earlyexit_tagger`: fine-grained part-of-speech tags (`token.tag_`) from a
multi-exit encoder."""
from typing import Any, Callable, Dict, Iterable, List, Optional

from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Config, Model

from .pipe import DEFAULT_MODEL_CONFIG, EarlyExitLabeler
from .objective import SelfSampling
from .width_training import WidthTraining
from .policies import ExitPolicy
from .width import DEFAULT_WIDTHS


@Language.factory(
    "earlyexit_tagger",
    assigns=["token.tag"],
    default_config={
        "model": Config().from_str(DEFAULT_MODEL_CONFIG)["model"],
        "exit_policy": {"@misc": "spacy-earlyexit.full_depth.v1"},
        "scorer": {"@scorers": "spacy.tagger_scorer.v1"},
        "batch_sequences": 64,
        "operating_points": {},
        "operating_point": None,
        "self_sampling": None,
        "width_training": None,
        "width_multipliers": list(DEFAULT_WIDTHS),
        "width": 1.0,
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
) -> "EarlyExitTagger":
    """Part-of-speech tagger whose tokens leave the encoder early."""
    return EarlyExitTagger(nlp.vocab, model, name, exit_policy=exit_policy, scorer=scorer, batch_sequences=batch_sequences,
        operating_points=operating_points, operating_point=operating_point, self_sampling=self_sampling,
        width_training=width_training, width_multipliers=width_multipliers, width=width,
    )


class EarlyExitTagger(EarlyExitLabeler):
    """Sets `token.tag_`; labels are the tag names."""

    @property
    def output_labels(self) -> List[str]:
        return list(self.labels)

    def _labels_from_example(self, example: Example) -> Iterable[str]:
        return [token.tag_ for token in example.reference if token.tag_]

    def _gold_labels(self, example: Example) -> List[Optional[str]]:
        return [tag or None for tag in example.get_aligned("TAG", as_string=True)]

    def _annotate(self, doc: Doc, labels: List[str]) -> None:
        for token, tag in zip(doc, labels):
            token.tag_ = tag
