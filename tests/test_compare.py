"""benchmarks/compare.py: every system measured on the same tokens, figures written."""
import importlib.util
import json
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from spacy_earlyexit.policies import TokenWindowExit

from .conftest import NER_DATA, ner_examples

ROOT = Path(__file__).resolve().parent.parent


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_measures_every_system_in_both_shapes(trained_ner, tmp_path):
    compare = _compare_module()
    earlyexit = tmp_path / "earlyexit"
    ner = trained_ner.get_pipe("earlyexit_ner")
    trained_ner.to_disk(earlyexit)
    config = spacy.util.load_config(earlyexit / "config.cfg", interpolate=False)
    config["components"]["earlyexit_ner"]["operating_points"] = {"2x": {"policy": "token_window", "threshold": 0.3},
                                                                 "4x": {"policy": "fixed_depth", "layer": 1}}
    config.to_disk(earlyexit / "config.cfg")
    cnn = spacy.blank("en")
    cnn.add_pipe("ner")
    optimizer = cnn.initialize(lambda: ner_examples(cnn))
    for _ in range(5):
        cnn.update(ner_examples(cnn), sgd=optimizer)
    (tmp_path / "baselines" / "ner-spacy-cnn").mkdir(parents=True)
    cnn.to_disk(tmp_path / "baselines" / "ner-spacy-cnn" / "model-best")
    # two docs of two sentences each
    docs = []
    for first, second in zip(NER_DATA, NER_DATA[1:]):
        eg1, eg2 = [eg.reference for eg in ner_examples(trained_ner) if eg.reference.text in (first[0], second[0])]
        docs.append(spacy.tokens.Doc.from_docs([eg1, eg2]))
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    output = tmp_path / "compare.json"
    compare.main(["measure", "--corpus", str(tmp_path / "test.spacy"), "--tasks", "ner",
                  "--baselines", str(tmp_path / "baselines"), "--earlyexit-ner", str(earlyexit),
                  "--earlyexit-tag", str(tmp_path / "none"), "--earlyexit-ner-width", str(earlyexit),
                  "--earlyexit-tag-width", str(tmp_path / "none"), "--rounds", "2", "--threads", "1",
                  "--output", str(output), "--plot", str(tmp_path / "pareto.png")])
    result = json.loads(output.read_text())
    assert [s["name"] for s in result["systems"]] == [
        "spacy-cnn", "earlyexit-full", "earlyexit-2x", "earlyexit-4x", "earlyexit-width-full", "earlyexit-width-4x"]
    assert result["n_docs"] == {"documents": 2, "sentences": 4}
    assert result["n_words"]["documents"] == result["n_words"]["sentences"] == sum(len(d) for d in docs)
    for system in result["systems"]:
        for key in ("name", "task", "score", "words_per_second", "peak_rss_mb", "size_mb", "train_minutes"):
            assert key in system
        assert system["task"] == "ner" and 0.0 <= system["score"] <= 1.0
        assert system["peak_rss_mb"] > 50 and system["size_mb"] > 0
        for shape in ("documents", "sentences"):
            figures = system["shapes"][shape]
            assert len(figures["round_words_per_second"]) == 2 and figures["words_per_second"] > 0
    by_name = {s["name"]: s for s in result["systems"]}
    assert by_name["earlyexit-full"]["analytic_speedup"] == 1.0
    assert by_name["earlyexit-2x"]["analytic_speedup"] > 1.0
    assert by_name["spacy-cnn"]["analytic_speedup"] is None
    assert by_name["earlyexit-width-4x"]["analytic_speedup"] == by_name["earlyexit-4x"]["analytic_speedup"] > 1.0
    # the earlyexit score matches the component's own evaluation at that point
    loaded = spacy.load(earlyexit)
    with loaded.get_pipe("earlyexit_ner").using(TokenWindowExit(0.3)):
        examples = [spacy.training.Example(spacy.tokens.Doc(loaded.vocab, words=[t.text for t in d]), d) for d in docs]
        expected = loaded.evaluate(examples)["ents_f"]
    assert abs(by_name["earlyexit-2x"]["score"] - expected) < 1e-9
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert "earlyexit-2x" in output.with_suffix(".md").read_text()
