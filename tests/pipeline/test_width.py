"""Adaptive width (DynaBERT): rewiring, width slicing, cost, the component's menu."""

import copy
import json
import pickle
import warnings

import numpy
import pytest
import spacy
import torch

from spacy_earlyexit.core.cost import LayerCost
from spacy_earlyexit.core.importance import compute_importance, rewire
from spacy_earlyexit.core.policies import FullDepth, TokenWindowExit
from spacy_earlyexit.core.width import kept

from ..conftest import NER_DATA, four_head_encoder, make_tiny_bert_dir, model_config, ner_examples, random_batch, train

# most tests run narrow widths on a pipeline that was never rewired, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*never ranked by importance:UserWarning")

WIDTHS = (0.25, 0.5, 0.75, 1.0)
TEXTS = [text for text, _ in NER_DATA] + ["Merkel and John visited the cat .", "", "Paris", "John " * 30 + "."]


def importance_batches(encoder, batch, seed=0):
    gold = torch.randint(0, encoder.n_labels, (batch.n_words,), generator=torch.Generator().manual_seed(seed))
    loss = lambda logits: torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), gold.repeat(logits.shape[0])
    )
    return [(batch, loss)]


def test_rewiring_changes_no_output_at_any_exit():
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    with torch.no_grad():
        before = encoder(batch)
    policy = TokenWindowExit(0.5, window=1)
    early_before = encoder.predict(batch, policy)
    query_before = [v.q.weight.clone() for v in encoder.layer_views]
    rewire(encoder, compute_importance(encoder, importance_batches(encoder, batch)))
    assert encoder.width_rewired
    assert any(not torch.equal(v.q.weight, w) for v, w in zip(encoder.layer_views, query_before))
    with torch.no_grad():
        assert torch.allclose(encoder(batch), before, atol=1e-5)
    early_after = encoder.predict(batch, policy)
    assert torch.equal(early_after.labels, early_before.labels)
    assert torch.equal(early_after.exit_layers, early_before.exit_layers)


def test_after_rewiring_the_most_important_come_first():
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    batches = importance_batches(encoder, batch)
    rewire(encoder, compute_importance(encoder, batches))
    again = compute_importance(encoder, batches)
    for scores in (again.heads, again.neurons):
        assert bool((scores[:, :-1] >= scores[:, 1:] - 1e-6).all())


def test_importance_leaves_gradients_and_mode_alone():
    encoder = four_head_encoder().train()
    batch = random_batch([4, 2])
    importance = compute_importance(encoder, importance_batches(encoder, batch))
    assert importance.heads.shape == (3, 4) and importance.neurons.shape == (3, 48)
    assert bool((importance.heads >= 0).all()) and bool(importance.heads.any())
    assert encoder.training
    assert all(p.grad is None for p in encoder.parameters())


def _old_dense_layer(encoder, index, hidden):
    """The layer as the loop ran it before widths: every sub-module called directly."""
    view = encoder._views[index]
    B, T, d = hidden.shape
    H, dh = encoder.n_heads, d // encoder.n_heads
    split = lambda x: x.view(B, T, H, dh).transpose(1, 2)
    context = torch.nn.functional.scaled_dot_product_attention(
        split(view.q(hidden)), split(view.k(hidden)), split(view.v(hidden))
    )
    attn = view.attn_norm(hidden + view.o(context.transpose(1, 2).reshape(B, T, d)))
    return view.ff_norm(attn + view.ff_out(view.act(view.ff_in(attn))))


