"""benchmarks/compare.py: every system measured on the same tokens, figures written."""

import json
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from benchmarks import compare, peers
from spacy_earlyexit.core.policies import TokenWindowExit

from ..conftest import NER_DATA, RecordingEngine, ner_examples
from .conftest import TEXTS


def _earlyexit_with_points(trained_ner, path: Path) -> Path:
    """The trained pipeline saved at `path` with calibrated points 2x and 4x."""
    trained_ner.to_disk(path)
    config = spacy.util.load_config(path / "config.cfg", interpolate=False)
    config["components"]["earlyexit_ner"]["operating_points"] = {
        "2x": {"policy": "token_window", "threshold": 0.3},
        "4x": {"policy": "fixed_depth", "layer": 1},
    }
    config.to_disk(path / "config.cfg")
    return path


def _two_docs(nlp) -> list:
    """Two docs of two sentences each."""
    docs = []
    for first, second in zip(NER_DATA, NER_DATA[1:]):
        eg1, eg2 = [eg.reference for eg in ner_examples(nlp) if eg.reference.text in (first[0], second[0])]
        docs.append(spacy.tokens.Doc.from_docs([eg1, eg2]))
    return docs


def test_compare_measures_every_system_in_both_shapes(trained_ner, tmp_path):
    earlyexit = _earlyexit_with_points(trained_ner, tmp_path / "earlyexit")
    cnn = spacy.blank("en")
    cnn.add_pipe("ner")
    optimizer = cnn.initialize(lambda: ner_examples(cnn))
    for _ in range(5):
        cnn.update(ner_examples(cnn), sgd=optimizer)
    (tmp_path / "baselines" / "ner-spacy-cnn").mkdir(parents=True)
    cnn.to_disk(tmp_path / "baselines" / "ner-spacy-cnn" / "model-best")
    docs = _two_docs(trained_ner)
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    output = tmp_path / "compare.json"
    compare.main(
        [
            "measure",
            "--corpus",
            str(tmp_path / "test.spacy"),
            "--tasks",
            "ner",
            "--baselines",
            str(tmp_path / "baselines"),
            "--earlyexit-ner",
            str(earlyexit),
            "--earlyexit-tag",
            str(tmp_path / "none"),
            "--earlyexit-ner-width",
            str(earlyexit),
            "--earlyexit-tag-width",
            str(tmp_path / "none"),
            "--precisions",
            "fp32",
            "--peers",
            "none",
            "--rounds",
            "2",
            "--threads",
            "1",
            "--output",
            str(output),
            "--plot",
            str(tmp_path / "pareto.png"),
        ]
    )
    result = json.loads(output.read_text())
    assert [s["name"] for s in result["systems"]] == [
        "spacy-cnn",
        "earlyexit-full",
        "earlyexit-2x",
        "earlyexit-4x",
        "earlyexit-width-full",
        "earlyexit-width-4x",
    ]
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


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _has_openvino() -> bool:
    try:
        import onnx  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


ONNX_PEERS = ["onnxruntime-fp32", "onnxruntime-int8"]
HF_PEERS = ["hf-forward-fp32", "hf-forward-bf16"]
OPENVINO_PEERS = ["openvino"] if _has_openvino() else []


