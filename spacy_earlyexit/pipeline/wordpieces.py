"""From spaCy docs to encoder sequences and back.

Each doc is cut into spans by a span getter (spacy-transformers' getters work),
each span's tokens are tokenized as pre-split words by the fast tokenizer (its
`word_ids` give an exact token-to-wordpiece alignment), and spans longer than
the encoder allows are read in windows cut at token boundaries: windows that
overlap, so that each token is labelled from a copy with context on both
sides, or disjoint balanced ones (`cut_context` 0). Every
token gets at least one wordpiece: one the tokenizer maps to nothing
(whitespace, some control characters) is given the unknown-token piece, so no
token is ever without a label or an exit layer. A single token with more
pieces than a sequence can hold keeps its first pieces only: a token is read
from its first piece, so it still gets a label, and no sequence is ever longer
than the limit.
"""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.attrs import IDS, ORTH
from spacy.tokens import Doc, Span

from ..core.batch import EncoderBatch

SpanGetter = Callable[[List[Doc]], List[List[Span]]]

#: casing classes: 0 special/padding, 1 no letters, 2 lower, 3 Title, 4 UPPER, 5 mixed
N_CASE_CLASSES = 6


#: frequent words' classes are cached; the bound keeps a long run over new
#: words (names, numbers) from growing the cache (issue 30)
CASE_CACHE_SIZE = 1 << 12


@lru_cache(maxsize=CASE_CACHE_SIZE)
def case_class(text: str) -> int:
    """The casing class of a token's text (what an uncased tokenizer loses)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1
    if all(c.islower() for c in letters):
        return 2
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 3
    if all(c.isupper() for c in letters):
        return 4
    return 5


@dataclass(frozen=True)
class LexicalFeatures:
    """Hashed lexical features of each token, as spaCy's `MultiHashEmbed`
    reads them: for every attribute (`PREFIX`, `SUFFIX`, `SHAPE`, `NORM`...)
    two rows of its own block of `rows` rows, from the low and the high half
    of the attribute's 64-bit string hash (two rows make collisions rare).
    Row 0 of the table is the zero row of special pieces and padding."""

    attrs: Tuple[str, ...] = ()
    rows: Tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.attrs) != len(self.rows):
            raise ValueError(
                f"lexical_attrs and lexical_rows need one entry each per attribute, got "
                f"{len(self.attrs)} attributes and {len(self.rows)} row counts."
            )
        for attr in self.attrs:
            if not isinstance(attr, str) or attr.upper() not in IDS:
                raise ValueError(f"Unknown token attribute in lexical_attrs: {attr!r} (e.g. PREFIX, SUFFIX, SHAPE).")
        for rows in self.rows:
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
                raise ValueError(f"lexical_rows must be whole numbers >= 1, got {rows!r}.")

    @property
    def n_features(self) -> int:
        return 2 * len(self.attrs)

    @property
    def table_rows(self) -> int:
        """Rows of the embedding table, the zero row included (0: no features)."""
        return 1 + 2 * sum(self.rows) if self.attrs else 0

    def token_rows(self, doc: Doc) -> numpy.ndarray:
        """[n_tokens, n_features] table rows of every token of `doc`."""
        out = numpy.empty((len(doc), self.n_features), dtype="int64")
        if not len(doc):
            return out
        hashes = doc.to_array([IDS[attr.upper()] for attr in self.attrs]).astype("uint64").reshape(len(doc), -1)
        offset = 1
        for k, rows in enumerate(self.rows):
            column = hashes[:, k]
            out[:, 2 * k] = offset + (column % numpy.uint64(rows)).astype("int64")
            out[:, 2 * k + 1] = offset + rows + ((column >> numpy.uint64(32)) % numpy.uint64(rows)).astype("int64")
            offset += 2 * rows
        return out


@dataclass
class EncoderSequence:
    """One wordpiece sequence: a window of one doc's tokens."""

    doc_index: int
    tokens: numpy.ndarray  # doc token index of each word
    input_ids: List[int]  # with special pieces
    piece_words: numpy.ndarray  # word index of each piece, -1 for specials
    word_starts: numpy.ndarray  # position of each word's first piece
    case_ids: numpy.ndarray  # casing class of each piece's word, 0 for specials
    word_ends: Optional[numpy.ndarray] = None  # position of each word's last piece
    lexical_ids: Optional[numpy.ndarray] = None  # [n_pieces, F] lexical table rows, 0 for specials

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SequencePlan:
    """All sequences of a batch of docs, and which one labels each token."""

    sequences: List[EncoderSequence]
    n_tokens: List[int]
    # per doc: for each token, (sequence index, word index) of its labelling copy
    owner_sequence: List[numpy.ndarray] = field(default_factory=list)
    owner_word: List[numpy.ndarray] = field(default_factory=list)

    def token_rows(self, order: Sequence[int]) -> List[numpy.ndarray]:
        """Row of each token among the flattened words of `order`'s sequences."""
        offsets = numpy.zeros(len(self.sequences), dtype="int64")
        position = 0
        for seq_index in order:
            offsets[seq_index] = position
            position += len(self.sequences[seq_index].word_starts)
        return [offsets[s] + w for s, w in zip(self.owner_sequence, self.owner_word)]


