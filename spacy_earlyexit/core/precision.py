"""Numeric precision of inference: fp32, bf16, int8, or auto.

Plain PyTorch, no spaCy. The precision decides how the layer loop's
projections multiply (`projections.Projection`) and in which dtype the hidden
states travel between layers:

- `fp32`: everything in float32;
- `bf16`: weights packed once in bfloat16, hidden states, attention and the
  products in bfloat16 (oneDNN's bf16 kernels: AMX or AVX512-BF16 on x86);
  LayerNorm statistics (computed in float32 inside torch's bf16 kernel), the
  exit classifiers, their softmax, the uncertainty that decides exits and the
  decoding stay in float32;
- `int8`: weights quantized per output channel to int8, activations quantized
  per call (dynamic quantization, as ONNX Runtime's and Optimum's usual
  recipe); hidden states in float32;
- `auto`: bf16 where the CPU multiplies bf16 natively (AMX-BF16 or
  AVX512-BF16) or on a CUDA device that supports it, else fp32.

Where bf16 is not native (older x86, most Arm builds) oneDNN emulates it and
it is slower than fp32: asking for `bf16` there falls back to fp32 with one
warning. `SPACY_EARLYEXIT_NATIVE_BF16=0` (or `1`) overrides the detection.

Training has its own setting (`training_precision`: auto, fp32, bf16): bf16
there is mixed precision, the layers' products under torch's bf16 autocast
while the weights, their gradients and optimizer state, the residual stream
between layers and the exit classifiers stay float32 (no loss scaling: bf16
has float32's range).
"""

import os
import warnings
from functools import lru_cache
from typing import Optional

import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: what `auto` and fallbacks resolve to
RESOLVED = ("fp32", "bf16", "int8")
#: precisions of training (bf16: mixed precision, products under autocast)
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")
TRAINING_RESOLVED = ("fp32", "bf16")


def check_precision(value) -> str:
    """`value` as a precision name; a ValueError for anything else."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}.")
    return value


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, with whether it has
    AMX ("" where /proc/cpuinfo is not readable)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        return ""
    return f"{model}, {'with' if 'amx_bf16' in _cpu_flags() else 'without'} AMX"


def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="utf8") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_has(torch_checks, flags) -> bool:
    """Whether torch's cpuinfo reports any of `torch_checks` (names in
    `torch.cpu`), else whether /proc/cpuinfo lists any of `flags`."""
    cpu = getattr(torch, "cpu", None)
    known = [check for check in (getattr(cpu, name, None) for name in torch_checks) if callable(check)]
    if known:
        try:
            return any(bool(check()) for check in known)
        except Exception:  # a build without cpuinfo: read the flags instead
            pass
    return bool(_cpu_flags() & set(flags))


@lru_cache(maxsize=1)
def _detected_native_bf16() -> bool:
    return _cpu_has(("_is_amx_tile_supported", "_is_avx512_bf16_supported"), ("amx_bf16", "avx512_bf16"))


@lru_cache(maxsize=1)
def _detected_amx() -> bool:
    return _cpu_has(("_is_amx_tile_supported",), ("amx_bf16",))


def amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), as
    torch's cpuinfo reports them (else /proc/cpuinfo's `amx_bf16` flag).
    `SPACY_EARLYEXIT_AMX` set to 0 or 1 overrides it."""
    forced = os.environ.get("SPACY_EARLYEXIT_AMX")
    if forced in ("0", "1"):
        return forced == "1"
    return _detected_amx()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively: AMX-BF16 or
    AVX512-BF16, as torch's cpuinfo reports them (else /proc/cpuinfo's
    flags). `SPACY_EARLYEXIT_NATIVE_BF16` set to 0 or 1 overrides it."""
    forced = os.environ.get("SPACY_EARLYEXIT_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return _detected_native_bf16()


_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def resolve_precision(precision: str, device: Optional[torch.device] = None) -> str:
    """The precision inference runs in on `device` (default CPU) for the
    setting `precision`: `fp32`, `bf16` or `int8`. A setting the device
    cannot run well falls back to fp32 with one warning per process."""
    precision = check_precision(precision)
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16_ok else "fp32"
        if precision == "int8":
            _warn_once("int8-cuda", "spacy-earlyexit: int8 runs on the CPU only; running fp32 on the GPU.")
            return "fp32"
        if precision == "bf16" and not bf16_ok:
            _warn_once("bf16-cuda", "spacy-earlyexit: this GPU has no bf16 support; running fp32.")
            return "fp32"
        return precision
    if kind != "cpu":
        return "fp32" if precision in ("auto", "int8", "bf16") else precision
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    if precision == "bf16" and not native_bf16():
        _warn_once(
            "bf16-cpu",
            "spacy-earlyexit: this CPU has no native bf16 (AMX-BF16 or AVX512-BF16), where bf16 is slower "
            "than fp32; running fp32 instead (set precision='fp32' or 'auto' to silence this).",
        )
        return "fp32"
    return precision


def check_training_precision(value) -> str:
    """`value` as a training precision name; a ValueError for anything else
    (int8 is for inference only)."""
    if not isinstance(value, str) or value not in TRAINING_PRECISIONS:
        raise ValueError(f"training_precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {value!r}.")
    return value


def resolve_training_precision(precision: str, device: Optional[torch.device] = None) -> str:
    """The precision training runs in on `device` for the setting
    `precision`: fp32, or bf16 (mixed precision) where the device multiplies
    bf16 natively; `auto` picks bf16 there, and `bf16` elsewhere falls back to
    fp32 with one warning, as for inference (`resolve_precision`)."""
    return resolve_precision(check_training_precision(precision), device)


def compute_dtype(resolved: str) -> torch.dtype:
    """The dtype hidden states travel in at a resolved precision."""
    return torch.bfloat16 if resolved == "bf16" else torch.float32
