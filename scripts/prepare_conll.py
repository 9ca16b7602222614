"""Convert CoNLL-2003 files (word, POS, chunk, NER) into spaCy DocBin corpora.

Each `-DOCSTART-` document becomes one Doc (sentence starts set, POS in
`token.tag_`, entities in `doc.ents`); the marker lines never become tokens.
Reuses spaCy's own `conll_ner_to_docs` converter after rewriting the marker
into the delimiter that converter expects.

    python scripts/prepare_conll.py CONLL_DIR OUTPUT_DIR

The environment variable CONLL_DIR, when set, takes precedence over the
CONLL_DIR argument (so a project run can point at a local copy).
"""
import os
import sys
from pathlib import Path

from spacy.tokens import DocBin
from spacy.training.converters import conll_ner_to_docs

SPACY_DELIMITER = "-DOCSTART- -X- O O"
SPLITS = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}


def convert(text: str):
    lines = [SPACY_DELIMITER if line.startswith("-DOCSTART-") else line for line in text.splitlines()]
    return list(conll_ner_to_docs("\n".join(lines), n_sents=0, no_print=True))


def main(conll_dir: str, output_dir: str) -> None:
    source, target = Path(os.environ.get("CONLL_DIR") or conll_dir), Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    for split, filename in SPLITS.items():
        path = source / filename
        if not path.exists():
            sys.exit(f"CoNLL-2003 file not found: {path} (set CONLL_DIR / vars.conll_dir)")
        docs = convert(path.read_text(encoding="utf8"))
        n_tokens = sum(len(doc) for doc in docs)
        n_sents = sum(1 for doc in docs for _ in doc.sents)
        assert not any(t.text == "-DOCSTART-" for doc in docs for t in doc)
        DocBin(docs=docs, store_user_data=False).to_disk(target / f"{split}.spacy")
        print(f"{split}: {len(docs)} docs, {n_sents} sentences, {n_tokens} tokens -> {target / f'{split}.spacy'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
