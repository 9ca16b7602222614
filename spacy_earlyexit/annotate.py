"""Corpus-scale annotation on one machine: `python -m spacy_earlyexit annotate
PIPELINE INPUT OUTPUT`.

Input (a file or a directory searched recursively for `*.txt` and `*.jsonl`,
in sorted path order):

- `.txt`: one document per line;
- `.jsonl`: one JSON object per line, the text in `--field` (default "text");
  the object's other fields travel to the output as `meta`.

Blank lines are skipped in both. A document's id is `PATH:LINE`, the path
relative to the input directory (the file name for a single file) and the line
1-based, so it points back at its source.

Output, chosen by the extension of OUTPUT:

- `.jsonl`: one record per document (`doc_record`): id, text, words, spaces,
  tags, entities, each token's exit layer, each component's cost;
- `.spacy`: a directory of DocBin shards (`000000.spacy`, ...), usable as a
  spaCy corpus directory; each doc carries the same record, without the
  exit information, in `doc.user_data["earlyexit_annotate"]` (the words,
  tags and entities are the doc's own; lists come back from DocBin as tuples).

Resuming: documents are annotated and written in chunks. After a chunk's
output is flushed to disk (fsync), a small state file beside it
(`OUTPUT.state.json` for JSONL, `OUTPUT/annotate-state.json` for DocBin) is
replaced atomically with the number of documents done and the committed size
of the output. A run killed at any point and started again with the same input
and pipeline drops whatever was written after the last commit and goes on from
there: no document is lost or written twice.
"""
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import typer

INPUT_SUFFIXES = (".txt", ".jsonl")
STATE_VERSION = 1
DOCBIN_STATE_NAME = "annotate-state.json"
USER_DATA_KEY = "earlyexit_annotate"
#: the parts of a record that a DocBin doc keeps in user_data (the rest is the doc itself)
DOCBIN_RECORD_KEYS = ("id", "meta", "exit_layer", "exit_layers", "earlyexit", "speedup")


class AnnotateError(ValueError):
    """Bad input, or an output that cannot be (re)used as asked."""


# -- input ----------------------------------------------------------------------
@dataclass(frozen=True)
class SourceDoc:
    """One input document: where it came from, its text, its other JSONL fields."""

    id: str
    text: str
    meta: Dict[str, Any] = dataclass_field(default_factory=dict)


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


def _doc_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(1-based line number, line without its ending) of each non-blank line."""
    with path.open("r", encoding="utf8") as file:
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _parse_line(path: Path, name: str, number: int, line: str, text_field: str) -> SourceDoc:
    doc_id = f"{name}:{number}"
    if path.suffix == ".txt":
        return SourceDoc(doc_id, line)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise AnnotateError(f"{doc_id}: not valid JSON ({err}).") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise AnnotateError(f"{doc_id}: expected a JSON object with a string field '{text_field}'.")
    text = record.pop(text_field)
    return SourceDoc(doc_id, text, record)


def read_source_docs(input_path: Path, text_field: str = "text", skip: int = 0) -> Iterator[SourceDoc]:
    """The documents of a file or directory, in order, after the first `skip`
    (which are passed over without being parsed)."""
    for path, name in input_files(input_path):
        for number, line in _doc_lines(path):
            if skip:
                skip -= 1
                continue
            yield _parse_line(path, name, number, line, text_field)


def source_doc_ids(input_path: Path) -> Iterator[str]:
    """The id of every document, in order, without parsing any (cheap)."""
    for path, name in input_files(input_path):
        for number, _ in _doc_lines(path):
            yield f"{name}:{number}"


# -- one document's record ---------------------------------------------------------
def token_attrs(nlp) -> Tuple[str, ...]:
    """The token attributes ("tag", "pos") some component of the pipeline assigns."""
    assigned = {attr for name in nlp.pipe_names for attr in nlp.get_pipe_meta(name).assigns}
    return tuple(attr for attr in ("tag", "pos") if f"token.{attr}" in assigned)


def doc_record(doc, doc_id: str, meta: Optional[Dict[str, Any]] = None,
               attrs: Optional[Iterable[str]] = None) -> Dict[str, Any]:
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
            name: {key: info[name][key] for key in ("n_layers", "cost", "full_cost", "speedup")}
            for name in components
        },
        "speedup": doc._.earlyexit_speedup,
    }


def record_line(record: Dict[str, Any]) -> str:
    """One JSONL line, the same bytes for the same record in any process."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


