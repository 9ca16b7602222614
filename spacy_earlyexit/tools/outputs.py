"""Where commands write: the one check and the one way of replacing an output
that every command with an output path uses.

- An output is never an input of the command, inside one, or holding one (a
  pipeline, a corpus, a config, a code file...): `check_not_input`. No option
  lifts this.
- A directory output (`calibrate`, `train --output`) replaces only an earlier
  output of the same command (recognized by the marker file `MARKER_NAME`
  that it leaves in it), an empty directory, or, with `force`, anything
  else: `check_output`. It is written into a temporary sibling directory
  (same parent, so the same file system) and renamed into place only when
  complete, so an interrupted run leaves an earlier output as it was:
  `replacing_directory`.
- A file output (a JSON result, a figure) replaces a regular file, and is
  written to a temporary sibling and renamed into place likewise:
  `replacing_file`.

A refused output raises `OutputRefused` (a ValueError) with one line that
says why; before anything is written, moved or deleted. Commands turn it into
that line and exit status 1 (`exit_on_refusal`).
"""

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

#: the file a command leaves in a directory output, naming the command
MARKER_NAME = ".spacy-earlyexit-output.json"

PathLike = Union[str, os.PathLike]
#: recognizes an output the command wrote before outputs carried the marker
Recognizer = Callable[[Path], bool]


class OutputRefused(ValueError):
    """A command will not write to this output path (one line says why)."""


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def check_not_input(output: PathLike, inputs: Iterable[Optional[PathLike]]) -> None:
    """Refuse an output that is one of `inputs`, lies inside one or contains
    one. Inputs that are None or name no existing path (a package name) are
    skipped; links are followed."""
    target = _resolved(output)
    sources = [(given, _resolved(given)) for given in inputs if given is not None and os.path.lexists(os.fspath(given))]
    for given, source in sources:
        if target == source:
            raise OutputRefused(f"the output {output} is the input {given}: write the output elsewhere.")
    for given, source in sources:
        if source in target.parents:
            raise OutputRefused(f"the output {output} is inside the input {given}: write the output elsewhere.")
    for given, source in sources:
        if target in source.parents:
            raise OutputRefused(f"the output {output} contains the input {given}: write the output elsewhere.")


def written_by(directory: PathLike, command: str) -> bool:
    """Whether `directory` holds the marker of an output of `command`."""
    marker = Path(directory) / MARKER_NAME
    try:
        content = json.loads(marker.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("command") == command


def check_output(
    output: PathLike,
    inputs: Iterable[Optional[PathLike]] = (),
    *,
    command: Optional[str] = None,
    force: bool = False,
    earlier: Optional[Recognizer] = None,
) -> Path:
    """Refuse (`OutputRefused`) an output that `command` must not write.

    With `command`, the output is a directory: nothing may stand at its path
    but an earlier output of `command` (its marker, or what `earlier`
    recognizes) or an empty directory, unless `force`. Without, the output
    is a file: nothing but a regular file may stand at its path. In both
    cases the output may not be an input, inside one or contain one
    (`check_not_input`), whatever `force` says. Touches nothing."""
    path = Path(output)
    check_not_input(path, inputs)
    if not os.path.lexists(path):
        return path
    if command is None:
        if path.is_symlink() or not path.is_file():
            raise OutputRefused(f"the output {output} exists and is not a regular file: write the output elsewhere.")
        return path
    if force:
        return path
    if path.is_symlink() or not path.is_dir():
        raise OutputRefused(
            f"the output {output} exists and is not a directory: choose another output, or pass --force to replace it."
        )
    if written_by(path, command) or (earlier is not None and earlier(path)) or not any(path.iterdir()):
        return path
    raise OutputRefused(
        f"the output {output} exists and is not an earlier output of `{command}`: choose another output, "
        "or pass --force to replace it."
    )


def _sibling(path: Path, kind: str) -> Path:
    """A new, hidden name beside `path` (same directory, same suffix)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.{kind}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _swap_in(new: Path, output: Path) -> None:
    """Rename `new` to `output`; whatever stood there is removed afterwards."""
    if not os.path.lexists(output):
        os.rename(new, output)
        return
    old = _sibling(output, "old")
    os.rename(output, old)
    try:
        os.rename(new, output)
    except BaseException:
        os.rename(old, output)
        raise
    _remove(old)


@contextmanager
def replacing_directory(
    output: PathLike,
    inputs: Iterable[Optional[PathLike]] = (),
    *,
    command: str,
    force: bool = False,
    earlier: Optional[Recognizer] = None,
) -> Iterator[Path]:
    """Check the output (`check_output`), then yield a new, empty temporary
    directory beside it to write the output into. When the block ends
    normally, the command's marker is added and the directory renamed to
    `output`, replacing what stood there (checked again first); when it
    raises (or is interrupted), the temporary directory is removed and an
    earlier output is left as it was."""
    inputs = list(inputs)
    output = check_output(output, inputs, command=command, force=force, earlier=earlier)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(output, "partial")
    partial.mkdir()
    try:
        yield partial
        from .. import __version__

        marker = {"command": command, "version": __version__}
        (partial / MARKER_NAME).write_text(json.dumps(marker) + "\n", encoding="utf8")
        check_output(output, inputs, command=command, force=force, earlier=earlier)
        _swap_in(partial, output)
    except BaseException:
        _remove(partial)
        raise


@contextmanager
def replacing_file(output: PathLike, inputs: Iterable[Optional[PathLike]] = ()) -> Iterator[Path]:
    """Check the output (`check_output`, a file), then yield a temporary path
    beside it (with the same suffix) to write the file to. When the block
    ends normally it replaces `output` (checked again first); when it raises,
    the temporary file is removed and an earlier file is left as it was."""
    inputs = list(inputs)
    output = check_output(output, inputs)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(output, "partial")
    try:
        yield partial
        check_output(output, inputs)
        os.replace(partial, output)
    except BaseException:
        if os.path.lexists(partial):
            _remove(partial)
        raise


@contextmanager
def exit_on_refusal() -> Iterator[None]:
    """In a command: a refused output ends it with one line on stderr
    ("Error: ...") and exit status 1, not a traceback."""
    import typer

    try:
        yield
    except OutputRefused as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None
