"""Regression tests for defects found by hostile testing: crafted serialized
encoders, code planted in a model directory, broken model files, entities set
by earlier components, retokenized docs and settings that can never work."""

import builtins
import io
import json
import math
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import spacy
import srsly
import torch
from spacy.tokens import Doc, DocBin

from spacy_earlyexit.core.hf import EncoderLoadError
from spacy_earlyexit.core.policies import ExitPolicy, FixedDepth, FullDepth, SentenceExit, TokenWindowExit
from spacy_earlyexit.pipeline.extensions import record_exits
from spacy_earlyexit.pipeline.model import EarlyExitShim
from spacy_earlyexit.pipeline.wordpieces import piece_budget, plan_sequences

from ..conftest import NER_DATA, model_config, ner_examples

TEXT = NER_DATA[0][0]  # "Angela Merkel visited Paris on Tuesday ."


@pytest.fixture(scope="module")
def saved_ner(trained_ner, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "pipeline"
    trained_ner.to_disk(path)
    return path


def _copy_pipeline(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pipeline"
    shutil.copytree(saved, target)
    return target


# -- 1. crafted file names in a serialized encoder ----------------------------


def _shim_bytes_with(trained_ner, name: str) -> bytes:
    msg = srsly.msgpack_loads(trained_ner.get_pipe("earlyexit_ner").model.shims[0].to_bytes())
    msg["files"][name] = b"planted"
    return srsly.msgpack_dumps(msg)


@pytest.mark.parametrize("kind", ["parent", "absolute", "subdirectory", "dotdot", "unknown"])
def test_from_bytes_rejects_path_traversal(trained_ner, tmp_path, kind):
    marker = f"planted-{uuid.uuid4().hex}"
    name, target = {
        "parent": (f"../{marker}", Path(tempfile.gettempdir()) / marker),
        "absolute": (str(tmp_path / marker), tmp_path / marker),
        "subdirectory": (f"sub/{marker}", None),
        "dotdot": ("..", None),
        "unknown": ("evil.py", None),
    }[kind]
    shim = EarlyExitShim()
    with pytest.raises(EncoderLoadError, match="Unexpected file name"):
        shim.from_bytes(_shim_bytes_with(trained_ner, name))
    assert not shim.is_ready
    if target is not None:
        assert not target.exists()


def test_from_bytes_rejects_a_blob_without_a_file_table():
    with pytest.raises(EncoderLoadError):
        EarlyExitShim().from_bytes(srsly.msgpack_dumps(["not", "a", "table"]))
    with pytest.raises(EncoderLoadError):
        EarlyExitShim().from_bytes(b"\xc1 garbage")


# -- 2. code planted in a model directory -------------------------------------


def _plant_remote_code(model_dir: Path, marker: Path, tokenizer_class: str = None) -> None:
    (model_dir / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel, BertTokenizerFast\n"
        "class EvilConfig(BertConfig): pass\n"
        "class EvilModel(BertModel): pass\n"
        "class EvilTokenizerFast(BertTokenizerFast): pass\n",
        encoding="utf8",
    )
    tok_path = model_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text(encoding="utf8"))
    tok_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizerFast", "evil.EvilTokenizerFast"]}
    if tokenizer_class:
        tok_config["tokenizer_class"] = tokenizer_class
    tok_path.write_text(json.dumps(tok_config), encoding="utf8")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf8"))
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    config_path.write_text(json.dumps(config), encoding="utf8")


@pytest.fixture
def no_prompt(monkeypatch):
    """Stdin closed; any prompt is recorded and fails."""
    prompts = []

    def refuse(*args, **kwargs):
        prompts.append(args)
        raise EOFError("stdin is closed")

    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)
    monkeypatch.setattr(builtins, "input", refuse)
    return prompts


@pytest.mark.parametrize("tokenizer_class", [None, "EvilTokenizer"])
def test_planted_remote_code_never_runs_at_load(saved_ner, tmp_path, no_prompt, tokenizer_class):
    path = _copy_pipeline(saved_ner, tmp_path)
    marker = tmp_path / "code_ran"
    _plant_remote_code(path / "earlyexit_ner" / "model", marker, tokenizer_class)
    if tokenizer_class is None:
        # a built-in tokenizer class fits: the auto_map is ignored
        doc = spacy.load(path)(TEXT)
        assert [t._.exit_layer for t in doc] == [3] * len(doc)
    else:
        # only the planted class would fit: a clear error, not a prompt
        with pytest.raises(EncoderLoadError, match="tokenizer"):
            spacy.load(path)
    assert not marker.exists()
    assert no_prompt == []


