"""Peers of the early-exit loop on the same trained network, for benchmarks/compare.py.

Each peer is an engine (`spacy_earlyexit.core.engines.Engine`) that an
early-exit pipeline at full depth runs on instead of its own layer loop:
another way of running the same weights, all layers, and the last exit's
classifier, so that tokenization, batching, alignment and annotation stay the
pipeline's own and only the network's engine differs:

- `hf-forward-fp32`, `hf-forward-bf16`: Hugging Face's own `forward`
  (`core.engines.HuggingFaceForward`), in fp32, or through a bf16 copy of
  the backbone (the component runs at precision bf16);
- `onnxruntime-fp32`, `onnxruntime-int8`: the backbone, with the casing
  embedding added after the embeddings as the pipeline does, exported to ONNX
  (dynamic batch and sequence axes) and run by ONNX Runtime; int8 is ONNX
  Runtime's dynamic quantization with per-channel int8 weights (the usual
  Optimum recipe). The exit head and its softmax run in torch fp32 on the
  word states. Needs the benchmark extra: `pip install onnxruntime onnx`;
- `openvino`: the same fp32 ONNX export (the very file `onnxruntime-fp32`
  reads, when both run on one pipeline), read by OpenVINO
  (`Core().read_model`) and compiled for its CPU plugin with its default
  hints (performance hint latency, and the inference precision it picks by
  itself: bf16 where the CPU multiplies bf16 natively, AMX or, with recent
  releases, AVX512-BF16; f32 elsewhere; see `openvino_default_precision`),
  at the comparison's thread count (`INFERENCE_NUM_THREADS`). The model
  keeps its dynamic batch and sequence axes, as OpenVINO's default does: it
  is compiled once, and the CPU plugin infers shapes and prepares its
  kernels for each new input shape on first sight, kept for the shape's
  later calls (the comparison's warm-up run sees every batch shape its timed
  rounds see). The exit head and its softmax run in torch fp32, as for ONNX
  Runtime. Needs the benchmark extra: `pip install openvino onnx` (the
  export needs `onnx`).

A peer is installed once on a pipeline of its own (`install`: the component's
`engine`), and stays.
"""

import contextlib
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

from spacy_earlyexit.core.engines import Engine, HuggingFaceForward, full_depth_output

