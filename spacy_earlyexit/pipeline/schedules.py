"""Learning-rate schedules whose length follows the training corpus.

A learning-rate schedule tuned to one corpus (a fixed number of steps) trains
a smaller corpus for too many epochs and a larger one for too few. Here the
number of optimizer steps per epoch is counted with spaCy's own padded batcher
on the training corpus, so the schedule, the evaluation frequency and the end
of training all follow the corpus:

- `spacy-earlyexit.warmup_linear_epochs.v1` is a registered schedule: linear
  warm-up over a fraction of the run, then linear decay to zero at the last
  step, with the run's length taken from the corpus (or `max_steps`).
- `spacy-earlyexit.epoch_eval_frequency.v1` and `.epochs_as_steps.v1` fill
  `[training.eval_frequency]` and `[training.max_steps]` of the shipped
  configs (with `max_epochs = 0`), so plain `spacy train` evaluates dev once
  per epoch and ends on an evaluated step, on a corpus of any size.
- `tools.train.plan_training` does the same for configs that give
  `max_epochs` (run through `python -m spacy_earlyexit train`).
"""

import math
from functools import lru_cache
from pathlib import Path
from typing import Optional

from spacy.tokens import DocBin
from spacy.training.batchers import minibatch_by_padded_size
from spacy.vocab import Vocab
from thinc.api import warmup_linear


def corpus_lengths(path: str) -> list:
    """Token count of every non-empty doc of a `.spacy` corpus (read once per
    file version: a training config asks for it several times)."""
    stat = Path(path).stat()
    return list(_corpus_lengths(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _corpus_lengths(path: str, mtime_ns: int, size: int) -> tuple:
    docbin = DocBin().from_disk(Path(path))
    return tuple(len(doc) for doc in docbin.get_docs(Vocab()) if len(doc))


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
            "spacy-earlyexit.warmup_linear_epochs.v1 needs max_epochs > 0 or max_steps > 0 to know where the run ends."
        )
    warmup = int(round(warmup_fraction * total))
    return warmup_linear(initial_rate=initial_rate, warmup_steps=warmup, total_steps=total)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")
    return value


def epoch_eval_frequency(
    train_path: Optional[str],
    batch_size: int = 1000,
    buffer: int = 256,
    discard_oversize: bool = False,
    evals_per_epoch: int = 1,
) -> int:
    """`[training.eval_frequency]` for plain `spacy train`: the steps of one
    epoch of `train_path` (batched as `spacy.batch_by_padded.v1` with these
    settings), divided by `evals_per_epoch`, so dev is evaluated at least once
    per epoch on a corpus of any size."""
    _check_count("evals_per_epoch", evals_per_epoch)
    if not train_path:
        raise ValueError(
            "spacy-earlyexit.epoch_eval_frequency.v1 needs the training corpus "
            "(train_path = ${paths.train}) to count the steps of an epoch."
        )
    per_epoch = steps_per_epoch(str(train_path), int(batch_size), int(buffer), bool(discard_oversize))
    return max(1, math.ceil(per_epoch / evals_per_epoch))


def epochs_as_steps(epochs: int, eval_frequency: int, evals_per_epoch: int = 1, min_steps: int = 0) -> int:
    """`[training.max_steps]` for plain `spacy train` (with `max_epochs = 0`):
    `epochs` epochs as a step count that is a multiple of `eval_frequency`, so
    the run ends on a step spaCy evaluates and `model-best` can be the last.
    A small corpus gets at least `min_steps` steps (more epochs, still ending
    on an evaluated step): the same epochs over a few thousand texts give
    too few updates for the new weights to learn, and dev picks the best
    of the longer run."""
    _check_count("epochs", epochs)
    _check_count("eval_frequency", eval_frequency)
    _check_count("evals_per_epoch", evals_per_epoch)
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
        raise ValueError(f"min_steps must be a whole number >= 0, got {min_steps!r}.")
    steps = epochs * evals_per_epoch * eval_frequency
    return max(steps, math.ceil(min_steps / eval_frequency) * eval_frequency)
