"""`python -m spacy_earlyexit train`: `spacy train` with a run length that
follows the corpus.

spaCy evaluates every `eval_frequency` steps only, so with a fixed frequency
the final steps of a run never reach `model-best`, and a small corpus is
evaluated rarely or never. `plan_training` turns `max_epochs` into
`max_steps` and an evaluation frequency such that the model is evaluated at
least once per epoch and at the very last step.

The output directory is written beside its final place and renamed into it
when training ends (`outputs.replacing_directory`): an interrupted run leaves
an earlier output as it was. It may not hold or lie inside what training
reads (`training_inputs`), and replaces only an earlier output of this
command unless `--force`.
"""

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import typer
from spacy import util
from spacy.cli._util import parse_config_overrides
from thinc.api import Config
from wasabi import msg

from ..pipeline.schedules import steps_per_epoch
from .options import FORCE
from .outputs import check_output, exit_on_refusal, replacing_directory

#: written by `train` into its output directory: how long the run took and
#: the dev score of every evaluation
TRAINING_TIME_FILE = "training-time.json"
#: spaCy's JSONL training log (ConsoleLogger.v3), in the output directory
TRAINING_LOG_FILE = "training-log.jsonl"
RUN_LENGTH_BLOCKS = ("training.max_steps.", "training.eval_frequency.")


def counts_itself(config: Config) -> bool:
    """Whether the config's run length is `spacy-earlyexit.epochs_as_steps.v1`
    (the shipped configs): plain `spacy train` then plans it too."""
    steps = config["training"].get("max_steps")
    return isinstance(steps, dict) and steps.get("@misc") == "spacy-earlyexit.epochs_as_steps.v1"


