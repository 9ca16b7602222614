"""The width tools: the three Pareto fronts of a width sweep, their plot, and
the benchmark sweep over widths (tiny models)."""

import pytest
import spacy

from ..conftest import ner_examples


def _point(policy, width, score, speedup, wps, **params):
    return {
        "policy": policy,
        "params": params,
        "width": width,
        "score": score,
        "flops_speedup": speedup,
        "words_per_second": wps,
    }


SWEEP = [
    _point("full", 1.0, 0.90, 1.0, 1000),
    _point("full", 0.5, 0.85, 1.9, 1800),
    _point("full", 0.25, 0.70, 3.6, 3000),
    _point("token_window", 1.0, 0.89, 2.0, 1900, threshold=0.1),
    _point("token_window", 1.0, 0.80, 3.5, 3200, threshold=0.3),
    _point("token_window", 0.5, 0.84, 3.7, 3300, threshold=0.1),
    _point("token_window", 0.5, 0.60, 3.0, 2500, threshold=0.5),  # dominated everywhere
    _point("hf_forward", 1.0, 0.90, 1.0, 900),
]


def test_the_three_fronts_hold_their_families_and_drop_dominated_points():
    from spacy_earlyexit.tools.width_plots import fronts

    by_name = fronts(SWEEP, "flops_speedup")
    assert [p["width"] for p in by_name["width"]] == [1.0, 0.5, 0.25]
    assert all(p["width"] == 1.0 for p in by_name["exit"]) and len(by_name["exit"]) == 3
    joint = [(p["policy"], p["width"], p["score"]) for p in by_name["joint"]]
    assert ("token_window", 0.5, 0.84) in joint and ("token_window", 0.5, 0.60) not in joint
    assert all(p["policy"] != "hf_forward" for front in by_name.values() for p in front)
    scores = [p["score"] for p in by_name["joint"]]
    assert scores == sorted(scores, reverse=True)  # faster points on a front score lower


def test_plot_width_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from spacy_earlyexit.tools.width_plots import plot_width_fronts

    points = {"points": [{"name": "3x", "flops_speedup": 3.7, "words_per_second": 3300, "test_score": 0.84}]}
    path = plot_width_fronts({"metric": "ents_f", "points": SWEEP}, tmp_path / "fronts.png", points)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_benchmark_sweeps_every_policy_at_every_width(four_head_stage, tmp_path):
    from spacy.tokens import DocBin

    from spacy_earlyexit.tools.benchmark import default_sweep, run_benchmark

    sweep = default_sweep(3, token_thresholds=(0.1,), sentence_thresholds=(), widths=(0.5, 1.0))
    assert [(p.point.policy_name, p.point.width) for p in sweep][:2] == [("full", 1.0), ("fixed_depth", 1.0)]
    assert {p.point.width for p in sweep} == {0.5, 1.0} and len(sweep) == 2 * (1 + 2 + 1)
    assert sweep[-1].label.endswith("@width=0.5")
    _, source = four_head_stage
    corpus = tmp_path / "test.spacy"
    DocBin(docs=[eg.reference for eg in ner_examples(spacy.blank("en"))]).to_disk(corpus)
    with pytest.warns(UserWarning, match="never ranked"):
        result = run_benchmark(
            str(source),
            str(corpus),
            points=lambda n: default_sweep(
                n, token_thresholds=(), sentence_thresholds=(), fixed_depths=False, widths=(0.5, 1.0)
            ),
            compare_huggingface=False,
            rounds=1,
            progress=lambda line: None,
        )
    by_width = {p["width"]: p for p in result["points"]}
    assert by_width[0.5]["flops_speedup"] > 1.5 and by_width[1.0]["flops_speedup"] == pytest.approx(1.0)
