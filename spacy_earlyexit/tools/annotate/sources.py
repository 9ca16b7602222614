"""Reading the input of `annotate`: files, lines and records, every line a
document or a rejected record with its reason (never an exception)."""

import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from .records import Record, Rejected, SourceDoc, record_line

BOM = b"\xef\xbb\xbf"


INPUT_SUFFIXES = (".txt", ".jsonl")


class AnnotateError(ValueError):
    """Bad input, or an output that cannot be (re)used as asked."""


class BadRecordError(AnnotateError):
    """A bad input record stopped a run with `on_error="fail"`."""

    def __init__(self, record_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.record_id = record_id
        self.reason = reason


def input_files(input_path: Path) -> List[Tuple[Path, str]]:
    """The input files in reading order, each with its name in doc ids."""
    input_path = Path(input_path)
    if input_path.is_file():
        if input_path.suffix not in INPUT_SUFFIXES:
            raise AnnotateError(f"{input_path}: input files must end in {' or '.join(INPUT_SUFFIXES)}.")
        return [(input_path, input_path.name)]
    if not input_path.is_dir():
        raise AnnotateError(f"{input_path} is neither a file nor a directory.")
    found = []
    for path in input_path.rglob("*"):
        relative = path.relative_to(input_path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix in INPUT_SUFFIXES and path.is_file():
            found.append((path, relative.as_posix()))
    if not found:
        raise AnnotateError(f"{input_path} holds no {' or '.join(INPUT_SUFFIXES)} files.")
    return sorted(found, key=lambda item: item[1])


def doc_lines(path: Path) -> Iterator[Tuple[int, Optional[str], str]]:
    """(1-based line number, line without its ending, "") of each non-blank
    line; (number, None, reason) of each line that is not valid UTF-8."""
    with Path(path).open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            raw = raw.rstrip(b"\r\n")
            try:
                line = raw.decode("utf8")
            except UnicodeDecodeError as err:
                yield number, None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"
                continue
            if line.strip():
                yield number, line, ""


def _not_json(constant: str) -> None:
    """parse_constant of json.loads: NaN and Infinity are Python's, not JSON."""
    raise ValueError(f"{constant} is not a JSON value")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _text_problem(text: str) -> str:
    """Why a decoded text cannot be annotated ("" when it can)."""
    if "\x00" in text:
        return "the text holds NUL characters (binary data, or a UTF-16 file?)"
    try:
        text.encode("utf8")
    except UnicodeEncodeError as err:
        return f"the text holds a lone surrogate (U+{ord(text[err.start]):04X}), which is not Unicode"
    return ""


def parse_line(path: Path, name: str, number: int, line: Optional[str], text_field: str, reason: str = "") -> Record:
    """The document of one non-blank line, or why it is not one (a `Rejected`)."""
    doc_id = f"{name}:{number}"
    if line is None:
        return Rejected(doc_id, reason or "not valid UTF-8")
    if path.suffix == ".txt":
        problem = _text_problem(line)
        return Rejected(doc_id, problem) if problem else SourceDoc(doc_id, line)
    try:
        record = json.loads(line, parse_constant=_not_json)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, NaN, a huge integer, deep nesting
        return Rejected(doc_id, f"not valid JSON ({_one_line(err)})")
    if not isinstance(record, dict):
        return Rejected(doc_id, f"not a JSON object (a JSON {_json_kind(record)})")
    if text_field not in record:
        return Rejected(doc_id, f"no field '{text_field}'")
    text = record.pop(text_field)
    if not isinstance(text, str):
        return Rejected(doc_id, f"field '{text_field}' is a JSON {_json_kind(text)}, not a string")
    problem = _text_problem(text)
    if problem:
        return Rejected(doc_id, problem)
    try:
        record_line(record).encode("utf8")  # the other fields go to the output as they are
    except UnicodeEncodeError:
        return Rejected(doc_id, "a field holds a lone surrogate, which is not Unicode")
    except (ValueError, RecursionError) as err:
        return Rejected(doc_id, f"its fields cannot be written as JSON ({_one_line(err)})")
    return SourceDoc(doc_id, text, record)


def read_records(input_path: Path, text_field: str = "text", skip: int = 0) -> Iterator[Record]:
    """The records (documents and rejected lines) of a file or directory, in
    order, after the first `skip` (which are passed over without being parsed)."""
    for path, name in input_files(input_path):
        for number, line, reason in doc_lines(path):
            if skip:
                skip -= 1
                continue
            yield parse_line(path, name, number, line, text_field, reason)


def read_source_docs(input_path: Path, text_field: str = "text", skip: int = 0) -> Iterator[SourceDoc]:
    """The documents of a file or directory, in order, after the first `skip`
    records; a bad record raises a `BadRecordError`."""
    for record in read_records(input_path, text_field, skip):
        if isinstance(record, Rejected):
            raise BadRecordError(record.id, record.reason, f"{record.id}: {record.reason}.")
        yield record


def source_doc_ids(input_path: Path) -> Iterator[str]:
    """The id of every record (document or bad line), in order, without parsing any (cheap)."""
    for path, name in input_files(input_path):
        for number, _, _ in doc_lines(path):
            yield f"{name}:{number}"