def whole_doc_spans(docs: List[Doc]) -> List[List[Span]]:
    return [[doc[:]] for doc in docs]


def _special_layout(tokenizer) -> tuple:
    """How many special pieces the tokenizer puts before and after a sequence."""
    sentinel = -12345
    built = list(tokenizer.build_inputs_with_special_tokens([sentinel]))
    inner = built.index(sentinel)
    if len(built) == 1:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} adds no special tokens ([CLS]/[SEP]); "
            "spacy-earlyexit needs a model-specific fast tokenizer (e.g. BertTokenizerFast)."
        )
    return inner, len(built) - inner - 1


def piece_budget(tokenizer, max_pieces: int) -> int:
    """Wordpieces left for tokens in a sequence of `max_pieces` pieces once the
    tokenizer's special pieces are in; ValueError if none are left."""
    n_before, n_after = _special_layout(tokenizer)
    budget = max_pieces - n_before - n_after
    if budget < 1:
        raise ValueError(
            f"Wordpiece sequences of at most {max_pieces} pieces leave no room for tokens: "
            f"{type(tokenizer).__name__} adds {n_before + n_after} special pieces to every "
            f"sequence. Set max_wordpieces to at least {n_before + n_after + 1} (the limit is "
            "also capped by the encoder's positions and the tokenizer's model_max_length)."
        )
    return budget


