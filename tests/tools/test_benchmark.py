"""The benchmark command on a tiny trained pipeline."""

import json
import subprocess
import sys

from spacy.tokens import DocBin

from spacy_earlyexit.tools.benchmark import run_benchmark
from spacy_earlyexit.tools.evaluation import measurement

from ..conftest import ner_corpus


def test_run_benchmark_reports_every_point(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "p")
    corpus = ner_corpus(trained_ner, tmp_path / "dev.spacy")

    def points(n_layers):
        return [
            measurement("token_window", threshold=0.0, window=2),
            measurement("token_window", threshold=1.01, window=1),
        ]

    result = run_benchmark(str(tmp_path / "p"), str(corpus), points=points, batch_size=4, progress=lambda s: None)
    by_policy = {(p["policy"], p["engine"], p["params"].get("threshold")): p for p in result["points"]}
    full = by_policy[("full", "earlyexit", None)]
    assert result["metric"] == "ents_f" and result["n_layers"] == 3
    assert full["score"] == 1.0 and full["flops_speedup"] == 1.0 and full["wps_ratio_vs_full"] == 1.0
    # threshold 0 is full depth; the same weights through Hugging Face give the same score
    assert by_policy[("token_window", "earlyexit", 0.0)]["score"] == full["score"]
    assert by_policy[("full", "hf_forward", None)]["score"] == full["score"]
    everything_at_layer_one = by_policy[("token_window", "earlyexit", 1.01)]
    assert everything_at_layer_one["mean_exit_layer"] == 1.0
    assert everything_at_layer_one["flops_speedup"] > 2.0
    assert all(p["words_per_second"] > 0 for p in result["points"])


def test_benchmark_command_writes_json(trained_tagger, tmp_path):
    trained_tagger.to_disk(tmp_path / "p")
    from spacy.training import Example

    from ..conftest import TAG_DATA

    DocBin(docs=[Example.from_dict(trained_tagger.make_doc(t), {"tags": g}).reference for t, g in TAG_DATA]).to_disk(
        tmp_path / "c.spacy"
    )
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "spacy_earlyexit",
        "benchmark",
        str(tmp_path / "p"),
        str(tmp_path / "c.spacy"),
        "--output",
        str(out),
        "--thresholds",
        "0.1,0.5",
        "--sentence-thresholds",
        "0.2",
        "--no-hf",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tag_acc" in proc.stdout and "token_window" in proc.stdout
    result = json.loads(out.read_text())
    policies = [p["policy"] for p in result["points"]]
    assert policies == ["full", "fixed_depth", "fixed_depth", "token_window", "token_window", "sentence"]
    for point in result["points"]:
        assert {"policy", "params", "score", "flops_speedup", "words_per_second"} <= set(point)
