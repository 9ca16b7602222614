"""Figures: the trade-off plot from benchmark JSON, the exit-layer histogram data
from a tiny trained pipeline, the `plot` command, and matplotlib as an optional extra."""

import builtins
import importlib.util
import json
import struct
from collections import Counter
from pathlib import Path

import pytest
import typer
from spacy.tokens import Doc, DocBin
from typer.testing import CliRunner

from spacy_earlyexit.core.policies import make_policy
from spacy_earlyexit.tools.plots import (
    MatplotlibMissing,
    _stages,
    exit_layers_by_label,
    plot,
    plot_exit_layers,
    plot_tradeoff,
)

from ..conftest import TAG_DATA, ner_examples, tag_examples

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is an optional extra"
)


def png_size(path: Path):
    """(width, height) of a PNG, after checking its signature and header chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(path: Path, min_width: int = 800, min_height: int = 300) -> None:
    width, height = png_size(path)
    assert min_width <= width <= 5000 and min_height <= height <= 5000, (width, height)


def point(policy, score, speedup, wps, **params):
    return {
        "policy": policy,
        "params": params,
        "score": score,
        "flops_speedup": speedup,
        "words_per_second": wps,
        "wps_ratio_vs_full": None if wps is None else wps / 1000,
        "mean_exit_layer": None,
    }


def benchmark_json(stage=None, shift=0.0, component="earlyexit_ner"):
    result = {
        "pipeline": "training/ner/model-best",
        "component": component,
        "metric": "ents_f",
        "n_layers": 3,
        "points": [
            point("full", 0.90, 1.0, 1000.0),
            point("fixed_depth", 0.60 - shift, 2.6, 2500.0, layer=1),
            point("fixed_depth", None, 1.4, 1500.0, layer=2),  # a null score
            point("token_window", 0.90 - shift, 1.5, 1400.0, threshold=0.1, window=2, uncertainty="entropy"),
            point("token_window", 0.88 - shift, 2.0, None, threshold=0.3, window=2),  # no timing
            point("token_window", 0.80 - shift, None, 2100.0, threshold=0.6, window=2),  # no speed-up
            point("sentence", 0.89 - shift, 1.2, 1150.0, threshold=0.1),
            point("hf_forward", 0.90, 1.0, 800.0, note="same weights through Hugging Face forward"),
        ],
    }
    if stage:
        result["stage"] = stage
    return result


def operating_points_json():
    def op(name, target, dev, test, speedup, wps, reached=True):
        return {
            "name": name,
            "target": target,
            "policy": "token_window",
            "params": {"threshold": 0.2, "window": 2},
            "dev_score": dev,
            "test_score": test,
            "flops_speedup": speedup,
            "words_per_second": wps,
            "wps_ratio_vs_full": None,
            "reached": reached,
        }

    return {
        "full": {"dev_score": 0.92, "test_score": 0.90},
        "points": [op("2x", 2.0, 0.91, 0.89, 2.1, 1800.0), op("3x", 3.0, 0.85, None, 2.7, None, reached=False)],
        "stage1_points": [op("2x", 2.0, 0.90, 0.86, 2.0, 1700.0)],
    }


def test_stages_follow_key_then_position():
    assert _stages([{}, {}]) == ["stage2", "stage1"]
    assert _stages([{}]) == [None]
    assert _stages([{"stage": "stage1"}]) == ["stage1"]
    assert _stages([{"stage": "stage1"}, {"stage": "stage2"}]) == ["stage1", "stage2"]


@needs_matplotlib
def test_tradeoff_png_with_both_stages_nulls_and_points(tmp_path):
    out = plot_tradeoff(
        [benchmark_json(), benchmark_json(shift=0.03)], tmp_path / "fig" / "ner-tradeoff.png", operating_points_json()
    )
    assert out == tmp_path / "fig" / "ner-tradeoff.png"
    assert_sensible_png(out)
    # dev scores of the points, one benchmark with its own stage key, no points at all
    assert_sensible_png(plot_tradeoff([benchmark_json()], tmp_path / "dev.png", operating_points_json(), "dev"))
    assert_sensible_png(plot_tradeoff([benchmark_json(stage="stage1")], tmp_path / "alone.png"))


@needs_matplotlib
def test_tradeoff_survives_a_benchmark_without_any_score(tmp_path):
    empty = benchmark_json()
    for p in empty["points"]:
        p["score"] = None
    assert_sensible_png(plot_tradeoff([empty], tmp_path / "empty.png"))


@needs_matplotlib
def test_tradeoff_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        plot_tradeoff([], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_tradeoff([benchmark_json()], tmp_path / "x.png", point_score="train")


@pytest.fixture
def policy(request):
    """Swap an exit policy into a session fixture's component for one test."""
    swaps = []

    def use(nlp, component_name, name, **params):
        component = nlp.get_pipe(component_name)
        swaps.append((component, component.exit_policy))
        component.exit_policy = make_policy(name, **params)

    yield use
    for component, previous in reversed(swaps):
        component.exit_policy = previous


