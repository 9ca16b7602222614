"""Options every command that loads a pipeline shares, spelled as spaCy's own
CLI spells them (`-c/--code`, `-g/--gpu-id`; the component by `--component`
only), and what they do before a pipeline is loaded."""

from pathlib import Path
from typing import Optional

import typer

CODE = typer.Option(None, "--code", "-c", help="Python file with registered functions", exists=True, dir_okay=False)
GPU_ID = typer.Option(-1, "--gpu-id", "-g", help="GPU ID or -1 for CPU")
PRECISION = typer.Option(None, "--precision", help="fp32, bf16, int8 or auto (default: the component's own setting)")
COMPONENT = typer.Option(None, "--component", help="Early-exit component (default: the pipeline's first)")
FORCE = typer.Option(
    False,
    "--force",
    help="Replace an existing output directory that is not an earlier output of this command (never an input)",
)


def prepare(code_path: Optional[Path], gpu_id: int) -> None:
    """Import the user's code and select the GPU, as spaCy's commands do."""
    from spacy.cli._util import import_code, setup_gpu

    import_code(code_path)
    setup_gpu(gpu_id)


def floats(text: str):
    """Comma-separated numbers."""
    return [float(x) for x in text.split(",") if x.strip()]
