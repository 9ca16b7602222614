"""Calibration: its trace and simulation, tested directly against inference
(they share its batching and its cost count), the choice among candidates,
and the points it writes."""

import pytest
import spacy
import torch
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_earlyexit.core.policies import FixedDepth, TokenWindowExit, stability_counts
from spacy_earlyexit.tools.calibrate import (
    CalibratedPoint,
    Candidate,
    candidates,
    choose,
    choose_fastest,
    run_calibration,
    run_retime,
    simulate,
    simulated_score,
    trace,
)
from spacy_earlyexit.tools.calibrate.search import timing_sample
from spacy_earlyexit.tools.evaluation import fresh_copy, measure, measurement

from ..conftest import model_config, ner_corpus, ner_examples, tag_examples, train


@pytest.fixture(scope="module")
def ner(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "precision": "fp32"})
    return train(nlp, ner_examples(nlp))


def test_trace_holds_what_full_depth_inference_predicts(ner):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    tr = trace(ner, component, examples)
    last = tr.labels[:, -1]
    for d, eg in enumerate(examples):
        pred = component.predict([fresh_copy(eg.predicted)])[0]
        traced = last[tr.owner_sequence[d], tr.owner_word[d]]
        assert traced.tolist() == pred.label_ids.tolist()


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_simulated_cost_of_a_fixed_depth_is_what_inference_spends(ner, layer):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    _, simulated = simulate(trace(ner, component, examples), component, Candidate(layer=layer))
    real = measure(ner, "earlyexit_ner", examples, measurement("fixed_depth", layer=layer), batch_size=8)
    assert simulated == pytest.approx(real.flops_speedup, rel=1e-9)