def test_width_one_is_bit_identical_to_the_full_model():
    encoder = four_head_encoder()
    batch = random_batch([6, 6])  # no padding: the dense path
    for index, view in enumerate(encoder.layer_views):
        weights = encoder.layer_weights(index, 1.0)
        assert weights.q[0] is view.q.weight and weights.ff_out[0] is view.ff_out.weight
    with torch.no_grad():
        hidden = encoder.embed(batch)
        for index in range(encoder.n_layers):
            expected = _old_dense_layer(encoder, index, hidden)
            hidden = encoder._run_layer(index, hidden, batch.piece_mask, batch.piece_mask, 1.0)
            assert torch.equal(hidden, expected)
        assert torch.equal(encoder(batch, width=1.0), encoder(batch))
    out, full = encoder.predict(batch, FullDepth(), width=1.0), encoder.predict(batch, FullDepth())
    assert torch.equal(out.labels, full.labels) and torch.equal(out.cost, full.cost)


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75])
def test_a_width_equals_the_full_model_with_the_rest_switched_off(width):
    """Width m keeps the first heads and neurons: it computes what the full
    model computes with the other heads' and neurons' outputs zeroed."""
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    with torch.no_grad():
        narrow = encoder(batch, width=width)
        for view in encoder.layer_views:
            view.o.weight[:, kept(width, 4) * 6 :] = 0.0
            view.ff_out.weight[:, kept(width, 48) :] = 0.0
        assert torch.allclose(narrow, encoder(batch), atol=1e-5)


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_inference_packs_each_width_once_and_follows_weight_changes(width):
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    with torch.no_grad():
        packed = encoder.inference_layer(0, width)
        assert packed.n_heads == kept(width, 4)
        assert encoder.inference_layer(0, width) is packed  # made once
        first = encoder.predict(batch, FullDepth(), width=width).labels
    # a training step changes the weights in place: the packed copies follow
    encoder.train()
    optimizer = torch.optim.SGD(encoder.parameters(), lr=10.0)
    encoder(batch, width=width).pow(2).sum().backward()
    optimizer.step()
    encoder.eval()
    with torch.no_grad():
        assert encoder.inference_layer(0, width) is not packed
        expected = encoder(batch, width=width)
    with torch.enable_grad():
        unpacked = encoder(batch, width=width)  # autograd: the plain slices
    assert torch.allclose(expected, unpacked, atol=1e-5)
    assert first.shape == encoder.predict(batch, FullDepth(), width=width).labels.shape


def test_copies_of_an_encoder_leave_packed_weights_behind():
    encoder = four_head_encoder()
    with torch.no_grad():
        encoder.predict(random_batch([4, 2]), FullDepth(), width=0.5)
    assert encoder._packed
    assert copy.deepcopy(encoder)._packed == {}
    assert pickle.loads(pickle.dumps(encoder))._packed == {}


def test_training_at_a_width_updates_only_what_it_keeps():
    encoder = four_head_encoder().train()
    encoder(random_batch([5, 3]), width=0.5).sum().backward()
    view = encoder.layer_views[0]
    assert view.q.weight.grad[:12].any() and not view.q.weight.grad[12:].any()
    assert view.ff_in.weight.grad[:24].any() and not view.ff_in.weight.grad[24:].any()


def test_cost_falls_with_width_and_is_unchanged_at_full_width():
    encoder = four_head_encoder()
    batch = random_batch([7, 3, 5])
    outputs = [encoder.predict(batch, TokenWindowExit(0.3, window=1), width=w) for w in WIDTHS]
    costs = [float(out.cost.sum()) for out in outputs]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert all(torch.equal(out.full_cost, outputs[-1].full_cost) for out in outputs)
    cost = LayerCost(24, 48, 5, n_heads=4)
    n, q = torch.tensor([9.0]), torch.tensor([4.0])
    d, f = 24, 48
    assert torch.equal(cost.layer(n, q, 1.0), 2 * n * d * d + 2 * q * d * d + 2 * q * n * d + 2 * q * d * f)
    assert torch.equal(cost.layer(n, q), cost.layer(n, q, 1.0))


@pytest.mark.parametrize("bad", [0, 1.5, float("nan"), -0.5, True, "0.5"])
def test_bad_widths_are_clear_errors_in_the_encoder(bad):
    encoder = four_head_encoder()
    with pytest.raises(ValueError, match=r"width multiplier must be a number in \(0, 1\]"):
        encoder.predict(random_batch([3]), width=bad)


# -- the component ----------------------------------------------------------------
POINTS = {
    "half": {"policy": "token_window", "threshold": 0.1, "window": 1, "width": 0.5},
    "fast": {"policy": "token_window", "threshold": 0.1, "window": 1},
}


@pytest.fixture(scope="module")
def width_pipeline(tmp_path_factory):
    """A trained four-head NER pipeline with width operating points, saved
    before rewiring (the copy each test loads)."""
    model_dir = make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert_4h"), heads=4)
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(model_dir), "operating_points": POINTS})
    train(nlp, ner_examples(nlp), steps=40)
    path = tmp_path_factory.mktemp("width_pipeline") / "ner"
    nlp.to_disk(path)
    return path


def _predictions(nlp, texts, batch_size=64):
    return [
        ([(e.start, e.end, e.label_) for e in doc.ents], [t._.exit_layer for t in doc])
        for doc in nlp.pipe(texts, batch_size=batch_size)
    ]