def test_planted_remote_code_never_runs_at_initialize(tiny_model_dir, tmp_path, no_prompt):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "code_ran"
    _plant_remote_code(model_dir, marker)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config=model_config(model_dir))
    nlp.initialize(lambda: ner_examples(nlp))
    assert not marker.exists()
    assert no_prompt == []


# -- 3. broken model files are named ------------------------------------------


def _remove_tokenizer_files(model_dir: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink(missing_ok=True)


def _garble_tokenizer_json(model_dir: Path) -> None:
    (model_dir / "tokenizer.json").write_text("{ this is not a tokenizer", encoding="utf8")


def _config_as_list(model_dir: Path) -> None:
    (model_dir / "config.json").write_text(json.dumps([1, 2, 3]), encoding="utf8")


@pytest.mark.parametrize("damage", [_remove_tokenizer_files, _garble_tokenizer_json, _config_as_list])
def test_broken_model_files_are_a_clear_load_error(saved_ner, tmp_path, damage):
    path = _copy_pipeline(saved_ner, tmp_path)
    model_dir = path / "earlyexit_ner" / "model"
    damage(model_dir)
    with pytest.raises(EncoderLoadError) as info:
        spacy.load(path)
    assert str(model_dir) in str(info.value)
    assert isinstance(info.value, OSError)


def test_config_json_that_is_not_an_object_is_a_clear_error_from_bytes(trained_ner):
    msg = srsly.msgpack_loads(trained_ner.get_pipe("earlyexit_ner").model.shims[0].to_bytes())
    msg["files"]["config.json"] = b"[1, 2, 3]"
    with pytest.raises(EncoderLoadError, match="config.json"):
        EarlyExitShim().from_bytes(srsly.msgpack_dumps(msg))


# -- 4. entities set by earlier components ------------------------------------


@pytest.fixture
def ner_after_ruler(trained_ner):
    ruler = trained_ner.add_pipe("entity_ruler", before="earlyexit_ner")
    try:
        yield trained_ner, ruler
    finally:
        trained_ner.remove_pipe("entity_ruler")


def test_ner_keeps_entities_set_by_an_earlier_entity_ruler(ner_after_ruler):
    nlp, ruler = ner_after_ruler
    ruler.add_patterns([{"label": "ANIMAL", "pattern": "cat"}])
    doc = nlp("The cat visited Berlin .")
    assert [(e.text, e.label_) for e in doc.ents] == [("cat", "ANIMAL"), ("Berlin", "LOC")]
    assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)


def test_ner_drops_predictions_that_overlap_existing_entities(ner_after_ruler):
    nlp, ruler = ner_after_ruler
    ruler.add_patterns([{"label": "NAME", "pattern": "Merkel"}])
    doc = nlp(TEXT)
    # the predicted PER "Angela Merkel" overlaps the ruler's entity: dropped
    assert [(e.text, e.label_) for e in doc.ents] == [("Merkel", "NAME"), ("Paris", "LOC")]
    assert doc[0].ent_iob_ == "O"


def test_ner_overwrite_ents_replaces_existing_entities(ner_after_ruler):
    nlp, ruler = ner_after_ruler
    ruler.add_patterns([{"label": "ANIMAL", "pattern": "cat"}, {"label": "NAME", "pattern": "Merkel"}])
    ner = nlp.get_pipe("earlyexit_ner")
    ner.overwrite_ents = True
    try:
        doc = nlp(TEXT)
    finally:
        ner.overwrite_ents = False
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Paris", "LOC")]


def test_ner_overwrite_ents_is_a_factory_setting(tiny_model_dir):
    nlp = spacy.blank("en")
    assert nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir)).overwrite_ents is False
    assert nlp.config["components"]["earlyexit_ner"]["overwrite_ents"] is False
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "overwrite_ents": True})
    assert ner.overwrite_ents is True


def test_ner_predicts_over_preset_outside_and_missing_tokens_and_respects_blocked(trained_ner):
    ner = trained_ner.get_pipe("earlyexit_ner")
    doc = trained_ner.make_doc(TEXT)
    # "Angela Merkel" preset O, "visited" missing, "Paris" blocked
    doc.set_ents([], outside=[doc[0:2]], missing=[doc[2:3]], blocked=[doc[3:4]], default="outside")
    doc = ner(doc)
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER")]
    assert doc[3].ent_iob_ == "B" and doc[3].ent_type == 0  # still blocked
    assert all(t.ent_iob != 0 for t in doc)  # nothing left missing


# -- 5. exit information follows the tokens -------------------------------------


def _doc_with_exits(nlp, text, layers, component="earlyexit_ner"):
    doc = nlp.make_doc(text)
    record_exits(doc, component, layers, 3, 10.0, 20.0)
    return doc


