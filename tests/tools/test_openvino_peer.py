"""benchmarks/peers.py's `openvino` peer: the pipeline's full-depth network
through OpenVINO's runtime, and benchmarks/compare.py measuring it.

OpenVINO picks its inference precision by itself: bf16 on a CPU that
multiplies bf16 natively (AMX, and AVX512-BF16 with recent releases, as on
this project's 2-core Xeon), f32 elsewhere. The label test compares with the
product's own full-depth fp32 labels, so it asks the compiled model for f32
(`INFERENCE_PRECISION_HINT`); with that, OpenVINO's states match torch's
within float rounding (1e-4) and every label is the same on these fixed-seed
tiny models. The comparison itself leaves the hint at its default (checked
below)."""

import json

import pytest
import spacy
from spacy.tokens import Doc, DocBin

from ..conftest import NER_DATA, TAG_DATA, RecordingEngine, ner_tagger_examples

pytest.importorskip("openvino")
pytest.importorskip("onnx")  # the peer reads the shared ONNX export

from benchmarks import compare, peers  # noqa: E402

from .conftest import TEXTS  # noqa: E402

COMPONENTS = {"ner": ("trained_ner", "earlyexit_ner"), "tag": ("trained_tagger", "earlyexit_tagger")}
MORE_TEXTS = TEXTS + [text for text, _ in TAG_DATA] + ["Tuesday", "the mat , the cat and PARIS"]


def _copy(request, task, tmp_path):
    """A loaded copy of the task's tiny trained pipeline (a peer replaces its
    layer loop for good), its casing embedding made large so that a graph
    without it would change labels."""
    import torch

    fixture, name = COMPONENTS[task]
    path = tmp_path / f"pipeline-{task}"
    request.getfixturevalue(fixture).to_disk(path)
    nlp = spacy.load(path)
    encoder = nlp.get_pipe(name).encoder
    assert encoder.case_embedding is not None
    with torch.no_grad():
        torch.manual_seed(0)
        encoder.case_embedding.weight.normal_(0.0, 1.0)
    return nlp, nlp.get_pipe(name)


def _predict(nlp, component):
    """Labels and label probabilities of every token, at full depth (the
    probabilities where the component keeps them: NER's decoding)."""
    exits = component.predict([nlp.make_doc(t) for t in MORE_TEXTS])
    return [list(e.label_ids) for e in exits], [e.label_probs for e in exits]


def _annotations(nlp, task):
    docs = list(nlp.pipe(MORE_TEXTS, batch_size=3))
    if task == "ner":
        return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]
    return [[t.tag_ for t in doc] for doc in docs]


@pytest.mark.parametrize("task", ["ner", "tag"])
def test_openvino_f32_labels_as_the_product_at_full_depth_fp32(request, task, tmp_path):
    import numpy
    import torch

    nlp, component = _copy(request, task, tmp_path)
    component.use("full")
    component.precision = "fp32"
    component.batch_sequences = 2  # several batches of several shapes
    expected, expected_probs = _predict(nlp, component)
    expected_annotations = _annotations(nlp, task)
    stand_in = peers.install(
        "openvino", component, tmp_path / "peer", threads=1, properties={"INFERENCE_PRECISION_HINT": "f32"}
    )
    assert isinstance(stand_in, peers.OpenVinoForward)
    component.engine = recording = RecordingEngine(stand_in)
    batches = recording.batches
    got, got_probs = _predict(nlp, component)
    assert sum(len(x) for x in got) == sum(len(nlp.make_doc(t)) for t in MORE_TEXTS)
    assert got == expected  # every token
    for mine, theirs in zip(got_probs, expected_probs):  # kept where the labels are decoded from them (ner)
        assert (mine is None) == (theirs is None) == (task == "tag")
        if theirs is not None:
            numpy.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert _annotations(nlp, task) == expected_annotations  # what the docs receive
    assert stand_in.inference_precision == "fp32" and stand_in.inference_threads == 1
    assert stand_in.min_cosine_to_fp32 > 0.9999
    # the fp32 ONNX export of the ONNX Runtime peers, read by OpenVINO (default word features)
    assert sorted(p.name for p in (tmp_path / "peer").iterdir()) == ["backbone-case-lexical-fp32.onnx"]
    # one compiled model for every (dynamic) shape, padded ones included
    assert len(stand_in.sessions) == 1
    assert len({tuple(b.input_ids.shape) for b in batches}) >= 2 and any(not bool(b.piece_mask.all()) for b in batches)
    for batch in batches:
        mask = batch.piece_mask
        states = stand_in.hidden_states(batch)
        assert torch.allclose(states[mask], stand_in.torch_hidden_states(batch)[mask], atol=1e-4)
        with torch.inference_mode():  # the casing embedding is in the graph: without it the states differ
            no_case = peers.backbone_with_case(component.encoder)(batch.input_ids, mask.long(), None)
        assert peers.cosine_to_reference(states, no_case, mask) < 0.99


