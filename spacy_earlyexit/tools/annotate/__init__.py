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

An output whose files (the output, its state or its rejects) would be the
pipeline, an input file or the code file, or lie inside or around one, is
refused before anything is read or written (`check_output_paths`).
"""

import sys
from pathlib import Path
from typing import Optional

import typer

from ..outputs import OutputRefused
from .output import (
    DOCBIN_REJECTS_NAME,
    DOCBIN_STATE_NAME,
    STATE_VERSION,
    OutputWriter,
    WholeOutput,
    check_output_paths,
    initial_state,
    output_format_of,
    rejects_path_of,
    remove_output,
    run_settings,
    shard_name,
    shard_paths,
    state_path_of,
    whole_output,
)
from .records import (
    DOCBIN_RECORD_KEYS,
    USER_DATA_KEY,
    ChunkResult,
    Record,
    Rejected,
    SourceDoc,
    doc_record,
    exit_summary,
    record_line,
    reject_line,
    token_attrs,
)
from .run import (
    ON_ERROR,
    AnnotateSummary,
    annotate_chunk,
    annotate_corpus,
    annotated_chunks,
    available_cores,
    fit_max_length,
    iter_docbin_output,
    load_pipeline,
)
from .sources import (
    BOM,
    INPUT_SUFFIXES,
    AnnotateError,
    BadRecordError,
    doc_lines,
    input_files,
    parse_line,
    read_records,
    read_source_docs,
    source_doc_ids,
)


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
    except (AnnotateError, OutputRefused) as err:
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


__all__ = [
    "AnnotateError",
    "AnnotateSummary",
    "BOM",
    "BadRecordError",
    "ChunkResult",
    "DOCBIN_RECORD_KEYS",
    "DOCBIN_REJECTS_NAME",
    "DOCBIN_STATE_NAME",
    "INPUT_SUFFIXES",
    "ON_ERROR",
    "OutputWriter",
    "Record",
    "Rejected",
    "STATE_VERSION",
    "SourceDoc",
    "USER_DATA_KEY",
    "WholeOutput",
    "annotate",
    "annotate_chunk",
    "annotate_corpus",
    "annotated_chunks",
    "available_cores",
    "check_output_paths",
    "doc_lines",
    "doc_record",
    "exit_summary",
    "fit_max_length",
    "initial_state",
    "input_files",
    "iter_docbin_output",
    "load_pipeline",
    "output_format_of",
    "parse_line",
    "read_records",
    "read_source_docs",
    "record_line",
    "reject_line",
    "rejects_path_of",
    "remove_output",
    "run_settings",
    "shard_name",
    "shard_paths",
    "source_doc_ids",
    "state_path_of",
    "token_attrs",
    "whole_output",
]