#: peer name -> (engine, precision the network runs in)
PEERS: Dict[str, Tuple[str, str]] = {
    "hf-forward-fp32": ("hf", "fp32"),
    "hf-forward-bf16": ("hf", "bf16"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    # OpenVINO picks its precision by itself (see `openvino_default_precision`)
    "openvino": ("openvino", "default"),
}
ONNX_OPSET = 17
#: the modules each engine needs beyond torch (the ONNX export needs `onnx`)
ENGINE_MODULES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
#: OpenVINO's element types -> the precision names of this project
OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def precision_of(name: str) -> str:
    """The precision peer `name` runs its network in (for `openvino`: the
    one OpenVINO picks by default on this CPU)."""
    precision = PEERS[name][1]
    return openvino_default_precision() if precision == "default" else precision


@cache
def openvino_default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin picks when not told
    (its `INFERENCE_PRECISION_HINT` default): "bf16" where the CPU multiplies
    bf16 natively (AMX; AVX512-BF16 too with recent releases), "fp32"
    elsewhere on x86 ("fp16" on some Arm CPUs)."""
    import openvino

    hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return _openvino_precision_name(hint)


def _openvino_precision_name(element_type) -> str:
    name = getattr(element_type, "get_type_name", lambda: str(element_type))()
    return OPENVINO_PRECISIONS.get(name, name)


def unavailable(name: str) -> Optional[str]:
    """Why peer `name` cannot run here (None if it can)."""
    if name not in PEERS:
        return f"unknown peer '{name}' (known: {', '.join(PEERS)})"
    modules = ENGINE_MODULES.get(PEERS[name][0], ())
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return f"{' and '.join(missing)} not installed (the benchmark extra: pip install {' '.join(modules)})"
    return None


def install(name: str, component, directory: Path, threads: Optional[int] = None, properties: Optional[Dict] = None):
    """Make peer `name` the engine `component` runs on, for good (the
    pipeline is the peer's own); returns the engine (`HuggingFaceForward`,
    an `OnnxRuntimeForward` for ONNX Runtime peers, an `OpenVinoForward` for
    OpenVINO, whose `min_cosine_to_fp32` is known after its first batch).
    `properties`: OpenVINO compile properties beyond the thread count
    (tests; the comparison leaves OpenVINO's defaults)."""
    kind, _ = PEERS[name]
    encoder = component.encoder
    if kind == "hf":
        engine = HuggingFaceForward()
    elif kind == "openvino":
        engine = OpenVinoForward(encoder, Path(directory), threads=threads, properties=properties)
    else:
        engine = OnnxRuntimeForward(encoder, Path(directory), quantized=name.endswith("int8"), threads=threads)
    component.engine = engine
    return engine


@cache
def _backbone_with_case_class():
    import torch

    class BackboneWithCase(torch.nn.Module):
        """What ONNX receives: input_ids, attention_mask (and case_ids,
        lexical_ids) -> last_hidden_state, with the casing and lexical
        embeddings added to the embedding output, as the pipeline's own loop
        and `huggingface_forward` do."""

        def __init__(self, encoder):
            super().__init__()
            self.backbone = encoder.backbone
            # registered here so that the export sees their weights; added by the encoder's own method
            self.case_embedding = encoder.case_embedding
            self.lexical_embedding = encoder.lexical_embedding
            self.add_token_features = encoder.add_token_features

        def forward(self, input_ids, attention_mask, case_ids=None, lexical_ids=None):
            exporting = torch.onnx.is_in_onnx_export()
            # the ONNX exporter has no embedding_bag with padding_idx (what the encoder sums the
            # lexical rows with): under export the same sum, row 0 being the zero row, in plain ops
            features = SimpleNamespace(case_ids=case_ids, lexical_ids=None if exporting else lexical_ids)

            def add_case(module, inputs, out):
                out = self.add_token_features(out, features)
                if exporting and lexical_ids is not None:
                    out = out + self.lexical_embedding(lexical_ids).sum(-2).to(out.dtype)
                return out

            hook = self.backbone.embeddings.register_forward_hook(add_case)
            try:
                return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            finally:
                hook.remove()

    return BackboneWithCase


def backbone_with_case(encoder):
    """The encoder's backbone with its casing embedding, as one module
    (sharing the encoder's weights): input_ids, attention_mask, case_ids ->
    last_hidden_state."""
    return _backbone_with_case_class()(encoder)


def _uses_case(encoder, batch) -> bool:
    return encoder.case_embedding is not None and batch.case_ids is not None


def _uses_lexical(encoder, batch) -> bool:
    return getattr(encoder, "lexical_embedding", None) is not None and batch.lexical_ids is not None


def export_onnx(encoder, path: Path, with_case: bool, with_lexical: bool = False) -> Path:
    """The encoder's backbone (+ casing and lexical embeddings) as an ONNX
    model at `path`, with dynamic batch and sequence axes."""
    import torch

    module = backbone_with_case(encoder)
    names = ["input_ids", "attention_mask"] + (["case_ids"] if with_case else [])
    # a padded example, so that the traced graph keeps the attention mask
    input_ids = torch.ones(2, 8, dtype=torch.long)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0
    features = {}  # keyword inputs (a trailing dict of the export's args)
    if with_case:
        features["case_ids"] = torch.zeros(2, 8, dtype=torch.long)
    if with_lexical:
        names.append("lexical_ids")
        features["lexical_ids"] = torch.zeros(2, 8, 2, dtype=torch.long)
    args = (input_ids, attention_mask) + ((features,) if features else ())
    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    if with_lexical:
        axes["lexical_ids"][2] = "features"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _evaluating(encoder), torch.no_grad(), _quiet():
        kwargs = dict(
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the `dynamo` switch: its default is the TorchScript exporter
            torch.onnx.export(module, args, str(path), **kwargs)
    return path


@contextlib.contextmanager
def _evaluating(encoder):
    """The encoder without dropout for the block, its mode restored after."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def quantize_int8(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic quantization: int8 weights per output channel,
    activations quantized per call (Optimum's usual CPU recipe)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def cosine_to_reference(states, reference, mask) -> float:
    """The smallest cosine similarity between `states` and `reference`
    [B, T, d] over the real pieces of `mask` [B, T]."""
    import torch

    return float(torch.nn.functional.cosine_similarity(states[mask].float(), reference[mask].float(), dim=-1).min())


class OnnxRuntimeForward(Engine):
    """The encoder's backbone through ONNX Runtime, an engine that runs full
    depth. Exported (and quantized) on the first batch into `directory`,
    reused from there when the files exist."""

    name = "onnxruntime"

    def __init__(self, encoder, directory: Path, quantized: bool = False, threads: Optional[int] = None):
        import torch

        self.encoder = encoder
        self.directory = Path(directory)
        self.quantized = quantized
        self.threads = threads or torch.get_num_threads()
        self.sessions: Dict[tuple, object] = {}
        #: smallest cosine of the last hidden states to torch fp32, on the first batch
        self.min_cosine_to_fp32: Optional[float] = None

    def model_path(self, with_case: bool, with_lexical: bool = False) -> Path:
        stem = ("backbone-case" if with_case else "backbone") + ("-lexical" if with_lexical else "")
        fp32 = self.directory / f"{stem}-fp32.onnx"
        if not fp32.is_file():
            export_onnx(self.encoder, fp32, with_case, with_lexical)
        if not self.quantized:
            return fp32
        int8 = self.directory / f"{stem}-int8.onnx"
        if not int8.is_file():
            quantize_int8(fp32, int8)
        return int8

    def session(self, with_case: bool, with_lexical: bool = False):
        key = (with_case, with_lexical)
        if key not in self.sessions:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            self.sessions[key] = onnxruntime.InferenceSession(
                str(self.model_path(with_case, with_lexical)), options, providers=["CPUExecutionProvider"]
            )
        return self.sessions[key]

    @property
    def size_mb(self) -> Optional[float]:
        files = [self.directory / f for f in self._names()]
        files = [f for f in files if f.is_file()]
        return round(sum(f.stat().st_size for f in files) / 2**20, 1) if files else None

    def _names(self) -> List[str]:
        kind = "int8" if self.quantized else "fp32"
        stems = ("backbone-case", "backbone", "backbone-case-lexical", "backbone-lexical")
        return [f"{stem}-{kind}.onnx" for stem in stems]

    def hidden_states(self, batch):
        """Last hidden states [B, T, d] (float32) of `batch`."""
        import torch

        with_case, with_lexical = _uses_case(self.encoder, batch), _uses_lexical(self.encoder, batch)
        feed = {
            "input_ids": batch.input_ids.cpu().numpy(),
            "attention_mask": batch.piece_mask.long().cpu().numpy(),
        }
        if with_case:
            feed["case_ids"] = batch.case_ids.cpu().numpy()
        if with_lexical:
            feed["lexical_ids"] = batch.lexical_ids.cpu().numpy()
        return torch.from_numpy(self._run(feed, with_case, with_lexical))

    def _run(self, feed: Dict, with_case: bool, with_lexical: bool):
        """The engine on `feed` (numpy inputs by name): last_hidden_state as numpy."""
        (hidden,) = self.session(with_case, with_lexical).run(["last_hidden_state"], feed)
        return hidden

    def torch_hidden_states(self, batch):
        """The same, from torch in fp32 (the reference)."""
        import torch

        module = backbone_with_case(self.encoder)
        case_ids = batch.case_ids if _uses_case(self.encoder, batch) else None
        lexical_ids = batch.lexical_ids if _uses_lexical(self.encoder, batch) else None
        with _evaluating(self.encoder), torch.inference_mode():
            return module(batch.input_ids, batch.piece_mask.long(), case_ids, lexical_ids).float()

    def predict(self, encoder, batch, policy=None, width: float = 1.0, precision: str = "fp32"):
        """Every word labelled by the last exit, after every layer (as
        `HuggingFaceForward`), for the encoder it was made for; `precision`
        is ignored: the engine and its model decide."""
        import torch

        if encoder is not self.encoder:
            raise ValueError(f"The engine '{self.name}' was exported from another encoder.")
        self.check(policy, width)
        self.session(
            _uses_case(self.encoder, batch), _uses_lexical(self.encoder, batch)
        )  # exported, quantized and loaded once, outside inference mode
        with torch.inference_mode():
            return self._predict(batch)

    def _predict(self, batch):
        hidden = self.hidden_states(batch).to(batch.input_ids.device)
        if self.min_cosine_to_fp32 is None:
            self.min_cosine_to_fp32 = cosine_to_reference(hidden, self.torch_hidden_states(batch), batch.piece_mask)
        return full_depth_output(self.encoder, hidden, batch)


class OpenVinoForward(OnnxRuntimeForward):
    """The encoder's backbone through OpenVINO's runtime, an engine that
    runs full depth: the fp32 ONNX export of
    `OnnxRuntimeForward` (the same file, reused when it exists in
    `directory`), read by `openvino.Core().read_model` and compiled for
    "CPU" with OpenVINO's default hints, `INFERENCE_NUM_THREADS` set to
    `threads`, and any further `properties`. Its input shapes stay dynamic:
    one compilation, kernels prepared per new shape at run time."""

    def __init__(self, encoder, directory: Path, threads: Optional[int] = None, properties: Optional[Dict] = None):
        super().__init__(encoder, directory, quantized=False, threads=threads)
        self.properties = dict(properties or {})
        #: the precision the compiled model infers in ("fp32", "bf16", ...), known once compiled
        self.inference_precision: Optional[str] = None
        #: the compiled model's performance hint and thread count, known once compiled
        self.performance_hint: Optional[str] = None
        self.inference_threads: Optional[int] = None

    def session(self, with_case: bool, with_lexical: bool = False):
        """An infer request of the model compiled for these inputs (compiled once)."""
        key = (with_case, with_lexical)
        if key not in self.sessions:
            import openvino

            core = openvino.Core()
            model = core.read_model(str(self.model_path(with_case, with_lexical)))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(self.threads), **self.properties})
            self.inference_precision = _openvino_precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            self.performance_hint = str(compiled.get_property("PERFORMANCE_HINT")).split(".")[-1]
            self.inference_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
            self.sessions[key] = compiled.create_infer_request()
        return self.sessions[key]

    def _run(self, feed: Dict, with_case: bool, with_lexical: bool):
        # share_outputs=False (the default): the result is a copy, not the request's buffer
        return self.session(with_case, with_lexical).infer(feed)["last_hidden_state"]
