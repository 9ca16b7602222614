"""spacy-earlyexit: transformer sequence labelling for spaCy where each token
leaves the network as soon as its label is certain."""
import os

# oneDNN (torch's CPU kernels) compiles and caches one kernel per tensor shape,
# 1,024 of them by default. Early exit keeps changing the shapes (packed active
# pieces, finished rows dropped), so that cache kept growing the resident
# memory by about 190 MiB per 10,000 docs; 8 entries keep it flat (measured by
# benchmarks/rss_growth.py). Set before any oneDNN kernel runs; a value the
# user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

from .encoder import EncoderBatch, ExitOutput, MultiExitEncoder
from .extensions import register_extensions
from .layer import MultiExitTransformer
from .ner import EarlyExitNER, make_earlyexit_ner
from .policies import ExitPolicy, FixedDepth, FullDepth, SentenceExit, TokenWindowExit
from .registrations import make_policy
from .render import render, serve
from . import training_plan  # noqa: F401  registers the schedule
from .tagger import EarlyExitTagger, make_earlyexit_tagger

__version__ = "0.1.0"

register_extensions()

__all__ = [
    "EarlyExitNER",
    "EarlyExitTagger",
    "EncoderBatch",
    "ExitOutput",
    "ExitPolicy",
    "FixedDepth",
    "FullDepth",
    "MultiExitEncoder",
    "MultiExitTransformer",
    "SentenceExit",
    "TokenWindowExit",
    "make_earlyexit_ner",
    "make_earlyexit_tagger",
    "make_policy",
    "render",
    "serve",
]