def test_exit_layers_by_entity_label(trained_ner, policy):
    gold = [eg.reference for eg in ner_examples(trained_ner)]
    counts = exit_layers_by_label(trained_ner, "earlyexit_ner", gold)
    totals = {label: sum(c.values()) for label, c in counts.items()}
    assert totals == {"O": 14, "PER": 3, "LOC": 3}
    assert sum(totals.values()) == sum(len(doc) for doc in gold)
    # the pipeline's default policy is full depth: every token leaves at the last layer
    assert all(set(c) == {3} for c in counts.values())
    policy(trained_ner, "earlyexit_ner", "token_window", threshold=1.01, window=1)
    assert all(set(c) == {1} for c in exit_layers_by_label(trained_ner, "earlyexit_ner", gold).values())


def test_exit_layers_by_tag_follow_the_tokens(trained_tagger, policy):
    gold = [eg.reference for eg in tag_examples(trained_tagger)]
    policy(trained_tagger, "earlyexit_tagger", "token_window", threshold=0.3, window=1)
    counts = exit_layers_by_label(trained_tagger, "earlyexit_tagger", gold)
    expected = Counter(tag for _, tags in TAG_DATA for tag in tags)
    assert {label: sum(c.values()) for label, c in counts.items()} == expected
    assert all(1 <= layer <= 3 for c in counts.values() for layer in c)
    # per-label exit layers are those of token._.exit_layer on the same words
    docs = trained_tagger.pipe(
        Doc(trained_tagger.vocab, words=[t.text for t in g], spaces=[bool(t.whitespace_) for t in g]) for g in gold
    )
    layers = Counter(t._.exit_layer for doc in docs for t in doc)
    assert sum(counts.values(), Counter()) == layers


def test_exit_layers_count_unannotated_tokens_as_missing(trained_tagger):
    gold = [Doc(trained_tagger.vocab, words=["the", "cat", "sat"])]
    assert exit_layers_by_label(trained_tagger, "earlyexit_tagger", gold) == {"(missing)": Counter({3: 3})}


@needs_matplotlib
def test_exit_layer_histogram_png(tmp_path):
    counts = {f"T{i}": Counter({1: i, 2: 1, 3: 20 - i}) for i in range(20)}
    counts["empty"] = Counter()
    out = plot_exit_layers(counts, 3, tmp_path / "hist.png", max_labels=15)
    assert_sensible_png(out, min_height=200)


def _app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    app.command("plot")(plot)
    return app


def _write(path: Path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf8")
    return str(path)


@needs_matplotlib
def test_plot_command_writes_both_figures(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)] * 2).to_disk(tmp_path / "dev.spacy")
    stage2 = _write(tmp_path / "stage2.json", benchmark_json())
    stage1 = _write(tmp_path / "stage1.json", benchmark_json(shift=0.02))
    points = _write(tmp_path / "points.json", operating_points_json())
    prefix = tmp_path / "figures" / "ner"
    result = CliRunner().invoke(
        _app(),
        [
            "plot",
            stage2,
            stage1,
            "--points",
            points,
            "--pipeline",
            str(tmp_path / "pipeline"),
            "--corpus",
            str(tmp_path / "dev.spacy"),
            "--output",
            str(prefix),
        ],
    )
    assert result.exit_code == 0, result.output
    assert_sensible_png(tmp_path / "figures" / "ner-tradeoff.png")
    assert_sensible_png(tmp_path / "figures" / "ner-exit-layers.png", min_height=200)


@needs_matplotlib
def test_plot_command_without_pipeline_skips_histogram(tmp_path):
    stage2 = _write(tmp_path / "b.json", benchmark_json())
    result = CliRunner().invoke(_app(), ["plot", stage2, "--output", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "no exit-layer histogram" in result.output
    assert (tmp_path / "p-tradeoff.png").exists() and not (tmp_path / "p-exit-layers.png").exists()
    # a pipeline needs a corpus; more than two benchmarks is an error
    assert CliRunner().invoke(_app(), ["plot", stage2, "--output", "x", "--pipeline", "p"]).exit_code != 0
    assert CliRunner().invoke(_app(), ["plot", stage2, stage2, stage2, "--output", "x"]).exit_code != 0


@pytest.fixture
def no_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_matplotlib_gives_a_clear_error(no_matplotlib, tmp_path):
    with pytest.raises(MatplotlibMissing, match="pip install matplotlib"):
        plot_tradeoff([benchmark_json()], tmp_path / "x.png")
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_exit_layers({"O": Counter({1: 1})}, 3, tmp_path / "y.png")
    stage2 = _write(tmp_path / "b.json", benchmark_json())
    result = CliRunner().invoke(_app(), ["plot", stage2, "--output", str(tmp_path / "p")])
    assert result.exit_code == 1
    assert "pip install matplotlib" in result.output
    assert not (tmp_path / "p-tradeoff.png").exists()
