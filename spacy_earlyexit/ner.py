"""`earlyexit_ner`: named entities from a multi-exit encoder (BIO tags per token)."""
from typing import Any, Callable, Dict, Iterable, List, Optional

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Config, Model

from .pipe import DEFAULT_MODEL_CONFIG, EarlyExitLabeler
from .objective import SelfSampling
from .policies import ExitPolicy

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
        "exit_policy": {"@misc": "spacy-earlyexit.full_depth.v1"},
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
        "batch_sequences": 64,
        "operating_points": {},
        "operating_point": None,
        "self_sampling": None,
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
) -> "EarlyExitNER":
    """Named entity recognizer whose tokens leave the encoder early."""
    return EarlyExitNER(nlp.vocab, model, name, exit_policy=exit_policy, scorer=scorer, batch_sequences=batch_sequences,
        operating_points=operating_points, operating_point=operating_point, self_sampling=self_sampling,
    )


class EarlyExitNER(EarlyExitLabeler):
    """Sets `doc.ents` from per-token BIO tags; labels are entity types."""

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

    def _annotate(self, doc: Doc, labels: List[str]) -> None:
        doc.set_ents(bio_tags_to_spans(doc, labels), default="outside")
