"""Copies, pickles and worker processes of calibrated pipelines (issue 31):
`copy.deepcopy(nlp)`, `pickle.loads(pickle.dumps(nlp))` and
`nlp.pipe(..., n_process=2)` under `spawn` give what the original gives, and
start at its default operating point, not at one a `using` block holds."""

import copy
import json
import pickle
import shutil
import subprocess
import sys
import threading

import pytest
import spacy
import torch
from thinc.api import Adam

from spacy_earlyexit.core.points import RunSettings
from spacy_earlyexit.core.policies import FixedDepth, FullDepth, TokenWindowExit
from spacy_earlyexit.pipeline.model import predict_exits
from spacy_earlyexit.pipeline.run_settings import ThreadRunSettings

from ..conftest import NER_DATA, REPO, TAG_DATA, ner_tagger_examples

TEXTS = [text for text, _ in NER_DATA + TAG_DATA] + ["Berlin visited John on the mat .", "The cat ."]
COMPONENTS = ("earlyexit_ner", "earlyexit_tagger")
#: what `calibrate` writes into a pipeline's config: named points and a default
POINTS = {
    "fast": {"policy": "token_window", "threshold": 0.3, "window": 1},
    "shallow": {"policy": "fixed_depth", "layer": 1, "precision": "fp32"},
}
DEFAULT = "fast"


@pytest.fixture(scope="module")
def calibrated(saved_pipeline, tmp_path_factory):
    """Both components trained, with operating points and a default point in
    the config, as `calibrate` writes them."""
    path = tmp_path_factory.mktemp("calibrated") / "pipeline"
    shutil.copytree(saved_pipeline, path)
    config = spacy.util.load_config(path / "config.cfg", interpolate=False)
    for name in COMPONENTS:
        config["components"][name]["operating_points"] = POINTS
        config["components"][name]["operating_point"] = DEFAULT
    config.to_disk(path / "config.cfg")
    return path


@pytest.fixture(scope="module")
def nlp(calibrated):
    nlp = spacy.load(calibrated)
    for name in COMPONENTS:
        assert nlp.get_pipe(name).operating_point == DEFAULT
    return nlp


def answers(docs):
    """Entities, tags and exit layers of every doc."""
    return [
        {
            "ents": [[e.start, e.end, e.label_] for e in doc.ents],
            "tags": [t.tag_ for t in doc],
            "exit_layer": [t._.exit_layer for t in doc],
            "exit_layers": [t._.exit_layers for t in doc],
        }
        for doc in docs
    ]


def test_outputs_differ_between_points(nlp):
    """The comparisons below could not miss a copy that runs another point."""
    default = answers(nlp.pipe(TEXTS))
    full = answers(nlp.pipe(TEXTS, component_cfg={name: {"operating_point": "full"} for name in COMPONENTS}))
    assert [a["exit_layer"] for a in default] != [a["exit_layer"] for a in full]


@pytest.mark.issue(31)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_run_at_the_default_point_and_give_the_same_output(nlp, how):
    expected = answers(nlp.pipe(TEXTS))
    ner, tagger = (nlp.get_pipe(name) for name in COMPONENTS)
    # a point chosen for this thread's block is no part of the copy
    with ner.using("shallow"), tagger.using("full"):
        made = copy.deepcopy(nlp) if how == "deepcopy" else pickle.loads(pickle.dumps(nlp))
        assert ner.operating_point == "shallow" and tagger.operating_point == "full"
    for name in COMPONENTS:
        component = made.get_pipe(name)
        assert component.operating_point == DEFAULT
        assert component.operating_points == POINTS
        assert component is not nlp.get_pipe(name)
        assert component.encoder is not nlp.get_pipe(name).encoder
    assert answers(made.pipe(TEXTS)) == expected
    assert answers([made(text) for text in TEXTS]) == expected
    # the copy's own settings work, and change nothing of the original
    made.get_pipe("earlyexit_ner").use("shallow")
    assert {t._.exit_layers["earlyexit_ner"] for t in made(TEXTS[0])} == {1}
    with made.get_pipe("earlyexit_tagger").using("full"):
        assert {t._.exit_layers["earlyexit_tagger"] for t in made(TEXTS[0])} == {3}
    assert ner.operating_point == DEFAULT and answers(nlp.pipe(TEXTS)) == expected


