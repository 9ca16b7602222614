"""Corpus annotation (`spacy_earlyexit annotate`): formats, ids, processes, resuming, bad records
and long documents (a whole hostile corpus: test_annotate_hostile.py)."""

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

from spacy_earlyexit.tools import annotate as annotate_module
from spacy_earlyexit.tools.annotate import (
    USER_DATA_KEY,
    AnnotateError,
    BadRecordError,
    annotate,
    annotate_corpus,
    doc_record,
    iter_docbin_output,
    token_attrs,
)
from spacy_earlyexit.tools.annotate import run as annotate_run

from .conftest import JSONL_RECORDS, MIXED, TXT_LINES, write_corpus, write_mixed

REPO = Path(__file__).resolve().parents[2]


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
    assert (
        records[5]["words"] == []
        and records[5]["exit_layer"] == []
        and records[5]["meta"] == {"id": 8, "source": "empty"}
    )


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
    with pytest.raises(BadRecordError, match=r"^in.jsonl:1: no field 'text'\. Stopped there"):
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
        "from spacy_earlyexit.tools.annotate import annotate_corpus\n"
        "def kill(i):\n"
        "    if i == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "annotate_corpus(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=4, before_commit=kill)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(saved_pipeline), str(corpus), str(output)],
        env=env,
        capture_output=True,
        timeout=120,
    )
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


