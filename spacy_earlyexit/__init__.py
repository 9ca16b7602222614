"""spacy-earlyexit: transformer sequence labelling for spaCy where each token
leaves the network as soon as its label is certain.

Importing the package registers its components, architectures, policies,
schedule and extensions, and does nothing else: transformers loads when an
encoder is loaded, and a model's process settings (oneDNN's kernel cache,
torch threads in forked workers) are made when a model is built.
"""

from .core.batch import EncoderBatch, ExitOutput
from .core.encoder import MultiExitEncoder
from .core.engines import Engine, HuggingFaceForward, OwnLoop
from .core.points import OperatingPoint
from .core.policies import ExitPolicy, FixedDepth, FullDepth, SentenceExit, TokenPatience, TokenWindowExit, make_policy
from .pipeline import architectures  # noqa: F401  registers every function
from .pipeline.architectures import MultiExitTransformer
from .pipeline.extensions import register_extensions
from .pipeline.ner import EarlyExitNER, make_earlyexit_ner
from .pipeline.shared import EarlyExitTransformer, make_earlyexit_transformer
from .pipeline.tagger import EarlyExitTagger, make_earlyexit_tagger

__version__ = "0.1.0"

register_extensions()


def __getattr__(name: str):
    # the exit view is a tool: imported when asked for
    if name in ("render", "serve"):
        from .tools import render as view

        return getattr(view, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EarlyExitNER",
    "EarlyExitTagger",
    "EarlyExitTransformer",
    "EncoderBatch",
    "Engine",
    "ExitOutput",
    "ExitPolicy",
    "FixedDepth",
    "FullDepth",
    "HuggingFaceForward",
    "MultiExitEncoder",
    "MultiExitTransformer",
    "OperatingPoint",
    "OwnLoop",
    "SentenceExit",
    "TokenPatience",
    "TokenWindowExit",
    "make_earlyexit_ner",
    "make_earlyexit_tagger",
    "make_earlyexit_transformer",
    "make_policy",
    "render",
    "serve",
]
