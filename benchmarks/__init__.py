"""The benchmark scripts, importable as `benchmarks.X` (tests import them so)
with the repository root on sys.path; each also runs as
`python benchmarks/X.py` from the repository root."""