def test_simulated_exits_follow_the_token_window_rule(ner):
    component = ner.get_pipe("earlyexit_ner")
    examples = ner_examples(ner)
    tr = trace(ner, component, examples)
    candidate = Candidate(window=1, threshold=0.3, upper_factor=2.0)
    exits, speedup = simulate(tr, component, candidate)
    assert speedup >= 1.0
    L = tr.labels.shape[1]
    policy = candidate.policy(L)
    assert policy.layer_thresholds == [0.3] * (L // 2) + [0.6] * (L - L // 2)
    for s in range(exits.shape[0]):
        words = tr.word_mask[s]
        for index in range(L - 1):
            below = policy.exits(index, L, tr.uncertainty[s : s + 1, index], words[None], words[None])[0]
            leaving = (exits[s] == index + 1) & words
            # a word leaves at the first layer where its window is certain
            assert torch.equal(leaving, below & words & (exits[s] > index))


def test_predict_reports_the_cost_of_its_own_exits(ner):
    component = ner.get_pipe("earlyexit_ner")
    doc = ner.make_doc("Angela Merkel visited Paris on Tuesday and Berlin on Friday .")
    for policy in (FixedDepth(2), TokenWindowExit(0.3, 1)):
        with component.using(policy):
            pred = component.predict([doc])[0]
        assert 0 < pred.cost <= pred.full_cost


def test_calibration_writes_points_that_load_by_name(trained_ner, tmp_path):
    source = tmp_path / "trained"
    trained_ner.to_disk(source)
    dev = ner_corpus(trained_ner, tmp_path / "dev.spacy")
    result = run_calibration(
        str(source), dev, tmp_path / "calibrated", targets=(2.0, 100.0), max_drop=0.5, progress=lambda line: None
    )
    by_name = {p["name"]: p for p in result["points"]}
    assert by_name["2x"]["reached"] and by_name["2x"]["dev_flops_speedup"] >= 2.0 * result["margin"] * 0.995
    assert not by_name["100x"]["reached"] and "not reached" in by_name["100x"]["note"]
    assert by_name["max-drop"]["reached"] and by_name["max-drop"]["dev_score"] >= result["full"]["dev_score"] - 0.005
    nlp = spacy.load(tmp_path / "calibrated")
    ner = nlp.get_pipe("earlyexit_ner")
    assert set(ner.operating_points) == {"2x", "max-drop"}
    assert ner.operating_point == result["default"] == "max-drop"
    assert nlp.meta["earlyexit"]["points"][0]["name"] == "2x"
    assert any(r.startswith("spacy-earlyexit") for r in nlp.meta["requirements"])
    doc = nlp("Angela Merkel visited Paris on Tuesday .")
    assert doc._.earlyexit_speedup >= 1.0
    fast = spacy.load(tmp_path / "calibrated", config={"components.earlyexit_ner.operating_point": "2x"})
    assert fast.get_pipe("earlyexit_ner").operating_point == "2x"
    assert fast.get_pipe("earlyexit_ner").exit_policy.params() == {k: v for k, v in by_name["2x"]["params"].items()} | {
        "uncertainty": "entropy"
    }
    assert fast("Angela Merkel visited Paris on Tuesday .")._.earlyexit_speedup > 1.0


class _FakeComponent:
    encoder = type("Encoder", (), {"n_layers": 6})()


FLAT_CURVE = {0.05: (0.9140, 2.12), 0.1: (0.9141, 2.45), 0.2: (0.9143, 2.88), 0.3: (0.9000, 3.3)}


def _choose_on_a_flat_curve(margin, tolerance, curve=FLAT_CURVE, target=2.0):
    """By default: candidates whose dev score barely moves between 2.1x and 2.9x, then falls."""
    simulated = [Candidate(2, t, 1.0, score=s, speedup=x) for t, (s, x) in curve.items()]
    point = CalibratedPoint(f"{target:g}x", target, "speedup")
    choose(
        None,
        "ner",
        [],
        _FakeComponent(),
        simulated,
        point,
        0.9141,
        lambda line: None,
        margin=margin,
        tolerance=tolerance,
        real=lambda nlp, name, examples, point: curve[point.policy.threshold],
    )
    return point


def test_calibration_keeps_the_least_aggressive_of_tied_points():
    point = _choose_on_a_flat_curve(margin=1.0, tolerance=0.1)
    assert point.reached and point.point.policy.threshold == 0.05 and point.flops_speedup == 2.12
    greedy = _choose_on_a_flat_curve(margin=1.0, tolerance=0.0)
    assert greedy.point.policy.threshold == 0.2  # without a tolerance the best dev score wins, at 2.88x


def test_calibration_takes_the_better_score_when_speedups_are_close():
    curve = {0.25: (0.9105, 3.21), 0.2: (0.9126, 3.25)}
    point = _choose_on_a_flat_curve(margin=1.05, tolerance=0.25, curve=curve, target=3.0)
    assert point.point.policy.threshold == 0.2 and point.dev_score == 0.9126


def test_calibration_seeks_speedup_targets_with_a_margin():
    point = _choose_on_a_flat_curve(margin=1.1, tolerance=0.1)
    assert point.reached and point.flops_speedup >= 2.2 and point.point.policy.threshold == 0.1
    unreachable = _choose_on_a_flat_curve(margin=2.0, tolerance=0.1)
    assert not unreachable.reached and "margin 2" in unreachable.note


def test_calibration_holds_fixed_depths_to_the_target_itself():
    """A fixed depth costs the same on any text: it needs no margin, while a
    TOKEE setting at the same dev speed-up does."""

    def real(nlp, name, examples, point):
        return (0.93, 3.0) if point.policy.name == "fixed_depth" else (0.92, 3.0)

    simulated = [Candidate(layer=2, score=0.93, speedup=3.0), Candidate(1, 0.3, 1.0, score=0.92, speedup=3.0)]
    point = CalibratedPoint("3x", 3.0, "speedup")
    choose(
        None,
        "tagger",
        [],
        _FakeComponent(),
        simulated,
        point,
        0.94,
        lambda line: None,
        margin=1.05,
        tolerance=0.25,
        real=real,
    )
    assert point.reached and point.point.to_spec() == {"policy": "fixed_depth", "layer": 2}
    tokee_only = CalibratedPoint("3x", 3.0, "speedup")
    choose(
        None,
        "tagger",
        [],
        _FakeComponent(),
        simulated[1:],
        tokee_only,
        0.94,
        lambda line: None,
        margin=1.05,
        tolerance=0.25,
        real=real,
    )
    assert not tokee_only.reached and "margin 1.05" in tokee_only.note


def _documents_with_sentences(nlp, copies=3):
    sentences = [eg.reference for eg in ner_examples(nlp)]
    docs = []
    for _ in range(copies):
        doc = Doc.from_docs(sentences)
        starts = {0}
        for sent in sentences[:-1]:
            starts.add(max(starts) + len(sent))
        for token in doc:
            token.is_sent_start = token.i in starts
        docs.append(doc)
    return docs


def test_calibration_and_evaluation_report_both_shapes(trained_ner, tmp_path):
    from spacy_earlyexit.tools.calibrate import run_calibration
    from spacy_earlyexit.tools.evaluate_points import evaluate_operating_points

    trained_ner.to_disk(tmp_path / "trained")
    dev = tmp_path / "dev.spacy"
    docs = _documents_with_sentences(trained_ner)
    assert all(len(list(doc.sents)) == 3 for doc in docs)
    DocBin(docs=docs).to_disk(dev)
    result = run_calibration(
        str(tmp_path / "trained"), str(dev), tmp_path / "calibrated", targets=(2.0,), progress=lambda line: None
    )
    assert result["full"]["dev_score_sentences"] is not None
    reached = [p for p in result["points"] if p["reached"]]
    assert reached and all(p["dev_score_sentences"] is not None for p in reached)
    test = evaluate_operating_points(str(tmp_path / "calibrated"), str(dev), rounds=1, progress=lambda line: None)
    assert test["full"]["test_score_sentences"] is not None and test["full"]["words_per_second_sentences"] > 0
    assert all(p["test_score_sentences"] is not None for p in test["points"] if p["reached"])
    # the default point was timed on dev (the real timing, on this machine), the speed targets were not
    by_name = {p["name"]: p for p in test["points"]}
    assert by_name["max-drop"]["ranked_by"] == "speed" and by_name["max-drop"]["dev_wps_ratio"] > 0
    assert by_name["2x"]["ranked_by"] == "flops" and by_name["2x"]["dev_wps_ratio"] is None
    # a corpus without sentence marks: no sentence figures, nothing made up
    plain = tmp_path / "plain.spacy"
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)]).to_disk(plain)
    result = run_calibration(
        str(tmp_path / "trained"), str(plain), tmp_path / "plain-calibrated", targets=(2.0,), progress=lambda line: None
    )
    assert result["full"]["dev_score_sentences"] is None


