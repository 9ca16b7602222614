"""Multi-exit transformer encoder: a BERT-style backbone with one classifier per
layer and a layer loop of its own that can skip work for exited tokens.

Plain PyTorch: nothing in this module imports spaCy or Thinc.
"""

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import EncoderBatch, ExitOutput
from .cost import LayerCost
from .hf import LayerView, config_value, layer_views
from .objective import SampledExits
from .policies import ExitPolicy, FullDepth
from .precision import RESOLVED, TRAINING_RESOLVED, amx, compute_dtype
from .projections import InferenceLayer, fuses, inference_layer
from .shapes import ROW_CHUNK, bucket_length, bucket_rows, buckets_enabled, by_row_chunks, pad_index, pad_rows
from .tasks import TaskRules
from .width import check_width, kept

#: how a word's state is read from its wordpieces
WORD_POOLING = ("first", "first_last")

#: bf16 training on a CPU without AMX: attention runs in float32 (False: in
#: bf16 with torch's own kernel choice, as before; for benchmarks)
FLOAT32_TRAINING_ATTENTION = True
#: ... over at least this many keys with torch's flash kernel, shorter
#: attention with its math kernel
TRAINING_FLASH_MIN_KEYS = 128

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: its own choice of kernel
    SDPBackend = sdpa_kernel = None