# -- annotating chunks ---------------------------------------------------------------
@dataclass
class ChunkResult:
    n_docs: int
    n_words: int
    payload: bytes
    last_id: str


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


def annotate_chunk(nlp, docs: List[SourceDoc], output_format: str, batch_size: int) -> ChunkResult:
    """Annotate a chunk of documents and serialize it for the output format."""
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
    return ChunkResult(len(docs), n_words, payload, docs[-1].id if docs else "")


_worker_state: Dict[str, Any] = {}


def _init_worker(pipeline: str, gpu_id: int, code_path: Optional[Path], torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
    _worker_state["nlp"] = load_pipeline(pipeline, gpu_id, code_path)


def _worker_annotate(docs: List[SourceDoc], output_format: str, batch_size: int) -> ChunkResult:
    return annotate_chunk(_worker_state["nlp"], docs, output_format, batch_size)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def annotated_chunks(
    chunks: Iterable[List[SourceDoc]],
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
    with ProcessPoolExecutor(n_process, mp_context=context, initializer=_init_worker,
                             initargs=(pipeline, gpu_id, code_path, threads)) as pool:
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


def _chunked(docs: Iterable[SourceDoc], size: int) -> Iterator[List[SourceDoc]]:
    chunk: List[SourceDoc] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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


def shard_name(index: int) -> str:
    return f"{index:06d}.spacy"


def _shards(directory: Path) -> List[Path]:
    return sorted(p for p in directory.glob("*.spacy") if p.stem.isdigit())


class OutputWriter:
    """Appends chunks to the output and commits a state record after each one."""

    def __init__(self, output_path: Path, state: Dict[str, Any]) -> None:
        self.path = output_path
        self.format = output_format_of(output_path)
        self.state_path = state_path_of(output_path)
        self.state = state
        self._file = None

    def open(self) -> None:
        """Drop whatever a killed run wrote after its last commit, then get ready to append."""
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
        """Make the chunk durable on disk (not yet committed)."""
        if self.format == "jsonl":
            self._file.write(chunk.payload)
            self._file.flush()
            os.fsync(self._file.fileno())
        else:
            _write_atomic(self.path / shard_name(self.state["chunks_done"]), chunk.payload)

    def commit(self, chunk: Optional[ChunkResult] = None, complete: bool = False) -> None:
        if chunk is not None:
            self.state["docs_done"] += chunk.n_docs
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
        if self._file is not None:
            self._file.close()
            self._file = None


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
        for path in (output_path, state_path, state_path.with_name(state_path.name + ".tmp")):
            if path.exists():
                path.unlink()
        return
    if output_path.is_file():
        raise AnnotateError(f"{output_path} is a file; a .spacy output is a directory of DocBin shards.")
    if output_path.is_dir():
        for path in _shards(output_path) + list(output_path.glob("*.tmp")):
            path.unlink()
        if state_path.exists():
            state_path.unlink()


def _initial_state(output_path: Path, settings: Dict[str, Any], resume: bool) -> Tuple[Dict[str, Any], bool]:
    """The state to start from, and whether that is a resumed run."""
    state_path = state_path_of(output_path)
    fresh = {**settings, "docs_done": 0, "words_done": 0, "chunks_done": 0, "output_bytes": 0,
             "last_id": None, "complete": False}
    if output_format_of(output_path) == "docbin" and output_path.is_file():
        raise AnnotateError(f"{output_path} is a file; a .spacy output is a directory of DocBin shards.")
    if not resume:
        remove_output(output_path)  # other files in a .spacy directory are left alone
        return fresh, False
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf8"))
        different = [key for key in settings if state.get(key) != settings[key]]
        if different:
            raise AnnotateError(
                f"{output_path} was started with other settings ({', '.join(different)} differ); "
                "run again with --no-resume to start over."
            )
        return state, state["docs_done"] > 0 or state["complete"]
    if _output_exists(output_path):
        raise AnnotateError(
            f"{output_path} exists but has no annotation state to resume from; "
            "remove it or run with --no-resume to overwrite it."
        )
    return fresh, False


# -- the run ---------------------------------------------------------------------------------
@dataclass
class AnnotateSummary:
    docs_total: int
    docs_before: int
    docs_this_run: int
    words_this_run: int
    seconds: float

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
    progress: Optional[Callable[[str], None]] = None,
    before_commit: Optional[Callable[[int], None]] = None,
) -> AnnotateSummary:
    """Annotate every document of `input_path` into `output_path` (see the
    module docstring for formats and resuming). `before_commit(chunk_index)`
    runs after a chunk is on disk and before it is committed: a hook for
    tests that interrupt a run at its most delicate point."""
    input_path, output_path = Path(input_path), Path(output_path)
    if chunk_size < 1 or batch_size < 1:
        raise AnnotateError("chunk size and batch size must be at least 1.")
    if n_process < 0:
        n_process = available_cores()
    settings = _run_settings(pipeline, input_path, output_path, text_field)
    state, resumed = _initial_state(output_path, settings, resume)
    total = sum(1 for _ in source_doc_ids(input_path))
    docs_before = state["docs_done"]
    if state["docs_done"]:
        ids = source_doc_ids(input_path)
        last = next((id_ for i, id_ in enumerate(ids, start=1) if i == state["docs_done"]), None)
        if last != state["last_id"]:
            raise AnnotateError(f"the input changed: document {state['docs_done']} is {last}, "
                                f"not {state['last_id']} as when the output was written.")
    say = progress or (lambda line: None)
    if state["complete"]:
        say(f"{output_path} is complete: all {total} documents were annotated by an earlier run.")
    elif resumed:
        say(f"Resuming {output_path}: {docs_before} of {total} documents already done.")
    start = time.perf_counter()
    docs_run = words_run = 0
    writer = OutputWriter(output_path, state)
    writer.open()
    try:
        if not state["complete"]:
            chunks = _chunked(read_source_docs(input_path, text_field, skip=state["docs_done"]), chunk_size)
            for chunk in annotated_chunks(chunks, pipeline, settings["format"], n_process=n_process,
                                          batch_size=batch_size, gpu_id=gpu_id, code_path=code_path):
                writer.write(chunk)
                if before_commit is not None:
                    before_commit(state["chunks_done"])
                writer.commit(chunk)
                docs_run += chunk.n_docs
                words_run += chunk.n_words
                elapsed = time.perf_counter() - start
                rate = words_run / elapsed if elapsed > 0 else 0.0
                say(f"{state['docs_done']}/{total} docs ({100 * state['docs_done'] / max(total, 1):.0f}%), "
                    f"{words_run:,} words this run, {rate:,.0f} words/s")
            writer.commit(complete=True)
    finally:
        writer.close()
    return AnnotateSummary(total, docs_before, docs_run, words_run, time.perf_counter() - start)


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
    input_path: Path = typer.Argument(..., help="A .txt file (one doc per line), a .jsonl file, or a directory of them", exists=True),
    output_path: Path = typer.Argument(..., help="Output: a .jsonl file, or a .spacy directory of DocBin shards"),
    text_field: str = typer.Option("text", "--field", "-f", help="JSONL field holding the text"),
    n_process: int = typer.Option(1, "--n-process", "-n", help="Worker processes (-1: one per CPU core)"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="nlp.pipe batch size (docs)"),
    chunk_size: int = typer.Option(1000, "--chunk-size", help="Docs per flushed chunk: the unit of progress and of resuming"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU ID or -1 for CPU"),
    code_path: Optional[Path] = typer.Option(None, "--code", "-c", help="Python file with registered functions", exists=True, dir_okay=False),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Go on from where an interrupted run stopped (default), or start over"),
) -> None:
    """Annotate text or JSONL files with a pipeline: entities, tags, every
    token's exit layer and each doc's cost, as JSONL or DocBin shards. An
    interrupted run, started again with the same arguments, goes on where it
    stopped without losing or repeating a document."""
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        typer.echo(("\r" + line) if tty else line, err=True, nl=not tty)

    try:
        summary = annotate_corpus(
            pipeline, input_path, output_path, text_field=text_field, n_process=n_process,
            batch_size=batch_size, chunk_size=chunk_size, gpu_id=gpu_id, code_path=code_path,
            resume=resume, progress=progress,
        )
    except AnnotateError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1)
    if tty:
        typer.echo("", err=True)
    typer.echo(
        f"{output_path}: {summary.docs_total} documents ({summary.docs_before} from an earlier run); "
        f"{summary.docs_this_run} annotated now, {summary.words_this_run:,} words in {summary.seconds:.1f} s "
        f"({summary.words_per_second:,.0f} words/s)"
    )