def test_calibration_searches_width_and_exit_jointly_and_alone(four_head_stage, tmp_path):
    from spacy.tokens import DocBin

    from spacy_earlyexit.tools.calibrate import run_calibration
    from spacy_earlyexit.tools.evaluate_points import evaluate_operating_points

    _, source = four_head_stage
    nlp = spacy.load(source)
    ner = nlp.get_pipe("earlyexit_ner")
    ner.rewire_for_width(ner_examples(nlp))
    nlp.to_disk(tmp_path / "rewired")
    dev = tmp_path / "dev.spacy"
    DocBin(docs=[eg.reference for eg in ner_examples(nlp)] * 4).to_disk(dev)
    result = run_calibration(
        str(tmp_path / "rewired"),
        str(dev),
        tmp_path / "calibrated",
        targets=(1.5,),
        max_drop=None,
        progress=lambda line: None,
        margin=1.0,
    )
    assert result["widths"] == [1.0, 0.75, 0.5, 0.25]
    by_name = {p["name"]: p for p in result["points"]}
    assert set(by_name) == {"1_5x", "1_5x-exit", "1_5x-width"}
    assert by_name["1_5x-exit"]["params"].get("width", 1.0) == 1.0
    width_only = by_name["1_5x-width"]
    assert width_only["reached"] and width_only["policy"] == "full" and width_only["params"]["width"] < 1.0
    # the joint search sees every candidate of the other two: it is at least as good on dev
    reached = [p for p in by_name.values() if p["reached"]]
    assert by_name["1_5x"]["reached"]
    assert by_name["1_5x"]["dev_score"] >= max(p["dev_score"] for p in reached) - 0.0025 * 2
    loaded = spacy.load(tmp_path / "calibrated")
    loaded_ner = loaded.get_pipe("earlyexit_ner")
    loaded_ner.use("1_5x-width")
    assert loaded_ner.width == width_only["params"]["width"]
    doc = loaded("Angela Merkel visited Paris on Tuesday .")
    assert doc._.earlyexit_speedup == pytest.approx(width_only["dev_flops_speedup"], rel=0.5)
    # test figures of every point, width-only included, measured at its width
    test = evaluate_operating_points(str(tmp_path / "calibrated"), str(dev), rounds=1, progress=lambda line: None)
    rows = {row["name"]: row for row in test["points"]}
    assert rows["1_5x-width"]["flops_speedup"] > 1.0 and rows["1_5x-width"]["search"] == "width"