def attend(queries: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor], dropout: float) -> Tensor:
    """Scaled dot-product attention of [B, H, q, dh] queries over [B, H, T, dh]
    keys and values (`mask` [B, 1, 1, T]: True for real keys).

    In bf16 training (autograd, products under autocast) on a CPU without
    AMX, it runs in float32: torch's CPU flash kernel in bf16 runs forward and
    backward 1.3-5x slower there than in float32 (an AMD EPYC with
    AVX512-BF16; docs/results.md), and for short sequences (fewer than
    TRAINING_FLASH_MIN_KEYS keys) the math kernel is faster still. The
    result is float32; the next product casts it back under autocast.
    Everywhere else, torch chooses the kernel, as before."""
    if (
        not (FLOAT32_TRAINING_ATTENTION and torch.is_grad_enabled())
        or queries.dtype != torch.bfloat16
        or queries.device.type != "cpu"
        or amx()
    ):
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
    float32 = queries.float(), keys.float(), values.float()
    with torch.autocast("cpu", enabled=False):
        if sdpa_kernel is None:
            return F.scaled_dot_product_attention(*float32, attn_mask=mask, dropout_p=dropout)
        short = keys.shape[-2] < TRAINING_FLASH_MIN_KEYS
        with sdpa_kernel(SDPBackend.MATH if short else SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(*float32, attn_mask=mask, dropout_p=dropout)


@dataclass
class LayerWeights:
    """The weights one layer runs with at some width: q/k/v and intermediate
    rows, attention-output and output columns, as views (no copies; BLAS
    reads a column slice in place through its leading dimension)."""

    n_heads: int
    q: Tuple[Tensor, Optional[Tensor]]
    k: Tuple[Tensor, Optional[Tensor]]
    v: Tuple[Tensor, Optional[Tensor]]
    o: Tuple[Tensor, Optional[Tensor]]
    ff_in: Tuple[Tensor, Optional[Tensor]]
    ff_out: Tuple[Tensor, Optional[Tensor]]


def _rows(linear: nn.Linear, n: int) -> Tuple[Tensor, Optional[Tensor]]:
    if n == linear.out_features:
        return linear.weight, linear.bias
    return linear.weight[:n], (linear.bias[:n] if linear.bias is not None else None)


def _columns(linear: nn.Linear, n: int) -> Tuple[Tensor, Optional[Tensor]]:
    if n == linear.in_features:
        return linear.weight, linear.bias
    return linear.weight[:, :n], linear.bias


def _masked_heads(context: Tensor, head_mask: Optional[Tensor]) -> Tensor:
    """Scale each head of `context` [B, H, T, dh] by `head_mask` [H]."""
    return context if head_mask is None else context * head_mask[None, :, None, None]


def _layer_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """`norm(x)` for a LayerNorm with float32 weights and `x` in the inference
    dtype. The CPU kernel takes bf16 `x` with float32 weights (float32
    statistics, bf16 out); the CUDA kernel wants one dtype, so on a GPU a bf16
    `x` is normalized in float32 and cast back."""
    if x.dtype == torch.float32 or x.device.type == "cpu":
        return norm(x)
    return norm(x.float()).to(x.dtype)


def _bert_embeddings(embeddings: nn.Module, input_ids: Tensor) -> Tensor:
    """The embedding output of `input_ids` [B, T]: Hugging Face's BERT-style
    embeddings (word + token type 0 + absolute position, LayerNorm, dropout)
    computed as its `forward` does, except that the one token-type row is
    broadcast instead of looked up for every piece ([B, T, d] fewer floats
    gathered; the same sums in the same order). Other embedding modules run
    their own `forward`."""
    if not (
        type(embeddings).__name__ in _BERT_EMBEDDINGS
        and all(hasattr(embeddings, part) for part in _BERT_EMBEDDING_PARTS)
        and getattr(embeddings, "position_embedding_type", "absolute") == "absolute"
        and input_ids.shape[1] <= embeddings.position_embeddings.num_embeddings
    ):
        return embeddings(input_ids=input_ids)
    hidden = embeddings.word_embeddings(input_ids) + embeddings.token_type_embeddings.weight[0]
    hidden += embeddings.position_embeddings.weight[: input_ids.shape[1]]
    return embeddings.dropout(embeddings.LayerNorm(hidden))


#: embedding modules whose `forward` `_bert_embeddings` reproduces (absolute positions from 0, token type 0)
_BERT_EMBEDDINGS = {"BertEmbeddings", "ElectraEmbeddings"}
_BERT_EMBEDDING_PARTS = ("word_embeddings", "token_type_embeddings", "position_embeddings", "LayerNorm", "dropout")


def _inference_output_and_ffn(view: LayerView, layer: InferenceLayer, states: Tensor, context: Tensor) -> Tensor:
    """`_attention_output_and_ffn` without dropout, on the packed projections:
    residuals (and GELU, where oneDNN fuses it) inside the products."""
    attn = _layer_norm(view.attn_norm, layer.o.plus(context, states))
    inner = layer.ff_in(attn, gelu=True) if layer.fused_gelu else view.act(layer.ff_in(attn))
    return _layer_norm(view.ff_norm, layer.ff_out.plus(inner, attn))


class MultiExitEncoder(nn.Module):
    """A Hugging Face BERT-family encoder with a classifier after every layer."""

    #: share of active pieces in a padded batch above which a layer runs densely
    DENSE_FRACTION = 0.9

    def __init__(
        self,
        backbone: nn.Module,
        n_labels: int,
        head_dropout: float = 0.1,
        attention_dropout: Optional[float] = None,
        case_classes: int = 0,
        word_pooling: str = "first",
        lexical_rows: int = 0,
    ):
        super().__init__()
        if word_pooling not in WORD_POOLING:
            raise ValueError(f"word_pooling must be one of {', '.join(WORD_POOLING)}, got {word_pooling!r}.")
        if n_labels < 0:
            raise ValueError("MultiExitEncoder needs a number of labels >= 0.")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # never used: keep it out of the weights
        self.backbone = backbone
        config = backbone.config
        self.hidden_size = int(config_value(config, "hidden_size", "dim"))
        self.ff_size = int(config_value(config, "intermediate_size", "hidden_dim"))
        self.n_heads = int(config_value(config, "num_attention_heads", "n_heads"))
        self.head_size = self.hidden_size // self.n_heads
        self.hidden_dropout = float(config_value(config, "hidden_dropout_prob", "dropout", default=0.0))
        if attention_dropout is None:
            attention_dropout = config_value(config, "attention_probs_dropout_prob", "attention_dropout", default=0.0)
        self.attention_dropout = float(attention_dropout)
        self.max_length = int(config_value(config, "max_position_embeddings", default=512))
        self._views = layer_views(backbone)
        self.n_layers = len(self._views)
        self.n_labels = n_labels
        self.head_dropout = nn.Dropout(head_dropout)
        self._configured_dropout = (self.hidden_dropout, float(head_dropout))
        # a shared encoder starts without labels: each task adds its own (`add_labels`)
        self.heads = nn.ModuleList(nn.Linear(self.hidden_size, n_labels) for _ in range(self.n_layers) if n_labels)
        self.layer_cost = LayerCost(self.hidden_size, self.ff_size, n_labels, self.n_heads)
        #: whether heads and neurons were permuted by importance (width.rewire)
        self.width_rewired = False
        #: whether inference fuses its products with oneDNN where torch can (projections.py)
        self.use_onednn = True
        #: whether inference rounds its product rows and sequence lengths up to
        #: a bounded set of sizes, so that CPU kernels and their caches are
        #: reused (shapes.py; SPACY_EARLYEXIT_SHAPE_BUCKETS=0 turns it off)
        self.shape_buckets = buckets_enabled()
        #: whether attention's lengths are rounded up too (with shape_buckets);
        #: None: where attention makes kernels per length, bf16 on AMX CPUs
        #: (elsewhere the padding costs more than it saves)
        self.length_buckets: Optional[bool] = None
        #: with shape_buckets, CPU products over more rows run in chunks of
        #: this many (shapes.ROW_CHUNK; 0: never chunked)
        self.row_chunk = ROW_CHUNK
        #: (layer, width, precision) -> (weights' identity and version, InferenceLayer), see inference_layer
        self._packed: Dict[Tuple[int, float, str], Tuple[tuple, InferenceLayer]] = {}
        # Uncased encoders cannot see capitalization: a small embedding of each
        # word's casing class is added to the embedding output. It starts at
        # zero, so training starts from the unchanged pretrained model.
        self.case_embedding: Optional[nn.Embedding] = None
        if case_classes:
            self.case_embedding = nn.Embedding(case_classes, self.hidden_size)
            nn.init.zeros_(self.case_embedding.weight)
        # Cheap lexical features of each word (hashed prefix, suffix, shape...;
        # the pipeline computes the rows): one table, summed over the features
        # and added to the embedding output like the casing. Row 0 (special
        # pieces, padding) stays zero; the table starts at zero.
        self.lexical_embedding: Optional[nn.Embedding] = None
        if lexical_rows:
            self.lexical_embedding = nn.Embedding(int(lexical_rows), self.hidden_size, padding_idx=0)
            nn.init.zeros_(self.lexical_embedding.weight)
        #: how a word's state is read from its pieces: "first" piece, or the
        #: mean of its "first_last" pieces (a word's ending, e.g. its suffix)
        self.word_pooling = word_pooling

    def add_labels(self, n: int) -> slice:
        """Grow every exit classifier by `n` outputs, initialized as a new
        `nn.Linear` is, keeping the existing outputs' weights: a shared
        encoder's new task. Returns the new outputs' slice."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"add_labels needs a whole number of labels >= 1, got {n!r}.")
        old = self.n_labels
        device = next(self.backbone.parameters()).device
        heads = []
        for index in range(self.n_layers):
            head = nn.Linear(self.hidden_size, old + n).to(device)
            if old:
                with torch.no_grad():
                    head.weight[:old] = self.heads[index].weight
                    head.bias[:old] = self.heads[index].bias
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        self.n_labels = old + n
        self.layer_cost = LayerCost(self.hidden_size, self.ff_size, self.n_labels, self.n_heads)
        return slice(old, old + n)

    def _check_labels(self) -> None:
        if not self.n_labels:
            raise ValueError("The shared encoder has no labels yet: no task component has added its own.")

    def _rounds_lengths(self, precision: str) -> bool:
        """Whether inference at a resolved `precision` rounds attention's
        sequence and query lengths up (`length_buckets`)."""
        if not self.shape_buckets:
            return False
        if self.length_buckets is not None:
            return self.length_buckets
        return precision == "bf16" and self.device.type == "cpu" and amx()

    def _row_chunk(self, precision: str) -> int:
        """Rows per product call with shape buckets (0: whole). Chunks are for
        oneDNN's per-shape kernels and caches, on the CPU; int8 products
        quantize their input with one scale per call (chunks would change the
        scales) and are not made per shape, so they run whole."""
        return self.row_chunk if self.device.type == "cpu" and precision != "int8" else 0

    def added_parameter_names(self) -> List[str]:
        """Names of the weights the pretrained backbone does not have (the
        exit classifiers, the casing and lexical embeddings): they start from
        scratch, so training may give them a larger learning rate."""
        return [name for name, _ in self.named_parameters() if not name.startswith("backbone.")]

    def set_dropout(self, rate: Optional[float]) -> None:
        """Use `rate` for hidden-state and classifier dropout while training
        (spaCy's `drop`); None restores the configured rates."""
        hidden, head = self._configured_dropout if rate is None else (float(rate), float(rate))
        self.hidden_dropout = hidden
        self.head_dropout.p = head

    @property
    def layer_views(self) -> List[LayerView]:
        return list(self._views)

    def layer_weights(self, index: int, width: float = 1.0) -> LayerWeights:
        """The weights layer `index` runs with at `width` in training: its
        first heads and neurons, as views of the parameters (no copies)."""
        view = self._views[index]
        heads, neurons = kept(width, self.n_heads), kept(width, self.ff_size)
        inner = heads * self.head_size
        return LayerWeights(
            heads,
            _rows(view.q, inner),
            _rows(view.k, inner),
            _rows(view.v, inner),
            _columns(view.o, inner),
            _rows(view.ff_in, neurons),
            _columns(view.ff_out, neurons),
        )

    def inference_layer(self, index: int, width: float = 1.0, precision: str = "fp32") -> InferenceLayer:
        """The projections layer `index` runs with at `width` and a resolved
        `precision` (fp32, bf16, int8) without autograd: packed (and on
        oneDNN CPUs prepacked and fused) once per precision, and kept until
        the weights change (a new tensor or an in-place change that bumps its
        version; optimizers that write without bumping it call
        `forget_packed_weights`)."""
        view = self._views[index]
        linears = (view.q, view.k, view.v, view.o, view.ff_in, view.ff_out)
        stamp = (self.use_onednn, fuses(precision)) + tuple(
            (p.data_ptr(), p._version) for linear in linears for p in (linear.weight, linear.bias) if p is not None
        )
        key = (index, width, precision)
        cached = self._packed.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        w = self.layer_weights(index, width)
        layer = inference_layer(w.n_heads, w.q, w.k, w.v, w.o, w.ff_in, w.ff_out, view.act, self.use_onednn, precision)
        self._packed[key] = (stamp, layer)
        return layer

    def forget_packed_weights(self) -> None:
        """Drop the packed inference copies. Optimizers that write the weights
        without bumping their version (fused AdamW, Thinc's numpy update) must
        call this after every step."""
        self._packed.clear()

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed"] = {}  # copies and pickles carry the weights, not their packed forms
        return state

    # -- one layer over the active pieces -------------------------------------
    def _run_layer(
        self,
        index: int,
        hidden: Tensor,
        piece_mask: Tensor,
        active: Tensor,
        width: float = 1.0,
        head_mask: Optional[Tensor] = None,
        precision: str = "fp32",
    ) -> Tensor:
        """Update the active pieces of `hidden` [B, T, d] through layer `index`
        at `width` (its first heads and feed-forward neurons) and, without
        autograd, a resolved `precision` (`hidden`'s dtype follows it);
        `head_mask` [kept heads] scales each head's attention output.

        Keys and values come from every real piece; queries, the output
        projection, residuals, LayerNorms and the feed-forward network run only
        on the active pieces, packed into one [q, d] tensor. When at least
        DENSE_FRACTION of the [B, T] grid is active, packing costs more than it
        saves and the layer runs densely, keeping inactive pieces unchanged.
        Without autograd and with `shape_buckets`, every product runs on a row
        count rounded up by `bucket_rows` (padding rows repeat a real row or
        are zeros; their results are dropped), in chunks of at most
        `row_chunk` rows, and, with length buckets,
        attention on a query length rounded up by `bucket_length`, so kernels
        see a bounded set of shapes.
        Returns a new hidden tensor in training (autograd), else updates in place."""
        view = self._views[index]
        B, T, d = hidden.shape
        inference = not (self.training or torch.is_grad_enabled())
        buckets = inference and self.shape_buckets
        n_grid = B * T
        chunk = self._row_chunk(precision) if buckets else 0
        rows_of = (lambda n: bucket_rows(n, chunk)) if buckets else int
        if inference:
            layer = self.inference_layer(index, width, precision)
            H = layer.n_heads

            def rowwise(product, *inputs: Tensor) -> Tensor:
                return by_row_chunks(product, *inputs, chunk=chunk)

            flat = pad_rows(hidden.reshape(n_grid, d), rows_of(n_grid))  # [R >= B*T, d]
            keys, values = rowwise(layer.kv, flat)[:n_grid].view(B, T, -1).chunk(2, dim=-1)

            def project_queries(states: Tensor) -> Tensor:
                return rowwise(layer.q, states)

            def finish(states: Tensor, context: Tensor) -> Tensor:
                return rowwise(lambda s, c: _inference_output_and_ffn(view, layer, s, c), states, context)
        else:
            w = self.layer_weights(index, width)
            H = w.n_heads
            flat = hidden.reshape(n_grid, d)
            keys, values = F.linear(hidden, *w.k), F.linear(hidden, *w.v)

            def project_queries(states: Tensor) -> Tensor:
                return F.linear(states, *w.q)

            def finish(states: Tensor, context: Tensor) -> Tensor:
                return self._attention_output_and_ffn(view, w, states, context)

        dh = self.head_size
        inner = H * dh
        keys = keys.view(B, T, H, dh).transpose(1, 2)
        values = values.view(B, T, H, dh).transpose(1, 2)
        n_real = int(piece_mask.sum())
        # without padding, no mask: SDPA can take its fastest kernel
        mask = None if n_real == n_grid else piece_mask[:, None, None, :]
        dropout = self.attention_dropout if self.training else 0.0
        n_active = int(active.sum())
        if n_active >= self.DENSE_FRACTION * n_grid:
            # (nearly) everything active: one dense pass, as Hugging Face does
            queries = project_queries(flat)[:n_grid].view(B, T, H, dh).transpose(1, 2)
            context = attend(queries, keys, values, mask, dropout)
            context = _masked_heads(context, head_mask).transpose(1, 2).reshape(n_grid, inner)
            out = finish(flat, pad_rows(context, flat.shape[0]))[:n_grid].view(B, T, d)
            # padding states are never read (masked as keys, never a word's state)
            return out if n_active == n_real else torch.where(active[..., None], out, hidden)
        rows, cols = active.nonzero(as_tuple=True)
        n_rows = rows_of(n_active)
        rows_in, cols_in = pad_index(rows, n_rows), pad_index(cols, n_rows)
        packed = hidden[rows_in, cols_in]  # [q, d] (q rounded up: real rows read again)
        queries = project_queries(packed)
        ranks = (active.cumsum(1) - 1)[rows, cols]
        q_len = int(active.sum(1).max())
        q_len = bucket_length(q_len) if inference and self._rounds_lengths(precision) else q_len
        padded_q = queries.new_zeros(B, q_len, inner)
        padded_q[rows, ranks] = queries[:n_active]
        padded_q = padded_q.view(B, q_len, H, dh).transpose(1, 2)
        context = attend(padded_q, keys, values, mask, dropout)
        context = _masked_heads(context, head_mask).transpose(1, 2).reshape(B, q_len, inner)
        context = context[rows_in, pad_index(ranks, n_rows)]
        out = finish(packed, context)[:n_active]
        if torch.is_grad_enabled():
            return hidden.index_put((rows, cols), out.to(hidden.dtype))
        hidden[rows, cols] = out  # no autograd: update in place
        return hidden

    def _attention_output_and_ffn(self, view: LayerView, w: LayerWeights, states: Tensor, context: Tensor) -> Tensor:
        """Output projection, residual + LayerNorm, feed-forward, residual +
        LayerNorm, with dropout (training)."""
        attn = F.linear(context, *w.o)
        if view.attn_output_dropout:
            attn = F.dropout(attn, self.hidden_dropout, self.training)
        attn = view.attn_norm(states + attn)
        ff = F.linear(view.act(F.linear(attn, *w.ff_in)), *w.ff_out)
        ff = F.dropout(ff, self.hidden_dropout, self.training)
        return view.ff_norm(attn + ff)

    def _pools_last(self, word_ends: Optional[Tensor]) -> bool:
        return self.word_pooling == "first_last" and word_ends is not None

    def word_states(self, hidden: Tensor, batch: EncoderBatch) -> Tensor:
        """Every word's state [B, W, d]: its first piece's, or the mean of its
        first and last pieces' (`word_pooling`)."""
        d = hidden.shape[-1]
        states = hidden.gather(1, batch.word_starts.unsqueeze(-1).expand(-1, -1, d))
        if self._pools_last(batch.word_ends):
            states = (states + hidden.gather(1, batch.word_ends.unsqueeze(-1).expand(-1, -1, d))) * 0.5
        return states

    def _active_word_states(
        self, hidden: Tensor, rows: Tensor, cols: Tensor, word_starts: Tensor, word_ends: Optional[Tensor]
    ) -> Tensor:
        """`word_states` of the words (rows, cols) only, in float32: [n, d].
        Gathered from the flattened states with `index_select` (the same
        values as advanced indexing, without its index broadcasting)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        base = rows * hidden.shape[1]
        states = flat.index_select(0, base + word_starts[rows, cols]).float()
        if self._pools_last(word_ends):
            states = (states + flat.index_select(0, base + word_ends[rows, cols]).float()) * 0.5
        return states

    def embed(self, batch: EncoderBatch) -> Tensor:
        hidden = _bert_embeddings(self.backbone.embeddings, batch.input_ids)
        project = getattr(self.backbone, "embeddings_project", None)  # ELECTRA-small style
        if project is not None:
            hidden = project(hidden)
        return self.add_token_features(hidden, batch)

    def add_token_features(self, hidden: Tensor, batch: EncoderBatch) -> Tensor:
        """The embedding output plus the casing and lexical embeddings of each
        piece's word (where the model has them and the batch carries them)."""
        # without autograd the sums go in place: the same values, no new [B, T, d] tensors
        inference = not torch.is_grad_enabled()
        if self.case_embedding is not None and batch.case_ids is not None:
            case = self.case_embedding(batch.case_ids)
            hidden = hidden.add_(case) if inference else hidden + case
        if self.lexical_embedding is not None and batch.lexical_ids is not None:
            ids = batch.lexical_ids
            # one bag per piece, summed without materializing [B, T, F, d]
            bags = F.embedding_bag(
                ids.reshape(-1, ids.shape[-1]), self.lexical_embedding.weight, mode="sum", padding_idx=0
            )
            bags = bags.view(*ids.shape[:-1], -1).to(hidden.dtype)
            hidden = hidden.add_(bags) if inference else hidden + bags
        return hidden

    # -- training: every exit's logits ----------------------------------------
    def forward(
        self,
        batch: EncoderBatch,
        word_exit_layers: Optional[Tensor] = None,
        sampled_exits: Optional[SampledExits] = None,
        width: float = 1.0,
        head_mask: Optional[Tensor] = None,
        return_hidden: bool = False,
        precision: str = "fp32",
        task_sizes: Optional[List[int]] = None,
    ):
        """Logits of every exit for every real word: [L, n_words, C]; with
        `return_hidden`, also every layer's states of the real pieces,
        [L, n_pieces, d] (width distillation matches them).

        `word_exit_layers` ([B, W], 1-based) freezes each word's pieces after
        its exit layer, as at inference; frozen pieces keep serving as keys
        and values. `sampled_exits` (self-sampling) instead decides exits
        layer by layer from the model's own dropout-free predictions, as
        inference does, and records them in `sampled_exits.exit_layers`;
        on a shared encoder (`task_sizes`: each task's number of labels, in
        the order of the classifiers' outputs) each task samples its own
        exits with the same settings, a word runs while any task needs it,
        and `sampled_exits.task_exit_layers` [T, B, W] holds each task's.
        `width` runs every layer with its first heads and neurons only;
        `head_mask` [L, kept heads] scales each head's attention output
        (importance is its gradient). Without autograd, `precision` (resolved:
        fp32, bf16, int8) runs the layers as `predict` runs them (calibration
        traces every exit this way). With autograd (training), fp32 or bf16:
        bf16 is mixed precision, the layers' products under bf16 autocast with
        float32 weights, residual stream, gradients and exit classifiers."""
        width = check_width(width)
        self._check_labels()
        training = self.training or torch.is_grad_enabled()
        if training and precision not in TRAINING_RESOLVED:
            raise ValueError(
                f"Training runs in {' or '.join(TRAINING_RESOLVED)} (bf16: mixed precision), got {precision!r}."
            )
        if not training and self._rounds_lengths(precision):  # as predict runs: lengths the kernels reuse
            batch = batch.padded_to(bucket_length(batch.piece_mask.shape[1]))
        hidden = self.embed(batch)
        if training:  # bf16: the products under autocast, the residual stream stays float32
            region = torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            precision = "fp32"
        else:
            region = contextlib.nullcontext()
            hidden = hidden.to(compute_dtype(precision))
        with region:  # the exit classifiers opt out of it below
            B, W = batch.word_mask.shape
            word_active = batch.word_mask.clone()
            if word_exit_layers is not None:
                exits = word_exit_layers.clamp(1, self.n_layers)
            else:
                exits = torch.full((B, W), self.n_layers, dtype=torch.long, device=hidden.device)
            slices = None
            if sampled_exits is not None and task_sizes is not None and len(task_sizes) > 1:
                rules = TaskRules(task_sizes, [FullDepth()] * len(task_sizes))
                slices = rules.slices
                task_active = [word_active.clone() for _ in slices]
                task_exits = [exits.clone() for _ in slices]
            outputs, states = [], []
            for index in range(self.n_layers):
                if word_exit_layers is not None:
                    word_active = batch.word_mask & (exits > index)
                if word_exit_layers is None and sampled_exits is None:
                    active = batch.piece_mask
                else:
                    piece_word_active = word_active.gather(1, batch.piece_words.clamp(min=0))
                    active = batch.piece_mask & ((batch.piece_words < 0) | piece_word_active)
                if bool(active.any()):
                    layer_mask = head_mask[index] if head_mask is not None else None
                    hidden = self._run_layer(index, hidden, batch.piece_mask, active, width, layer_mask, precision)
                if return_hidden:
                    states.append(hidden[batch.piece_mask].float())
                word_states = self.word_states(hidden, batch).float()
                with torch.autocast(hidden.device.type, enabled=False):  # classifiers in float32
                    outputs.append(self.heads[index](self.head_dropout(word_states[batch.word_mask])))
                    if sampled_exits is not None and index < self.n_layers - 1:
                        with torch.no_grad():
                            logits = self.heads[index](word_states.detach())
                        if slices is None:
                            leaving = sampled_exits.exits(
                                index, self.n_layers, logits.softmax(-1), word_active, batch.word_mask
                            )
                            exits = torch.where(leaving, index + 1, exits)
                            word_active = word_active & ~leaving
                        else:
                            for t, part in enumerate(slices):
                                probs = logits[..., part].softmax(-1)
                                leaving = sampled_exits.exits(
                                    index, self.n_layers, probs, task_active[t], batch.word_mask
                                )
                                task_exits[t] = torch.where(leaving, index + 1, task_exits[t])
                                task_active[t] = task_active[t] & ~leaving
                            word_active = torch.stack(task_active).any(0)
            if sampled_exits is not None:
                if slices is not None:
                    sampled_exits.task_exit_layers = torch.stack(task_exits)
                    exits = sampled_exits.task_exit_layers.amax(0)
                sampled_exits.exit_layers = exits
            if return_hidden:
                return torch.stack(outputs), torch.stack(states)
            return torch.stack(outputs)

    # -- inference: early exit --------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def predict(
        self, batch: EncoderBatch, policy: Optional[ExitPolicy] = None, width: float = 1.0, precision: str = "fp32"
    ) -> ExitOutput:
        """Label every word, letting it leave as soon as `policy` allows, with
        every layer at `width` (its first heads and neurons), in a resolved
        `precision` (fp32, bf16 or int8; see `precision.py`): the layers run
        in it, the exit classifiers, their softmax and the uncertainties in
        float32. An autocast region the caller opened does not apply here:
        the precision alone decides, so exits do not change under it.

        Finished sequences are dropped from the batch; within a running
        sequence only the still-active pieces pay for queries and feed-forward.
        `cost` counts the kept heads and neurons; `full_cost` is always the
        full-width, full-depth pass."""
        width = check_width(width)
        self._check_labels()
        if precision not in RESOLVED:
            raise ValueError(f"predict needs a resolved precision ({', '.join(RESOLVED)}), got {precision!r}.")
        policy = policy or FullDepth()
        with torch.autocast(batch.input_ids.device.type, enabled=False):
            return self._predict(batch, policy, width, precision)

    @torch.inference_mode()
    def predict_tasks(
        self, batch: EncoderBatch, rules: TaskRules, width: float = 1.0, precision: str = "fp32"
    ) -> List[ExitOutput]:
        """`predict` for a shared encoder: task t's labels are `rules.slices[t]`
        of every exit classifier's outputs and it leaves by
        `rules.policies[t]` (see `tasks.py`). One `ExitOutput` per task, each
        with its own labels, exit layers, uncertainties and distributions
        (over its own labels); `cost` and `full_cost` are the shared pass's,
        the same in every task's output."""
        width = check_width(width)
        self._check_labels()
        if precision not in RESOLVED:
            raise ValueError(f"predict needs a resolved precision ({', '.join(RESOLVED)}), got {precision!r}.")
        if rules.n_labels != self.n_labels:
            raise ValueError(
                f"The task rules cover {rules.n_labels} labels, the encoder's classifiers {self.n_labels}."
            )
        with torch.autocast(batch.input_ids.device.type, enabled=False):
            return self._predict_tasks(batch, rules, width, precision)

    def _predict(self, batch: EncoderBatch, policy: ExitPolicy, width: float, precision: str) -> ExitOutput:
        return self._predict_tasks(batch, TaskRules.single(self.n_labels, policy), width, precision)[0]

    def _predict_tasks(self, batch: EncoderBatch, rules: TaskRules, width: float, precision: str) -> List[ExitOutput]:
        B, W = batch.word_mask.shape
        device = batch.input_ids.device
        policies, n_tasks = rules.policies, len(rules)
        whole = n_tasks == 1  # one task: every running word runs for it
        lasts = [p.last_layer(self.n_layers) - 1 for p in policies]
        last = max(lasts)
        labels = [torch.zeros(B, W, dtype=torch.long, device=device) for _ in policies]
        exit_probs = [torch.zeros(B, W, n, device=device) for n in rules.sizes]
        exit_layers = [torch.full((B, W), t_last + 1, dtype=torch.long, device=device) for t_last in lasts]
        uncertainty = [torch.zeros(B, W, device=device) for _ in policies]

        rows = torch.arange(B, device=device)  # original row of each running sequence
        lengths = bucket_length if self._rounds_lengths(precision) else int
        batch = batch.padded_to(lengths(batch.piece_mask.shape[1]))
        hidden = self.embed(batch).to(compute_dtype(precision))
        piece_mask, piece_words = batch.piece_mask, batch.piece_words
        word_starts, word_mask, word_ends = batch.word_starts, batch.word_mask, batch.word_ends
        # per task: the words it still needs, their uncertainties, and (for
        # policies that track it) each word's last label and its run
        task_active = [word_mask.clone() for _ in policies]
        word_active = task_active[0] if whole else word_mask.clone()
        run_unc = [torch.zeros(B, W, device=device) for _ in policies]
        tracks = [p.tracks_stability for p in policies]
        every_exit = [p.needs_every_exit for p in policies]
        run_labels = [torch.full((B, W), -1, dtype=torch.long, device=device) if k else None for k in tracks]
        run_stable = [torch.zeros(B, W, dtype=torch.long, device=device) if k else None for k in tracks]
        chunk = self._row_chunk(precision) if self.shape_buckets else 0  # the classifiers' row chunk
        for index in range(last + 1):
            piece_active = piece_mask & ((piece_words < 0) | word_active.gather(1, piece_words.clamp(min=0)))
            hidden = self._run_layer(index, hidden, piece_mask, piece_active, width, precision=precision)
            reading = [t for t in range(n_tasks) if index == lasts[t] or (index < lasts[t] and every_exit[t])]
            if not reading:
                continue
            w_rows, w_cols = word_active.nonzero(as_tuple=True)
            n_words = w_rows.shape[0]
            n_read = bucket_rows(n_words, chunk) if self.shape_buckets else n_words  # the classifier's rows, rounded up
            read_rows, read_cols = pad_index(w_rows, n_read), pad_index(w_cols, n_read)
            states = self._active_word_states(hidden, read_rows, read_cols, word_starts, word_ends)
            head = self.heads[index]
            logits = by_row_chunks(head, states, chunk=chunk)[:n_words]
            for t in reading:
                policy, active = policies[t], task_active[t]
                probs = (logits if whole else logits[:, rules.slices[t]]).softmax(-1)
                unc = policy.uncertainty(probs)
                # words another task keeps running hold what they left this task with
                mine = None if whole else active[w_rows, w_cols]
                if mine is not None:
                    unc = torch.where(mine, unc, run_unc[t][w_rows, w_cols])
                run_unc[t][w_rows, w_cols] = unc
                if tracks[t]:
                    read = probs.argmax(-1)
                    stable = torch.where(read == run_labels[t][w_rows, w_cols], run_stable[t][w_rows, w_cols] + 1, 0)
                    if mine is not None:
                        read = torch.where(mine, read, run_labels[t][w_rows, w_cols])
                        stable = torch.where(mine, stable, run_stable[t][w_rows, w_cols])
                    run_stable[t][w_rows, w_cols] = stable
                    run_labels[t][w_rows, w_cols] = read
                if index == lasts[t]:
                    leaving = active
                else:
                    extra = {"stable": run_stable[t]} if tracks[t] else {}  # only policies that track it take it
                    leaving = active & policy.exits(index, self.n_layers, run_unc[t], active, word_mask, **extra)
                if bool(leaving.any()):
                    chosen = leaving[w_rows, w_cols]  # leaving words among the read ones, same order
                    out_r, out_c, leaving_probs = w_rows[chosen], w_cols[chosen], probs[chosen]
                    orig = rows[out_r]
                    exit_probs[t][orig, out_c] = leaving_probs
                    labels[t][orig, out_c] = leaving_probs.argmax(-1)
                    exit_layers[t][orig, out_c] = index + 1
                    uncertainty[t][orig, out_c] = run_unc[t][out_r, out_c]
                    task_active[t] = active & ~leaving
            if whole:
                word_active = task_active[0]
            else:
                word_active = torch.stack(task_active).any(0)
            running = word_active.any(1)
            if not bool(running.any()):
                break
            if not bool(running.all()):
                keep = running.nonzero(as_tuple=True)[0]
                t_len = lengths(int(piece_mask[keep].sum(1).max()))
                w_len = int(word_mask[keep].sum(1).max())
                rows, hidden = rows[keep], hidden[keep, :t_len].contiguous()
                piece_mask, piece_words = piece_mask[keep, :t_len], piece_words[keep, :t_len]
                word_starts, word_mask = word_starts[keep, :w_len], word_mask[keep, :w_len]
                if word_ends is not None:
                    word_ends = word_ends[keep, :w_len]
                word_active = word_active[keep, :w_len]
                for t in range(n_tasks):
                    task_active[t], run_unc[t] = task_active[t][keep, :w_len], run_unc[t][keep, :w_len]
                    if tracks[t]:
                        run_labels[t], run_stable[t] = run_labels[t][keep, :w_len], run_stable[t][keep, :w_len]
        encoder_exits = exit_layers[0] if whole else torch.stack(exit_layers).amax(0)
        cost, full_cost = self.batch_cost(batch, encoder_exits, width, rules.needs_every_exit)
        return [
            ExitOutput(labels[t], exit_layers[t], uncertainty[t], cost, full_cost, exit_probs[t])
            for t in range(n_tasks)
        ]

    def batch_cost(
        self, batch: EncoderBatch, exit_layers: Tensor, width: float = 1.0, every_exit: bool = True
    ) -> Tuple[Tensor, Tensor]:
        """Analytic cost of each sequence of `batch` when its words leave at
        `exit_layers` [B, W] (1-based), and of a full-depth, full-width pass:
        two [B] float64 tensors (see `LayerCost.of_exits`)."""
        piece_mask, piece_words = batch.piece_mask, batch.piece_words
        n_pieces = piece_mask.sum(1)
        n_special = (piece_mask & (piece_words < 0)).sum(1)
        word_pieces = torch.zeros(batch.word_mask.shape, dtype=torch.float64, device=piece_words.device)
        real = piece_mask & (piece_words >= 0)
        word_pieces.scatter_add_(1, piece_words.clamp(min=0), real.double())
        word_pieces = word_pieces * batch.word_mask
        cost = self.layer_cost.of_exits(n_pieces, n_special, word_pieces, exit_layers, self.n_layers, width, every_exit)
        full_cost = self.layer_cost.full(n_pieces.double(), batch.word_mask.sum(1).double(), self.n_layers)
        return cost, full_cost
