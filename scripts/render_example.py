"""Render a few sentences with a pipeline and save a screenshot of the exit view.

    python scripts/render_example.py PIPELINE docs/exit-view.png [--threshold 0.1 --window 2] [--html page.html]

Each token is shaded by the layer where it left the network. `--threshold`
replaces the exit policy of every early-exit component by token-level exits
(TOKEE) with that threshold; otherwise the pipeline's own policies are used.
Needs Selenium and Chromium with ChromeDriver (see spacy_earlyexit.tools.screenshot).
"""

import argparse
from pathlib import Path

import spacy

from spacy_earlyexit import render
from spacy_earlyexit.core.policies import TokenWindowExit
from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler
from spacy_earlyexit.tools.screenshot import screenshot_html

SENTENCES = [
    "Angela Merkel visited Paris on Tuesday to meet the French president.",
    "John Smith works for the European Central Bank in Frankfurt.",
    "The cat sat on the mat, and nobody in Berlin noticed.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="Pipeline directory or package name")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--text", action="append", help="A sentence to render (repeatable; default: three examples)")
    parser.add_argument("--threshold", type=float, help="Use TOKEE exits with this threshold")
    parser.add_argument("--window", type=int, default=2, help="TOKEE window half-width (with --threshold)")
    parser.add_argument("--component", help="Show one component's exits (default: each token's deepest)")
    parser.add_argument("--width", type=int, default=1000, help="Page width in pixels")
    parser.add_argument("--html", type=Path, help="Also save the page as HTML")
    args = parser.parse_args()

    nlp = spacy.load(args.pipeline)
    if args.threshold is not None:
        for _, pipe in nlp.pipeline:
            if isinstance(pipe, EarlyExitLabeler) and not pipe.listening:
                pipe.exit_policy = TokenWindowExit(args.threshold, window=args.window)
    docs = list(nlp.pipe(args.text or SENTENCES))
    html = render(docs, component=args.component)
    if args.html:
        args.html.write_text(html, encoding="utf8")
    screenshot_html(html, args.output, width=args.width)
    print(f"Saved {args.output}")


if __name__ == "__main__":
    main()
