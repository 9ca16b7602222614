"""Operating points per call (spaCy's component_cfg) and per thread (`using`)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import spacy

from ..conftest import NER_DATA, model_config, ner_examples, train

TEXTS = [text for text, _ in NER_DATA] * 3
POINTS = {"shallow": {"policy": "fixed_depth", "layer": 1}, "middle": {"policy": "fixed_depth", "layer": 2}}


@pytest.fixture(scope="module")
def nlp(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "earlyexit_ner", config={**model_config(tiny_model_dir), "operating_points": POINTS, "precision": "fp32"}
    )
    return train(nlp, ner_examples(nlp))


def _answer(doc):
    return [(e.start, e.end, e.label_) for e in doc.ents], [t._.exit_layer for t in doc]


def _expected(nlp):
    ner = nlp.get_pipe("earlyexit_ner")
    expected = {}
    for point in ["full", *POINTS]:
        with ner.using(point):
            expected[point] = [_answer(nlp(text)) for text in TEXTS]
    return expected


def test_component_cfg_selects_the_point_for_that_call_only(nlp):
    ner = nlp.get_pipe("earlyexit_ner")
    doc = nlp(TEXTS[0], component_cfg={"earlyexit_ner": {"operating_point": "shallow"}})
    assert {t._.exit_layer for t in doc} == {1}
    assert ner.operating_point is None and ner.exit_policy.name == "full"
    docs = list(nlp.pipe(TEXTS, component_cfg={"earlyexit_ner": {"operating_point": "middle"}}))
    assert {t._.exit_layer for doc in docs for t in doc} == {2}
    assert {t._.exit_layer for t in nlp(TEXTS[0])} == {3}


def test_component_cfg_refuses_unknown_points_and_settings(nlp):
    with pytest.raises(ValueError, match="no operating point 'nope'"):
        nlp(TEXTS[0], component_cfg={"earlyexit_ner": {"operating_point": "nope"}})
    with pytest.raises(TypeError):
        nlp(TEXTS[0], component_cfg={"earlyexit_ner": {"threshold": 0.1}})
    with pytest.raises(ValueError, match="precision must be one of"):
        list(nlp.pipe(TEXTS, component_cfg={"earlyexit_ner": {"precision": "fp8"}}))


def test_concurrent_calls_at_different_points_each_get_their_own(nlp):
    expected = _expected(nlp)
    assert expected["shallow"] != expected["full"]
    jobs = [(point, i) for _ in range(10) for point in expected for i in range(len(TEXTS))]

    def run(job):
        point, i = job
        return job, _answer(nlp(TEXTS[i], component_cfg={"earlyexit_ner": {"operating_point": point}}))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for (point, i), answer in pool.map(run, jobs):
            assert answer == expected[point][i], (point, i)


def test_using_changes_the_calling_thread_only(nlp):
    ner = nlp.get_pipe("earlyexit_ner")
    expected = _expected(nlp)
    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        inside.wait(10)
        seen["other"] = [_answer(nlp(text)) for text in TEXTS]
        outside.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with ner.using("shallow"):
        assert ner.operating_point == "shallow"
        inside.set()
        outside.wait(10)
        seen["mine"] = [_answer(nlp(text)) for text in TEXTS]
    thread.join(10)
    assert seen["other"] == expected["full"]
    assert seen["mine"] == expected["shallow"]
    assert ner.operating_point is None


def test_use_changes_the_default_for_every_thread(nlp):
    ner = nlp.get_pipe("earlyexit_ner")
    try:
        ner.use("middle")
        with ThreadPoolExecutor(max_workers=2) as pool:
            layers = pool.map(lambda text: {t._.exit_layer for t in nlp(text)}, TEXTS)
            assert all(found == {2} for found in layers)
    finally:
        ner.use("full")


def test_packed_weights_stay_right_when_threads_run_different_widths(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    points = {"narrow": {"policy": "full", "width": 0.5}}
    nlp.add_pipe(
        "earlyexit_ner", config={**model_config(tiny_model_dir), "operating_points": points, "precision": "fp32"}
    )
    train(nlp, ner_examples(nlp), steps=10)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.encoder.width_rewired = True  # no ranking needed: the test is about the packed copies
    expected = {}
    for point in ("full", "narrow"):
        with ner.using(point):
            expected[point] = [_answer(nlp(text)) for text in TEXTS]
    ner.encoder.forget_packed_weights()
    jobs = [(point, i) for _ in range(6) for point in expected for i in range(len(TEXTS))]

    def run(job):
        point, i = job
        return job, _answer(nlp(TEXTS[i], component_cfg={"earlyexit_ner": {"operating_point": point}}))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for (point, i), answer in pool.map(run, jobs):
            assert answer == expected[point][i], (point, i)
