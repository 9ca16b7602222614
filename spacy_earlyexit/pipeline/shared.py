"""`earlyexit_transformer`: one multi-exit encoder for several task components.

spaCy shares a transformer among tagger, parser and NER with a `transformer`
component and `TransformerListener` layers in the tasks' models
(spacy-transformers); the tasks' heads read the transformer's output after
it has run. Early exit cannot work that way: whether a word may leave after
a layer depends on every task's classifier at that layer, so the classifiers
must run inside the encoder's layer loop. Here the shared component owns the
encoder and every task's exit classifiers (each task a slice of each
layer's classifier outputs, `core/tasks.py`), and the task components
(`earlyexit_ner`, `earlyexit_tagger` whose model is
`spacy-earlyexit.EarlyExitListener.v1`) own their labels, gold, loss,
decoding and annotation:

- spaCy links them as it links listeners (`find_listeners`, the
  `listener_map`), so `upstream = "*"` finds the shared component before it.
- `initialize`: the shared component loads the encoder; each task then adds
  its labels' outputs to every exit classifier (`add_task`).
- `__call__` / `pipe`: one pass for all tasks; a word's pieces run while any
  task still needs it, each task takes its labels at its own exit layer. The
  predictions wait on the doc (`doc._.earlyexit_tasks`) for the tasks, which
  write them and record their own exit layers.
- `update`: one forward over every exit; each task's loss (its own
  `get_loss` on its slice, self-sampling with its own exits) is summed and
  backpropagated once. The tasks' own `update` does nothing.
- Operating points, per-call and per-thread settings, precision and width
  are the shared component's: a policy applies to every task, a `per_task`
  policy (`core/tasks.py`) gives each task its own rule.
- Adaptive width is the shared encoder's too: `rewire_for_width` ranks heads
  and neurons by the tasks' summed (weighted) loss, and `width_training`
  distils every width (each task's distribution apart) or self-samples width
  and exit over all tasks. Its preparation waits for the first update: the
  tasks, initialized after this component, give the gold it ranks by.

The weights are saved once, with the shared component.
"""

from dataclasses import asdict
from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, set_dropout_rate

from ..core.engines import OwnLoop
from ..core.objective import SelfSampling, TaskGold
from ..core.points import OperatingPoint
from ..core.policies import ExitPolicy
from ..core.precision import resolve_precision, resolve_training_precision
from ..core.tasks import TaskPolicies, TaskRules
from ..core.width_training import WidthTraining
from .extensions import put_task_outputs, record_exits, task_outputs
from .labeler import DEFAULT_MODEL_CONFIG, SHARED_DEFAULTS, EarlyExitLabeler
from .model import DocExits, is_listener, predict_task_exits
from .width_stages import prepare_width_training


@Language.factory(
    "earlyexit_transformer",
    assigns=["doc._.earlyexit", "doc._.earlyexit_tasks"],
    default_config={
        "model": Config().from_str(DEFAULT_MODEL_CONFIG)["model"],
        **SHARED_DEFAULTS,
    },
    default_score_weights={},
)
def make_earlyexit_transformer(
    nlp: Language,
    name: str,
    model: Model,
    exit_policy: ExitPolicy,
    batch_sequences: int,
    operating_points: Dict[str, Dict[str, Any]],
    operating_point: Optional[str],
    self_sampling: Optional[SelfSampling],
    width_training: Optional[WidthTraining],
    width_multipliers: List[float],
    width: float,
    precision: str = "auto",
    training_precision: str = "fp32",
) -> "EarlyExitTransformer":
    """A multi-exit encoder shared by the early-exit task components that
    listen to it (their model `spacy-earlyexit.EarlyExitListener.v1`).

    exit_policy: the rule every task leaves by, or `per_task` with a rule per
        task (by component name); operating points likewise.
    The other settings are those of `earlyexit_ner` and apply to the shared
    pass: its operating points, width, precision, training precision,
    self-sampling (stage 2, each task sampling its own exits) and width
    training (for all tasks).
    """
    return EarlyExitTransformer(
        nlp.vocab,
        model,
        name,
        exit_policy=exit_policy,
        batch_sequences=batch_sequences,
        operating_points=operating_points,
        operating_point=operating_point,
        self_sampling=self_sampling,
        width_training=width_training,
        width_multipliers=width_multipliers,
        width=width,
        precision=precision,
        training_precision=training_precision,
    )


