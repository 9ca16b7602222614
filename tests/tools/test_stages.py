"""Which stage a task keeps (`tools/stages.py`): the rule on calibrations, and
the command on calibrated pipelines."""

import json

import pytest
import spacy
from typer.testing import CliRunner

from spacy_earlyexit.tools.calibrate import run_calibration
from spacy_earlyexit.tools.cli import app
from spacy_earlyexit.tools.stages import calibration_of, choose_stage, compare_stages

from ..conftest import ner_corpus


def _calibration(full, points, component="earlyexit_ner", drop=None):
    """A calibration result as `calibrate` records it: full depth's dev score
    and the speed-up points' (name -> score), plus a max-drop point."""
    rows = [
        {"name": name, "kind": "speedup", "reached": True, "dev_score": score, "dev_flops_speedup": float(name[0])}
        for name, score in points.items()
    ]
    if drop is not None:
        rows.append({"name": "max-drop", "kind": "max_drop", "reached": True, "dev_score": drop})
    return {"component": component, "metric": "ents_f", "full": {"dev_score": full}, "points": rows}


def test_stage_two_is_kept_only_where_it_wins_on_dev_on_average():
    stage1 = _calibration(0.90, {"2x": 0.89, "3x": 0.88})
    better = _calibration(0.91, {"2x": 0.89, "3x": 0.885})
    choice = compare_stages(stage1, better)
    assert choice["kept"] == "stage2"
    assert choice["compared"] == ["full", "2x", "3x"]
    assert choice["mean_change"] == pytest.approx((0.01 + 0.0 + 0.005) / 3)
    assert choice["points"]["full"]["change"] == {"ents_f": pytest.approx(0.01)}
    worse = _calibration(0.905, {"2x": 0.88, "3x": 0.875})
    assert compare_stages(stage1, worse)["kept"] == "stage1"
    assert compare_stages(stage1, stage1)["kept"] == "stage1"  # a tie keeps the shorter training


def test_only_points_both_stages_reached_count_and_max_drop_is_reported_not_counted():
    stage1 = _calibration(0.90, {"2x": 0.89, "3x": 0.80}, drop=0.60)
    stage2 = _calibration(0.90, {"2x": 0.895}, drop=0.99)
    stage2["points"].append({"name": "3x", "kind": "speedup", "reached": False, "dev_score": None})
    choice = compare_stages(stage1, stage2)
    assert choice["compared"] == ["full", "2x"]
    assert choice["mean_change"] == pytest.approx(0.0025)
    assert choice["max_drop"]["stage1"]["scores"] == {"ents_f": 0.60}
    assert choice["max_drop"]["stage2"]["scores"] == {"ents_f": 0.99}


def test_a_shared_encoder_keeps_one_stage_for_all_its_tasks():
    def shared(ner, tag):
        return {
            "component": "earlyexit_transformer",
            "metric": "worst_task_change",
            "full": {"dev_score": 0.0, "dev_task_scores": {"ner": ner[0], "tagger": tag[0]}},
            "points": [
                {
                    "name": "2x",
                    "kind": "speedup",
                    "reached": True,
                    "dev_score": 0.0,
                    "dev_task_scores": {"ner": ner[1], "tagger": tag[1]},
                }
            ],
        }

    # NER gains 0.4 at both points, tags lose 0.1: the mean over tasks and points decides
    choice = compare_stages(shared((0.90, 0.89), (0.95, 0.95)), shared((0.904, 0.894), (0.949, 0.949)))
    assert choice["kept"] == "stage2"
    assert choice["points"]["2x"]["change"] == {"ner": pytest.approx(0.004), "tagger": pytest.approx(-0.001)}
    choice = compare_stages(shared((0.90, 0.89), (0.95, 0.95)), shared((0.901, 0.891), (0.945, 0.945)))
    assert choice["kept"] == "stage1"


def test_calibrations_of_different_components_are_not_compared():
    with pytest.raises(ValueError, match="different components"):
        compare_stages(_calibration(0.9, {}), _calibration(0.9, {}, component="earlyexit_tagger"))


def test_the_command_copies_the_kept_stage_with_its_choice_and_never_overwrites_an_input(trained_ner, tmp_path):
    source = tmp_path / "trained"
    trained_ner.to_disk(source)
    dev = ner_corpus(trained_ner, tmp_path / "dev.spacy")
    run_calibration(str(source), dev, tmp_path / "stage1", targets=(2.0,), max_drop=0.5, progress=lambda line: None)
    run_calibration(str(source), dev, tmp_path / "stage2", targets=(2.0,), max_drop=0.5, progress=lambda line: None)
    # stage 2 reads 1 point better on dev at full depth (the same weights: only the record differs)
    meta_path = tmp_path / "stage2" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf8"))
    meta["earlyexit"]["full"]["dev_score"] += 0.01
    meta["earlyexit"]["description_marker"] = "stage2"
    meta_path.write_text(json.dumps(meta), encoding="utf8")

    choice = choose_stage(tmp_path / "stage1", tmp_path / "stage2", tmp_path / "kept", tmp_path / "choice.json")
    assert choice["kept"] == "stage2" and choice["mean_change"] > 0
    kept = calibration_of(tmp_path / "kept")
    assert kept["description_marker"] == "stage2"
    assert kept["stage_choice"]["kept"] == "stage2"
    assert json.loads((tmp_path / "choice.json").read_text(encoding="utf8"))["kept"] == "stage2"
    nlp = spacy.load(tmp_path / "kept")
    assert "2x" in nlp.get_pipe("earlyexit_ner").operating_points
    # run again into its own earlier output: allowed, and now stage 1 wins
    meta["earlyexit"]["full"]["dev_score"] -= 0.02
    meta_path.write_text(json.dumps(meta), encoding="utf8")
    assert choose_stage(tmp_path / "stage1", tmp_path / "stage2", tmp_path / "kept")["kept"] == "stage1"
    assert "description_marker" not in calibration_of(tmp_path / "kept")

    runner = CliRunner()
    before = sorted(p.name for p in (tmp_path / "stage1").iterdir())
    stage1, stage2 = str(tmp_path / "stage1"), str(tmp_path / "stage2")
    result = runner.invoke(app, ["choose-stage", stage1, stage2, stage1])
    assert result.exit_code == 1 and "is the input" in result.output
    assert sorted(p.name for p in (tmp_path / "stage1").iterdir()) == before
    result = runner.invoke(app, ["choose-stage", str(tmp_path / "stage1"), str(source), str(tmp_path / "other")])
    assert result.exit_code == 1 and "not a calibrated pipeline" in result.output
    assert not (tmp_path / "other").exists()
    result = runner.invoke(
        app, ["choose-stage", str(tmp_path / "stage1"), str(tmp_path / "stage2"), str(tmp_path / "kept2")]
    )
    assert result.exit_code == 0, result.output
    assert "Kept stage1" in result.output