def _cut_points(sizes: List[int], budget: int) -> List[int]:
    """Balanced cuts of consecutive words so that no part exceeds `budget` pieces."""
    total = sum(sizes)
    if total <= budget:
        return [0, len(sizes)]
    n_parts = -(-total // budget)
    target = -(-total // n_parts)
    cuts, used = [0], 0
    for i, size in enumerate(sizes):
        if used and (used + size > budget or used + size > target):
            cuts.append(i)
            used = 0
        used += size
    cuts.append(len(sizes))
    return cuts


def _windows(sizes: numpy.ndarray, budget: int, context: int) -> List[Tuple[int, int]]:
    """Windows (start, end) of consecutive words, each of at most `budget`
    pieces, covering all words. Without `context`, balanced disjoint cuts;
    with it, consecutive windows overlap by about 2 x `context` pieces, so a
    token read from the window where it is most central has at least `context`
    pieces on each side (about: cuts fall on word boundaries; capped at a
    third of the budget)."""
    if not context or int(sizes.sum()) <= budget:
        cuts = _cut_points(sizes.tolist(), budget)
        return list(zip(cuts[:-1], cuts[1:]))
    context = min(context, budget // 3)
    ends = numpy.concatenate(([0], numpy.cumsum(sizes)))  # ends[w]: pieces before word w
    n = len(sizes)
    windows: List[Tuple[int, int]] = []
    core, done = 0, 0  # the first word this window labels; words [0, done) are in a window
    while done < n:
        # start `context` pieces before the core (the last word boundary that far back)
        start = max(0, min(core, int(numpy.searchsorted(ends, ends[core] - context, side="right")) - 1))
        # but leave room for word `done`, the first one no window holds yet
        start = max(start, int(numpy.searchsorted(ends, ends[done + 1] - budget, side="left")))
        done = int(numpy.searchsorted(ends, ends[start] + budget, side="right")) - 1
        windows.append((start, done))
        # the next core: the words followed by fewer than `context` pieces here
        core = max(core + 1, int(numpy.searchsorted(ends, ends[done] - context, side="right")) - 1)
    return windows


def _span_texts(span: Span) -> List[str]:
    """The texts of a span's tokens, looked up by their ORTH ids (no Token objects)."""
    strings = span.doc.vocab.strings
    return [strings[orth] for orth in span.doc.to_array(ORTH)[span.start : span.end].tolist()]


def _word_pieces(encoded, index: int, n_words: int, unk: int, budget: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The pieces of span `index`'s words, word after word, and each word's
    count: a word the tokenizer maps to nothing gets the unknown piece, and one
    with more than `budget` pieces keeps its first `budget`."""
    ids = numpy.asarray(encoded["input_ids"][index], dtype="int64")
    words = numpy.array(encoded.word_ids(index), dtype="float64")  # None (a special piece) -> nan
    real = ~numpy.isnan(words)
    ids, words = ids[real], words[real].astype("int64")
    if len(words) > 1 and (numpy.diff(words) < 0).any():
        order = numpy.argsort(words, kind="stable")
        ids, words = ids[order], words[order]
    sizes = numpy.bincount(words, minlength=n_words)
    if (sizes > budget).any():
        rank = numpy.arange(len(words)) - (numpy.cumsum(sizes) - sizes)[words]
        ids = ids[rank < budget]
        sizes = numpy.minimum(sizes, budget)
    empty = numpy.flatnonzero(sizes == 0)
    if len(empty):
        ids = numpy.insert(ids, (numpy.cumsum(sizes) - sizes)[empty], unk)
        sizes[empty] = 1
    return ids, sizes


def plan_sequences(
    docs: List[Doc],
    tokenizer,
    max_pieces: int,
    span_getter: Optional[SpanGetter] = None,
    cut_context: int = 0,
    lexical: Optional[LexicalFeatures] = None,
) -> SequencePlan:
    """Cut `docs` into wordpiece sequences of at most `max_pieces` pieces: a
    span longer than that is read in windows that overlap by about
    2 x `cut_context` pieces (disjoint, balanced windows with 0), and each
    token is labelled from the copy with the most context on its shorter side,
    where a doc's own edges count as no missing context. With `lexical`
    features, each piece carries its word's lexical table rows."""
    n_before, n_after = _special_layout(tokenizer)
    budget = piece_budget(tokenizer, max_pieces)
    unk = tokenizer.unk_token_id
    spans_per_doc = (span_getter or whole_doc_spans)(docs)
    if len(spans_per_doc) != len(docs):
        raise ValueError("The span getter returned spans for a different number of docs.")
    flat_spans = [(d, span) for d, spans in enumerate(spans_per_doc) for span in spans if len(span)]
    words = [_span_texts(span) for _, span in flat_spans]
    cases = [[case_class(text) for text in span_words] for span_words in words]
    with_lexical = lexical is not None and bool(lexical.attrs)
    doc_lexical = [lexical.token_rows(doc) for doc in docs] if with_lexical else None
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False) if words else None
    plan = SequencePlan(sequences=[], n_tokens=[len(doc) for doc in docs])
    best_centrality = [numpy.full(len(doc), -1, dtype="int64") for doc in docs]
    plan.owner_sequence = [numpy.zeros(len(doc), dtype="int64") for doc in docs]
    plan.owner_word = [numpy.zeros(len(doc), dtype="int64") for doc in docs]
    for span_index, (doc_index, span) in enumerate(flat_spans):
        ids, sizes = _word_pieces(encoded, span_index, len(span), unk, budget)
        offsets = numpy.concatenate(([0], numpy.cumsum(sizes)))
        span_cases = numpy.asarray(cases[span_index], dtype="int64")
        for start, end in _windows(sizes, budget, cut_context):
            seq_index = len(plan.sequences)
            first, last = int(offsets[start]), int(offsets[end])
            word_sizes = sizes[start:end]
            before, after = numpy.zeros(n_before, "int64"), numpy.zeros(n_after, "int64")
            piece_words = numpy.concatenate(
                (before - 1, numpy.repeat(numpy.arange(end - start), word_sizes), after - 1)
            )
            piece_cases = numpy.concatenate((before, numpy.repeat(span_cases[start:end], word_sizes), after))
            tokens = numpy.arange(span.start + start, span.start + end)
            piece_lexical = None
            if doc_lexical is not None:
                piece_lexical = numpy.zeros((len(piece_words), lexical.n_features), dtype="int64")
                piece_lexical[n_before : len(piece_words) - n_after] = numpy.repeat(
                    doc_lexical[doc_index][tokens], word_sizes, axis=0
                )
            plan.sequences.append(
                EncoderSequence(
                    doc_index,
                    tokens,
                    tokenizer.build_inputs_with_special_tokens(ids[first:last].tolist()),
                    piece_words,
                    n_before + offsets[start:end] - first,
                    piece_cases,
                    n_before + offsets[start + 1 : end + 1] - first - 1,
                    piece_lexical,
                )
            )
            # the copy of a token with the most context in its sequence labels it
            # (pieces on its shorter side; a doc's own edge is no missing context)
            window_ends = offsets[start : end + 1] - first
            no_edge = numpy.full(len(tokens), max_pieces)
            left = window_ends[:-1] if tokens[0] > 0 else no_edge
            right = window_ends[-1] - window_ends[1:] if tokens[-1] < plan.n_tokens[doc_index] - 1 else no_edge
            centrality = numpy.minimum(left, right)
            better = centrality > best_centrality[doc_index][tokens]
            chosen = tokens[better]
            best_centrality[doc_index][chosen] = centrality[better]
            plan.owner_sequence[doc_index][chosen] = seq_index
            plan.owner_word[doc_index][chosen] = numpy.nonzero(better)[0]
    for doc_index, seen in enumerate(best_centrality):
        if (seen < 0).any():
            missing = int(numpy.argmax(seen < 0))
            raise ValueError(
                f"The span getter left token {missing} of doc {doc_index} outside every "
                "span: spans must cover every token."
            )
    return plan


def collate(sequences: Sequence[EncoderSequence], pad_id: int) -> EncoderBatch:
    """Pad sequences into one EncoderBatch."""
    B = len(sequences)
    T = max(len(s) for s in sequences)
    W = max(len(s.word_starts) for s in sequences)
    input_ids = numpy.full((B, T), pad_id, dtype="int64")
    piece_words = numpy.full((B, T), -1, dtype="int64")
    piece_mask = numpy.zeros((B, T), dtype=bool)
    case_ids = numpy.zeros((B, T), dtype="int64")
    word_starts = numpy.zeros((B, W), dtype="int64")
    word_mask = numpy.zeros((B, W), dtype=bool)
    with_ends = all(seq.word_ends is not None for seq in sequences)
    word_ends = numpy.zeros((B, W), dtype="int64") if with_ends else None
    n_lexical = sequences[0].lexical_ids.shape[1] if sequences[0].lexical_ids is not None else 0
    lexical_ids = numpy.zeros((B, T, n_lexical), dtype="int64") if n_lexical else None
    for i, seq in enumerate(sequences):
        n, w = len(seq), len(seq.word_starts)
        input_ids[i, :n] = seq.input_ids
        piece_words[i, :n] = seq.piece_words
        piece_mask[i, :n] = True
        case_ids[i, :n] = seq.case_ids
        word_starts[i, :w] = seq.word_starts
        word_mask[i, :w] = True
        if word_ends is not None:
            word_ends[i, :w] = seq.word_ends
        if lexical_ids is not None:
            lexical_ids[i, :n] = seq.lexical_ids
    return EncoderBatch(
        input_ids=torch.from_numpy(input_ids),
        piece_mask=torch.from_numpy(piece_mask),
        piece_words=torch.from_numpy(piece_words),
        word_starts=torch.from_numpy(word_starts),
        word_mask=torch.from_numpy(word_mask),
        case_ids=torch.from_numpy(case_ids),
        word_ends=torch.from_numpy(word_ends) if word_ends is not None else None,
        lexical_ids=torch.from_numpy(lexical_ids) if lexical_ids is not None else None,
    )


def length_batches(plan: SequencePlan, max_sequences: int, max_padded_pieces: int) -> List[List[int]]:
    """Group sequence indices by length into batches (shortest first)."""
    order = sorted(range(len(plan.sequences)), key=lambda i: len(plan.sequences[i]))
    batches: List[List[int]] = []
    current: List[int] = []
    for index in order:
        longest = len(plan.sequences[index])  # ascending, so the newest is the longest
        if current and (len(current) >= max_sequences or longest * (len(current) + 1) > max_padded_pieces):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