def test_discover_names_each_precision_and_the_peers(trained_ner, tmp_path, monkeypatch):
    earlyexit = _earlyexit_with_points(trained_ner, tmp_path / "earlyexit")
    (tmp_path / "baselines" / "ner-truncated-k1" / "model-best").mkdir(parents=True)
    notes = []
    systems = compare.discover(
        ["ner"], tmp_path / "baselines", {"ner": earlyexit}, {"ner": earlyexit}, progress=notes.append
    )
    points = ["full", "2x", "4x"]
    width_points = ["full", "4x"]
    expected = (
        ["truncated-k1", "truncated-k1-bf16", "truncated-k1-int8"]
        + [f"earlyexit-{p}" for p in points]
        + [f"earlyexit-{p}-bf16" for p in points]
        + [f"earlyexit-{p}-int8" for p in points]
        + HF_PEERS
        + (ONNX_PEERS if _has_onnxruntime() else [])
        + OPENVINO_PEERS
        + [f"earlyexit-width-{p}" for p in width_points]
        + [f"earlyexit-width-{p}-bf16" for p in width_points]
        + [f"earlyexit-width-{p}-int8" for p in width_points]
    )
    assert [s.name for s in systems] == expected
    by_name = {s.name: s for s in systems}
    assert (by_name["earlyexit-2x"].point, by_name["earlyexit-2x"].precision) == ("2x", "fp32")
    assert (by_name["earlyexit-4x-bf16"].point, by_name["earlyexit-4x-bf16"].precision) == ("4x", "bf16")
    assert (by_name["earlyexit-full-int8"].point, by_name["earlyexit-full-int8"].precision) == ("full", "int8")
    assert by_name["truncated-k1"].precision == "fp32"  # an early-exit baseline: not the component's "auto"
    assert by_name["truncated-k1-bf16"].precision == "bf16"  # and in the other precisions measured
    for peer in HF_PEERS + (ONNX_PEERS if _has_onnxruntime() else []) + OPENVINO_PEERS:
        system = by_name[peer]
        assert (system.point, system.peer, system.pipeline) == ("full", peer, str(earlyexit))
        assert system.load_key != system.pipeline  # a pipeline of its own
    assert by_name["hf-forward-bf16"].precision == "bf16" and by_name["hf-forward-fp32"].precision == "fp32"
    if _has_onnxruntime():
        assert by_name["onnxruntime-int8"].precision == "int8" and by_name["onnxruntime-fp32"].precision == "fp32"
    if OPENVINO_PEERS:  # the precision OpenVINO picks by itself on this CPU
        assert by_name["openvino"].precision == peers.openvino_default_precision()
    # --precisions and --peers choose; today's names keep meaning fp32
    chosen = compare.discover(
        ["ner"], tmp_path / "none", {"ner": earlyexit}, {"ner": tmp_path / "none"}, ["bf16"], ["hf-forward-bf16"]
    )
    assert [s.name for s in chosen] == [
        "earlyexit-full-bf16",
        "earlyexit-2x-bf16",
        "earlyexit-4x-bf16",
        "hf-forward-bf16",
    ]
    with pytest.raises(ValueError):
        compare.discover(["ner"], tmp_path / "none", {"ner": earlyexit}, precisions=["fp16"])
    # without ONNX Runtime its peers are left out with a note, not a crash
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    notes.clear()
    systems = compare.discover(
        ["ner"], tmp_path / "none", {"ner": earlyexit}, {"ner": tmp_path / "none"}, ["fp32"], progress=notes.append
    )
    assert [s.name for s in systems] == ["earlyexit-full", "earlyexit-2x", "earlyexit-4x"] + HF_PEERS + OPENVINO_PEERS
    onnxruntime_notes = [n for n in notes if "onnxruntime" in n and "skipping" in n]
    assert len(onnxruntime_notes) == 2 and len(notes) == 2 + (0 if OPENVINO_PEERS else 1)


