"""The examples, importable as `examples.X` (tests import them so) with the
repository root on sys.path; each also runs as `python examples/X.py`."""
