"""One early-exit encoder for several tasks (issue 32): `earlyexit_transformer`
and the `earlyexit_ner` / `earlyexit_tagger` components that listen to it."""

import copy
import json
import pickle
import subprocess
import sys

import numpy
import pytest
import spacy
from thinc.api import Config

from spacy_earlyexit.core.tasks import TaskPolicies
from spacy_earlyexit.pipeline.exit_policies import policy_named
from spacy_earlyexit.pipeline.shared import EarlyExitTransformer

from ..conftest import (
    LISTENER,
    PER_TASK,
    REPO,
    model_config,
    ner_examples,
    ner_tagger_examples,
    shared_pipeline,
    train,
)

TEXTS = ["Angela Merkel visited Paris on Tuesday .", "The cat sat on the mat .", "John sat in Berlin .", "Paris"]


@pytest.fixture(scope="module")
def shared(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = shared_pipeline(tiny_model_dir, operating_points={"mixed": PER_TASK})
    return train(nlp, ner_tagger_examples(nlp), steps=60)


@pytest.fixture(scope="module")
def saved(shared, tmp_path_factory):
    """`shared` as saved to disk."""
    path = tmp_path_factory.mktemp("shared") / "pipeline"
    shared.to_disk(path)
    return path


def answers(docs):
    """Entities, tags, every token's exit layers, and each doc's cost record."""
    return [
        {
            "ents": [(e.start, e.end, e.label_) for e in doc.ents],
            "tags": [t.tag_ for t in doc],
            "exits": [t._.exit_layers for t in doc],
            "cost": doc._.earlyexit,
        }
        for doc in docs
    ]


@pytest.mark.issue(32)
def test_the_tasks_are_linked_and_own_slices_of_one_encoder(shared):
    encoder = shared.get_pipe("encoder")
    assert encoder.listening_components == ["earlyexit_ner", "earlyexit_tagger"]
    assert encoder.tasks == ["earlyexit_ner", "earlyexit_tagger"]
    ner, tagger = shared.get_pipe("earlyexit_ner"), shared.get_pipe("earlyexit_tagger")
    assert ner.upstream is encoder and tagger.upstream is encoder
    assert encoder.encoder.n_labels == len(ner.output_labels) + len(tagger.output_labels)
    assert ner.encoder is encoder.encoder  # one encoder, not three


@pytest.mark.issue(32)
def test_one_pass_labels_both_tasks_and_records_each_tasks_exits(shared):
    with shared.get_pipe("encoder").using("mixed"):
        docs = list(shared.pipe(TEXTS))
    assert [e.text for e in docs[0].ents] == ["Angela Merkel", "Paris"]
    assert [t.tag_ for t in docs[1]] == ["DT", "NN", "VBD", "IN", "DT", "NN", "."]
    for doc in docs:
        assert doc._.earlyexit_tasks is None  # each task took its own
        for token in doc:
            layers = token._.exit_layers
            assert layers["earlyexit_ner"] == 1  # fixed depth 1 for entities
            assert layers["encoder"] == max(layers["earlyexit_ner"], layers["earlyexit_tagger"])
            assert token._.exit_layer == layers["encoder"]
        info = doc._.earlyexit
        assert info["earlyexit_ner"]["encoder"] == "encoder" and "encoder" not in info["encoder"]
        # the pass is counted once
        assert doc._.earlyexit_speedup == pytest.approx(info["encoder"]["full_cost"] / info["encoder"]["cost"])


@pytest.mark.issue(32)
def test_a_single_policy_applies_to_every_task(shared):
    encoder = shared.get_pipe("encoder")
    with encoder.using(policy_named("fixed_depth", layer=2)):
        doc = shared(TEXTS[0])
    assert {layer for t in doc for layer in t._.exit_layers.values()} == {2}


@pytest.mark.issue(32)
def test_per_call_settings_belong_to_the_encoder(shared):
    doc = shared(TEXTS[0], component_cfg={"encoder": {"operating_point": "mixed"}})
    assert {t._.exit_layers["earlyexit_ner"] for t in doc} == {1}
    with pytest.raises(ValueError, match="belong to that component"):
        shared(TEXTS[0], component_cfg={"earlyexit_ner": {"operating_point": "full"}})
    with pytest.raises(ValueError, match="belong to that component"):
        shared.get_pipe("earlyexit_tagger").use("full")


@pytest.mark.issue(32)
def test_saved_once_and_loaded_with_the_same_output(shared, saved):
    assert (saved / "encoder" / "model").is_dir()
    for task in ("earlyexit_ner", "earlyexit_tagger"):
        assert not (saved / task / "model").exists()  # the weights are saved once
    loaded = spacy.load(saved)
    for point in ("full", "mixed"):
        with shared.get_pipe("encoder").using(point), loaded.get_pipe("encoder").using(point):
            assert answers(loaded.pipe(TEXTS)) == answers(shared.pipe(TEXTS))
    assert isinstance(loaded.get_pipe("encoder").point("mixed").policy, TaskPolicies)


@pytest.mark.issue(32)
def test_to_bytes_and_back(shared, tiny_model_dir):
    other = shared_pipeline(tiny_model_dir, operating_points={"mixed": PER_TASK})
    other.from_bytes(shared.to_bytes())
    assert isinstance(other.get_pipe("encoder"), EarlyExitTransformer)
    assert answers(other.pipe(TEXTS)) == answers(shared.pipe(TEXTS))


@pytest.mark.issue(32)
def test_copies_and_pickles_give_the_same_output(shared):
    expected = answers(shared.pipe(TEXTS))
    for other in (copy.deepcopy(shared), pickle.loads(pickle.dumps(shared))):
        assert other.get_pipe("earlyexit_ner").upstream is other.get_pipe("encoder")
        assert answers(other.pipe(TEXTS)) == expected


@pytest.mark.issue(32)
def test_a_task_without_its_encoder_says_so(shared, tiny_model_dir):
    with shared.select_pipes(disable=["encoder"]):
        with pytest.raises(ValueError, match="has not run on this doc"):
            shared("Paris")
    orphan = spacy.blank("en")
    orphan.add_pipe("earlyexit_ner", config=LISTENER)
    with pytest.raises(ValueError, match="none is in the pipeline before it"):
        orphan.initialize(lambda: ner_examples(orphan))


@pytest.mark.issue(32)
def test_an_encoder_disabled_task_leaves_a_doc_that_still_serializes(shared):
    with shared.select_pipes(disable=["earlyexit_tagger"]):
        doc = shared(TEXTS[0])
    assert set(doc._.earlyexit_tasks) == {"earlyexit_tagger"}
    again = spacy.tokens.Doc(shared.vocab).from_bytes(doc.to_bytes())
    assert [e.text for e in again.ents] == [e.text for e in doc.ents]


@pytest.mark.issue(32)
def test_single_task_components_and_a_shared_encoder_load_side_by_side(tiny_model_dir, tmp_path):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer", name="encoder", config=model_config(tiny_model_dir))
    nlp.add_pipe("earlyexit_tagger", config=LISTENER)
    nlp.add_pipe("earlyexit_ner", name="own_ner", config=model_config(tiny_model_dir))
    train(nlp, ner_tagger_examples(nlp), steps=5)
    assert nlp.get_pipe("encoder").tasks == ["earlyexit_tagger"]
    assert not nlp.get_pipe("own_ner").listening
    nlp.to_disk(tmp_path / "mixed")
    loaded = spacy.load(tmp_path / "mixed")
    assert answers(loaded.pipe(TEXTS)) == answers(nlp.pipe(TEXTS))


@pytest.mark.issue(32)
def test_training_sums_the_tasks_losses(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = shared_pipeline(tiny_model_dir)
    examples = ner_tagger_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    losses = nlp.update(examples, sgd=optimizer)
    assert losses["encoder"] == pytest.approx(losses["earlyexit_ner"] + losses["earlyexit_tagger"])
    assert losses["earlyexit_ner"] > 0 and losses["earlyexit_tagger"] > 0


@pytest.mark.issue(32)
def test_self_sampling_trains_each_task_at_its_own_exits(tiny_model_dir, saved):
    sampling = {"@misc": "spacy-earlyexit.self_sampling.v1", "min_threshold": 0.2, "max_threshold": 0.9}
    nlp = shared_pipeline(tiny_model_dir, self_sampling=sampling)
    examples = ner_tagger_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    encoder = nlp.get_pipe("encoder")
    (logits, layers), _ = encoder.model.begin_update([eg.predicted for eg in examples])
    assert all(doc_layers.shape == (2, len(eg.predicted)) for doc_layers, eg in zip(layers, examples))
    losses = nlp.update(examples, sgd=optimizer)
    assert numpy.isfinite(losses["encoder"])


@pytest.mark.issue(32)
def test_stage_two_starts_from_the_stage_one_pipeline(tiny_model_dir, saved):
    nlp = shared_pipeline(tiny_model_dir)
    examples = ner_tagger_examples(nlp)
    nlp.config["initialize"]["components"] = {
        name: {"init_from": str(saved)} for name in ("encoder", "earlyexit_ner", "earlyexit_tagger")
    }
    nlp.initialize(lambda: examples)
    assert answers(nlp.pipe(TEXTS)) == answers(spacy.load(saved).pipe(TEXTS))


@pytest.mark.issue(32)
def test_the_workflow_configs_build_a_shared_pipeline(tiny_model_dir):
    for name in ("multitask.cfg", "multitask-selfsample.cfg", "multitask-width.cfg"):
        config = Config().from_disk(REPO / "configs" / name, interpolate=False)
        config["components"]["earlyexit_transformer"]["model"]["name"] = str(tiny_model_dir)
        policy = config["components"]["earlyexit_transformer"]["exit_policy"]
        if "layer_thresholds" in policy:
            policy["layer_thresholds"] = [0.1, 0.1, 0.2]
        nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
        assert nlp.get_pipe("earlyexit_transformer").listening_components == ["earlyexit_ner", "earlyexit_tagger"]


SPAWN_SCRIPT = """
import json, multiprocessing, sys

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    import spacy
    import spacy_earlyexit  # noqa: F401

    sys.path.insert(0, sys.argv[3])
    from tests.pipeline.test_shared import answers

    nlp = spacy.load(sys.argv[1])
    docs = list(nlp.pipe(json.loads(sys.argv[2]), n_process=2, batch_size=2))
    print("ANSWERS " + json.dumps(answers(docs)))
"""


@pytest.mark.issue(32)
def test_pipe_with_two_spawned_processes(saved, tmp_path):
    expected = json.loads(json.dumps(answers(spacy.load(saved).pipe(TEXTS))))
    script = tmp_path / "spawned.py"
    script.write_text(SPAWN_SCRIPT, encoding="utf8")
    out = subprocess.run(
        [sys.executable, str(script), str(saved), json.dumps(TEXTS), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("ANSWERS "))
    assert json.loads(line[len("ANSWERS ") :]) == expected


@pytest.mark.issue(32)
def test_a_removed_task_is_no_longer_trained_or_handed_predictions(saved):
    nlp = spacy.load(saved)
    nlp.remove_pipe("earlyexit_tagger")
    encoder = nlp.get_pipe("encoder")
    assert encoder.listening_components == ["earlyexit_ner"] and encoder.task_component("earlyexit_tagger") is None
    doc = nlp(TEXTS[0])
    assert doc._.earlyexit_tasks is None and [e.text for e in doc.ents] == ["Angela Merkel", "Paris"]
    losses = nlp.update(ner_tagger_examples(nlp))
    assert "earlyexit_tagger" not in losses and losses["encoder"] == pytest.approx(losses["earlyexit_ner"])


def _head_gradients(tiny_model_dir, ner_weight: float):
    """The exit classifiers' gradients after one update (no dropout, no
    optimizer step) with the NER listener's `loss_weight` at `ner_weight`."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer", name="encoder", config=model_config(tiny_model_dir))
    ner_listener = {"model": {**LISTENER["model"], "loss_weight": ner_weight}}
    nlp.add_pipe("earlyexit_ner", config=ner_listener)
    nlp.add_pipe("earlyexit_tagger", config=LISTENER)
    examples = ner_tagger_examples(nlp)
    nlp.initialize(lambda: examples)
    encoder = nlp.get_pipe("encoder")
    losses = encoder.update(examples, drop=0.0, sgd=None)
    ner, tags = encoder._slices()
    grads = [head.weight.grad.detach().clone() for head in encoder.encoder.heads]
    return losses, [g[ner] for g in grads], [g[tags] for g in grads]


@pytest.mark.issue(32)
def test_a_listeners_loss_weight_scales_its_tasks_gradients_only(tiny_model_dir):
    losses_1, ner_1, tags_1 = _head_gradients(tiny_model_dir, 1.0)
    # 2: a power of two, exact in bf16 as in fp32
    losses_2, ner_2, tags_2 = _head_gradients(tiny_model_dir, 2.0)
    # each task's own loss is recorded as it is, the encoder's total weighted
    assert losses_2["earlyexit_ner"] == pytest.approx(losses_1["earlyexit_ner"], rel=1e-5)
    total = 2.0 * losses_1["earlyexit_ner"] + losses_1["earlyexit_tagger"]
    assert losses_2["encoder"] == pytest.approx(total, rel=1e-5)
    for a, b in zip(ner_1, ner_2):
        assert float(a.abs().sum()) > 0
        numpy.testing.assert_allclose(b.numpy(), 2.0 * a.numpy(), rtol=1e-4, atol=1e-7)
    for a, b in zip(tags_1, tags_2):
        numpy.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weight", [0, -1.0, float("inf"), True, "2"])
def test_a_loss_weight_that_is_not_a_positive_number_is_refused(tiny_model_dir, weight):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_transformer", name="encoder", config=model_config(tiny_model_dir))
    with pytest.raises(ValueError, match="loss_weight"):
        nlp.add_pipe("earlyexit_ner", config={"model": {**LISTENER["model"], "loss_weight": weight}})