def test_simulated_exits_follow_the_patience_and_sentence_rules(ner):
    component = ner.get_pipe("earlyexit_ner")
    tr = trace(ner, component, ner_examples(ner))
    L = tr.labels.shape[1]
    stable = stability_counts(tr.labels)  # [S, L, W]
    exits, speedup = simulate(tr, component, Candidate(patience=1))
    held = torch.cat([stable[:, :-1] >= 1, torch.ones_like(stable[:, -1:], dtype=torch.bool)], dim=1)
    expected = held.float().argmax(1) + 1  # the first layer whose label equals the one before, else the last
    assert torch.equal(exits[tr.word_mask], expected[tr.word_mask]) and speedup >= 1.0
    sentence = Candidate(0, 0.3, 1.0, sentence=True)
    exits, _ = simulate(tr, component, sentence)
    for s in range(exits.shape[0]):
        words = tr.word_mask[s]
        assert len(set(exits[s][words].tolist())) == 1  # a sentence leaves as a whole
    assert {c.kind for c in candidates(n_layers=L)} == {"token_window", "sentence", "token_patience", "fixed_depth"}


def _fastest_within(drop, real_scores, ratios):
    """max-drop by measured speed over candidates of four families, with the
    real runs and the timings given."""
    simulated = [
        Candidate(layer=2, score=0.93, speedup=3.0),
        Candidate(layer=1, score=0.90, speedup=6.0),  # outside the drop already in simulation
        Candidate(1, 0.3, 1.0, score=0.935, speedup=2.5),
        Candidate(0, 0.2, 1.0, score=0.935, speedup=2.2, sentence=True),
        Candidate(patience=2, score=0.936, speedup=1.8),
    ]
    point = CalibratedPoint("max-drop", drop, "max_drop")
    timed = []

    def timer(nlp, name, examples, points):
        timed.append([p.policy.name for p in points])
        return [ratios[p.policy.name] for p in points]

    choose_fastest(
        None,
        "ner",
        [],
        _FakeComponent(),
        simulated,
        point,
        0.94,
        lambda line: None,
        real=lambda nlp, name, examples, p: real_scores[p.policy.name],
        timer=timer,
    )
    return point, timed


def test_max_drop_is_the_fastest_measured_point_within_the_drop():
    real_scores = {"fixed_depth": (0.93, 3.0), "token_window": (0.936, 2.5), "sentence": (0.90, 2.2)}
    real_scores["token_patience"] = (0.937, 1.8)
    ratios = {"fixed_depth": 2.6, "token_window": 1.9, "token_patience": 1.5}
    point, timed = _fastest_within(1.5, real_scores, ratios)
    # the sentence candidate fell out of the drop in its real run: it is not timed
    assert timed == [["fixed_depth", "token_window", "token_patience"]]
    assert point.reached and point.ranked_by == "speed" and point.point.policy.name == "fixed_depth"
    assert point.dev_wps_ratio == 2.6 and point.flops_speedup == 3.0 and point.point.name == "max-drop"
    assert [t["dev_wps_ratio"] for t in point.timed] == [2.6, 1.9, 1.5]
    # the same candidates where token exit is the faster in wall-clock
    point, _ = _fastest_within(1.5, real_scores, {**ratios, "token_window": 2.9})
    assert point.point.policy.name == "token_window" and point.dev_wps_ratio == 2.9


