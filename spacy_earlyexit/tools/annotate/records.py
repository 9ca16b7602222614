"""Annotation records: the input documents and rejected lines (their data
types) and how one document becomes an output record (JSON line or DocBin
user data)."""

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Dict, Iterable, Optional, Tuple, Union

#: characters that JSON leaves raw but line readers (str.splitlines, JavaScript) take for line ends
_LINE_BREAKING = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


#: the parts of a record that a DocBin doc keeps in user_data (the rest is the doc itself)
DOCBIN_RECORD_KEYS = ("id", "meta", "exit_layer", "exit_layers", "earlyexit", "speedup")


USER_DATA_KEY = "earlyexit_annotate"


@dataclass(frozen=True)
class SourceDoc:
    """One input document: where it came from, its text, its other JSONL fields."""

    id: str
    text: str
    meta: Dict[str, Any] = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """One input line that is not a document: its id (`PATH:LINE`) and why."""

    id: str
    reason: str


#: what reading the input yields, in order: documents and bad records
Record = Union[SourceDoc, Rejected]


def token_attrs(nlp) -> Tuple[str, ...]:
    """The token attributes ("tag", "pos") some component of the pipeline assigns."""
    assigned = {attr for name in nlp.pipe_names for attr in nlp.get_pipe_meta(name).assigns}
    return tuple(attr for attr in ("tag", "pos") if f"token.{attr}" in assigned)


def doc_record(
    doc, doc_id: str, meta: Optional[Dict[str, Any]] = None, attrs: Optional[Iterable[str]] = None
) -> Dict[str, Any]:
    """What the annotation of one doc becomes in the output (a JSON-able dict).

    `attrs` names the token attributes to write ("tag" -> "tags", "pos");
    give `token_attrs(nlp)` so that every record of a pipeline has the same
    keys (by default, those the doc has annotated). Exit information is read
    through the public extension attributes only: `token._.exit_layer`,
    `token._.exit_layers`, `doc._.earlyexit[name]` (cost, full_cost,
    n_layers, speedup) and `doc._.earlyexit_speedup`."""
    if attrs is None:
        attrs = [attr for attr in ("tag", "pos") if doc.has_annotation(attr.upper())]
    record: Dict[str, Any] = {"id": doc_id}
    if meta:
        record["meta"] = meta
    record["text"] = doc.text
    record["words"] = [token.text for token in doc]
    record["spaces"] = [bool(token.whitespace_) for token in doc]
    if "tag" in attrs:
        record["tags"] = [token.tag_ for token in doc]
    if "pos" in attrs:
        record["pos"] = [token.pos_ for token in doc]
    record["ents"] = [{"start": ent.start_char, "end": ent.end_char, "label": ent.label_} for ent in doc.ents]
    record.update(exit_summary(doc))
    return record


def exit_summary(doc) -> Dict[str, Any]:
    """Exit layers (deepest over components, and per component) and cost per component."""
    info = doc._.earlyexit or {}
    components = sorted(info)
    per_token = [token._.exit_layers or {} for token in doc]
    return {
        "exit_layer": [token._.exit_layer for token in doc],
        "exit_layers": {name: [layers.get(name) for layers in per_token] for name in components},
        "earlyexit": {
            name: {key: info[name][key] for key in ("n_layers", "cost", "full_cost", "speedup")} for name in components
        },
        "speedup": doc._.earlyexit_speedup,
    }


def record_line(record: Dict[str, Any]) -> str:
    """One JSONL line, the same bytes for the same record in any process.
    U+2028, U+2029 and U+0085, which JSON allows raw but line readers take for
    line ends, are escaped."""
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    if any(char in line for char in _LINE_BREAKING):
        line = line.translate(str.maketrans(_LINE_BREAKING))
    return line + "\n"


def reject_line(record: Rejected) -> str:
    """One line of the rejects file."""
    return record_line({"id": record.id, "reason": record.reason})


@dataclass
class ChunkResult:
    """A chunk of records, annotated and serialized: the output's bytes, the
    rejects file's bytes, and the id of its last record."""

    n_docs: int
    n_words: int
    payload: bytes
    last_id: str
    n_rejects: int = 0
    rejects: bytes = b""