# -- bad records, long documents ---------------------------------------------------------
def mixed_ids(bad: bool):
    """The ids of the good (bad=False) or bad (bad=True) records of write_mixed, in order."""
    numbers, out = {}, []
    for file, _, is_bad in MIXED:
        numbers[file] = numbers.get(file, 0) + 1
        if is_bad is bad:
            out.append(f"{file}:{numbers[file]}")
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return write_mixed(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def mixed_reference(saved_pipeline, mixed, tmp_path_factory) -> Path:
    """One uninterrupted run with on_error="skip": the output (and rejects) every other run must match."""
    output = tmp_path_factory.mktemp("mixed_reference") / "out.jsonl"
    annotate_corpus(str(saved_pipeline), mixed, output, on_error="skip", chunk_size=100)
    return output


def rejects_of(output: Path) -> Path:
    return output / "rejects.jsonl" if output.suffix == ".spacy" else output.with_name(output.name + ".rejects.jsonl")


def test_skip_policy_annotates_every_valid_line_once_and_writes_each_bad_one_to_the_rejects_file(
    mixed_reference, saved_pipeline, mixed, tmp_path
):
    records = read_jsonl(mixed_reference)
    assert [r["id"] for r in records] == mixed_ids(bad=False)
    rejects = read_jsonl(rejects_of(mixed_reference))
    assert [r["id"] for r in rejects] == mixed_ids(bad=True)
    assert [r["reason"] for r in rejects] == [
        "not valid UTF-8 (byte 0xe9 at byte 4 of the line)",
        "not valid UTF-8 (byte 0xe2 at byte 1 of the line)",
        "not valid JSON (Unterminated string starting at: line 1 column 10 (char 9))",
        "field 'text' is a JSON number, not a string",
        "no field 'text'",
        "not a JSON object (a JSON array)",
    ]
    assert all(set(r) == {"id", "reason"} for r in rejects)
    # the summary counts them, in the API and on the command line
    summary = annotate_corpus(str(saved_pipeline), mixed, tmp_path / "api.jsonl", on_error="skip", chunk_size=4)
    assert (summary.docs_total, summary.docs_this_run, summary.rejects_this_run) == (12, 6, 6)
    assert summary.rejects_path == tmp_path / "api.jsonl.rejects.jsonl"
    app = typer.Typer()
    app.command()(annotate)
    output = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(app, [str(saved_pipeline), str(mixed), str(output), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    expected = f"12 documents (0 from an earlier run); 6 annotated now, 6 rejected now (6 in all, listed in {output}."
    assert expected in " ".join(result.output.split())
    assert output.read_bytes() == mixed_reference.read_bytes()
    assert rejects_of(output).read_bytes() == rejects_of(mixed_reference).read_bytes()


def test_fail_policy_stops_with_one_line_naming_file_and_line_after_committing_what_came_before(
    mixed_reference, saved_pipeline, mixed, tmp_path
):
    app = typer.Typer()
    app.command()(annotate)
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [str(saved_pipeline), str(mixed), str(output), "--chunk-size", "1"])
    assert result.exit_code == 1
    [error] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert error.startswith("Error: a.txt:2: not valid UTF-8 (byte 0xe9 at byte 4 of the line). Stopped there")
    assert "--on-error skip" in error and "Traceback" not in result.output
    # the document before the bad line is annotated and committed, nothing after it
    assert [r["id"] for r in read_jsonl(output)] == ["a.txt:1"]
    assert not rejects_of(output).exists()
    state = json.loads(output.with_name("out.jsonl.state.json").read_text())
    assert (state["records_done"], state["complete"]) == (1, False)
    # the same run stops at the same line; --on-error skip goes on from it
    assert CliRunner().invoke(app, [str(saved_pipeline), str(mixed), str(output)]).exit_code == 1
    result = CliRunner().invoke(app, [str(saved_pipeline), str(mixed), str(output), "--on-error", "skip"])
    assert result.exit_code == 0 and "12 documents (1 from an earlier run); 5 annotated now" in result.output
    assert output.read_bytes() == mixed_reference.read_bytes()
    assert rejects_of(output).read_bytes() == rejects_of(mixed_reference).read_bytes()
    # a policy that does not exist is a one-line error too
    result = CliRunner().invoke(app, [str(saved_pipeline), str(mixed), str(output), "--on-error", "ignore"])
    assert result.exit_code == 1 and "Error: on_error must be one of fail, skip, not 'ignore'." in result.output


def test_two_processes_stop_at_the_first_bad_record_after_committing_every_chunk_before_it(
    saved_pipeline, mixed, mixed_reference, tmp_path
):
    source = tmp_path / "in.txt"
    source.write_bytes(b"".join(b"John visited Paris %d .\n" % i for i in range(6)) + b"\xff\n" + b"The cat sat .\n")
    output = tmp_path / "out.jsonl"
    with pytest.raises(BadRecordError, match=r"^in.txt:7: not valid UTF-8") as caught:
        annotate_corpus(str(saved_pipeline), source, output, chunk_size=1, n_process=2)
    assert caught.value.record_id == "in.txt:7"
    assert [r["id"] for r in read_jsonl(output)] == [f"in.txt:{i}" for i in range(1, 7)]


@pytest.mark.parametrize("suffix,kill_at", [(".jsonl", 1), (".jsonl", 3), (".spacy", 2)])
def test_a_run_killed_in_a_file_with_bad_records_resumes_without_losing_or_repeating_a_document_or_reject(
    saved_pipeline, mixed, mixed_reference, nlp, tmp_path, suffix, kill_at
):
    output = tmp_path / f"out{suffix}"

    def kill(chunk_index):
        if chunk_index == kill_at:
            # the chunk and its rejects are on disk but not committed; torn writes follow them
            if suffix == ".jsonl":
                with output.open("ab") as file:
                    file.write(b'{"id":"half a rec')
            else:
                (output / f"{kill_at + 1:06d}.spacy").write_bytes(b"junk")
            with rejects_of(output).open("ab") as file:
                file.write(b'{"id":"a.txt:')
            raise Interrupted

    # chunks of 3 records: every chunk holds a bad record, chunk 2 only bad ones (and a blank line)
    with pytest.raises(Interrupted):
        annotate_corpus(str(saved_pipeline), mixed, output, chunk_size=3, on_error="skip", before_commit=kill)
    state = json.loads(annotate_module.state_path_of(output).read_text())
    assert state["records_done"] == 3 * kill_at and state["rejects_done"] > 0
    summary = annotate_corpus(str(saved_pipeline), mixed, output, chunk_size=3, on_error="skip")
    assert summary.docs_before == 3 * kill_at and summary.rejects_before == state["rejects_done"]
    assert summary.docs_this_run + summary.rejects_this_run == 12 - 3 * kill_at
    assert rejects_of(output).read_bytes() == rejects_of(mixed_reference).read_bytes()
    if suffix == ".jsonl":
        assert output.read_bytes() == mixed_reference.read_bytes()
    else:
        ids = [doc.user_data[USER_DATA_KEY]["id"] for doc in iter_docbin_output(output, nlp.vocab)]
        assert ids == mixed_ids(bad=False)


def test_a_missing_rejects_file_is_not_resumed_over(saved_pipeline, mixed, tmp_path):
    output = tmp_path / "out.jsonl"

    def stop(chunk_index):
        if chunk_index == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        annotate_corpus(str(saved_pipeline), mixed, output, chunk_size=3, on_error="skip", before_commit=stop)
    rejects_of(output).unlink()
    with pytest.raises(AnnotateError, match="rejects.jsonl is missing or shorter.*--no-resume"):
        annotate_corpus(str(saved_pipeline), mixed, output, chunk_size=3, on_error="skip")
    # --no-resume starts over and removes the old rejects with the output
    summary = annotate_corpus(str(saved_pipeline), mixed, output, on_error="skip", resume=False)
    assert (summary.docs_before, summary.rejects_this_run) == (0, 6)


def test_docbin_output_keeps_its_rejects_inside_the_directory(saved_pipeline, mixed, nlp, tmp_path):
    output = tmp_path / "out.spacy"
    annotate_corpus(str(saved_pipeline), mixed, output, on_error="skip", chunk_size=3)
    assert [r["id"] for r in read_jsonl(output / "rejects.jsonl")] == mixed_ids(bad=True)
    # a chunk of bad records only is an empty shard: shard i is chunk i
    assert sorted(p.name for p in output.glob("*.spacy")) == [f"00000{i}.spacy" for i in range(4)]
    assert [d.user_data[USER_DATA_KEY]["id"] for d in iter_docbin_output(output, nlp.vocab)] == mixed_ids(bad=False)


def test_a_document_longer_than_max_length_is_annotated_whole(saved_pipeline, nlp, tmp_path, monkeypatch):
    """The limit is spaCy's guard for its own parser; the early-exit
    components read long documents in windows. A small limit stands in for
    the default 1,000,000 characters here (test_annotate_hostile has a 2 MB line)."""
    loaded, load_pipeline = [], annotate_module.load_pipeline

    def load_with_small_limit(*args, **kwargs):
        pipeline = load_pipeline(*args, **kwargs)
        pipeline.max_length = 30
        loaded.append(pipeline)
        return pipeline

    monkeypatch.setattr(annotate_run, "load_pipeline", load_with_small_limit)
    texts = ["John sat .", "Angela Merkel visited Paris on Tuesday . " * 20, "The cat sat on the mat ."]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf8")
    annotate_corpus(str(saved_pipeline), source, tmp_path / "out.jsonl")
    records = read_jsonl(tmp_path / "out.jsonl")
    attrs = token_attrs(nlp)
    assert [r["text"] for r in records] == texts
    for i, (record, text) in enumerate(zip(records, texts), start=1):
        assert record == doc_record(nlp(text), f"in.txt:{i}", {}, attrs)
    assert loaded[0].max_length == len(texts[1])  # raised for this run, to fit the longest document


def test_a_state_from_before_rejects_resumes(saved_pipeline, corpus, reference_jsonl, tmp_path):
    output = tmp_path / "out.jsonl"

    def stop(chunk_index):
        if chunk_index == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=3, before_commit=stop)
    state_path = output.with_name("out.jsonl.state.json")
    state = json.loads(state_path.read_text())
    for key in ("records_done", "rejects_done", "rejects_bytes"):
        del state[key]
    state_path.write_text(json.dumps({**state, "version": 1}))
    summary = annotate_corpus(str(saved_pipeline), corpus, output, chunk_size=3)
    assert (summary.docs_before, summary.docs_this_run) == (3, 7)
    assert output.read_bytes() == reference_jsonl.read_bytes()
