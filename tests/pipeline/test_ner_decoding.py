"""The NER component's decoding: constrained BIO sequences (core/decoding.py)
where it is on, each token's argmax where it is off, as a saved setting."""

import numpy
import pytest
import spacy

from spacy_earlyexit.pipeline.model import DocExits

from ..conftest import model_config, ner_examples


def _exits(probs: numpy.ndarray) -> DocExits:
    n = len(probs)
    return DocExits(
        label_ids=probs.argmax(1),
        exit_layers=numpy.ones(n, "int64"),
        uncertainty=numpy.zeros(n, "float32"),
        cost=0.0,
        full_cost=0.0,
        n_layers=1,
        label_probs=probs.astype("float32"),
    )


@pytest.mark.parametrize("constrained", [True, False])
def test_ner_decodes_a_type_switch_as_one_entity_only_when_constrained(tiny_model_dir, constrained):
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "constrained_decoding": constrained})
    nlp.initialize(lambda: ner_examples(nlp))
    classes = ner.output_labels
    doc = nlp.make_doc("Angela Merkel visited")
    probs = numpy.full((3, len(classes)), 0.01)
    probs[0, classes.index("B-PER")] = 0.9
    probs[1, classes.index("I-LOC")], probs[1, classes.index("I-PER")] = 0.5, 0.45
    probs[2, classes.index("O")] = 0.9
    ner.set_annotations([doc], [_exits(probs / probs.sum(1, keepdims=True))])
    ents = [(e.text, e.label_) for e in doc.ents]
    if constrained:
        assert ents == [("Angela Merkel", "PER")]
    else:
        assert ents == [("Angela", "PER"), ("Merkel", "LOC")]


def test_constrained_decoding_is_a_saved_setting(tiny_model_dir, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "constrained_decoding": False})
    nlp.initialize(lambda: ner_examples(nlp))
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert loaded.get_pipe("earlyexit_ner").constrained_decoding is False
    assert (
        spacy.load(tmp_path / "p", config={"components.earlyexit_ner.constrained_decoding": True})
        .get_pipe("earlyexit_ner")
        .constrained_decoding
        is True
    )
