"""Shared by the tools' tests: texts, and the small corpora that annotation runs read."""

import json
from pathlib import Path

from ..conftest import NER_DATA

#: texts the peers of benchmarks/compare.py label as the pipeline does (cased and uncased, short)
TEXTS = [text for text, _ in NER_DATA] + [
    "ANGELA merkel Visited PARIS and berlin on tuesday , said John .",
    "the Cat",
    "Paris",
]

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


#: a.txt and b.jsonl with bad records among good ones: (file, line bytes, bad?)
MIXED = [
    ("a.txt", b"Angela Merkel visited Paris on Tuesday .", False),
    ("a.txt", b"caf\xe9 au lait in Berlin", True),  # Latin-1, not UTF-8
    ("a.txt", b"", None),  # blank: skipped, not a record
    ("a.txt", b"John sat on the mat in Berlin .", False),
    ("a.txt", b"\xe2\x82", True),  # a truncated character
    ("a.txt", b"The cat sat on the mat .", False),
    ("b.jsonl", b'{"text": "The cat visited Berlin .", "n": 1}', False),
    ("b.jsonl", b'{"text": "John', True),
    ("b.jsonl", b'{"text": 42}', True),
    ("b.jsonl", b"   ", None),
    ("b.jsonl", b'{"body": "Paris"}', True),
    ("b.jsonl", b'{"text": "Paris and Berlin .", "n": 2}', False),
    ("b.jsonl", b'["text", "Paris"]', True),
    ("b.jsonl", b'{"text": "Angela visited John ."}', False),
]


def write_mixed(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("a.txt", "b.jsonl"):
        (directory / name).write_bytes(b"".join(line + b"\n" for file, line, _ in MIXED if file == name))
    return directory