def test_merged_token_reports_the_deepest_exit_layer_of_its_parts():
    nlp = spacy.blank("en")
    doc = _doc_with_exits(nlp, TEXT, [1, 3, 2, 1, 2, 2, 1])
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
        retokenizer.merge(doc[3:6])
    assert [t.text for t in doc] == ["Angela Merkel", "visited", "Paris on Tuesday", "."]
    assert [t._.exit_layer for t in doc] == [3, 2, 2, 1]
    assert doc[2]._.exit_layers == {"earlyexit_ner": 2}


def test_split_tokens_report_the_exit_layer_of_the_token_they_came_from():
    nlp = spacy.blank("en")
    doc = _doc_with_exits(nlp, TEXT, [1, 3, 2, 1, 2, 2, 1])
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[2], ["vis", "it", "ed"], heads=[(doc[2], 1), doc[1], (doc[2], 1)])
    assert [t.text for t in doc][:5] == ["Angela", "Merkel", "vis", "it", "ed"]
    assert [t._.exit_layer for t in doc] == [1, 3, 2, 2, 2, 1, 2, 2, 1]


def test_merged_doc_keeps_exit_layers_for_a_component_that_ran_after_the_merge():
    nlp = spacy.blank("en")
    doc = _doc_with_exits(nlp, TEXT, [1, 3, 2, 1, 2, 2, 1], component="earlyexit_tagger")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
    record_exits(doc, "earlyexit_ner", [2, 1, 1, 1, 1, 1], 3, 5.0, 20.0)
    assert doc[0]._.exit_layers == {"earlyexit_tagger": 3, "earlyexit_ner": 2}
    assert doc[1]._.exit_layers == {"earlyexit_tagger": 2, "earlyexit_ner": 1}
    # running the same component again replaces its layers inside merged tokens
    record_exits(doc, "earlyexit_tagger", [1, 1, 1, 1, 1, 1], 3, 5.0, 20.0)
    assert doc[0]._.exit_layers == {"earlyexit_tagger": 1, "earlyexit_ner": 2}


def test_exit_layers_survive_from_docs_and_docbin():
    nlp = spacy.blank("en")
    first = _doc_with_exits(nlp, TEXT, [1, 3, 2, 1, 2, 2, 1])
    second = _doc_with_exits(nlp, "John sat .", [2, 1, 3], component="earlyexit_tagger")
    with pytest.warns(UserWarning, match="earlyexit"):  # the doc-level costs cannot be merged
        joined = Doc.from_docs([first, second])
    expected = [{"earlyexit_ner": layer} for layer in [1, 3, 2, 1, 2, 2, 1]]
    expected += [{"earlyexit_tagger": layer} for layer in [2, 1, 3]]
    assert [t._.exit_layers for t in joined] == expected
    doc_bin = DocBin(store_user_data=True, docs=[joined, first])
    restored = list(DocBin(store_user_data=True).from_bytes(doc_bin.to_bytes()).get_docs(nlp.vocab))
    assert [t._.exit_layers for t in restored[0]] == expected
    assert [t._.exit_layer for t in restored[1]] == [1, 3, 2, 1, 2, 2, 1]
    assert restored[1]._.earlyexit["earlyexit_ner"]["cost"] == 10.0


class StaggeredExit(ExitPolicy):
    """Word w of a sequence leaves after layer w % n_layers + 1: exit layers
    that differ between neighbours, whatever the model predicts."""

    needs_every_exit = True

    def exits(self, index, n_layers, uncertainty, active, words):
        position = torch.arange(active.shape[1], device=active.device)[None, :]
        return active & (position % n_layers == index)


def test_exit_layers_follow_merge_entities_in_a_pipeline(trained_ner):
    texts = [text for text, _ in NER_DATA]
    ner = trained_ner.get_pipe("earlyexit_ner")
    ner.exit_policy = StaggeredExit()
    try:
        plain = [trained_ner(text) for text in texts]
        trained_ner.add_pipe("merge_entities")
        try:
            merged = [trained_ner(text) for text in texts]
        finally:
            trained_ner.remove_pipe("merge_entities")
    finally:
        ner.exit_policy = FullDepth()
    assert [t._.exit_layer for t in plain[0]] == [1, 2, 3, 1, 2, 3, 1]
    assert [t.text for t in merged[0]] == ["Angela Merkel", "visited", "Paris", "on", "Tuesday", "."]
    assert [t._.exit_layer for t in merged[0]] == [2, 3, 1, 2, 3, 1]
    for before, after in zip(plain, merged):
        for token in after:
            parts = before.char_span(token.idx, token.idx + len(token.text))
            assert token._.exit_layer == max(t._.exit_layer for t in parts)