def test_calibration_keeps_timed_candidates_and_retime_chooses_again(trained_ner, tmp_path):
    source = tmp_path / "trained"
    trained_ner.to_disk(source)
    dev = ner_corpus(trained_ner, tmp_path / "dev.spacy")

    def timer_preferring(kind):
        def timer(nlp, name, examples, points):
            return [3.0 if p.policy.name == kind else 1.0 + i / 100 for i, p in enumerate(points)]

        return timer

    result = run_calibration(
        str(source),
        dev,
        tmp_path / "calibrated",
        targets=(2.0,),
        max_drop=100.0,  # every candidate is within the drop
        progress=lambda line: None,
        timer=timer_preferring("fixed_depth"),
    )
    max_drop = next(p for p in result["points"] if p["name"] == "max-drop")
    kinds = {t["spec"]["policy"] for t in max_drop["timed"]}
    assert {"fixed_depth", "token_window"} <= kinds and max_drop["policy"] == "fixed_depth"
    assert result["rank"] == "speed" and result["timed_on"]["torch_threads"] >= 1
    retimed = run_retime(
        str(tmp_path / "calibrated"),
        dev,
        tmp_path / "retimed",
        progress=lambda line: None,
        timer=timer_preferring("token_window"),
    )
    again = next(p for p in retimed["points"] if p["name"] == "max-drop")
    assert again["policy"] == "token_window" and again["dev_wps_ratio"] == 3.0
    nlp = spacy.load(tmp_path / "retimed")
    component = nlp.get_pipe("earlyexit_ner")
    assert component.operating_point == "max-drop" and component.exit_policy.name == "token_window"
    assert nlp.meta["earlyexit"]["points"][-1]["policy"] == "token_window"
    assert nlp("Angela Merkel visited Paris on Tuesday .")._.earlyexit_speedup >= 1.0
    flops = run_calibration(
        str(source), dev, tmp_path / "flops", targets=(), max_drop=0.5, progress=lambda line: None, rank="flops"
    )
    assert flops["points"][-1]["ranked_by"] == "flops" and not flops["points"][-1]["timed"]
    with pytest.raises(ValueError, match="no speed-ranked points"):
        run_retime(str(tmp_path / "flops"), dev, tmp_path / "retimed-flops", progress=lambda line: None)


def test_predictions_are_valid_bio_and_simulation_decodes_like_the_component(trained_ner):
    ner = trained_ner.get_pipe("earlyexit_ner")
    examples = ner_examples(trained_ner)
    preds = ner.predict([eg.predicted for eg in examples])
    classes = ner.output_labels
    for ids in ner.decode(preds):
        labels = [classes[i] for i in ids]
        assert all(
            not label.startswith("I-") or previous[2:] == label[2:] and previous[:2] in ("B-", "I-")
            for previous, label in zip(["O"] + labels, labels)
        )
    # the calibration simulation at full depth scores what the component does
    with ner.using("full"):
        tr = trace(trained_ner, ner, examples)
    exits, _ = simulate(tr, ner, Candidate(layer=ner.encoder.n_layers))
    simulated = simulated_score(tr, ner, examples, exits)
    real = trained_ner.evaluate(examples)["ents_f"]
    assert simulated == pytest.approx(real)


def test_timing_reads_the_first_documents_up_to_its_word_count():
    nlp = spacy.blank("en")
    examples = [Example.from_dict(nlp.make_doc(" ".join(["w"] * n)), {}) for n in (5, 7, 4, 9)]
    assert timing_sample(examples, words=12) == examples[:2]
    assert timing_sample(examples, words=3) == examples[:1]
    assert timing_sample(examples, words=1_000) == examples
    assert timing_sample([], words=10) == []


@pytest.mark.parametrize("name", ["earlyexit_ner", "earlyexit_tagger"])
def test_simulated_scores_do_not_depend_on_the_candidates_scored_before(name, tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    component = nlp.add_pipe(name, config=model_config(tiny_model_dir))
    examples = ner_examples(nlp) if name == "earlyexit_ner" else tag_examples(nlp)
    train(nlp, examples, steps=4)  # half trained: its layers label differently
    if name == "earlyexit_tagger":
        component.overwrite = False  # a stale tag would survive into the next candidate's score
    L = component.encoder.n_layers
    tr = trace(nlp, component, examples)
    exits = [simulate(tr, component, Candidate(layer=layer))[0] for layer in range(1, L + 1)]
    in_turn = [simulated_score(tr, component, examples, e) for e in exits + exits[::-1]]
    alone = [simulated_score(trace(nlp, component, examples), component, examples, e) for e in exits]
    assert in_turn == alone + alone[::-1]
    assert len(set(alone)) > 1  # the layers differ, so a stale label would show
