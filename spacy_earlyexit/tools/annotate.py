"""Corpus-scale annotation on one machine: `python -m spacy_earlyexit annotate
PIPELINE INPUT OUTPUT`.

Input (a file or a directory searched recursively for `*.txt` and `*.jsonl`,
in sorted path order), read as bytes and decoded line by line (lines end at
`\\n`; a `\\r` before it and a UTF-8 byte order mark at the start of a file
are dropped):

- `.txt`: one document per line;
- `.jsonl`: one JSON object per line, the text in `--field` (default "text");
  the object's other fields travel to the output as `meta`.

Blank lines are skipped in both. A document's id is `PATH:LINE`, the path
relative to the input directory (the file name for a single file) and the line
1-based, so it points back at its source.

Bad records: a line that is not valid UTF-8; in JSONL, a line that is not
JSON (NaN and Infinity are not JSON either), not a JSON object, or whose text
field is missing or not a string; a text or field holding a lone surrogate
(`"\\ud800"`: not Unicode, it cannot be written as UTF-8); and a text holding
NUL characters. NUL is not text: it is what a binary file, or a UTF-16 file
read as UTF-8, looks like, and tools downstream (databases, C strings) reject
it, so a document with NUL is set aside rather than annotated. Other control
characters (bidi controls, U+2028, escape sequences, ...) are text and are
annotated as they are. `on_error` (`--on-error`) decides what a bad record does:

- `fail` (default): the run stops at it with `BadRecordError`, one line naming
  `PATH:LINE` and the reason; every document before it is committed, so a run
  with `--on-error skip` goes on from there;
- `skip`: the record is written to a rejects file beside the output,
  `OUTPUT.rejects.jsonl` for JSONL and `OUTPUT/rejects.jsonl` for DocBin, one
  JSON line `{"id": "PATH:LINE", "reason": "..."}` each, and the run goes on;
  `AnnotateSummary` counts them.

Long documents: spaCy refuses a text longer than `nlp.max_length` (1,000,000
characters by default), a guard for the memory of its own parser and NER.
The early-exit components read a long document in overlapping windows of
their encoder's length, so their memory grows with the document, not with
its square: this run raises `nlp.max_length` to fit the longest document it
meets, and annotates every document whole. (A pipeline that also holds
spaCy's own parser or NER needs that memory for such a document.)

Output, chosen by the extension of OUTPUT:

- `.jsonl`: one record per document (`doc_record`): id, text, words, spaces,
  tags, entities, each token's exit layer, each component's cost (U+2028,
  U+2029 and U+0085 are escaped, so no line reader splits a record);
- `.spacy`: a directory of DocBin shards (`000000.spacy`, ...), usable as a
  spaCy corpus directory; each doc carries the same record, without the
  exit information, in `doc.user_data["earlyexit_annotate"]` (the words,
  tags and entities are the doc's own; lists come back from DocBin as tuples).

Resuming: records (documents and rejected lines) are annotated and written in
chunks. After a chunk's output and rejects are flushed to disk (fsync), a
small state file beside them (`OUTPUT.state.json` for JSONL,
`OUTPUT/annotate-state.json` for DocBin) is replaced atomically with the
number of records done and the committed sizes of the output and the rejects
file. A run killed at any point and started again with the same input and
pipeline drops whatever was written after the last commit and goes on from
there: no document or rejected record is lost or written twice.
"""

import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import typer

INPUT_SUFFIXES = (".txt", ".jsonl")
STATE_VERSION = 2
DOCBIN_STATE_NAME = "annotate-state.json"
DOCBIN_REJECTS_NAME = "rejects.jsonl"
USER_DATA_KEY = "earlyexit_annotate"
#: the parts of a record that a DocBin doc keeps in user_data (the rest is the doc itself)
DOCBIN_RECORD_KEYS = ("id", "meta", "exit_layer", "exit_layers", "earlyexit", "speedup")
ON_ERROR = ("fail", "skip")
BOM = b"\xef\xbb\xbf"
#: characters that JSON leaves raw but line readers (str.splitlines, JavaScript) take for line ends
_LINE_BREAKING = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


