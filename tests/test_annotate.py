"""Corpus annotation (`spacy_earlyexit annotate`): formats, ids, processes, resuming."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import typer
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_earlyexit.annotate import (
    USER_DATA_KEY, AnnotateError, annotate, annotate_corpus, doc_record, iter_docbin_output, token_attrs,
)

REPO = Path(__file__).resolve().parent.parent

TXT_LINES = [
    "Angela Merkel visited Paris on Tuesday .",
    "",
    "The cat sat on the mat .",
    "John sat on the mat in Berlin .",
    "   ",
    "Paris and Berlin , John and Angela .",
]
JSONL_RECORDS = [
    {"text": "The cat visited Berlin .", "id": 7},
    {"text": "", "id": 8, "source": "empty"},
    None,  # a blank line
    {"id": 9, "text": "Merkel <b>visited</b> John & the mat"},
    {"text": "😀 Paris 🇩🇪 on Tuesday", "lang": "en"},
    {"text": "angela merkel visited paris on tuesday"},
    {"text": "The cat sat . " * 6},
]


def write_corpus(directory: Path) -> Path:
    """a.txt and sub/b.jsonl: 10 documents, blank lines between some."""
    (directory / "sub").mkdir(parents=True)
    (directory / "a.txt").write_text("\n".join(TXT_LINES) + "\n", encoding="utf8")
    lines = ["" if r is None else json.dumps(r, ensure_ascii=False) for r in JSONL_RECORDS]
    (directory / "sub" / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf8")
    (directory / ".hidden.txt").write_text("not read\n", encoding="utf8")
    (directory / "notes.md").write_text("not read\n", encoding="utf8")
    return directory


def expected_sources():
    """(id, text, meta) of every document of write_corpus, in order."""
    out = [(f"a.txt:{i}", line, {}) for i, line in enumerate(TXT_LINES, start=1) if line.strip()]
    for i, record in enumerate(JSONL_RECORDS, start=1):
        if record is not None:
            meta = dict(record)
            out.append((f"sub/b.jsonl:{i}", meta.pop("text"), meta))
    return out


def as_json(value):
    return json.loads(json.dumps(value))


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def nlp(saved_pipeline):
    return spacy.load(saved_pipeline)


@pytest.fixture(scope="module")
def reference_jsonl(saved_pipeline, corpus, tmp_path_factory) -> Path:
    """One uninterrupted single-process run: the output every other run must match."""
    output = tmp_path_factory.mktemp("reference") / "out.jsonl"
    annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=3)
    return output


def test_jsonl_output_has_one_record_per_document_with_its_annotation(reference_jsonl, nlp):
    records = read_jsonl(reference_jsonl)
    sources = expected_sources()
    assert [(r["id"], r["text"], r.get("meta", {})) for r in records] == sources
    attrs = token_attrs(nlp)
    assert attrs == ("tag",)
    layers_seen = set()
    for record, (doc_id, text, meta) in zip(records, sources):
        doc = nlp(text)
        assert record == doc_record(doc, doc_id, meta, attrs)
        assert record["words"] == [t.text for t in doc] and len(record["spaces"]) == len(doc)
        assert record["tags"] == [t.tag_ for t in doc]
        assert record["ents"] == [{"start": e.start_char, "end": e.end_char, "label": e.label_} for e in doc.ents]
        assert record["exit_layer"] == [t._.exit_layer for t in doc]
        assert set(record["exit_layers"]) == {"earlyexit_ner", "earlyexit_tagger"}
        for name, info in record["earlyexit"].items():
            assert record["exit_layers"][name] == [t._.exit_layers[name] for t in doc]
            assert info["n_layers"] == 3 and info["cost"] <= info["full_cost"]
            assert info["speedup"] == doc._.earlyexit[name]["speedup"]
        assert record["speedup"] == doc._.earlyexit_speedup
        layers_seen.update(record["exit_layer"])
    # the pipeline's token-level exits make this a real test of exit layers
    assert layers_seen >= {1, 3}
    assert any(r["ents"] for r in records) and any(r["speedup"] > 1 for r in records)
    # hostile text is data, kept as is
    assert records[6]["text"] == "Merkel <b>visited</b> John & the mat"
    assert records[5]["words"] == [] and records[5]["exit_layer"] == [] and records[5]["meta"] == {"id": 8, "source": "empty"}


def test_a_single_file_is_named_by_its_file_name(saved_pipeline, corpus, tmp_path):
    output = tmp_path / "out.jsonl"
    annotate_corpus(str(saved_pipeline), corpus / "a.txt", output)
    assert [r["id"] for r in read_jsonl(output)] == ["a.txt:1", "a.txt:3", "a.txt:4", "a.txt:6"]


def test_jsonl_input_names_its_text_field(saved_pipeline, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"body": "John visited Paris .", "n": 1}\n', encoding="utf8")
    annotate_corpus(str(saved_pipeline), source, tmp_path / "out.jsonl", text_field="body")
    [record] = read_jsonl(tmp_path / "out.jsonl")
    assert record["id"] == "in.jsonl:1" and record["text"] == "John visited Paris ." and record["meta"] == {"n": 1}
    with pytest.raises(AnnotateError, match=r"in.jsonl:1: expected a JSON object with a string field 'text'"):
        annotate_corpus(str(saved_pipeline), source, tmp_path / "other.jsonl")


def test_docbin_output_holds_the_same_annotation_as_jsonl(saved_pipeline, corpus, reference_jsonl, nlp, tmp_path):
    output = tmp_path / "out.spacy"
    annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=4)
    assert sorted(p.name for p in output.glob("*.spacy")) == ["000000.spacy", "000001.spacy", "000002.spacy"]
    docs = list(iter_docbin_output(output, nlp.vocab))
    records = read_jsonl(reference_jsonl)
    assert len(docs) == len(records)
    for doc, record in zip(docs, records):
        stored = doc.user_data[USER_DATA_KEY]
        assert stored["id"] == record["id"] and stored.get("meta", {}) == record.get("meta", {})
        assert doc.text == record["text"] and [t.text for t in doc] == record["words"]
        assert [t.tag_ for t in doc] == record["tags"]
        assert [{"start": e.start_char, "end": e.end_char, "label": e.label_} for e in doc.ents] == record["ents"]
        for key in ("exit_layer", "exit_layers", "earlyexit", "speedup"):
            assert as_json(stored[key]) == record[key]  # DocBin's msgpack gives tuples for lists
        # and the public getters still work on the loaded docs
        assert [t._.exit_layer for t in doc] == record["exit_layer"]
        assert doc._.earlyexit_speedup == record["speedup"]
    # the directory is a spaCy corpus as it is
    assert len(list(DocBin().from_disk(output / "000001.spacy").get_docs(nlp.vocab))) == 4


def test_two_processes_write_the_same_output_as_one(saved_pipeline, corpus, reference_jsonl, tmp_path):
    output = tmp_path / "out.jsonl"
    summary = annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=2, batch_size=2, n_process=2)
    assert summary.docs_this_run == 10 and summary.words_this_run > 0
    assert output.read_bytes() == reference_jsonl.read_bytes()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("suffix", [".jsonl", ".spacy"])
def test_a_run_interrupted_between_write_and_commit_resumes_without_loss_or_duplicates(
    saved_pipeline, corpus, reference_jsonl, nlp, tmp_path, suffix
):
    output = tmp_path / f"out{suffix}"

    def crash_at_chunk_2(chunk_index):
        if chunk_index == 2:
            # the chunk is on disk but not committed; a torn write follows it
            if suffix == ".jsonl":
                with output.open("ab") as file:
                    file.write(b'{"id":"half a rec')
            else:
                (output / "000003.spacy").write_bytes(b"junk")
            raise Interrupted

    with pytest.raises(Interrupted):
        annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=3, before_commit=crash_at_chunk_2)
    messages = []
    summary = annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=3, progress=messages.append)
    assert (summary.docs_before, summary.docs_this_run, summary.docs_total) == (6, 4, 10)
    assert messages[0].startswith(f"Resuming {output}: 6 of 10")
    if suffix == ".jsonl":
        assert output.read_bytes() == reference_jsonl.read_bytes()
    else:
        ids = [doc.user_data[USER_DATA_KEY]["id"] for doc in iter_docbin_output(output, nlp.vocab)]
        assert ids == [r["id"] for r in read_jsonl(reference_jsonl)]
        assert sorted(p.name for p in output.glob("*.spacy")) == [f"00000{i}.spacy" for i in range(4)]


def test_a_killed_process_resumes_through_the_command_line(saved_pipeline, corpus, reference_jsonl, tmp_path):
    output = tmp_path / "out.jsonl"
    script = (
        "import os, signal, sys\n"
        "from spacy_earlyexit.annotate import annotate_corpus\n"
        "def kill(i):\n"
        "    if i == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "annotate_corpus(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=4, before_commit=kill)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(saved_pipeline), str(corpus), str(output)],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    state = json.loads((tmp_path / "out.jsonl.state.json").read_text())
    assert state["docs_done"] == 4 and not state["complete"]
    assert output.stat().st_size > state["output_bytes"]  # the uncommitted chunk is on disk

    app = typer.Typer()
    app.command()(annotate)
    result = CliRunner().invoke(app, [str(saved_pipeline), str(corpus), str(output), "--chunk-size", "4", "-b", "8"])
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output and "words/s" in result.output
    assert "10 documents (4 from an earlier run); 6 annotated now" in result.output
    assert output.read_bytes() == reference_jsonl.read_bytes()
    # a finished output is not redone
    result = CliRunner().invoke(app, [str(saved_pipeline), str(corpus), str(output)])
    assert result.exit_code == 0 and "is complete" in result.output and "0 annotated now" in result.output
    assert output.read_bytes() == reference_jsonl.read_bytes()


def test_an_output_from_other_settings_or_elsewhere_is_not_resumed(saved_pipeline, corpus, tmp_path):
    output = tmp_path / "out.jsonl"
    annotate_corpus(str(saved_pipeline), corpus / "a.txt", output)
    with pytest.raises(AnnotateError, match="started with other settings"):
        annotate_corpus(str(saved_pipeline), corpus, output)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("{}\n")
    with pytest.raises(AnnotateError, match="no annotation state"):
        annotate_corpus(str(saved_pipeline), corpus / "a.txt", foreign)
    app = typer.Typer()
    app.command()(annotate)
    result = CliRunner().invoke(app, [str(saved_pipeline), str(corpus / "a.txt"), str(foreign)])
    assert result.exit_code == 1 and "--no-resume" in result.output
    # --no-resume starts over
    result = CliRunner().invoke(app, [str(saved_pipeline), str(corpus / "a.txt"), str(foreign), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(foreign)] == ["a.txt:1", "a.txt:3", "a.txt:4", "a.txt:6"]
    with pytest.raises(AnnotateError, match=r"must end in \.jsonl"):
        annotate_corpus(str(saved_pipeline), corpus, tmp_path / "out.csv")
