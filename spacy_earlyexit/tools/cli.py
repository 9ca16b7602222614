"""The command line: `python -m spacy_earlyexit COMMAND` (also
`python -m spacy earlyexit COMMAND`). One module per command; each is a thin
Typer wrapper over library functions that tests call directly.

spaCy imports this module on every `python -m spacy ...` command (the
`spacy_cli` entry point), so it imports no command's heavy dependencies:
those load when a command runs.
"""

import typer

from .annotate import annotate
from .benchmark import benchmark
from .calibrate import calibrate_command
from .evaluate_points import evaluate_points
from .plots import plot
from .stages import choose_stage_command
from .train import train
from .width_plots import plot_width

app = typer.Typer(name="spacy_earlyexit", help="spacy-earlyexit commands", no_args_is_help=True)


@app.callback()
def main() -> None:
    """spacy-earlyexit: early-exit transformer sequence labelling for spaCy."""


app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
app.command("calibrate")(calibrate_command)
app.command("benchmark")(benchmark)
app.command("evaluate-points")(evaluate_points)
app.command("choose-stage")(choose_stage_command)
app.command("annotate")(annotate)
app.command("plot")(plot)  # matplotlib is imported only when the command runs
app.command("plot-width")(plot_width)
