"""The PyTorch shim of the multi-exit model: it holds the encoder and its
tokenizer, applies optimizer steps (the fused AdamW step and the weight
averages are in `optimizer.py`), and serializes both as a Hugging Face
config, tokenizer files and safetensors weights (an allow-list of file names,
never pickle, never code from the files).
"""

import contextlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import srsly
import torch
from thinc.api import PyTorchShim, get_torch_default_device, xp2torch

from ..core.encoder import MultiExitEncoder
from ..core.hf import EncoderLoadError, backbone_from_config, load_tokenizer
from .optimizer import FusedAdamW, is_plain_adamw
from .wordpieces import SpanGetter

WEIGHTS_FILE = "model.safetensors"
EXITS_FILE = "exits.json"
#: the only file names a serialized encoder may hold: its config, its exit
#: settings and the files that fast tokenizers of BERT-family models save
SAVED_FILE_NAMES = frozenset(
    {
        "config.json",
        EXITS_FILE,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "sentencepiece.bpe.model",
        "spiece.model",
        "spm.model",
        "sentencepiece.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)


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
        #: learning-rate multiplier of the weights the backbone does not have
        self.added_learn_rate_scale = 1.0
        self._warned_scale = False
        # the fused AdamW step's torch optimizer and weight averages (`optimizer.py`)
        self._adamw = FusedAdamW()

    def finish_update(self, optimizer) -> None:
        """Apply the gradients with PyTorch's fused AdamW, following the Thinc
        optimizer's current settings (learning-rate schedule, betas, eps, weight
        decay, gradient clipping as a global norm): the same update as Thinc's
        Adam with decoupled weight decay (`L2_is_weight_decay`). Other
        optimizers, and Adam with L2 added to the gradient, use Thinc's own
        per-parameter update.

        With `use_averages`, the fused step also keeps a moving average of
        every weight with Thinc's decay schedule (min((1 + t) / (10 + t),
        0.9999) at update t, started from the weights), and publishes it in
        `optimizer.averages` under the keys `use_params` reads, so spaCy's
        training loop evaluates and saves the averaged weights as it does for
        its own components."""
        if not is_plain_adamw(optimizer, self._mixed_precision):
            if self.added_learn_rate_scale != 1.0 and not self._warned_scale:
                warnings.warn(
                    "added_learn_rate_scale applies to Adam with decoupled weight decay "
                    "(L2_is_weight_decay = true) only; this optimizer updates every weight "
                    "at its own learning rate.",
                    stacklevel=2,
                )
                self._warned_scale = True
            super().finish_update(optimizer)
        else:
            self._adamw.step(
                self._model, optimizer, self.added_learn_rate_scale, self._average_key, (self.id, "averages")
            )
        if isinstance(self._model, MultiExitEncoder):
            # neither update bumps the weights' versions: drop narrow widths' packed copies
            self._model.forget_packed_weights()

    def _average_key(self, name: str) -> str:
        # the key format of thinc's PyTorchShim.use_params
        return f"pytorch_{self.id}_{name}"

    def forget_averages(self) -> None:
        """Drop the moving averages (the weights were replaced or reordered);
        the next step starts them again from the weights."""
        self._adamw.forget_averages()

    @property
    def _torch_optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The fused step's torch optimizer (None before the first step)."""
        return self._adamw.torch_optimizer

    @_torch_optimizer.setter
    def _torch_optimizer(self, value: Optional[torch.optim.Optimizer]) -> None:
        self._adamw.torch_optimizer = value

    @property
    def _averages(self) -> Dict[str, torch.Tensor]:
        """The moving averages of the weights, by parameter name."""
        return self._adamw.averages

    @contextlib.contextmanager
    def use_params(self, params):
        """Run with the weights in `params` (keys as Thinc's PyTorchShim:
        `pytorch_{shim id}_{parameter name}`; e.g. `optimizer.averages`) and
        restore the trained ones afterwards. Unlike Thinc's, a partial set
        replaces only the weights it names (buffers and untracked parameters
        stay)."""
        prefix = self._average_key("")
        chosen = {
            key[len(prefix) :]: value
            for key, value in (params or {}).items()
            if isinstance(key, str) and key.startswith(prefix)
        }
        if not chosen or not self.is_ready:
            yield
            return
        named = dict(self._model.named_parameters())
        swaps = []
        for name, value in chosen.items():
            param = named.get(name)
            if param is None:
                continue
            source = value if isinstance(value, torch.Tensor) else xp2torch(value, device=param.device)
            if source.shape != param.shape:
                raise ValueError(
                    f"use_params: weights for '{name}' have shape {tuple(source.shape)}, "
                    f"the encoder's {tuple(param.shape)}."
                )
            swaps.append((name, param, source))
        backup: Dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, param, source in swaps:
                backup[name] = param.detach().clone()
                param.copy_(source)
        self._model.forget_packed_weights()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    named[name].copy_(value)
            self._model.forget_packed_weights()

    def __getstate__(self) -> Dict[str, Any]:
        """Copies and pickles carry the encoder (without its packed inference
        weights, see `MultiExitEncoder.__getstate__`), the tokenizer and the
        settings, not the state of an optimizer: the torch optimizer and the
        moving averages belong to this shim's weights and to a Thinc
        optimizer that a copy does not share (a copy's first update starts
        them afresh, as it would anyway: they are keyed by object identity)."""
        state = dict(self.__dict__)
        state["_adamw"] = FusedAdamW()
        return state

    @property
    def encoder(self) -> MultiExitEncoder:
        if not isinstance(self._model, MultiExitEncoder):
            raise ValueError(
                "The early-exit encoder has no weights yet: call nlp.initialize() or load a trained pipeline."
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
            "word_pooling": encoder.word_pooling,
            "lexical_rows": encoder.lexical_embedding.num_embeddings if encoder.lexical_embedding is not None else 0,
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
            backbone,
            exits["n_labels"],
            exits["head_dropout"],
            exits.get("attention_dropout"),
            exits.get("case_classes", 0),
            exits.get("word_pooling", "first"),
            exits.get("lexical_rows", 0),
        )
        encoder.load_state_dict(weights)
        encoder.width_rewired = exits.get("width_rewired") is True
        self._model = encoder.to(get_torch_default_device())
        self.tokenizer = load_tokenizer(str(directory), config["model_type"])
        self.head_dropout = exits["head_dropout"]

    def to_bytes(self) -> bytes:
        if not self.is_ready:
            return srsly.msgpack_dumps({"files": {}, "weights": b""})
        from safetensors.torch import save

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
                from safetensors.torch import load as load_safetensors

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
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()}, str(path / WEIGHTS_FILE))

    def from_disk(self, path: Path) -> "EarlyExitShim":
        path = Path(path)
        if not (path / WEIGHTS_FILE).is_file():
            raise EncoderLoadError(
                f"No early-exit encoder weights at '{path / WEIGHTS_FILE}': the "
                "pipeline directory is incomplete or was not saved by spacy-earlyexit."
            )
        from safetensors.torch import load_file

        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error types
            raise EncoderLoadError(f"Corrupt encoder weights in '{path / WEIGHTS_FILE}': {err}") from err
        try:
            self._rebuild(path, weights)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
            raise EncoderLoadError(f"Could not rebuild the encoder saved in '{path}': {err}") from err
        return self
