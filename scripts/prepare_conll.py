"""Convert CoNLL-2003-format files (word, POS, chunk, NER) into spaCy DocBin corpora.

Each `-DOCSTART-` document becomes one Doc (sentence starts set, POS in
`token.tag_`, entities in `doc.ents`); the marker lines never become tokens.
Reuses spaCy's own `conll_ner_to_docs` converter after rewriting the marker
into the delimiter that converter expects. A corpus without `-DOCSTART-`
markers becomes one Doc per sentence.

    python scripts/prepare_conll.py CONLL_DIR OUTPUT_DIR [--max-sentences N]
        [--sentences] [--lowercase]

CONLL_DIR holds train.txt, dev.txt and test.txt (the project passes
`vars.conll_dir`). `--max-sentences N` keeps the first N sentences of each
split (whole documents, cut at N), for a quick run. `--sentences` makes one Doc
of each sentence and `--lowercase` destroys case (every word lowercased, its
labels kept): short lowercased texts stand in for a user's own data of
another register (social media, chat, search queries).
"""

import argparse
import sys
from pathlib import Path

from spacy.tokens import Doc, DocBin
from spacy.training.converters import conll_ner_to_docs

SPACY_DELIMITER = "-DOCSTART- -X- O O"
SPLITS = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}


def convert(text: str):
    lines = [SPACY_DELIMITER if line.startswith("-DOCSTART-") else line for line in text.splitlines()]
    return list(conll_ner_to_docs("\n".join(lines), n_sents=0, no_print=True))


def first_sentences(docs, limit: int):
    """The first `limit` sentences, keeping document boundaries."""
    kept, left = [], limit
    for doc in docs:
        if left <= 0:
            break
        sents = list(doc.sents)
        if len(sents) > left:
            doc = doc[: sents[left - 1].end].as_doc()
            sents = sents[:left]
        kept.append(doc)
        left -= len(sents)
    return kept


def one_doc_per_sentence(docs):
    return [sent.as_doc() for doc in docs for sent in doc.sents]


def lowercased(doc: Doc) -> Doc:
    """`doc` with every word lowercased; spacing, tags, sentence starts and entities kept."""
    out = Doc(
        doc.vocab,
        words=[t.text.lower() for t in doc],
        spaces=[bool(t.whitespace_) for t in doc],
        tags=[t.tag_ for t in doc],
        sent_starts=[bool(t.is_sent_start) for t in doc],
    )
    out.ents = [out.char_span(e.start_char, e.end_char, label=e.label_) for e in doc.ents]
    return out


def main(
    conll_dir: str, output_dir: str, max_sentences: int = 0, sentences: bool = False, lowercase: bool = False
) -> None:
    source, target = Path(conll_dir), Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    for split, filename in SPLITS.items():
        path = source / filename
        if not path.exists():
            sys.exit(
                f"CoNLL-2003 file not found: {path} (set the project variable conll_dir, "
                "e.g. `spacy project run all . --vars.conll_dir PATH`)"
            )
        docs = convert(path.read_text(encoding="utf8"))
        if max_sentences:
            docs = first_sentences(docs, max_sentences)
        if sentences:
            docs = one_doc_per_sentence(docs)
        if lowercase:
            docs = [lowercased(doc) for doc in docs]
        n_tokens = sum(len(doc) for doc in docs)
        n_sents = sum(1 for doc in docs for _ in doc.sents)
        if any(t.text == "-DOCSTART-" for doc in docs for t in doc):
            sys.exit(f"{path}: -DOCSTART- markers survived the conversion")
        DocBin(docs=docs, store_user_data=False).to_disk(target / f"{split}.spacy")
        print(f"{split}: {len(docs)} docs, {n_sents} sentences, {n_tokens} tokens -> {target / f'{split}.spacy'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conll_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--max-sentences", type=int, default=0)
    parser.add_argument("--sentences", action="store_true", help="one Doc per sentence")
    parser.add_argument("--lowercase", action="store_true", help="lowercase every word, keeping its labels")
    args = parser.parse_args()
    main(args.conll_dir, args.output_dir, args.max_sentences, args.sentences, args.lowercase)