def test_rewire_for_width_keeps_predictions_and_is_saved(width_pipeline, tmp_path):
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.use("fast")
    before = _predictions(nlp, TEXTS)
    speedups = [nlp(text)._.earlyexit_speedup for text in TEXTS]
    importance = ner.rewire_for_width(ner_examples(nlp), batch_size=2)
    encoder = ner.encoder
    assert importance.heads.shape == (encoder.n_layers, 4) and encoder.width_rewired
    assert _predictions(nlp, TEXTS) == before
    assert [nlp(text)._.earlyexit_speedup for text in TEXTS] == pytest.approx(speedups)
    with ner.using(width=0.5):
        narrow = _predictions(nlp, TEXTS)
    nlp.to_disk(tmp_path / "rewired")
    loaded = spacy.load(tmp_path / "rewired")
    loaded_ner = loaded.get_pipe("earlyexit_ner")
    loaded_encoder = loaded_ner.encoder
    assert loaded_encoder.width_rewired
    saved = loaded_encoder.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in encoder.state_dict().items())
    assert loaded_ner.width_multipliers == WIDTHS
    with loaded_ner.using("fast", width=0.5):
        assert _predictions(loaded, TEXTS) == narrow
    from_bytes = spacy.util.load_model_from_config(loaded.config).from_bytes(loaded.to_bytes())
    assert from_bytes.get_pipe("earlyexit_ner").encoder.width_rewired


def test_a_pipeline_saved_before_widths_loads_as_not_rewired(width_pipeline, tmp_path):
    nlp = spacy.load(width_pipeline)
    nlp.to_disk(tmp_path / "old")
    exits_file = tmp_path / "old" / "earlyexit_ner" / "model" / "exits.json"
    exits = json.loads(exits_file.read_text())
    assert exits.pop("width_rewired") is False
    exits_file.write_text(json.dumps(exits))
    assert not spacy.load(tmp_path / "old").get_pipe("earlyexit_ner").encoder.width_rewired


def test_a_narrow_width_without_rewiring_warns(width_pipeline):
    with pytest.warns(UserWarning, match="rewire_for_width"):
        spacy.load(width_pipeline, config={"components.earlyexit_ner.operating_point": "half"})
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    with pytest.warns(UserWarning, match="arbitrary"):
        ner.width = 0.75
    ner.rewire_for_width(ner_examples(nlp))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ner.width = 0.25


def test_rewiring_needs_gold_annotation(width_pipeline):
    nlp = spacy.load(width_pipeline)
    from spacy.training import Example

    unannotated = [Example.from_dict(nlp.make_doc(text), {}) for text, _ in NER_DATA]
    with pytest.raises(ValueError, match="no gold annotation"):
        nlp.get_pipe("earlyexit_ner").rewire_for_width(unannotated)


@pytest.mark.parametrize("width", WIDTHS)
def test_every_width_is_batch_invariant_and_pipe_equals_call(width_pipeline, width):
    nlp = spacy.load(width_pipeline, config={"components.earlyexit_ner.width": width})
    ner = nlp.get_pipe("earlyexit_ner")
    assert ner.width == width
    for policy in (FullDepth(), TokenWindowExit(0.1, window=1)):
        with ner.using(policy):
            together = _predictions(nlp, TEXTS, batch_size=len(TEXTS))
            assert _predictions(nlp, TEXTS, batch_size=1) == together
            assert [
                ([(e.start, e.end, e.label_) for e in d.ents], [t._.exit_layer for t in d])
                for d in (nlp(text) for text in TEXTS)
            ] == together


def test_operating_points_switch_width_and_policy_and_speedup_reflects_width(width_pipeline):
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    text = NER_DATA[0][0]
    full = nlp(text)._.earlyexit["earlyexit_ner"]
    assert isinstance(ner.use("half"), TokenWindowExit) and ner.width == 0.5
    with ner.using("full"):
        assert ner.width == 1.0 and isinstance(ner.exit_policy, FullDepth)
        with ner.using(width=0.25):
            assert ner.operating_point is None
            narrow = nlp(text)._.earlyexit["earlyexit_ner"]
    assert ner.width == 0.5 and ner.operating_point == "half"
    ner.use("fast")
    assert ner.width == 1.0
    assert narrow["width"] == 0.25 and full["width"] == 1.0
    assert narrow["full_cost"] == full["full_cost"] and narrow["cost"] < full["cost"]
    assert narrow["speedup"] > full["speedup"] == pytest.approx(1.0)


