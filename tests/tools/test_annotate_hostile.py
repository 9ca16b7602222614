"""`annotate` on a hostile corpus: the records real corpora contain (invalid
UTF-8, NUL bytes, UTF-16, bidi controls and other odd but valid text, a 2 MB
line, empty files, JSONL garbage and non-string fields). Every valid record
is annotated exactly once, every bad one is in the rejects file with its
reason, and a killed run resumes to the same bytes."""

import json
from collections import Counter
from pathlib import Path

import pytest
import spacy
import typer
from typer.testing import CliRunner

from spacy_earlyexit.tools.annotate import annotate, annotate_corpus, doc_record, token_attrs

#: a 2 MB document: over spaCy's default max_length (1,000,000 characters). Long
#: "words" keep it to a few thousand tokens, so that the test stays fast.
LONG_TEXT = ("Angela Merkel visited Paris " + "x" * 4000 + " ") * 500
BAD = None  # expected text of a bad record

#: file name -> its lines, each (bytes, the text it must be annotated as, or BAD); a line
#: given as bytes alone is blank (skipped: neither a document nor a reject)
FILES = {
    "good.txt": [  # valid text with bidi controls, line separators, control characters, CRLF endings
        (
            b"\xe2\x80\xaeAngela Merkel\xe2\x80\xac visited \xe2\x81\xa6Paris\xe2\x81\xa9 on Tuesday .\r",
            "\u202eAngela Merkel\u202c visited \u2066Paris\u2069 on Tuesday .",
        ),
        (
            "John \u200fsat\u200e on the mat in \u05d1\u05e8\u05dc\u05d9\u05df .\r".encode(),
            "John \u200fsat\u200e on the mat in \u05d1\u05e8\u05dc\u05d9\u05df .",
        ),
        ("Paris\u2028Berlin\u2029John\x85 .".encode(), "Paris\u2028Berlin\u2029John\x85 ."),
        (
            "\x1b[31mJohn\x1b[0m sat \x07 e\u0301 \U0001f469\u200d\U0001f4bb".encode(),
            "\x1b[31mJohn\x1b[0m sat \x07 e\u0301 \U0001f469\u200d\U0001f4bb",
        ),
    ],
    "bom.txt": [(b"\xef\xbb\xbfAngela visited Paris .", "Angela visited Paris .")],
    "mixed.txt": [
        (b"The cat sat on the mat .", "The cat sat on the mat ."),
        (b"\xff\xfe not UTF-8", BAD),
        (b"   \t ",),
        (b"overlong \xc0\xaf slash", BAD),
        (b"encoded surrogate \xed\xa0\x80", BAD),
        (b"caf\xe9 au lait", BAD),  # Latin-1
        (b"",),
        (b"John visited Berlin .", "John visited Berlin ."),
        (b"truncated \xe2\x82", BAD),
    ],
    "nul.txt": [(b"John\x00sat .", BAD), (b"Paris .", "Paris .")],
    # UTF-16 read as UTF-8: every line holds NUL bytes
    "utf16.txt": [(line, BAD) for line in "Paris\nBerlin\n".encode("utf-16-le").split(b"\n")],
    "long.txt": [(b"John sat .", "John sat ."), (LONG_TEXT.encode(), LONG_TEXT), (b"The cat sat .", "The cat sat .")],
    "empty.txt": [],
    "empty.jsonl": [(b"",), (b" ",), (b"\r",)],
    "data.jsonl": [
        (
            b'{"text": "Angela Merkel visited Paris .", "source": "web", "n": [1, {"a": null}]}',
            "Angela Merkel visited Paris .",
        ),
        (b"{", BAD),
        (b"garbage, not JSON", BAD),
        (b"null", BAD),
        (b'"Paris"', BAD),
        (b'{"text": null}', BAD),
        (b'{"text": ["Paris"]}', BAD),
        (b'{"text": {"a": 1}}', BAD),
        (b'{"text": true}', BAD),
        (b'{"text": 3.5}', BAD),
        (b'{"txt": "Paris"}', BAD),
        (b'{"text": "Paris", "text": 5}', BAD),  # the last duplicate key wins
        (b'{"text": "Paris", "n": ' + b"1" * 5000 + b"}", BAD),  # over Python's integer digit limit
        (b'{"text": "Paris", "score": NaN}', BAD),
        (b"[" * 100_000, BAD),  # deeper than the JSON parser goes
        (b'{"text": "John\\u0000sat"}', BAD),
        (b'{"text": "\\ud800 Paris"}', BAD),
        (b'{"text": "Paris", "m": "\\udfff"}', BAD),
        (b'{"text": "caf\xe9"}', BAD),
        (
            b'{"text": "\\u202eJohn\\u202c visited Berlin \\u2028 .", "id": 5}',
            "\u202eJohn\u202c visited Berlin \u2028 .",
        ),
        (b'{"text": ""}', ""),  # an empty text is a document (with no words), as a blank line is not
        (b'  {"text": "Berlin ."}  ', "Berlin ."),
        (b'{"text": "\\ud83d\\ude00 Paris"}', "\U0001f600 Paris"),  # a surrogate pair is one character
    ],
}