class EarlyExitTransformer(EarlyExitLabeler):
    """Runs one multi-exit encoder for every task component that listens to
    it, with the exit rule across tasks; see the module's docstring."""

    takes_task_policies = True

    def __init__(self, vocab: Vocab, model: Model, name: str, **kwargs) -> None:
        super().__init__(vocab, model, name, **kwargs)
        #: the tasks in the order of the classifiers' outputs: [component name, its output labels]
        self.cfg["tasks"] = []
        #: spaCy's listener protocol (`Language._link_components`): component name -> its listener models
        self.listener_map: Dict[str, List[Model]] = {}
        self._task_components: Dict[str, EarlyExitLabeler] = {}
        #: `initialize`'s examples, for width training's preparation at the first update
        self._pending_width: Optional[Callable[[], Iterable[Example]]] = None

    # -- spaCy's listener protocol (as spaCy's Tok2Vec) -----------------------------
    @property
    def listeners(self) -> List[Model]:
        return [model for models in self.listener_map.values() for model in models]

    @property
    def listening_components(self) -> List[str]:
        return list(self.listener_map)

    def add_listener(self, listener: Model, component_name: str) -> None:
        models = self.listener_map.setdefault(component_name, [])
        if listener not in models:
            models.append(listener)

    def remove_listener(self, listener: Model, component_name: str) -> bool:
        models = self.listener_map.get(component_name, [])
        if listener in models:
            models.remove(listener)
            if not models:
                del self.listener_map[component_name]
                self._task_components.pop(component_name, None)
            return True
        return False

    def find_listeners(self, component) -> None:
        """Link a later component whose model listens to this one (by name or
        "*"): it becomes one of this encoder's tasks."""
        if not isinstance(component, EarlyExitLabeler) or isinstance(component, EarlyExitTransformer):
            return
        model = component.model
        if is_listener(model) and model.attrs.get("upstream") in ("*", self.name):
            if component._upstream is not None and component._upstream is not self:
                if component._upstream.name in self.listening_components and model.attrs["upstream"] == "*":
                    return  # an earlier shared encoder already took it
            self.add_listener(model, component.name)
            self._task_components[component.name] = component
            component._upstream = self

    # -- tasks ------------------------------------------------------------------
    def task_component(self, name: str) -> Optional[EarlyExitLabeler]:
        """The task component `name` if it is linked to this encoder now (in
        the pipeline after it, listening to it), else None."""
        return self._task_components.get(name) if name in self.listener_map else None

    @property
    def tasks(self) -> List[str]:
        """The task components' names, in the order of the classifiers' outputs."""
        return [name for name, _ in self.cfg["tasks"]]

    def has_task(self, name: str) -> bool:
        return name in self.tasks

    def add_task(self, component: EarlyExitLabeler) -> slice:
        """Give a task component its outputs on every exit classifier (its
        output labels); a task already there must have the same labels.
        Returns its slice of the outputs."""
        labels = list(component.output_labels)
        for index, (name, known) in enumerate(self.cfg["tasks"]):
            if name == component.name:
                if list(known) != labels:
                    raise ValueError(
                        f"'{name}' has labels {labels}, but the shared encoder '{self.name}' was "
                        f"trained for it with {list(known)}."
                    )
                return self._slices()[index]
        if not self.is_ready:
            raise ValueError(
                f"'{self.name}' must be initialized before its task '{component.name}' (spaCy initializes "
                "components in pipeline order: put the shared encoder first)."
            )
        part = self.encoder.add_labels(len(labels))
        self.cfg["tasks"] = [*self.cfg["tasks"], [component.name, labels]]
        self._restore_dims()
        return part

    def _slices(self) -> List[slice]:
        sizes = self._task_sizes()
        return TaskRules(sizes, [ExitPolicy()] * len(sizes)).slices if sizes else []

    def _task_sizes(self) -> List[int]:
        return [len(labels) for _, labels in self.cfg["tasks"]]

    def rules(self, policy: ExitPolicy) -> TaskRules:
        """The encoder's rules for `policy`: a `per_task` policy's rule for each
        task, any other policy for every task."""
        if not self.cfg["tasks"]:
            raise ValueError(f"'{self.name}' has no tasks: add a component that listens to it, and initialize.")
        if isinstance(policy, TaskPolicies):
            unknown = sorted(set(policy.tasks) - set(self.tasks))
            if unknown:
                raise ValueError(f"'{self.name}' has no task {', '.join(unknown)}: its tasks are {self.tasks}.")
            policies = [policy.for_task(name) for name in self.tasks]
        else:
            policies = [policy] * len(self.tasks)
        return TaskRules(self._task_sizes(), policies)

    # -- labels: the tasks' --------------------------------------------------------
    @property
    def labels(self) -> tuple:
        return ()

    @property
    def output_labels(self) -> List[str]:
        return [f"{name}:{label}" for name, labels in self.cfg["tasks"] for label in labels]

    def add_label(self, label: str) -> int:
        raise ValueError(f"'{self.name}' has no labels of its own: add them to its task components.")

    def _labels_from_example(self, example: Example) -> Iterable[str]:
        return []

    def _restore_dims(self) -> None:
        self.model.set_dim("nO", len(self.output_labels), force=True)
        self.model.attrs["task_sizes"] = self._task_sizes()

    # -- initialize ----------------------------------------------------------------
    def _initialize_pretrained(self, get_examples, labels: Optional[Sequence[str]]) -> None:
        if labels:
            raise ValueError(f"'{self.name}' takes no labels: give them to its task components.")
        self.cfg["tasks"] = []
        self._restore_dims()
        self.model.initialize(X=[eg.predicted for eg in islice(get_examples(), 10)])
        self._check_settings()

    def _initialize_from(self, source: str) -> None:
        import spacy

        source_nlp = spacy.load(source)
        matches = [proc for _, proc in source_nlp.pipeline if type(proc) is type(self)]
        named = [proc for name, proc in source_nlp.pipeline if name == self.name and type(proc) is type(self)]
        if not matches:
            raise ValueError(f"'{source}' has no shared encoder ({type(self).__name__}) to initialize '{self.name}'.")
        other = (named or matches)[0]
        self.cfg["tasks"] = [[name, list(labels)] for name, labels in other.cfg["tasks"]]
        self._restore_dims()
        self._shim.from_bytes(other.model.shims[0].to_bytes())
        self._check_settings()

    # -- predict and annotate ------------------------------------------------------
    def predict(self, docs: Iterable[Doc], settings: Optional[OperatingPoint] = None) -> List[List[DocExits]]:
        """Every task's predictions for `docs` (`[task][doc]`, tasks in the
        order of `tasks`) from one pass under `settings` (default: the
        current ones)."""
        docs = list(docs)
        settings = settings or self.settings
        if type(self.engine) is not OwnLoop:
            raise ValueError(f"'{self.name}' runs on its own layer loop only (not {self.engine!r}).")
        keep = [self._decodes_from_probs(name) for name in self.tasks]
        return predict_task_exits(
            self.model,
            docs,
            self.rules(settings.policy),
            max_sequences=self.batch_sequences,
            width=settings.width,
            keep_probs=keep,
            precision=resolve_precision(settings.precision, self.encoder.device),
        )

    def _decodes_from_probs(self, task: str) -> bool:
        component = self.task_component(task)
        return bool(component is not None and component.decodes_from_probs)

    def set_annotations(self, docs: Iterable[Doc], predictions: List[List[DocExits]]) -> None:
        """Leave each task's prediction on its doc for the task to write, and
        record the shared pass: each token's deepest exit, the pass's cost."""
        names = self.tasks
        for d, doc in enumerate(docs):
            per_task = [predictions[t][d] for t in range(len(names))]
            linked = {name: asdict(pred) for name, pred in zip(names, per_task) if self.task_component(name)}
            put_task_outputs(doc, linked)
            first = per_task[0]
            layers = numpy.max([pred.exit_layers for pred in per_task], axis=0) if len(doc) else first.exit_layers
            record_exits(doc, self.name, layers, first.n_layers, first.cost, first.full_cost, first.width)

    def task_predictions(self, task: str, docs: List[Doc]) -> List[DocExits]:
        """The predictions this encoder left on `docs` for `task`."""
        found = []
        for doc in docs:
            entry = task_outputs(doc, task)
            if entry is None:
                raise ValueError(
                    f"'{task}' reads the shared encoder '{self.name}', which has not run on this doc: "
                    "run the pipeline with both enabled (nlp(text), nlp.pipe(texts))."
                )
            found.append(DocExits(**entry))
        return found

    # -- training ----------------------------------------------------------------
    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """One forward over every exit for all tasks; each task's loss (its
        `get_loss` on its outputs, at its own sampled exits in stage 2) is
        recorded under the task's name, weighted by its listener's
        `loss_weight`, summed, and backpropagated once."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        tasks = [(t, name, self.task_component(name)) for t, name in enumerate(self.tasks)]
        tasks = [(t, name, component) for t, name, component in tasks if component is not None]
        if not tasks or not any(len(eg.predicted) for eg in examples):
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
        (logits, layers), backprop = self.model.begin_update([eg.predicted for eg in examples])
        slices = self._slices()
        d_logits = [numpy.zeros_like(self.model.ops.to_numpy(x)) for x in logits]
        total = 0.0
        for t, name, component in tasks:
            part = slices[t]
            task_layers = [doc_layers[t] if doc_layers.ndim == 2 else doc_layers for doc_layers in layers]
            loss, d_task = component.get_loss(examples, ([x[:, :, part] for x in logits], task_layers))
            weight = component.model.attrs.get("loss_weight", 1.0)
            for d_doc, d_part in zip(d_logits, d_task):
                d_doc[:, :, part] += weight * self.model.ops.to_numpy(d_part)
            losses[name] = losses.get(name, 0.0) + loss
            total += weight * loss
        backprop([self.model.ops.asarray3f(d) for d in d_logits])
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += total
        return losses

    # -- adaptive width: for all tasks (`width_stages.py`) -------------------------
    def _prepare_width_training(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        """Waits for the first update: the tasks are initialized after this
        component, and their gold is what ranks the heads and neurons."""
        self._pending_width = get_examples

    def _update_width(self, examples: List[Example], drop: float) -> float:
        if self._pending_width is not None:
            get_examples, self._pending_width = self._pending_width, None
            prepare_width_training(self, get_examples)
        return super()._update_width(examples, drop)

    def _width_tasks(self, examples: List[Example], rows: List[numpy.ndarray], n_words: int) -> List[TaskGold]:
        """Each linked task's gold on its slice of the outputs, weighted by its
        listener's `loss_weight`, as `update` weighs the tasks."""
        slices = self._slices()
        found = []
        for index, name in enumerate(self.tasks):
            component = self.task_component(name)
            if component is None:
                continue
            gold = torch.from_numpy(component._batch_gold(examples, rows, n_words))
            found.append(TaskGold(gold, slices[index], float(component.model.attrs.get("loss_weight", 1.0)), index))
        return found

    def _width_parts(self) -> Optional[List[slice]]:
        return self._slices()

    @property
    def score_key(self) -> str:
        """`{name}_score`: the mean of the tasks' main scores (each task's own
        is in `{name}_task_scores`)."""
        return f"{self.name}_score"

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        """The shared pass's speed-up and mean exit layer, each linked task's
        main score (`{name}_task_scores`: entities' F1, tag accuracy...) and
        their mean (`score_key`)."""
        examples = list(examples)
        scores = super().score(examples, **kwargs)
        tasks = {}
        for name in self.tasks:
            component = self.task_component(name)
            if component is not None and component.scorer is not None:
                tasks[name] = component.scorer(examples).get(component.score_key)
        known = [value for value in tasks.values() if value is not None]
        scores[f"{self.name}_task_scores"] = tasks
        scores[self.score_key] = sum(known) / len(known) if known else None
        return scores