def test_exit_layers_come_back_from_other_processes(trained_ner):
    # the parent has run torch already: forked workers must not wait on its threads
    texts = [text for text, _ in NER_DATA]
    ner = trained_ner.get_pipe("earlyexit_ner")
    ner.exit_policy = StaggeredExit()
    try:
        docs = list(trained_ner.pipe(texts, n_process=2, batch_size=1))
    finally:
        ner.exit_policy = FullDepth()
    assert [[t._.exit_layer for t in doc] for doc in docs] == [[i % 3 + 1 for i in range(len(doc))] for doc in docs]
    assert all(doc._.earlyexit["earlyexit_ner"]["n_layers"] == 3 for doc in docs)


# -- 6. settings that can never work are refused early ---------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenWindowExit(math.nan),
        lambda: SentenceExit(0.1, layer_thresholds=[0.1, math.nan, 0.1]),
        lambda: TokenWindowExit(0.1, layer_thresholds=[]),
        lambda: SentenceExit(0.1, layer_thresholds=[0.1, -0.5, 0.1]),
        lambda: TokenWindowExit(0.1, window=-1),
        lambda: TokenWindowExit(0.1, window=1.5),
        lambda: FixedDepth(0),
        lambda: FixedDepth(1.5),
        lambda: FixedDepth(math.nan),
    ],
)
def test_policy_arguments_are_checked_at_construction(make):
    with pytest.raises(ValueError):
        make()


POLICIES_TOO_DEEP = [
    {"@misc": "spacy-earlyexit.fixed_depth.v1", "layer": 4},
    {"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 0.1, "layer_thresholds": [0.1, 0.1]},
]


@pytest.mark.parametrize("policy", POLICIES_TOO_DEEP)
def test_policy_that_does_not_fit_the_encoder_fails_at_initialize(tiny_model_dir, policy):
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "exit_policy": policy})
    with pytest.raises(ValueError, match="3 layers"):
        nlp.initialize(lambda: ner_examples(nlp))


@pytest.mark.parametrize("policy", POLICIES_TOO_DEEP)
def test_policy_that_does_not_fit_the_encoder_fails_at_load(saved_ner, trained_ner, tiny_model_dir, policy):
    with pytest.raises(ValueError, match="3 layers"):
        spacy.load(saved_ner, config={"components.earlyexit_ner.exit_policy": policy})
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "exit_policy": policy})
    with pytest.raises(ValueError, match="3 layers"):
        nlp.from_bytes(trained_ner.to_bytes())


def test_assigned_policy_is_checked_against_the_loaded_encoder(trained_ner, tiny_model_dir):
    ner = trained_ner.get_pipe("earlyexit_ner")
    with pytest.raises(ValueError, match="exceeds the encoder's 3 layers"):
        ner.exit_policy = FixedDepth(4)
    with pytest.raises(ValueError, match="3 layers"):
        ner.exit_policy = SentenceExit(0.1, layer_thresholds=[0.1, 0.2, 0.3, 0.4])
    with pytest.raises(TypeError):
        ner.exit_policy = "full"
    assert isinstance(ner.exit_policy, FullDepth)
    # before the encoder is loaded its depth is unknown: checked at initialize
    fresh = spacy.blank("en").add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    fresh.exit_policy = FixedDepth(4)


@pytest.mark.parametrize("value", [0, -3])
def test_batch_sequences_must_be_positive(tiny_model_dir, value):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="batch_sequences"):
        nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "batch_sequences": value})


@pytest.mark.parametrize("value", [0, 1, 2])
def test_max_wordpieces_below_the_minimum_is_refused(tiny_model_dir, value):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="max_wordpieces"):
        nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, max_wordpieces=value))


def test_max_wordpieces_is_checked_against_the_tokenizer_at_initialize_and_load(tiny_model_dir, saved_ner):
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    ner.model.attrs["max_wordpieces"] = 2  # what a tokenizer with more special pieces would leave
    with pytest.raises(ValueError, match="at least 3"):
        nlp.initialize(lambda: ner_examples(nlp))
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir))
    ner.model.attrs["max_wordpieces"] = 2
    with pytest.raises(ValueError, match="at least 3"):
        ner.from_disk(saved_ner / "earlyexit_ner", exclude=["vocab"])


def test_token_longer_than_the_wordpiece_limit_keeps_its_first_pieces(trained_ner):
    tokenizer = trained_ner.get_pipe("earlyexit_ner").tokenizer
    with pytest.raises(ValueError, match="at least 3"):
        piece_budget(tokenizer, 2)
    doc = trained_ner.make_doc("Paris " + "x" * 40 + " Berlin")
    plan = plan_sequences([doc], tokenizer, 5)
    assert all(len(sequence) <= 5 for sequence in plan.sequences)
    assert sorted(int(t) for s in plan.sequences for t in s.tokens) == [0, 1, 2]