def write_hostile(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in FILES.items():
        (directory / name).write_bytes(b"\n".join(line[0] for line in lines) + (b"\n" if lines else b""))
    return directory


def expected():
    """(good: [(id, text)], bad: [id]) in reading order (files sorted by name)."""
    good, bad = [], []
    for name in sorted(FILES):
        for number, line in enumerate(FILES[name], start=1):
            if len(line) == 1:
                continue
            (bad.append(f"{name}:{number}") if line[1] is BAD else good.append((f"{name}:{number}", line[1])))
    return good, bad


def read_jsonl(path: Path):
    # splitlines splits at U+2028 and friends too: the output must escape them
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    return write_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def skipped_run(saved_pipeline, hostile, tmp_path_factory):
    output = tmp_path_factory.mktemp("hostile_out") / "out.jsonl"
    summary = annotate_corpus(str(saved_pipeline), hostile, output, on_error="skip", chunk_size=8)
    return output, summary


def test_the_corpus_is_as_hostile_as_described(hostile):
    assert len((hostile / "long.txt").read_bytes()) > 2_000_000 and len(LONG_TEXT) > 1_000_000
    assert (hostile / "empty.txt").read_bytes() == b""
    good, bad = expected()
    assert len(good) == 16 and len(bad) == 27


def test_every_valid_record_is_annotated_exactly_once_and_every_bad_one_is_in_the_rejects_file(
    saved_pipeline, skipped_run
):
    output, summary = skipped_run
    good, bad = expected()
    records = read_jsonl(output)
    assert len(output.read_bytes().splitlines()) == len(records)  # no record broke its line
    assert [(r["id"], r["text"]) for r in records] == good
    assert not [i for i, n in Counter(r["id"] for r in records).items() if n > 1]
    rejects = read_jsonl(output.with_name("out.jsonl.rejects.jsonl"))
    assert [r["id"] for r in rejects] == bad
    for reject in rejects:
        assert set(reject) == {"id", "reason"} and reject["reason"] and "\n" not in reject["reason"]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert reasons["mixed.txt:2"] == "not valid UTF-8 (byte 0xff at byte 1 of the line)"
    assert reasons["nul.txt:1"].startswith("the text holds NUL characters")
    assert all(reasons[f"utf16.txt:{i}"].startswith("the text holds NUL") for i in (1, 2, 3))
    assert reasons["data.jsonl:4"] == "not a JSON object (a JSON null)"
    assert reasons["data.jsonl:6"] == "field 'text' is a JSON null, not a string"
    assert reasons["data.jsonl:12"] == "field 'text' is a JSON number, not a string"
    assert reasons["data.jsonl:14"] == "not valid JSON (NaN is not a JSON value)"
    assert reasons["data.jsonl:17"].startswith("the text holds a lone surrogate (U+D800)")
    assert reasons["data.jsonl:18"] == "a field holds a lone surrogate, which is not Unicode"
    assert summary.docs_total == len(good) + len(bad)
    assert (summary.docs_this_run, summary.rejects_this_run) == (len(good), len(bad))


def test_valid_odd_text_is_annotated_as_the_pipeline_annotates_it(saved_pipeline, skipped_run):
    nlp = spacy.load(saved_pipeline)
    attrs = token_attrs(nlp)
    output, _ = skipped_run
    by_id = {r["id"]: r for r in read_jsonl(output)}
    meta = {"data.jsonl:1": {"source": "web", "n": [1, {"a": None}]}, "data.jsonl:20": {"id": 5}}
    for doc_id, text in expected()[0]:
        if doc_id != "long.txt:2":
            assert by_id[doc_id] == doc_record(nlp(text), doc_id, meta.get(doc_id, {}), attrs), doc_id
    assert by_id["bom.txt:1"]["text"] == "Angela visited Paris ."  # the byte order mark is not text
    assert by_id["data.jsonl:21"]["words"] == []


def test_a_2mb_line_over_max_length_is_annotated_whole(saved_pipeline, skipped_run):
    output, _ = skipped_run
    [record] = [r for r in read_jsonl(output) if r["id"] == "long.txt:2"]
    nlp = spacy.blank("en")
    nlp.max_length = len(LONG_TEXT)
    words = [t.text for t in nlp.make_doc(LONG_TEXT)]
    assert record["text"] == LONG_TEXT and record["words"] == words
    assert len(record["exit_layer"]) == len(words) and None not in record["exit_layer"]
    assert {e["label"] for e in record["ents"]} and record["ents"][-1]["end"] > 1_000_000
    assert len(record["tags"]) == len(words)


def test_a_killed_run_on_the_hostile_corpus_resumes_to_the_same_output_and_rejects(
    saved_pipeline, hostile, skipped_run, tmp_path
):
    reference, _ = skipped_run
    output = tmp_path / "out.jsonl"

    class Killed(Exception):
        pass

    def kill(chunk_index):
        if chunk_index == 2:  # in the middle of data.jsonl's garbage, before the 2 MB document
            raise Killed

    with pytest.raises(Killed):
        annotate_corpus(str(saved_pipeline), hostile, output, on_error="skip", chunk_size=8, before_commit=kill)
    summary = annotate_corpus(str(saved_pipeline), hostile, output, on_error="skip", chunk_size=8)
    assert summary.docs_before == 16 and summary.rejects_before == 14
    assert output.read_bytes() == reference.read_bytes()
    rejects = output.with_name("out.jsonl.rejects.jsonl")
    assert rejects.read_bytes() == reference.with_name("out.jsonl.rejects.jsonl").read_bytes()


def test_fail_policy_on_the_hostile_corpus_is_one_line_naming_file_and_line(saved_pipeline, hostile, tmp_path):
    app = typer.Typer()
    app.command()(annotate)
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [str(saved_pipeline), str(hostile), str(output)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert errors == [errors[0]] and errors[0].startswith("Error: data.jsonl:2: not valid JSON (")
    assert [r["id"] for r in read_jsonl(output)] == ["bom.txt:1", "data.jsonl:1"]
