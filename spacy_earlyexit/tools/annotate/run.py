"""Running `annotate`: chunks of records annotated in this process or in
workers, written in input order, and the whole resumable run."""

import json
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from .output import OutputWriter, check_output_paths, initial_state, run_settings, shard_paths, state_path_of
from .records import (
    DOCBIN_RECORD_KEYS,
    USER_DATA_KEY,
    ChunkResult,
    Record,
    Rejected,
    SourceDoc,
    doc_record,
    record_line,
    reject_line,
    token_attrs,
)
from .sources import AnnotateError, BadRecordError, read_records, source_doc_ids

ON_ERROR = ("fail", "skip")


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
    check_output_paths(output_path, (pipeline, input_path, code_path))
    settings = run_settings(pipeline, input_path, output_path, text_field)
    state, resumed = initial_state(output_path, settings, resume)
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
    for shard in shard_paths(output_path):
        if n_chunks is not None and int(shard.stem) >= n_chunks:
            break
        yield from DocBin().from_bytes(shard.read_bytes()).get_docs(vocab)
