"""The precision setting on a CUDA device (skipped without one; run by
scripts/gpu_check.sh on a machine with a GPU)."""

import pytest
import spacy
import torch

from ..conftest import NER_DATA, model_config, ner_examples, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = [text for text, _ in NER_DATA] * 4


#: the model settings of the shipped configs: words read from their first and
#: last pieces, hashed lexical features on the GPU too
WORDS = {"word_pooling": "first_last", "lexical_attrs": ["PREFIX", "SUFFIX", "SHAPE"], "lexical_rows": [20, 50, 10]}


@pytest.fixture(scope="module", params=["first-piece", "first-last-lexical"])
def gpu_ner(tiny_model_dir, request):
    from thinc.api import require_gpu

    require_gpu(0)
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    words = WORDS if request.param == "first-last-lexical" else {}
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir, **words), "precision": "fp32"})
    return train(nlp, ner_examples(nlp), steps=30)


def _answers(nlp, precision):
    docs = nlp.pipe(TEXTS, component_cfg={"earlyexit_ner": {"precision": precision}})
    return [([(e.start, e.end, e.label_) for e in doc.ents], [t._.exit_layer for t in doc]) for doc in docs]


def test_the_encoder_trains_and_runs_on_the_gpu(gpu_ner):
    assert gpu_ner.get_pipe("earlyexit_ner").encoder.device.type == "cuda"


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_bf16_on_the_gpu_agrees_with_fp32_on_nearly_all_tokens(gpu_ner, precision):
    reference, reduced = _answers(gpu_ner, "fp32"), _answers(gpu_ner, precision)
    n_tokens = sum(len(layers) for _, layers in reference)
    differ = sum(sum(a != b for a, b in zip(r[1], p[1])) for r, p in zip(reference, reduced))
    assert differ <= 0.05 * n_tokens


def test_int8_falls_back_to_fp32_on_the_gpu_with_a_warning(gpu_ner, monkeypatch):
    from spacy_earlyexit.core import precision as precision_module

    monkeypatch.setattr(precision_module, "_warned", set())  # one warning per process: see this one
    with pytest.warns(UserWarning, match="int8 runs on the CPU only"):
        answers = _answers(gpu_ner, "int8")
    assert answers == _answers(gpu_ner, "fp32")


def test_bf16_mixed_precision_training_runs_on_the_gpu(tiny_model_dir):
    from thinc.api import require_gpu

    require_gpu(0)
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir, **WORDS), "training_precision": "bf16"})
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.005
    losses = [nlp.update(examples, sgd=optimizer, losses={})["earlyexit_ner"] for _ in range(40)]
    ner = nlp.get_pipe("earlyexit_ner")
    assert ner.encoder.device.type == "cuda" and ner.model.attrs["training_precision"] == "bf16"
    assert losses[-1] < 0.2 * losses[0]
    assert all(p.dtype == torch.float32 for p in ner.encoder.parameters())
