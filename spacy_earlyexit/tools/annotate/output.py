"""Durable output of `annotate`: JSONL or DocBin shards, the rejects file and
the resume state, each chunk committed with fsync and an atomic state write."""

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

from ..outputs import check_not_input
from .records import ChunkResult
from .sources import AnnotateError, input_files

DOCBIN_REJECTS_NAME = "rejects.jsonl"


DOCBIN_STATE_NAME = "annotate-state.json"


STATE_VERSION = 2


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


def _sync(file) -> None:
    """Make what was written to the open `file` durable."""
    file.flush()
    os.fsync(file.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as file:
        file.write(data)
        _sync(file)
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


def shard_paths(directory: Path) -> List[Path]:
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
            for shard in shard_paths(self.path):
                if int(shard.stem) >= self.state["chunks_done"]:
                    shard.unlink()
            for tmp in self.path.glob("*.tmp"):
                tmp.unlink()
        self._save()

    def write(self, chunk: ChunkResult) -> None:
        """Make the chunk and its rejects durable on disk (not yet committed)."""
        if self.format == "jsonl":
            self._file.write(chunk.payload)
            _sync(self._file)
        else:
            _write_atomic(self.path / shard_name(self.state["chunks_done"]), chunk.payload)
        if chunk.rejects:
            if self._rejects is None:  # the first reject: the file entry is made durable by the commit
                self._rejects = self.rejects_path.open("w+b")
            self._rejects.write(chunk.rejects)
            _sync(self._rejects)

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


def partial_path_of(path: Path) -> Path:
    """Where an output written in one go lies until it is complete."""
    return path.with_name(path.name + ".partial")


class WholeOutput:
    """The open files of an output written in one go (no resuming): the
    JSONL output and its rejects file; `rejected` counts the rejected records."""

    def __init__(self, output: TextIO, rejects: TextIO) -> None:
        self.output = output
        self.rejects = rejects
        self.rejected = 0

    def reject(self, line: str) -> None:
        self.rejects.write(line)
        self.rejected += 1


@contextlib.contextmanager
def whole_output(output_path: Path) -> Iterator[WholeOutput]:
    """Write a JSONL output and its rejects file in one go: both are written
    under `.partial` names, made durable, and renamed into place only when the
    block ends without an error; the rejects file only if a record was
    rejected (one from an earlier run is removed). On an error nothing stays
    behind."""
    output_path = Path(output_path)
    rejects_path = rejects_path_of(output_path)
    partial, rejects_partial = partial_path_of(output_path), partial_path_of(rejects_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            partial.open("w", encoding="utf8", newline="") as file,
            rejects_partial.open("w", encoding="utf8", newline="") as rejects,
        ):
            written = WholeOutput(file, rejects)
            yield written
            _sync(file)
            _sync(rejects)
    except BaseException:
        for path in (partial, rejects_partial):
            if path.exists():
                path.unlink()
        raise
    if written.rejected:
        os.replace(rejects_partial, rejects_path)
    else:
        rejects_partial.unlink()
        if rejects_path.exists():
            rejects_path.unlink()  # from an earlier run
    os.replace(partial, output_path)
    _fsync_dir(output_path.parent)


def run_settings(pipeline: str, input_path: Path, output_path: Path, text_field: str) -> Dict[str, Any]:
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


def check_output_paths(output_path: Path, inputs) -> None:
    """Refuse (`outputs.OutputRefused`) an output whose files (the output,
    its state and its rejects) would be an input (the pipeline, the input
    files, the code file), inside one or around one. An existing output is
    not refused: a run resumes it (or, with `resume=False`, starts it over)."""
    for path in (output_path, state_path_of(output_path), rejects_path_of(output_path)):
        check_not_input(path, inputs)


def _output_exists(output_path: Path) -> bool:
    if output_format_of(output_path) == "jsonl":
        return output_path.exists()
    return output_path.is_dir() and bool(shard_paths(output_path))


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
        for path in shard_paths(output_path) + list(output_path.glob("*.tmp")):
            path.unlink()
        for path in (state_path, rejects_path_of(output_path)):
            if path.exists():
                path.unlink()


def initial_state(output_path: Path, settings: Dict[str, Any], resume: bool) -> Tuple[Dict[str, Any], bool]:
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
