"""Training length that follows the corpus.

A learning-rate schedule tuned to one corpus (a fixed number of steps) trains
a smaller corpus for too many epochs and a larger one for too few. Here the
number of optimizer steps per epoch is counted with spaCy's own padded batcher
on the training corpus, so the schedule, the evaluation frequency and the end
of training all follow the corpus:

- `spacy-earlyexit.warmup_linear_epochs.v1` is a registered schedule: linear
  warm-up over a fraction of the run, then linear decay to zero at the last
  step, with the run's length taken from the corpus (or `max_steps`).
- `plan_training` turns `max_epochs` into `max_steps` and an evaluation
  frequency such that the model is evaluated at least once per epoch and at
  the very last step (spaCy evaluates every `eval_frequency` steps only, so the
  final steps of a run would otherwise never reach `model-best`).
"""
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from spacy.tokens import DocBin
from spacy.training.batchers import minibatch_by_padded_size
from spacy.util import registry
from thinc.api import Config, warmup_linear


def corpus_lengths(path: str) -> list:
    """Token count of every non-empty doc of a `.spacy` corpus."""
    docbin = DocBin().from_disk(Path(path))
    from spacy.vocab import Vocab

    return [len(doc) for doc in docbin.get_docs(Vocab()) if len(doc)]


def steps_per_epoch(path: str, size: int, buffer: int = 256, discard_oversize: bool = False) -> int:
    """Batches of one epoch, as `spacy.batch_by_padded.v1` makes them."""
    lengths = corpus_lengths(path)
    if not lengths:
        raise ValueError(f"The training corpus '{path}' has no non-empty docs.")
    # stand-ins with the docs' lengths (the batcher calls len() on its items)
    batches = minibatch_by_padded_size(
        [range(n) for n in lengths], size, buffer=buffer, discard_oversize=discard_oversize
    )
    return max(1, sum(1 for _ in batches))


@registry.schedules("spacy-earlyexit.warmup_linear_epochs.v1")
def warmup_linear_epochs(
    initial_rate: float,
    train_path: Optional[str],
    max_epochs: int = 0,
    max_steps: int = 0,
    batch_size: int = 1000,
    warmup_fraction: float = 0.1,
):
    """Warm-up then linear decay over the whole run: `max_steps` when it is set,
    else `max_epochs` x the batches of one epoch of `train_path`."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
    if max_steps and max_steps > 0:
        total = int(max_steps)
    elif max_epochs and max_epochs > 0:
        if not train_path:
            raise ValueError(
                "spacy-earlyexit.warmup_linear_epochs.v1 needs the training corpus "
                "(train_path = ${paths.train}) to count the steps of an epoch."
            )
        total = int(max_epochs) * steps_per_epoch(str(train_path), int(batch_size))
    else:
        raise ValueError(
            "spacy-earlyexit.warmup_linear_epochs.v1 needs max_epochs > 0 or "
            "max_steps > 0 to know where the run ends."
        )
    warmup = int(round(warmup_fraction * total))
    return warmup_linear(initial_rate=initial_rate, warmup_steps=warmup, total_steps=total)


def plan_training(
    config: Config, evals_per_epoch: int = 1, user_overrides: Dict[str, Any] = {}
) -> Tuple[Dict[str, Any], Optional[int]]:
    """Config overrides that end the run on an evaluated step.

    `config` is the interpolated training config. Returns overrides for
    `training.max_epochs` (0: the run ends by steps), `training.max_steps` (a
    multiple of the evaluation frequency, at least `max_epochs` epochs) and
    `training.eval_frequency` (at most one epoch). Settings the user gave on
    the command line are kept. Returns (overrides, steps per epoch); no
    overrides when the run is already given in steps or not padded-batched."""
    training = config["training"]
    epochs = int(training.get("max_epochs") or 0)
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
