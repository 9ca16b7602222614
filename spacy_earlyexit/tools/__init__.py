"""The tools of spacy-earlyexit: one module per command of
`python -m spacy_earlyexit`, each a thin wrapper over library functions
(train, calibrate, benchmark, evaluate-points, annotate, plots), and the exit
view (`render`)."""
