"""The tools on a shared encoder's pipeline (issue 32): calibration over all
its tasks, evaluate-points, annotate with worker processes, the exit view."""

import json

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_earlyexit.core.tasks import TaskPolicies
from spacy_earlyexit.tools.annotate import annotate_corpus
from spacy_earlyexit.tools.calibrate import run_calibration
from spacy_earlyexit.tools.calibrate.tasks import worst_change
from spacy_earlyexit.tools.evaluate_points import evaluate_operating_points
from spacy_earlyexit.tools.render import render

from ..conftest import ner_tagger_examples
from .conftest import write_corpus


def fake_timer(nlp, name, examples, points):
    """Words/s ratios that rank the points by their order (no timing in tests)."""
    return [1.0 + 0.1 * i for i in range(len(points))]


@pytest.fixture(scope="module")
def dev_path(tmp_path_factory):
    nlp = spacy.blank("en")
    path = tmp_path_factory.mktemp("dev") / "dev.spacy"
    DocBin(docs=[eg.reference for eg in ner_tagger_examples(nlp)] * 3).to_disk(path)
    return path


@pytest.fixture(scope="module")
def calibrated(saved_shared, dev_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("calibrated") / "pipeline"
    result = run_calibration(
        str(saved_shared),
        str(dev_path),
        output,
        targets=(1.5,),
        max_drop=50.0,
        progress=lambda line: None,
        timer=fake_timer,
    )
    return output, result


@pytest.mark.issue(32)
def test_calibration_chooses_points_for_every_task_at_once(calibrated):
    output, result = calibrated
    assert result["component"] == "encoder" and result["metric"] == "worst_task_change"
    assert set(result["full"]["dev_task_scores"]) == {"earlyexit_ner", "earlyexit_tagger"}
    reached = [p for p in result["points"] if p["reached"]]
    assert reached
    for point in reached:
        # the one figure is the worst task's change, and max-drop keeps every task within the drop
        assert point["dev_score"] == pytest.approx(
            worst_change(point["dev_task_scores"], result["full"]["dev_task_scores"])
        )
        if point["kind"] == "max_drop":
            assert point["dev_score"] >= -0.5
    nlp = spacy.load(output)
    encoder = nlp.get_pipe("encoder")
    assert set(encoder.operating_points) >= {p["name"] for p in reached}
    assert encoder.operating_point == result["default"]
    assert nlp.meta["earlyexit"]["tasks"] == ["earlyexit_ner", "earlyexit_tagger"]


@pytest.mark.issue(32)
def test_evaluate_points_reports_each_task(calibrated, dev_path):
    output, _ = calibrated
    result = evaluate_operating_points(str(output), str(dev_path), rounds=1, progress=lambda line: None)
    assert set(result["full"]["test_task_scores"]) == {"earlyexit_ner", "earlyexit_tagger"}
    for row in result["points"]:
        if row["reached"]:
            scores = row["test_task_scores"]
            assert row["test_score"] == pytest.approx(sum(scores.values()) / len(scores))


@pytest.mark.issue(32)
def test_annotate_with_two_processes_writes_both_tasks(saved_shared, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    annotate_corpus(str(saved_shared), corpus, one, chunk_size=3)
    annotate_corpus(str(saved_shared), corpus, two, chunk_size=3, n_process=2)
    records = [json.loads(line) for line in one.read_text(encoding="utf8").splitlines()]
    assert records == [json.loads(line) for line in two.read_text(encoding="utf8").splitlines()]
    texts = [r for r in records if r["words"]]
    assert all(set(r["exit_layers"]) == {"encoder", "earlyexit_ner", "earlyexit_tagger"} for r in texts)
    assert all(len(r["tags"]) == len(r["words"]) for r in texts)


@pytest.mark.issue(32)
def test_the_exit_view_shows_each_task(saved_shared):
    nlp = spacy.load(saved_shared)
    with nlp.get_pipe("encoder").using(nlp.get_pipe("encoder").point("mixed").policy):
        html = render(nlp("Angela Merkel visited Paris on Tuesday ."))
    assert "earlyexit_ner" in html and "earlyexit_tagger" in html
    assert isinstance(nlp.get_pipe("encoder").point("mixed").policy, TaskPolicies)


@pytest.mark.issue(32)
def test_the_comparison_runs_both_pipelines_on_the_same_documents(saved_shared, tiny_model_dir, dev_path, tmp_path):
    import subprocess
    import sys

    from ..conftest import REPO, model_config, tag_examples, train

    paths = {}
    for factory, examples in (("earlyexit_ner", ner_tagger_examples), ("earlyexit_tagger", tag_examples)):
        nlp = spacy.blank("en")
        nlp.add_pipe(factory, config=model_config(tiny_model_dir))
        train(nlp, examples(nlp), steps=5)
        paths[factory] = tmp_path / factory
        nlp.to_disk(paths[factory])
    output = tmp_path / "compare.json"
    command = [
        sys.executable, "benchmarks/multitask.py", str(saved_shared), str(paths["earlyexit_ner"]),
        str(paths["earlyexit_tagger"]), str(dev_path), "--points", "full", "--rounds", "1", "--output", str(output),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.read_text(encoding="utf8"))
    assert {row["pipeline"] for row in result["rows"]} == {"shared", "two single-task"}
    for row in result["rows"]:
        assert 0 <= row["ents_f"] <= 1 and 0 <= row["tag_acc"] <= 1 and row["words_per_second"] > 0
    assert result["sizes"]["shared"] < result["sizes"]["two single-task"]


def test_frontier_keeps_what_nothing_beats_fastest_first_and_thins_evenly():
    from spacy_earlyexit.tools.calibrate.tasks import frontier

    speedups = [1.0, 2.0, 3.0, 2.0, 4.0, 3.0]
    scores = [0.0, -0.1, -0.5, -0.3, -2.0, -0.4]
    # 3 (2.0x, -0.3) loses to 1 (2.0x, -0.1); 2 (3.0x, -0.5) to 5 (3.0x, -0.4)
    assert frontier(speedups, scores) == [4, 5, 1, 0]
    assert frontier(speedups, scores, size=2) == [4, 0]
    assert frontier(speedups, scores, size=3) == [4, 1, 0]


@pytest.mark.issue(32)
def test_rules_per_task_are_simulated_from_each_tasks_frontier_and_run(saved_shared, dev_path):
    from spacy_earlyexit.core.points import OperatingPoint
    from spacy_earlyexit.pipeline.exit_policies import policy_named
    from spacy_earlyexit.tools.calibrate.simulation import candidates
    from spacy_earlyexit.tools.calibrate.tasks import TaskCandidate, TaskRuns, simulate_tasks
    from spacy_earlyexit.tools.calibrate.tracing import trace_parts
    from spacy_earlyexit.tools.evaluation import corpus_examples

    nlp = spacy.load(saved_shared)
    component = nlp.get_pipe("encoder")
    tasks = [nlp.get_pipe(name) for name in component.tasks]
    examples = corpus_examples(nlp, str(dev_path))
    runs = TaskRuns()
    runs.full, _ = runs.task_scores(nlp, "encoder", examples, component.point("full"))
    parts = [(part, task.decodes_from_probs) for part, task in zip(component._slices(), tasks)]
    L = component.encoder.n_layers
    with component.using("full"):
        traces = trace_parts(component, examples, parts, 1.0, "fp32")
        simulated, n_per_task = simulate_tasks(traces, component, tasks, examples, runs.full, L)
    grid = candidates(width=1.0, n_layers=L)
    assert len(simulated) == len(grid) + n_per_task and n_per_task > 0
    # one rule for all first, then rules per task, never one rule repeated
    assert not any(isinstance(c, TaskCandidate) for c in simulated[: len(grid)])
    pairs = simulated[len(grid) :]
    assert all(isinstance(c, TaskCandidate) and set(c.rules) == set(component.tasks) for c in pairs)
    assert all(len({c.rules[t].describe() for t in c.rules}) == 2 for c in pairs)
    assert len({tuple(c.rules[t].describe() for t in component.tasks) for c in pairs}) == len(pairs)
    # a pair's worst change is one of its rules' own (as one rule for all, on that task)
    one_rule = {c.describe(): c for c in simulated[: len(grid)]}
    for pair in pairs[:20]:
        assert pair.score >= min(one_rule[c.describe()].score for c in pair.rules.values()) - 1e-9
    # each runs for real as a per_task point, each task by its own rule
    pair = pairs[0]
    point = pair.point(L)
    assert isinstance(point.policy, TaskPolicies)
    for task, rule in pair.rules.items():
        own = rule.point(L).policy
        assert (point.policy.tasks[task].name, point.policy.tasks[task].params()) == (own.name, own.params())
    reread = OperatingPoint.from_spec(point.to_spec(), make=policy_named)  # as the config is read
    assert reread.policy.params() == point.policy.params()
    scores, speedup = runs.task_scores(nlp, "encoder", examples, point)
    assert set(scores) == set(component.tasks) and speedup >= 1.0 - 1e-9


@pytest.mark.issue(32)
def test_a_shared_encoder_rewired_for_width_is_calibrated_at_every_width(saved_shared, dev_path, tmp_path):
    nlp = spacy.load(saved_shared, config={"components": {"encoder": {"width_multipliers": [0.5, 1.0]}}})
    nlp.get_pipe("encoder").rewire_for_width(ner_tagger_examples(nlp))
    nlp.to_disk(tmp_path / "rewired")
    lines = []
    result = run_calibration(
        str(tmp_path / "rewired"),
        str(dev_path),
        tmp_path / "calibrated",
        targets=(1.5,),
        max_drop=50.0,
        progress=lines.append,
        timer=fake_timer,
    )
    assert result["widths"] == [1.0, 0.5]
    assert any(line.startswith("width 0.5: simulated") for line in lines)
    points = {p["name"]: p for p in result["points"]}
    # as for one task: the best of exit alone (full width) and of width alone (full depth) beside the joint one
    assert {"1_5x", "1_5x-exit", "1_5x-width", "max-drop"} <= set(points)
    width_alone = points["1_5x-width"]
    assert width_alone["reached"] and width_alone["params"]["width"] == 0.5
    assert width_alone["policy"] in ("full", "fixed_depth")
    assert points["1_5x-exit"]["params"].get("width", 1.0) == 1.0
    loaded = spacy.load(tmp_path / "calibrated")
    cfg = {"encoder": {"operating_point": "1_5x-width"}}
    doc = loaded("Angela Merkel visited Paris on Tuesday .", component_cfg=cfg)
    assert doc._.earlyexit["encoder"]["width"] == 0.5
    assert all(token.tag_ for token in doc)