@pytest.mark.issue(31)
def test_a_copy_keeps_the_default_set_with_use(nlp):
    ner = nlp.get_pipe("earlyexit_ner")
    ner.use("shallow")
    try:
        made = pickle.loads(pickle.dumps(nlp))
    finally:
        ner.use(DEFAULT)
    assert made.get_pipe("earlyexit_ner").operating_point == "shallow"
    assert made.get_pipe("earlyexit_tagger").operating_point == DEFAULT


def test_the_model_copies_with_its_weights_and_without_optimizer_state(calibrated):
    nlp = spacy.load(calibrated)
    optimizer = Adam(0.001)  # with moving averages of the weights, as Thinc's default
    nlp.update(ner_tagger_examples(nlp), sgd=optimizer)
    model = nlp.get_pipe("earlyexit_ner").model
    shim = model.shims[0]
    assert shim._torch_optimizer is not None and shim._averages
    docs = [nlp.make_doc(text) for text in TEXTS]
    policy = TokenWindowExit(0.3, window=1)
    expected = [(p.label_ids.tolist(), p.exit_layers.tolist()) for p in predict_exits(model, docs, policy)]
    for made in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        copied = made.shims[0]
        assert copied is not shim and copied.encoder is not shim.encoder
        assert copied._torch_optimizer is None and copied._averages == {}
        assert shim._torch_optimizer is not None and shim._averages  # the original keeps its own
        mine, theirs = shim.encoder.state_dict(), copied.encoder.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert copied.tokenizer("Angela Merkel").input_ids == shim.tokenizer("Angela Merkel").input_ids
        got = [(p.label_ids.tolist(), p.exit_layers.tolist()) for p in predict_exits(made, docs, policy)]
        assert got == expected


def test_run_settings_pickle_without_the_threads_blocks():
    settings = ThreadRunSettings(RunSettings(FullDepth(), 1.0, "fp32", "full"))
    inner = RunSettings(FixedDepth(1), 0.5, "bf16", "shallow")
    seen = []
    with settings.pushed(inner):
        assert settings.current is inner
        made = pickle.loads(pickle.dumps(settings))
        deep = copy.deepcopy(settings)
        other = threading.Thread(target=lambda: seen.append(settings.current))
        other.start()
        other.join()
    assert seen == [settings.default]  # another thread never saw the block
    for copied in (made, deep):
        assert copied.current is copied.default
        assert (copied.default.name, copied.default.policy.name, copied.default.precision) == ("full", "full", "fp32")
        with copied.pushed(inner):
            assert copied.current is inner
        assert copied.current is copied.default


WORKER_SCRIPT = """
import json, multiprocessing, sys

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    import spacy
    import spacy_earlyexit  # noqa: F401

    sys.path.insert(0, sys.argv[3])
    from tests.pipeline.test_copy_pickle import answers

    nlp = spacy.load(sys.argv[1])
    texts = json.loads(sys.argv[2])
    docs = list(nlp.pipe(texts, n_process=2, batch_size=2))
    assert multiprocessing.get_start_method() == "spawn"
    print("ANSWERS " + json.dumps(answers(docs)))
"""


@pytest.mark.issue(31)
def test_pipe_with_two_spawned_processes_gives_the_same_output(nlp, calibrated, tmp_path):
    expected = answers(nlp.pipe(TEXTS))
    script = tmp_path / "spawned.py"
    script.write_text(WORKER_SCRIPT, encoding="utf8")
    out = subprocess.run(
        [sys.executable, str(script), str(calibrated), json.dumps(TEXTS), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [row for row in out.stdout.splitlines() if row.startswith("ANSWERS ")][-1]
    assert json.loads(line[len("ANSWERS ") :]) == json.loads(json.dumps(expected))
