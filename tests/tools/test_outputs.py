"""No command deletes what it was not asked to write (issue 31): an output
that is an input, inside one or holding one is refused with one line and
nothing touched; a directory output replaces only an earlier output of the
same command (or anything with --force), and only once it is complete."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import spacy
from typer.testing import CliRunner

from spacy_earlyexit.tools.calibrate import run as calibration_run
from spacy_earlyexit.tools.calibrate import run_calibration
from spacy_earlyexit.tools.calibrate import writing as calibration_writing
from spacy_earlyexit.tools.cli import app
from spacy_earlyexit.tools.evaluation import write_result
from spacy_earlyexit.tools.outputs import (
    MARKER_NAME,
    OutputRefused,
    check_not_input,
    check_output,
    replacing_directory,
    replacing_file,
    written_by,
)

from ..conftest import REPO, model_config, ner_corpus, ner_examples, train

pytestmark = pytest.mark.issue(31)


def snapshot(root: Path) -> dict:
    """Every path under `root` with its content's digest (None for directories)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def refused_with_one_line(result, *words):
    """A command ended with exit status 1 and one line saying why, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def an_earlier_output(path: Path, command: str) -> Path:
    path.mkdir(parents=True)
    (path / MARKER_NAME).write_text(json.dumps({"command": command}), encoding="utf8")
    (path / "stale.txt").write_text("from the earlier run", encoding="utf8")
    return path


def a_foreign_directory(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("not written by any command", encoding="utf8")
    return path


# -- the shared helper --------------------------------------------------------------


def test_an_output_may_not_be_inside_or_around_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "dev.spacy"
    corpus.write_bytes(b"corpus")
    for output, why in (
        (data, "is the input"),
        (corpus, "is the input"),
        (data / "out", "is inside the input"),
        (data / "sub" / "deeper", "is inside the input"),
        (tmp_path, "contains the input"),
    ):
        with pytest.raises(OutputRefused, match=why):
            check_not_input(output, [corpus, data])
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    with pytest.raises(OutputRefused, match="is the input"):
        check_not_input(link, [data])
    with pytest.raises(OutputRefused, match="is inside the input"):
        check_not_input(tmp_path / "link" / "out", [data])
    # siblings, names that match no path (a package name) and None are fine
    check_not_input(tmp_path / "data-calibrated", [data, corpus, None, "en_core_web_sm"])
    # force does not lift it
    with pytest.raises(OutputRefused, match="is the input"):
        check_output(data, [data], command="calibrate", force=True)


def test_a_directory_output_replaces_only_an_earlier_output_of_the_same_command(tmp_path):
    own = an_earlier_output(tmp_path / "own", "calibrate")
    other = an_earlier_output(tmp_path / "other", "train")
    foreign = a_foreign_directory(tmp_path / "foreign")
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf8")
    before = snapshot(tmp_path)
    assert check_output(own, command="calibrate") == own
    assert check_output(empty, command="calibrate") == empty
    assert check_output(tmp_path / "new", command="calibrate") == tmp_path / "new"
    for path in (other, foreign):
        with pytest.raises(OutputRefused, match="not an earlier output of `calibrate`.*--force"):
            check_output(path, command="calibrate")
    with pytest.raises(OutputRefused, match="not a directory.*--force"):
        check_output(a_file, command="calibrate")
    assert check_output(foreign, command="calibrate", force=True) == foreign
    assert check_output(foreign, command="calibrate", earlier=lambda p: (p / "precious.txt").exists()) == foreign
    assert snapshot(tmp_path) == before


def test_replacing_directory_swaps_in_a_complete_output_and_marks_it(tmp_path):
    output = an_earlier_output(tmp_path / "out", "calibrate")
    with replacing_directory(output, command="calibrate") as partial:
        assert partial.parent == tmp_path and partial != output and not any(partial.iterdir())
        (partial / "new.txt").write_text("new", encoding="utf8")
        assert (output / "stale.txt").exists()  # the earlier output stays until the new one is complete
    assert sorted(p.name for p in output.iterdir()) == [MARKER_NAME, "new.txt"]
    assert written_by(output, "calibrate") and not written_by(output, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_directory_output_leaves_the_earlier_one_intact(tmp_path, interruption):
    output = an_earlier_output(tmp_path / "out", "train")
    before = snapshot(tmp_path)
    with pytest.raises(interruption):
        with replacing_directory(output, command="train") as partial:
            (partial / "model-last").mkdir()
            (partial / "model-last" / "half.bin").write_bytes(b"half")
            raise interruption()
    assert snapshot(tmp_path) == before


def test_replacing_file_overwrites_a_regular_file_only(tmp_path):
    output = tmp_path / "result.json"
    write_result({"a": 1}, output)
    write_result({"a": 2}, output)
    assert json.loads(output.read_text(encoding="utf8")) == {"a": 2}
    with pytest.raises(RuntimeError):
        with replacing_file(output) as partial:
            partial.write_text("half", encoding="utf8")
            raise RuntimeError("interrupted")
    assert json.loads(output.read_text(encoding="utf8")) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    directory = a_foreign_directory(tmp_path / "figure.png")
    with pytest.raises(OutputRefused, match="not a regular file"):
        write_result({"a": 1}, directory)
    with pytest.raises(OutputRefused, match="is the input"):
        write_result({"a": 1}, output, inputs=[output])
    assert (directory / "precious.txt").exists()


# -- calibrate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny NER pipeline (initialized, one update), saved."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    train(nlp, ner_examples(nlp), steps=1)
    path = tmp_path_factory.mktemp("outputs") / "trained"
    nlp.to_disk(path)
    return path


@pytest.fixture()
def workspace(pipeline, tmp_path) -> Path:
    """A copy of the pipeline and a dev corpus, in a directory of their own."""
    shutil.copytree(pipeline, tmp_path / "trained")
    ner_corpus(spacy.blank("en"), tmp_path / "dev.spacy", copies=1)
    return tmp_path


RESULT = {
    "component": "earlyexit_ner",
    "points": [
        {
            "name": "2x",
            "reached": True,
            "policy": "fixed_depth",
            "params": {"layer": 1},
            "dev_score": 0.5,
            "dev_flops_speedup": 2.0,
        }
    ],
    "default": "2x",
}


@pytest.fixture()
def quick_search(monkeypatch):
    """Calibration's search replaced by a fixed result: what is tested here is
    where the calibrated copy goes."""
    calls = []

    def search(nlp, name, *args, **kwargs):
        calls.append(name)
        return dict(RESULT)

    monkeypatch.setattr(calibration_run, "calibrate", search)
    return calls


def calibrate_cli(*args):
    return CliRunner().invoke(app, ["calibrate", *map(str, args)])


def test_calibrate_refuses_to_write_over_its_own_input(workspace, quick_search):
    """The reported bug: output = input deleted the trained pipeline."""
    before = snapshot(workspace)
    refused_with_one_line(
        calibrate_cli(workspace / "trained", workspace / "dev.spacy", workspace / "trained"), "is the input"
    )
    refused_with_one_line(
        calibrate_cli(workspace / "trained", workspace / "dev.spacy", workspace / "trained" / "calibrated"), "inside"
    )
    refused_with_one_line(calibrate_cli(workspace / "trained", workspace / "dev.spacy", workspace), "contains")
    refused_with_one_line(
        calibrate_cli(workspace / "trained", workspace / "dev.spacy", workspace / "dev.spacy"), "is the input"
    )
    assert snapshot(workspace) == before
    assert quick_search == []  # refused before any work
    with pytest.raises(OutputRefused):
        run_calibration(str(workspace / "trained"), str(workspace / "dev.spacy"), workspace / "trained")
    assert snapshot(workspace) == before


def test_calibrate_refuses_a_directory_it_did_not_write_unless_forced(workspace, quick_search):
    foreign = a_foreign_directory(workspace / "calibrated")
    before = snapshot(workspace)
    refused_with_one_line(
        calibrate_cli(workspace / "trained", workspace / "dev.spacy", foreign), "not an earlier output", "--force"
    )
    assert snapshot(workspace) == before
    result = calibrate_cli(workspace / "trained", workspace / "dev.spacy", foreign, "--force")
    assert result.exit_code == 0, result.output
    assert not (foreign / "precious.txt").exists() and written_by(foreign, "calibrate")
    assert spacy.load(foreign).get_pipe("earlyexit_ner").operating_point == "2x"


def test_calibrate_replaces_its_own_earlier_output(workspace, quick_search):
    output = workspace / "calibrated"
    for _ in range(2):
        result = calibrate_cli(workspace / "trained", workspace / "dev.spacy", output)
        assert result.exit_code == 0, result.output
        assert written_by(output, "calibrate")
        (output / "left-by-hand.txt").write_text("x", encoding="utf8")
    assert len(quick_search) == 2
    # the second run replaced the first output as a whole
    result = calibrate_cli(workspace / "trained", workspace / "dev.spacy", output)
    assert result.exit_code == 0 and not (output / "left-by-hand.txt").exists()
    assert sorted(p.name for p in workspace.iterdir()) == ["calibrated", "dev.spacy", "trained"]
    # a calibrated pipeline written before outputs carried the marker is recognized by its meta
    (output / MARKER_NAME).unlink()
    assert calibrate_cli(workspace / "trained", workspace / "dev.spacy", output).exit_code == 0
    # and calibrating a calibrated pipeline into a new place works (its marker is the new output's)
    result = calibrate_cli(output, workspace / "dev.spacy", workspace / "again")
    assert result.exit_code == 0, result.output
    assert written_by(workspace / "again", "calibrate")


def test_an_interrupted_calibration_leaves_the_earlier_output_intact(workspace, quick_search, monkeypatch):
    output = workspace / "calibrated"
    assert calibrate_cli(workspace / "trained", workspace / "dev.spacy", output).exit_code == 0
    before = snapshot(workspace)
    copytree = shutil.copytree

    def interrupted(*args, **kwargs):
        copytree(*args, **kwargs)
        raise KeyboardInterrupt()  # once the pipeline is copied, before its config is written

    monkeypatch.setattr(calibration_writing.shutil, "copytree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_calibration(str(workspace / "trained"), str(workspace / "dev.spacy"), output, progress=lambda line: None)
    assert snapshot(workspace) == before


# -- train (spaCy's training loop replaced by a stub that writes a pipeline) ---------


@pytest.fixture()
def training(monkeypatch, tmp_path):
    """A config, a corpus, and `spacy train` replaced by a stub that writes
    what it does into the output directory (and can be interrupted)."""
    import spacy.cli.train

    corpus = ner_corpus(spacy.blank("en"), tmp_path / "train.spacy", copies=2)
    (tmp_path / "configs").mkdir()
    config_path = shutil.copy(REPO / "configs" / "ner.cfg", tmp_path / "configs" / "ner.cfg")
    state = {"config": Path(config_path), "corpus": Path(corpus), "runs": [], "interrupt": False}

    def stub(config_path, output_path, *, use_gpu=-1, overrides=None):
        output_path = Path(output_path)
        state["runs"].append(output_path)
        (output_path / "model-last").mkdir(parents=True)
        log = overrides.get("training.logger.output_file")
        config = spacy.util.load_config(config_path, overrides=overrides, interpolate=False)
        config.to_disk(output_path / "model-last" / "config.cfg")
        if log:
            Path(log).write_text(json.dumps({"epoch": 0, "step": 1, "score": 0.5}) + "\n", encoding="utf8")
        if state["interrupt"]:
            raise KeyboardInterrupt()

    monkeypatch.setattr(spacy.cli.train, "train", stub)
    return state


def train_cli(training, output, *extra):
    args = ["train", str(training["config"]), "--output", str(output)]
    args += ["--paths.train", str(training["corpus"]), "--paths.dev", str(training["corpus"]), *map(str, extra)]
    return CliRunner().invoke(app, args)


def test_train_refuses_outputs_around_its_inputs(training, tmp_path):
    stage1 = a_foreign_directory(tmp_path / "stage1")
    before = snapshot(tmp_path)
    refused_with_one_line(train_cli(training, training["corpus"]), "is the input")
    refused_with_one_line(train_cli(training, tmp_path), "contains the input")
    refused_with_one_line(train_cli(training, training["config"].parent), "contains the input")
    refused_with_one_line(train_cli(training, training["corpus"] / "out"), "inside the input")
    refused_with_one_line(train_cli(training, stage1 / "out", "--paths.vectors", stage1), "inside the input")
    refused_with_one_line(train_cli(training, stage1, "--paths.vectors", stage1, "--force"), "is the input")
    assert training["runs"] == []
    assert snapshot(tmp_path) == before


def test_train_replaces_its_own_output_refuses_others_unless_forced(training, tmp_path):
    output = tmp_path / "run"
    for _ in range(2):
        result = train_cli(training, output)
        assert result.exit_code == 0, result.output
        assert written_by(output, "train") and (output / "training-time.json").exists()
        (output / "left-by-hand.txt").write_text("x", encoding="utf8")
    assert len(training["runs"]) == 2 and all(run.parent == tmp_path and run != output for run in training["runs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "run", "train.spacy"]
    # the saved config names the log where it ended up, not where it was written
    config = spacy.util.load_config(output / "model-last" / "config.cfg", interpolate=False)
    assert config["training"]["logger"]["output_file"] == str(output / "training-log.jsonl")
    evaluations = json.loads((output / "training-time.json").read_text(encoding="utf8"))["evaluations"]
    assert evaluations == [{"epoch": 0, "step": 1, "score": 0.5}]
    # an output written before outputs carried the marker is recognized by its record of the run
    (output / MARKER_NAME).unlink()
    assert train_cli(training, output).exit_code == 0 and not (output / "left-by-hand.txt").exists()
    # a directory no command wrote: refused, unless --force
    foreign = a_foreign_directory(tmp_path / "foreign")
    refused_with_one_line(train_cli(training, foreign), "not an earlier output of `train`")
    assert (foreign / "precious.txt").exists()
    assert train_cli(training, foreign, "--force").exit_code == 0
    assert written_by(foreign, "train") and not (foreign / "precious.txt").exists()
    # interrupted: the earlier output is intact and nothing is left beside it
    before = snapshot(tmp_path)
    training["interrupt"] = True
    assert train_cli(training, output).exit_code != 0
    assert snapshot(tmp_path) == before


# -- annotate (keeps resuming; refuses only outputs around its inputs) ---------------


def test_annotate_refuses_outputs_around_its_inputs(pipeline, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Angela Merkel visited Paris .\n", encoding="utf8")
    (texts / "c.jsonl").write_text(json.dumps({"text": "The cat sat ."}) + "\n", encoding="utf8")
    inside = tmp_path / "inside.spacy"
    inside.mkdir()
    (inside / "b.txt").write_text("John sat on the mat .\n", encoding="utf8")
    before = snapshot(tmp_path)
    for input_path, output, why in (
        (texts, texts / "out.jsonl", "inside the input"),
        (texts / "c.jsonl", texts / "c.jsonl", "is the input"),
        (inside / "b.txt", inside, "contains the input"),
        (texts, pipeline / "out.jsonl", "inside the input"),
    ):
        result = CliRunner().invoke(app, ["annotate", str(pipeline), str(input_path), str(output)])
        refused_with_one_line(result, why)
    assert snapshot(tmp_path) == before


# -- commands that write a file ------------------------------------------------------


def test_file_outputs_are_refused_inside_inputs_and_where_a_directory_stands(pipeline, tmp_path):
    corpus = ner_corpus(spacy.blank("en"), tmp_path / "test.spacy", copies=1)
    benchmark_json = tmp_path / "x-tradeoff.png"  # a benchmark JSON, whatever its name
    benchmark_json.write_text(json.dumps({"metric": "ents_f", "points": []}), encoding="utf8")
    a_directory = a_foreign_directory(tmp_path / "taken.json")
    before = snapshot(tmp_path)
    cases = [
        (["benchmark", pipeline, corpus, "--output", pipeline / "bench.json"], "inside the input"),
        (["benchmark", pipeline, corpus, "--output", corpus], "is the input"),
        (["benchmark", pipeline, corpus, "--output", a_directory], "not a regular file"),
        (["evaluate-points", pipeline, corpus, "--output", pipeline / "points.json"], "inside the input"),
        (["evaluate-points", pipeline, corpus, "--stage1", tmp_path, "--output", tmp_path / "p.json"], "inside"),
        (["evaluate-points", pipeline, corpus, "--output", a_directory], "not a regular file"),
        (["plot", benchmark_json, "--output", tmp_path / "x"], "is the input"),
        (["plot", benchmark_json, "--pipeline", pipeline, "--corpus", corpus, "--output", pipeline / "f"], "inside"),
        (["plot-width", benchmark_json, "--output", benchmark_json], "is the input"),
        (["plot-width", benchmark_json, "--output", a_directory], "not a regular file"),
    ]
    for args, why in cases:
        refused_with_one_line(CliRunner().invoke(app, [str(a) for a in args]), why)
    assert snapshot(tmp_path) == before