class AnnotateError(ValueError):
    """Bad input, or an output that cannot be (re)used as asked."""


class BadRecordError(AnnotateError):
    """A bad input record stopped a run with `on_error="fail"`."""

    def __init__(self, record_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.record_id = record_id
        self.reason = reason


# -- input ----------------------------------------------------------------------
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


# -- one document's record ---------------------------------------------------------
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


# -- annotating chunks ---------------------------------------------------------------
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


def load_pipeline(pipeline: str, gpu_id: int = -1, code_path: Optional[Path] = None):
    """Load a pipeline, after the user's code and on the GPU if asked."""
    import spacy
    from spacy import util

    import spacy_earlyexit  # noqa: F401  registers the factories and extensions

    if code_path:
        util.import_file("python_code", code_path)
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    return spacy.load(pipeline)


def fit_max_length(nlp, texts: Iterable[str]) -> None:
    """Raise `nlp.max_length` to fit the longest of `texts` (see the module
    docstring: the early-exit components read long documents in windows)."""
    longest = max((len(text) for text in texts), default=0)
    if longest > nlp.max_length:
        nlp.max_length = longest


def annotate_chunk(nlp, records: List[Record], output_format: str, batch_size: int) -> ChunkResult:
    """Annotate the documents of a chunk of records and serialize them for the
    output format, and its rejected records for the rejects file."""
    docs = [record for record in records if isinstance(record, SourceDoc)]
    rejects = [record for record in records if isinstance(record, Rejected)]
    fit_max_length(nlp, (d.text for d in docs))
    n_words = 0
    attrs = token_attrs(nlp)
    if output_format == "jsonl":
        lines = []
        for source, doc in zip(docs, nlp.pipe((d.text for d in docs), batch_size=batch_size)):
            n_words += len(doc)
            lines.append(record_line(doc_record(doc, source.id, source.meta, attrs)))
        payload = "".join(lines).encode("utf8")
    else:
        from spacy.tokens import DocBin

        docbin = DocBin(store_user_data=True)
        for source, doc in zip(docs, nlp.pipe((d.text for d in docs), batch_size=batch_size)):
            n_words += len(doc)
            record = doc_record(doc, source.id, source.meta, attrs)
            doc.user_data[USER_DATA_KEY] = {key: record[key] for key in DOCBIN_RECORD_KEYS if key in record}
            docbin.add(doc)
        payload = docbin.to_bytes()
    return ChunkResult(
        len(docs),
        n_words,
        payload,
        records[-1].id if records else "",
        len(rejects),
        "".join(reject_line(r) for r in rejects).encode("utf8"),
    )


_worker_state: Dict[str, Any] = {}


def _init_worker(pipeline: str, gpu_id: int, code_path: Optional[Path], torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
    _worker_state["nlp"] = load_pipeline(pipeline, gpu_id, code_path)


def _worker_annotate(records: List[Record], output_format: str, batch_size: int) -> ChunkResult:
    return annotate_chunk(_worker_state["nlp"], records, output_format, batch_size)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def annotated_chunks(
    chunks: Iterable[List[Record]],
    pipeline: str,
    output_format: str,
    *,
    n_process: int = 1,
    batch_size: int = 64,
    gpu_id: int = -1,
    code_path: Optional[Path] = None,
) -> Iterator[ChunkResult]:
    """Annotated chunks in input order. With n_process > 1, worker processes
    (spawned, each loading the pipeline once, each with its share of the CPU
    cores as torch threads) take chunks, at most two each in flight."""
    if n_process <= 1:
        nlp = load_pipeline(pipeline, gpu_id, code_path)
        for chunk in chunks:
            yield annotate_chunk(nlp, chunk, output_format, batch_size)
        return
    import multiprocessing

    threads = max(1, available_cores() // n_process)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        n_process, mp_context=context, initializer=_init_worker, initargs=(pipeline, gpu_id, code_path, threads)
    ) as pool:
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_worker_annotate, chunk, output_format, batch_size))
                if len(pending) >= 2 * n_process:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _chunked(records: Iterable[Record], size: int) -> Iterator[List[Record]]:
    chunk: List[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _UntilBad:
    """The records, up to the first bad one when `on_error` is "fail": that
    one ends the iteration and is kept in `bad`, so that every chunk before it
    is annotated and committed (also those in flight in worker processes)
    before the run stops."""

    def __init__(self, records: Iterable[Record], on_error: str) -> None:
        self.records = records
        self.stop = on_error == "fail"
        self.bad: Optional[Rejected] = None

    def __iter__(self) -> Iterator[Record]:
        for record in self.records:
            if self.stop and isinstance(record, Rejected):
                self.bad = record
                return
            yield record


# -- durable output --------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def output_format_of(output_path: Path) -> str:
    if output_path.suffix == ".jsonl":
        return "jsonl"
    if output_path.suffix == ".spacy":
        return "docbin"
    raise AnnotateError(f"{output_path}: the output must end in .jsonl (JSON lines) or .spacy (a DocBin directory).")


def state_path_of(output_path: Path) -> Path:
    if output_format_of(output_path) == "jsonl":
        return output_path.with_name(output_path.name + ".state.json")
    return output_path / DOCBIN_STATE_NAME


def rejects_path_of(output_path: Path) -> Path:
    """Where `on_error="skip"` writes the rejected records of an output."""
    if output_format_of(output_path) == "jsonl":
        return output_path.with_name(output_path.name + ".rejects.jsonl")
    return output_path / DOCBIN_REJECTS_NAME


def shard_name(index: int) -> str:
    return f"{index:06d}.spacy"


def _shards(directory: Path) -> List[Path]:
    return sorted(p for p in directory.glob("*.spacy") if p.stem.isdigit())


class OutputWriter:
    """Appends chunks to the output and their rejected records to the rejects
    file, and commits a state record after each chunk."""

    def __init__(self, output_path: Path, state: Dict[str, Any]) -> None:
        self.path = output_path
        self.format = output_format_of(output_path)
        self.state_path = state_path_of(output_path)
        self.rejects_path = rejects_path_of(output_path)
        self.state = state
        self._file = None
        self._rejects = None

    def open(self) -> None:
        """Drop whatever a killed run wrote after its last commit, then get ready to append."""
        committed = self.state["rejects_bytes"]
        found = self.rejects_path.stat().st_size if self.rejects_path.is_file() else None
        if committed and (found is None or found < committed):
            raise AnnotateError(
                f"{self.rejects_path} is missing or shorter than when the output was committed: it holds "
                "the rejected records of the annotated part; run again with --no-resume to start over."
            )
        if found is not None:
            if committed:
                self._rejects = self.rejects_path.open("r+b")
                self._rejects.truncate(committed)
                self._rejects.seek(committed)
            else:
                self.rejects_path.unlink()
        if self.format == "jsonl":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = "r+b" if self.path.exists() else "w+b"
            self._file = self.path.open(mode)
            self._file.truncate(self.state["output_bytes"])
            self._file.seek(self.state["output_bytes"])
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for shard in _shards(self.path):
                if int(shard.stem) >= self.state["chunks_done"]:
                    shard.unlink()
            for tmp in self.path.glob("*.tmp"):
                tmp.unlink()
        self._save()

    def write(self, chunk: ChunkResult) -> None:
        """Make the chunk and its rejects durable on disk (not yet committed)."""
        if self.format == "jsonl":
            self._file.write(chunk.payload)
            self._file.flush()
            os.fsync(self._file.fileno())
        else:
            _write_atomic(self.path / shard_name(self.state["chunks_done"]), chunk.payload)
        if chunk.rejects:
            if self._rejects is None:  # the first reject: the file entry is made durable by the commit
                self._rejects = self.rejects_path.open("w+b")
            self._rejects.write(chunk.rejects)
            self._rejects.flush()
            os.fsync(self._rejects.fileno())

    def commit(self, chunk: Optional[ChunkResult] = None, complete: bool = False) -> None:
        """Record a written chunk (and whether the run is complete) in the state file, atomically."""
        if chunk is not None:
            self.state["records_done"] += chunk.n_docs + chunk.n_rejects
            self.state["docs_done"] += chunk.n_docs
            self.state["rejects_done"] += chunk.n_rejects
            self.state["rejects_bytes"] += len(chunk.rejects)
            self.state["words_done"] += chunk.n_words
            self.state["chunks_done"] += 1
            self.state["last_id"] = chunk.last_id
        self.state["complete"] = complete
        self._save()

    def _save(self) -> None:
        if self.format == "jsonl":
            self.state["output_bytes"] = self._file.tell()
        _write_atomic(self.state_path, json.dumps(self.state, indent=2).encode("utf8"))

    def close(self) -> None:
        for name in ("_file", "_rejects"):
            file = getattr(self, name)
            if file is not None:
                file.close()
                setattr(self, name, None)


def _run_settings(pipeline: str, input_path: Path, output_path: Path, text_field: str) -> Dict[str, Any]:
    """What must be the same for a run to continue another's output."""
    files = [[name, path.stat().st_size] for path, name in input_files(input_path)]
    return {
        "version": STATE_VERSION,
        "pipeline": str(Path(pipeline).resolve()) if Path(pipeline).exists() else str(pipeline),
        "input": str(Path(input_path).resolve()),
        "files": files,
        "field": text_field,
        "format": output_format_of(output_path),
    }


def _output_exists(output_path: Path) -> bool:
    if output_format_of(output_path) == "jsonl":
        return output_path.exists()
    return output_path.is_dir() and bool(_shards(output_path))


def remove_output(output_path: Path) -> None:
    """Delete an annotation output and its state (only the files this module writes)."""
    state_path = state_path_of(output_path)
    if output_format_of(output_path) == "jsonl":
        for path in (
            output_path,
            state_path,
            state_path.with_name(state_path.name + ".tmp"),
            rejects_path_of(output_path),
        ):
            if path.exists():
                path.unlink()
        return
    if output_path.is_file():
        raise AnnotateError(f"{output_path} is a file; a .spacy output is a directory of DocBin shards.")
    if output_path.is_dir():
        for path in _shards(output_path) + list(output_path.glob("*.tmp")):
            path.unlink()
        for path in (state_path, rejects_path_of(output_path)):
            if path.exists():
                path.unlink()


def _initial_state(output_path: Path, settings: Dict[str, Any], resume: bool) -> Tuple[Dict[str, Any], bool]:
    """The state to start from, and whether that is a resumed run."""
    state_path = state_path_of(output_path)
    fresh = {
        **settings,
        "records_done": 0,
        "docs_done": 0,
        "rejects_done": 0,
        "words_done": 0,
        "chunks_done": 0,
        "output_bytes": 0,
        "rejects_bytes": 0,
        "last_id": None,
        "complete": False,
    }
    if output_format_of(output_path) == "docbin" and output_path.is_file():
        raise AnnotateError(f"{output_path} is a file; a .spacy output is a directory of DocBin shards.")
    if not resume:
        remove_output(output_path)  # other files in a .spacy directory are left alone
        return fresh, False
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf8"))
        if state.get("version") == 1:  # before bad records were set aside: every record was a document
            state.update(version=2, records_done=state["docs_done"], rejects_done=0, rejects_bytes=0)
        different = [key for key in settings if state.get(key) != settings[key]]
        if different:
            raise AnnotateError(
                f"{output_path} was started with other settings ({', '.join(different)} differ); "
                "run again with --no-resume to start over."
            )
        return state, state["records_done"] > 0 or state["complete"]
    if _output_exists(output_path):
        raise AnnotateError(
            f"{output_path} exists but has no annotation state to resume from; "
            "remove it or run with --no-resume to overwrite it."
        )
    return fresh, False


# -- the run ---------------------------------------------------------------------------------
@dataclass
class AnnotateSummary:
    """What a run did. `docs_total` counts the input's records (its non-blank
    lines, bad ones included) and `docs_before` those an earlier run
    annotated or rejected; `docs_this_run` the documents annotated and
    `rejects_this_run` the records rejected by this run; `rejects_path` is
    the rejects file, where there is one."""

    docs_total: int
    docs_before: int
    docs_this_run: int
    words_this_run: int
    seconds: float
    rejects_before: int = 0
    rejects_this_run: int = 0
    rejects_path: Optional[Path] = None

    @property
    def rejects_total(self) -> int:
        return self.rejects_before + self.rejects_this_run

    @property
    def words_per_second(self) -> float:
        return self.words_this_run / self.seconds if self.seconds > 0 else 0.0


def annotate_corpus(
    pipeline: str,
    input_path: Path,
    output_path: Path,
    *,
    text_field: str = "text",
    n_process: int = 1,
    batch_size: int = 64,
    chunk_size: int = 1000,
    gpu_id: int = -1,
    code_path: Optional[Path] = None,
    resume: bool = True,
    on_error: str = "fail",
    progress: Optional[Callable[[str], None]] = None,
    before_commit: Optional[Callable[[int], None]] = None,
) -> AnnotateSummary:
    """Annotate every document of `input_path` into `output_path` (see the
    module docstring for formats, bad records and resuming). A bad record
    raises `BadRecordError` with `on_error="fail"`, after everything before it
    is committed; with "skip" it goes to the rejects file. `chunk_size`
    counts records (documents and bad lines). `before_commit(chunk_index)`
    runs after a chunk is on disk and before it is committed: a hook for
    tests that interrupt a run at its most delicate point."""
    input_path, output_path = Path(input_path), Path(output_path)
    if chunk_size < 1 or batch_size < 1:
        raise AnnotateError("chunk size and batch size must be at least 1.")
    if on_error not in ON_ERROR:
        raise AnnotateError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}.")
    if n_process < 0:
        n_process = available_cores()
    settings = _run_settings(pipeline, input_path, output_path, text_field)
    state, resumed = _initial_state(output_path, settings, resume)
    total = sum(1 for _ in source_doc_ids(input_path))
    docs_before, rejects_before = state["records_done"], state["rejects_done"]
    if state["records_done"]:
        ids = source_doc_ids(input_path)
        last = next((id_ for i, id_ in enumerate(ids, start=1) if i == state["records_done"]), None)
        if last != state["last_id"]:
            raise AnnotateError(
                f"the input changed: document {state['records_done']} is {last}, "
                f"not {state['last_id']} as when the output was written."
            )
    say = progress or (lambda line: None)
    if state["complete"]:
        say(f"{output_path} is complete: all {total} documents were annotated by an earlier run.")
    elif resumed:
        say(f"Resuming {output_path}: {docs_before} of {total} documents already done.")
    start = time.perf_counter()
    docs_run = words_run = rejects_run = 0
    writer = OutputWriter(output_path, state)
    writer.open()
    try:
        if not state["complete"]:
            records = _UntilBad(read_records(input_path, text_field, skip=state["records_done"]), on_error)
            for chunk in annotated_chunks(
                _chunked(records, chunk_size),
                pipeline,
                settings["format"],
                n_process=n_process,
                batch_size=batch_size,
                gpu_id=gpu_id,
                code_path=code_path,
            ):
                writer.write(chunk)
                if before_commit is not None:
                    before_commit(state["chunks_done"])
                writer.commit(chunk)
                docs_run += chunk.n_docs
                words_run += chunk.n_words
                rejects_run += chunk.n_rejects
                elapsed = time.perf_counter() - start
                rate = words_run / elapsed if elapsed > 0 else 0.0
                rejected = f", {state['rejects_done']:,} rejected" if state["rejects_done"] else ""
                say(
                    f"{state['records_done']}/{total} docs ({100 * state['records_done'] / max(total, 1):.0f}%)"
                    f"{rejected}, {words_run:,} words this run, {rate:,.0f} words/s"
                )
            if records.bad is not None:
                bad = records.bad
                raise BadRecordError(
                    bad.id,
                    bad.reason,
                    f"{bad.id}: {bad.reason}. Stopped there, with the {state['records_done']} documents before "
                    f"it committed; run again with --on-error skip to go on and set bad records aside in "
                    f"{writer.rejects_path}.",
                )
            writer.commit(complete=True)
    finally:
        writer.close()
    rejects_path = writer.rejects_path if writer.rejects_path.exists() else None
    return AnnotateSummary(
        total, docs_before, docs_run, words_run, time.perf_counter() - start, rejects_before, rejects_run, rejects_path
    )


