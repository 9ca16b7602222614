"""The Thinc/spaCy layer of spacy-earlyexit: the Thinc model and its PyTorch
shim, wordpiece planning, the components `earlyexit_ner` and
`earlyexit_tagger`, the Doc/Token extensions, and every registered function
(`architectures`)."""