def test_each_system_runs_at_its_precision(trained_ner, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")  # run bf16 even where it is emulated
    earlyexit = _earlyexit_with_points(trained_ner, tmp_path / "earlyexit")
    systems = compare.discover(
        ["ner"], tmp_path / "none", {"ner": earlyexit}, {"ner": tmp_path / "none"}, peers=HF_PEERS
    )
    loaded = compare.load_systems(systems, tmp_path / "peers", threads=1)
    # record, per system, the component's setting and the precision predict runs in
    seen, current = {}, {}
    original_prepare = compare._prepare

    def prepare(nlp, system):
        current["name"] = system.name
        original_prepare(nlp, system)

    monkeypatch.setattr(compare, "_prepare", prepare)
    for nlp in loaded.values():
        component = nlp.get_pipe("earlyexit_ner")

        class Recording(RecordingEngine):
            def predict(self, encoder, batch, policy, width, precision, _component=component):
                seen.setdefault(current["name"], set()).add((_component.precision, precision))
                return super().predict(encoder, batch, policy, width, precision)

        component.engine = Recording(component.engine)
    docs = _two_docs(trained_ner)
    compare.measure_speed(systems, loaded, compare.shapes_of(docs), batch_size=2, rounds=1, progress=lambda m: None)
    for system in systems:
        assert seen[system.name] == {(system.precision, system.precision)}, system.name
        assert 0.0 <= system.score["documents"] <= 1.0 and len(system.rounds["sentences"]) == 1
    # the points keep their policies in every precision; hf-forward runs every layer
    assert systems[0].analytic_speedup == 1.0
    by_name = {s.name: s for s in systems}
    assert by_name["earlyexit-4x-bf16"].analytic_speedup > 1.0 and by_name["earlyexit-4x-int8"].analytic_speedup > 1.0
    assert by_name["hf-forward-bf16"].analytic_speedup == 1.0


def _labels(nlp, texts):
    component = nlp.get_pipe("earlyexit_ner")
    component.use("full")
    return [list(d.label_ids) for d in component.predict([nlp.make_doc(t) for t in texts])]


@pytest.fixture()
def ner_copy(trained_ner, tmp_path):
    """A loaded copy of the trained pipeline, its casing embedding made
    large, so that leaving it out would change labels."""
    import torch

    path = tmp_path / "earlyexit"
    trained_ner.to_disk(path)
    nlp = spacy.load(path)
    encoder = nlp.get_pipe("earlyexit_ner").encoder
    assert encoder.case_embedding is not None
    with torch.no_grad():
        torch.manual_seed(0)
        encoder.case_embedding.weight.normal_(0.0, 1.0)
    return nlp


def test_onnxruntime_fp32_labels_as_hugging_face_forward(ner_copy, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import torch

    from spacy_earlyexit.core.engines import HuggingFaceForward

    component = ner_copy.get_pipe("earlyexit_ner")
    encoder = component.encoder
    with component.running_on(HuggingFaceForward()):
        expected = _labels(ner_copy, TEXTS)
    stand_in = peers.install("onnxruntime-fp32", component, tmp_path / "onnx", threads=1)
    component.engine = recording = RecordingEngine(stand_in)
    batches = recording.batches
    got = _labels(ner_copy, TEXTS)
    assert sum(len(x) for x in got) == sum(len(ner_copy.make_doc(t)) for t in TEXTS)
    assert got == expected  # every token
    assert stand_in.min_cosine_to_fp32 > 0.9999
    assert (tmp_path / "onnx" / "backbone-case-lexical-fp32.onnx").is_file()  # the default word features
    # padded batches of several lengths went through the one exported model
    assert len({tuple(b.input_ids.shape) for b in batches}) >= 1 and any(not bool(b.piece_mask.all()) for b in batches)
    for batch in batches:
        mask = batch.piece_mask
        states = stand_in.hidden_states(batch)
        assert torch.allclose(states[mask], stand_in.torch_hidden_states(batch)[mask], atol=1e-4)
        # the casing embedding is in the exported graph: without it the states differ
        with torch.inference_mode():
            no_case = peers.backbone_with_case(encoder)(batch.input_ids, mask.long(), None)
        assert peers.cosine_to_reference(states, no_case, mask) < 0.99


def test_onnxruntime_int8_runs_and_reports_its_cosine(ner_copy, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    component = ner_copy.get_pipe("earlyexit_ner")
    stand_in = peers.install("onnxruntime-int8", component, tmp_path / "onnx", threads=1)
    component.encoder.train()
    stand_in.model_path(with_case=True)  # export and quantize now: the encoder's mode is left as it was
    assert component.encoder.training and component.encoder.backbone.training
    component.encoder.eval()
    docs = list(ner_copy.pipe(TEXTS, batch_size=2))
    assert all(token.ent_iob_ in ("B", "I", "O") for doc in docs for token in doc)  # every token labelled
    records = [doc._.earlyexit["earlyexit_ner"] for doc in docs]
    assert all(r["cost"] == r["full_cost"] > 0 for r in records)  # every layer
    assert 0.9 < stand_in.min_cosine_to_fp32 <= 1.0 + 1e-6, stand_in.min_cosine_to_fp32
    print("onnxruntime-int8 min cosine to fp32 on the tiny model:", stand_in.min_cosine_to_fp32)
    assert (tmp_path / "onnx" / "backbone-case-lexical-int8.onnx").is_file()
    import onnx

    # dynamically quantized: int8 products with per-call activation scales
    ops = {node.op_type for node in onnx.load(str(tmp_path / "onnx" / "backbone-case-lexical-int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, sorted(ops)
    fp32_model = onnx.load(str(tmp_path / "onnx" / "backbone-case-lexical-fp32.onnx"))
    fp32_ops = {node.op_type for node in fp32_model.graph.node}
    assert "MatMulInteger" not in fp32_ops


def test_compare_writes_the_peers_and_precisions(trained_ner, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPACY_EARLYEXIT_NATIVE_BF16", "1")  # the rss subprocesses inherit it
    earlyexit = tmp_path / "earlyexit"
    trained_ner.to_disk(earlyexit)  # no calibrated points: full depth only
    docs = _two_docs(trained_ner)
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    output = tmp_path / "compare.json"
    none = str(tmp_path / "none")
    compare.main(
        ["measure", "--corpus", str(tmp_path / "test.spacy"), "--tasks", "ner", "--baselines", none]
        + ["--earlyexit-ner", str(earlyexit), "--earlyexit-tag", none]
        + ["--earlyexit-ner-width", none, "--earlyexit-tag-width", none]
        + ["--precisions", "bf16", "--peers", "hf-forward-bf16,onnxruntime-int8", "--rounds", "1", "--threads", "1"]
        + ["--output", str(output), "--plot", str(tmp_path / "pareto.png")]
    )
    result = json.loads(output.read_text())
    rows = {row["name"]: row for row in result["systems"]}
    onnx = _has_onnxruntime()
    assert list(rows) == ["earlyexit-full-bf16", "hf-forward-bf16"] + (["onnxruntime-int8"] if onnx else [])
    assert rows["earlyexit-full-bf16"]["precision"] == rows["hf-forward-bf16"]["precision"] == "bf16"
    assert rows["hf-forward-bf16"]["peer"] == "hf-forward-bf16" and rows["hf-forward-bf16"]["operating_point"] == "full"
    for row in rows.values():
        assert row["peak_rss_mb"] > 50 and set(row["shapes"]) == {"documents", "sentences"}
        assert row["shapes"]["sentences"]["words_per_second"] > 0
        assert row["analytic_speedup"] == 1.0
    table = output.with_suffix(".md").read_text()
    assert "| ner | hf-forward-bf16 | bf16 |" in table
    if onnx:
        row = rows["onnxruntime-int8"]
        assert row["precision"] == "int8" and 0.9 < row["min_cosine_to_fp32"] <= 1.0 + 1e-6
        assert row["onnx_size_mb"] is not None and "onnxruntime-int8: minimum cosine" in table
    else:
        assert "skipping peer onnxruntime-int8" in capsys.readouterr().out
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_onnxruntime_peer_reads_words_as_the_pipeline_does(tiny_model_dir, tmp_path):
    """A pipeline with lexical features and first-and-last-piece words: the
    exported graph takes the lexical rows, and the peer pools words as the
    pipeline's own loop (all labels equal to Hugging Face's forward)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import torch

    from spacy_earlyexit.core.engines import HuggingFaceForward

    from ..conftest import model_config, train

    words = {"word_pooling": "first_last", "lexical_attrs": ["PREFIX", "SUFFIX"], "lexical_rows": [20, 40]}
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, **words))
    train(nlp, ner_examples(nlp), steps=20)
    component = nlp.get_pipe("earlyexit_ner")
    encoder = component.encoder
    with torch.no_grad():
        torch.manual_seed(0)
        encoder.lexical_embedding.weight[1:].normal_(0.0, 1.0)  # large: leaving it out would change labels
    with component.running_on(HuggingFaceForward()):
        expected = _labels(nlp, TEXTS)
    assert expected == _labels(nlp, TEXTS)  # Hugging Face's forward = the own loop, at full depth
    stand_in = peers.install("onnxruntime-fp32", component, tmp_path / "onnx", threads=1)
    assert _labels(nlp, TEXTS) == expected
    assert stand_in.min_cosine_to_fp32 > 0.9999
    assert (tmp_path / "onnx" / "backbone-case-lexical-fp32.onnx").is_file()