def test_openvino_keeps_its_defaults_and_shares_the_onnx_export(request, tmp_path):
    import openvino

    nlp, component = _copy(request, "ner", tmp_path)
    stand_in = peers.install("openvino", component, tmp_path / "peer", threads=1)
    docs = list(nlp.pipe(MORE_TEXTS, batch_size=2))
    assert all(token.ent_iob_ in ("B", "I", "O") for doc in docs for token in doc)  # every token labelled
    records = [doc._.earlyexit["earlyexit_ner"] for doc in docs]
    assert all(r["cost"] == r["full_cost"] > 0 for r in records)  # every layer
    # the precision and performance hint are OpenVINO's own defaults on this CPU; the threads are ours
    core = openvino.Core()
    assert stand_in.inference_precision == peers.openvino_default_precision() == peers.precision_of("openvino")
    assert stand_in.inference_precision in ("fp32", "bf16", "fp16")
    assert stand_in.performance_hint == str(core.get_property("CPU", "PERFORMANCE_HINT")).split(".")[-1]
    assert stand_in.inference_threads == 1
    # bf16 where OpenVINO picks it: close to fp32, not equal
    assert 0.99 < stand_in.min_cosine_to_fp32 <= 1.0 + 1e-6, stand_in.min_cosine_to_fp32
    print(
        f"openvino ({stand_in.inference_precision}) min cosine to fp32 on the tiny model:", stand_in.min_cosine_to_fp32
    )
    # the ONNX Runtime fp32 peer on the same folder reads the same file: exported once
    onnx_file = tmp_path / "peer" / "backbone-case-lexical-fp32.onnx"
    written = onnx_file.stat().st_mtime_ns
    other = peers.OnnxRuntimeForward(component.encoder, tmp_path / "peer", threads=1)
    assert other.model_path(with_case=True, with_lexical=True) == onnx_file and onnx_file.stat().st_mtime_ns == written
    assert stand_in.size_mb == other.size_mb


def test_openvino_is_unavailable_without_its_modules(monkeypatch):
    import sys

    assert peers.unavailable("openvino") is None
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "openvino not installed" in peers.unavailable("openvino")
    assert "pip install openvino onnx" in peers.unavailable("openvino")
    assert peers.unavailable("hf-forward-fp32") is None


def _tagged_docs(nlp) -> list:
    """Two docs of two sentences each, with entities and (where known) tags."""
    references = {eg.reference.text: eg.reference for eg in ner_tagger_examples(nlp)}
    texts = [text for text, _ in NER_DATA] + [text for text, _ in TAG_DATA if text not in dict(NER_DATA)]
    return [Doc.from_docs([references[a], references[b]]) for a, b in zip(texts[0::2], texts[1::2])]


def test_compare_measures_openvino_for_both_tasks_and_shapes(trained_ner, trained_tagger, tmp_path):
    trained_ner.to_disk(tmp_path / "ner")
    trained_tagger.to_disk(tmp_path / "tag")
    docs = _tagged_docs(trained_ner)
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    output = tmp_path / "compare.json"
    none = str(tmp_path / "none")
    compare.main(
        ["measure", "--corpus", str(tmp_path / "test.spacy"), "--tasks", "ner,tag", "--baselines", none]
        + ["--earlyexit-ner", str(tmp_path / "ner"), "--earlyexit-tag", str(tmp_path / "tag")]
        + ["--earlyexit-ner-width", none, "--earlyexit-tag-width", none]
        + ["--precisions", "fp32", "--peers", "openvino", "--rounds", "1", "--threads", "1"]
        + ["--output", str(output), "--plot", str(tmp_path / "pareto.png")]
    )
    result = json.loads(output.read_text())
    assert result["openvino"] and result["n_docs"] == {"documents": 2, "sentences": 4}
    rows = {(row["task"], row["name"]): row for row in result["systems"]}
    assert list(rows) == [
        ("ner", "earlyexit-full"),
        ("ner", "openvino"),
        ("tag", "earlyexit-full"),
        ("tag", "openvino"),
    ]
    default = peers.openvino_default_precision()
    for task in ("ner", "tag"):
        row = rows[(task, "openvino")]
        assert row["peer"] == "openvino" and row["operating_point"] == "full"
        assert row["precision"] == row["inference_precision"] == default
        assert row["inference_threads"] == 1 and row["performance_hint"]
        assert row["onnx_size_mb"] is not None and 0.99 < row["min_cosine_to_fp32"] <= 1.0 + 1e-6
        assert row["peak_rss_mb"] > 50 and row["analytic_speedup"] == 1.0
        assert set(row["shapes"]) == {"documents", "sentences"}
        for figures in row["shapes"].values():
            assert 0.0 <= figures["score"] <= 1.0 and figures["words_per_second"] > 0
        if default == "fp32":  # the same network in the same precision: the same score as the pipeline's own
            assert row["shapes"] == {
                shape: {**figures, "score": rows[(task, "earlyexit-full")]["shapes"][shape]["score"]}
                for shape, figures in row["shapes"].items()
            }
    table = output.with_suffix(".md").read_text()
    assert f"| ner | openvino | {default} |" in table and f"| tag | openvino | {default} |" in table
    assert "ner openvino: minimum cosine" in table and f"OpenVINO inferred in {default}" in table
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert compare.family_color("openvino") not in {compare.family_color(n) for n in ("earlyexit-full", "hf-forward")}