def resolved_run_length(config_path: Path, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The numbers a config that counts itself runs with, as overrides (the
    same numbers plain `spacy train` computes; as integers, spaCy's progress
    bar can count them)."""
    planned = util.load_config(config_path, overrides=overrides, interpolate=True)
    training = planned["training"]
    resolved = util.registry.resolve({"every": training["eval_frequency"], "steps": training["max_steps"]})
    return {
        "training.max_epochs": 0,
        "training.eval_frequency": int(resolved["every"]),
        "training.max_steps": int(resolved["steps"]),
    }


def is_training_output(path: Path) -> bool:
    """Whether `path` is an output directory of this command (its record of
    the run): how an output written before outputs carried a marker
    (`outputs.MARKER_NAME`) is recognized."""
    return (Path(path) / TRAINING_TIME_FILE).is_file()


def training_inputs(config: Config, config_path: Path, code_path: Optional[Path] = None) -> List[Any]:
    """What a training run reads, as named in its interpolated config: the
    config and code files, every `[paths]` value, the corpora's paths,
    sourced pipelines, `init_from` pipelines, vectors, pretrained tok2vec
    weights and the encoders' names (a local model directory). Values that
    name no existing path are skipped by the output check."""
    found: List[Any] = [config_path, code_path]

    def add(value: Any) -> None:
        if isinstance(value, (str, Path)) and str(value):
            found.append(value)

    def sections(value: Any) -> List[dict]:
        return [v for v in value.values() if isinstance(v, dict)] if isinstance(value, dict) else []

    for value in (config.get("paths") or {}).values():
        add(value)
    for corpus in sections(config.get("corpora")):
        add(corpus.get("path"))
    for component in sections(config.get("components")):
        add(component.get("source"))
        model = component.get("model")
        if isinstance(model, dict):
            add(model.get("name"))
    initialize = config.get("initialize") or {}
    add(initialize.get("vectors"))
    add(initialize.get("init_tok2vec"))
    for component in sections(initialize.get("components")):
        add(component.get("init_from"))
    return found


def _point_logs_at(directory: Path, written: str, final: str) -> None:
    """The pipelines saved in `directory` name the JSONL log in their config
    where it was written (`written`, in the temporary directory): name it
    where it ends up (`final`)."""
    for config_file in sorted(directory.glob("model-*/config.cfg")):
        config = util.load_config(config_file, interpolate=False)
        logger = config.get("training", {}).get("logger", {})
        if logger.get("output_file") == written:
            logger["output_file"] = final
            config.to_disk(config_file)


def _logger_overrides(config: Config, overrides: Dict[str, Any], output_path: Optional[Path]) -> Dict[str, Any]:
    """With spaCy's ConsoleLogger.v3: a progress bar, and the JSONL log in the
    output directory (dev scores per evaluation), unless the user set them."""
    logger = config["training"].get("logger", {})
    if logger.get("@loggers") != "spacy.ConsoleLogger.v3":
        return {}
    extra: Dict[str, Any] = {}
    if logger.get("progress_bar") is None and "training.logger.progress_bar" not in overrides:
        extra["training.logger.progress_bar"] = "eval"
    if output_path is not None and not logger.get("output_file") and "training.logger.output_file" not in overrides:
        log_file = Path(output_path) / TRAINING_LOG_FILE
        if log_file.exists():
            log_file.unlink()  # spaCy's logger writes nothing where a log exists
        extra["training.logger.output_file"] = str(log_file)
    return extra


def read_evaluations(log_file: Optional[str]) -> Optional[list]:
    """Epoch, step and dev score of every evaluation in a ConsoleLogger.v3
    JSONL log (None without one)."""
    if not log_file or not Path(log_file).is_file():
        return None
    evaluations = []
    for line in Path(log_file).read_text(encoding="utf8").splitlines():
        entry = json.loads(line) if line.strip() else None
        if isinstance(entry, dict) and entry.get("score") is not None:
            evaluations.append({"epoch": entry.get("epoch"), "step": entry.get("step"), "score": entry["score"]})
    return evaluations


def plan_training(
    config: Config, evals_per_epoch: int = 1, user_overrides: Optional[Dict[str, Any]] = None
) -> Tuple[Dict[str, Any], Optional[int]]:
    """Config overrides that end the run on an evaluated step.

    `config` is the interpolated training config. Returns overrides for
    `training.max_epochs` (0: the run ends by steps), `training.max_steps` (a
    multiple of the evaluation frequency, at least `max_epochs` epochs) and
    `training.eval_frequency` (at most one epoch). Settings the user gave on
    the command line are kept. Returns (overrides, steps per epoch); no
    overrides when the run is already given in steps or not padded-batched."""
    user_overrides = user_overrides or {}
    training = config["training"]
    epochs = int(training.get("max_epochs") or 0)
    if counts_itself(config):
        # the shipped configs: the run is already counted in epochs of the
        # corpus ([training.max_steps]); `max_epochs` given too moves there
        # epochs the user asked for (`--training.max_epochs` or
        # `--training.max_steps.epochs`) are what runs: the config's floor of steps is lifted
        lift = "min_steps" in training["max_steps"] and "training.max_steps.min_steps" not in user_overrides
        if epochs <= 0:
            asked = "training.max_steps.epochs" in user_overrides
            return ({"training.max_steps.min_steps": 0} if asked and lift else {}), None
        plan = {"training.max_epochs": 0, "training.max_steps.epochs": epochs}
        if lift:
            plan["training.max_steps.min_steps"] = 0
        return plan, None
    if epochs <= 0 or "training.max_steps" in user_overrides:
        return {}, None
    batcher = training.get("batcher", {})
    if batcher.get("@batchers") != "spacy.batch_by_padded.v1":
        return {}, None
    train_path = config["paths"].get("train")
    if not train_path:
        raise ValueError("Set paths.train (the training corpus) to plan the run.")
    per_epoch = steps_per_epoch(
        str(train_path), int(batcher["size"]), int(batcher.get("buffer", 256)), bool(batcher.get("discard_oversize"))
    )
    if "training.eval_frequency" in user_overrides:
        frequency = int(user_overrides["training.eval_frequency"])
    else:
        frequency = max(1, math.ceil(per_epoch / max(1, evals_per_epoch)))
    max_steps = math.ceil(epochs * per_epoch / frequency) * frequency
    return {
        "training.max_epochs": 0,
        "training.max_steps": max_steps,
        "training.eval_frequency": frequency,
    }, per_epoch


def train(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Training config", exists=True, dir_okay=False),
    output_path: Optional[Path] = typer.Option(None, "--output", "-o", help="Output directory"),
    code_path: Optional[Path] = typer.Option(None, "--code", "-c", help="Python file with registered functions"),
    use_gpu: int = typer.Option(-1, "--gpu-id", "-g", help="GPU ID or -1 for CPU"),
    evals_per_epoch: int = typer.Option(1, "--evals-per-epoch", help="Dev evaluations per epoch (and one at the end)"),
    force: bool = FORCE,
) -> None:
    """`spacy train` with a run length that follows the corpus: `max_epochs`
    becomes a step count measured on the training corpus, with the dev set
    evaluated at least once per epoch and at the last step. Other options and
    `--section.key value` overrides are those of `spacy train`. The output
    directory appears (or replaces an earlier one) when training ends."""
    overrides = parse_config_overrides(ctx.args)
    config = util.load_config(config_path, overrides=overrides, interpolate=True)
    inputs = training_inputs(config, config_path, code_path)
    if output_path is not None:
        with exit_on_refusal():
            check_output(output_path, inputs, command="train", force=force, earlier=is_training_output)
    if code_path:
        util.import_file("functions", code_path)
    plan, per_epoch = plan_training(config, evals_per_epoch, overrides)
    if counts_itself(config):
        if evals_per_epoch != 1 and "training.eval_frequency.evals_per_epoch" not in overrides:
            plan["training.eval_frequency.evals_per_epoch"] = evals_per_epoch
        plan = resolved_run_length(config_path, {**overrides, **plan})
        # the blocks are replaced by their numbers: settings inside them are spent
        overrides = {k: v for k, v in overrides.items() if not k.startswith(RUN_LENGTH_BLOCKS)}
    if "training.max_steps" in plan:
        msg.info(
            f"Run length from the corpus: max_steps {plan['training.max_steps']}, evaluating every "
            f"{plan['training.eval_frequency']} steps and at the last one"
        )
    if output_path is None:
        _run_training(config, config_path, None, use_gpu, overrides, plan)
        return
    with exit_on_refusal():
        with replacing_directory(
            output_path, inputs, command="train", force=force, earlier=is_training_output
        ) as partial:
            _run_training(config, config_path, partial, use_gpu, overrides, plan)
            log = plan.get("training.logger.output_file")
            if log is not None:
                _point_logs_at(partial, log, str(Path(output_path) / TRAINING_LOG_FILE))
    msg.good(f"Saved to {output_path}")


def _run_training(
    config: Config,
    config_path: Path,
    output_path: Optional[Path],
    use_gpu: int,
    overrides: Dict[str, Any],
    plan: Dict[str, Any],
) -> None:
    """Run `spacy train` into `output_path` with the planned overrides (and
    the JSONL log there), and record how long it took there."""
    from spacy.cli.train import train as spacy_train

    plan.update(_logger_overrides(config, overrides, output_path))
    started = time.perf_counter()
    spacy_train(config_path, output_path, use_gpu=use_gpu, overrides={**overrides, **plan})
    if output_path is not None:
        seconds = time.perf_counter() - started
        record = {
            "seconds": round(seconds, 1),
            "config": str(config_path),
            "torch_threads": torch.get_num_threads(),
            "max_steps": plan.get("training.max_steps"),
            "evaluations": read_evaluations(plan.get("training.logger.output_file")),
        }
        (Path(output_path) / TRAINING_TIME_FILE).write_text(json.dumps(record, indent=2), encoding="utf8")
        msg.info(f"Training took {seconds / 60:.1f} minutes")
