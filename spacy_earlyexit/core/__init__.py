"""The plain-PyTorch core of spacy-earlyexit: the multi-exit encoder and its
layer loop, exit policies, objectives, cost accounting, adaptive width,
packed projections, precision and decoding. Nothing here imports spaCy or
Thinc (a test checks it); the Hugging Face adapter imports transformers only
when a model is loaded."""