def iter_docbin_output(output_path: Path, vocab) -> Iterator[Any]:
    """The docs of a .spacy annotation output, in input order (committed shards only)."""
    from spacy.tokens import DocBin

    output_path = Path(output_path)
    state_path = state_path_of(output_path)
    n_chunks = json.loads(state_path.read_text(encoding="utf8"))["chunks_done"] if state_path.exists() else None
    for shard in _shards(output_path):
        if n_chunks is not None and int(shard.stem) >= n_chunks:
            break
        yield from DocBin().from_bytes(shard.read_bytes()).get_docs(vocab)


# -- command line ---------------------------------------------------------------------------------
def annotate(
    pipeline: str = typer.Argument(..., help="Pipeline directory or package name"),
    input_path: Path = typer.Argument(
        ..., help="A .txt file (one doc per line), a .jsonl file, or a directory of them", exists=True
    ),
    output_path: Path = typer.Argument(..., help="Output: a .jsonl file, or a .spacy directory of DocBin shards"),
    text_field: str = typer.Option("text", "--field", "-f", help="JSONL field holding the text"),
    n_process: int = typer.Option(1, "--n-process", "-n", help="Worker processes (-1: one per CPU core)"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    chunk_size: int = typer.Option(
        1000, "--chunk-size", help="Docs per flushed chunk: the unit of progress and of resuming"
    ),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU ID or -1 for CPU"),
    code_path: Optional[Path] = typer.Option(
        None, "--code", "-c", help="Python file with registered functions", exists=True, dir_okay=False
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Go on from where an interrupted run stopped (default), or start over"
    ),
    on_error: str = typer.Option(
        "fail",
        "--on-error",
        help=(
            "A bad record (not UTF-8, not a JSON object, no string text, NUL characters): 'fail' stops at it, "
            "naming file and line; 'skip' writes it to OUTPUT's rejects file and goes on"
        ),
    ),
) -> None:
    """Annotate text or JSONL files with a pipeline: entities, tags, every
    token's exit layer and each doc's cost, as JSONL or DocBin shards. An
    interrupted run, started again with the same arguments, goes on where it
    stopped without losing or repeating a document. Documents longer than
    the pipeline's max_length are annotated whole."""
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        typer.echo(("\r" + line) if tty else line, err=True, nl=not tty)

    try:
        summary = annotate_corpus(
            pipeline,
            input_path,
            output_path,
            text_field=text_field,
            n_process=n_process,
            batch_size=batch_size,
            chunk_size=chunk_size,
            gpu_id=gpu_id,
            code_path=code_path,
            resume=resume,
            on_error=on_error,
            progress=progress,
        )
    except AnnotateError as err:
        if tty:
            typer.echo("", err=True)
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None
    if tty:
        typer.echo("", err=True)
    rejected = ""
    if summary.rejects_total:
        rejected = (
            f", {summary.rejects_this_run} rejected now ({summary.rejects_total} in all, "
            f"listed in {summary.rejects_path})"
        )
    typer.echo(
        f"{output_path}: {summary.docs_total} documents ({summary.docs_before} from an earlier run); "
        f"{summary.docs_this_run} annotated now{rejected}, {summary.words_this_run:,} words in "
        f"{summary.seconds:.1f} s ({summary.words_per_second:,.0f} words/s)"
    )