def test_setting_a_width_or_policy_by_hand_leaves_the_named_point(width_pipeline):
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.use("half")
    ner.width = 1.0
    assert ner.operating_point is None
    ner.use("half")
    ner.exit_policy = FullDepth()
    assert ner.operating_point is None and ner.width == 0.5
    ner.use("half")
    with ner.using(FullDepth()):
        assert ner.operating_point is None
    assert ner.operating_point == "half" and isinstance(ner.exit_policy, TokenWindowExit)


def test_narrow_predictions_follow_training_steps_of_the_components_optimizer(width_pipeline):
    """Fused AdamW (the component's update) writes the weights without bumping
    their versions: the packed copies of a narrow width must still follow."""
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.width = 0.5
    texts = [text for text, _ in NER_DATA]
    before = [d.label_probs for d in ner.predict([nlp.make_doc(t) for t in texts])]  # packs width 0.5
    optimizer = nlp.resume_training()
    optimizer.learn_rate = 0.02
    for _ in range(5):
        nlp.update(ner_examples(nlp), sgd=optimizer)
    after = [d.label_probs for d in ner.predict([nlp.make_doc(t) for t in texts])]
    fresh = spacy.util.load_model_from_config(nlp.config).from_bytes(nlp.to_bytes())
    fresh_ner = fresh.get_pipe("earlyexit_ner")
    fresh_ner.width = 0.5
    expected = [d.label_probs for d in fresh_ner.predict([fresh.make_doc(t) for t in texts])]
    assert any(not numpy.allclose(b, a, atol=1e-4) for b, a in zip(before, after))  # training changed them
    for got, want in zip(after, expected):
        numpy.testing.assert_allclose(got, want, atol=1e-5)


def test_operating_point_with_width_round_trips_through_the_config(width_pipeline):
    nlp = spacy.load(width_pipeline, config={"components.earlyexit_ner.operating_point": "half"})
    ner = nlp.get_pipe("earlyexit_ner")
    assert ner.operating_point == "half" and ner.width == 0.5
    assert ner.exit_policy.params()["threshold"] == 0.1
    assert nlp(NER_DATA[0][0])._.earlyexit["earlyexit_ner"]["width"] == 0.5


def test_a_custom_width_menu_is_kept(width_pipeline, tmp_path):
    menu = [1.0, 0.6, 0.5]  # "half" needs 0.5
    nlp = spacy.load(width_pipeline, config={"components.earlyexit_ner.width_multipliers": menu})
    assert nlp.get_pipe("earlyexit_ner").width_multipliers == (0.5, 0.6, 1.0)
    nlp.to_disk(tmp_path / "menu")
    loaded = spacy.load(tmp_path / "menu").get_pipe("earlyexit_ner")
    assert loaded.width_multipliers == (0.5, 0.6, 1.0)
    loaded.width = 0.6
    with pytest.raises(ValueError, match=r"width 0.25 is not in the width menu \[0.5, 0.6, 1.0\]"):
        loaded.width = 0.25


@pytest.mark.parametrize("bad", [["half"], None, 2])
def test_an_operating_point_that_is_not_a_name_is_a_clear_error(width_pipeline, bad):
    ner = spacy.load(width_pipeline).get_pipe("earlyexit_ner")
    ner.use("half")
    with pytest.raises(TypeError, match="operating point is a name"):
        ner.use(bad)
    assert ner.operating_point == "half" and ner.width == 0.5


@pytest.mark.parametrize("bad", [0, 1.5, float("nan"), 0.3])
def test_bad_widths_are_clear_errors_in_the_component(width_pipeline, bad):
    nlp = spacy.load(width_pipeline)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.use("half")
    with pytest.raises(ValueError, match="'earlyexit_ner':.*width"):
        ner.width = bad
    with pytest.raises(ValueError, match="width"):
        with ner.using("full", width=bad):
            pass
    assert ner.width == 0.5 and ner.operating_point == "half"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"width": 0.3}, "not in the width menu"),
        ({"width": 1.5}, r"in \(0, 1\]"),
        ({"width_multipliers": [0.5]}, "must include 1.0"),
        ({"width_multipliers": [0.0, 1.0]}, r"in \(0, 1\]"),
        ({"operating_points": {"x": {"policy": "full", "width": 0.3}}}, "operating point 'x'.*not in the width menu"),
    ],
)
def test_bad_width_settings_fail_when_the_component_is_made(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        spacy.blank("en").add_pipe("earlyexit_ner", config={**model_config(tmp_path), **settings})
