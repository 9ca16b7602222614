"""Extension attributes that report how much work each token took.

`doc._.earlyexit` holds, per early-exit component name, the analytic cost of
the doc; the getters below summarize it. A shared encoder's tasks
(`pipeline/shared.py`) have entries of their own that name the encoder
(`"encoder"`); the pass is counted once, in the encoder's entry.

`doc._.earlyexit_tasks` carries a shared encoder's predictions to its task
components within one pipeline run: each task takes its own (and removes
it) when it annotates the doc.

The exit layers themselves follow the tokens through retokenization,
`Doc.from_docs`, `Doc.to_bytes` and `DocBin(store_user_data=True)`: each
annotated token leaves one entry in `doc.user_data` under a token-extension
style key, `("._.", TOKEN_EXITS_KEY, start_char, None)`, whose value maps each
component to `(exit layer, number of characters covered)`. spaCy moves these
keys with the text (`Doc.from_docs` shifts them, serialization keeps them),
and retokenization leaves them alone, so a token reads:

- the deepest layer of every entry that starts inside its text (a token
  merged from several parts reports the deepest layer of its parts);
- for a component with no entry inside it, the nearest earlier entry of that
  component if that entry's text covers the token's start (the parts of a
  split token report the layer of the token they came from).
"""

from typing import Dict, Optional

from spacy.attrs import IDX, LENGTH
from spacy.tokens import Doc, Token

#: name part of the doc.user_data keys that hold the per-token exit layers
TOKEN_EXITS_KEY = "earlyexit_token_exits"


def _entry_key(start_char: int) -> tuple:
    return ("._.", TOKEN_EXITS_KEY, start_char, None)


def _token_exit_layers(token: Token) -> Dict[str, int]:
    """Exit layer of the token for each early-exit component that labelled it."""
    user_data = token.doc.user_data
    if not user_data:
        return {}
    start = token.idx
    layers: Dict[str, int] = {}
    for offset in range(start, start + max(1, len(token.text))):
        entry = user_data.get(_entry_key(offset))
        if entry:
            for component, (layer, _length) in entry.items():
                layers[component] = max(layer, layers.get(component, layer))
    # A split part has no entry of its own: look back through the parts before
    # it, unless every component known to have run is found already. Split
    # parts carry no whitespace between them, so the walk stops at the first
    # earlier token that is followed by whitespace.
    known = token.doc._.earlyexit
    if known and set(known) <= set(layers):
        return layers
    decided = set(layers)
    doc = token.doc
    i = token.i - 1
    while i >= 0 and not doc[i].whitespace_:
        previous = doc[i]
        for offset in range(previous.idx + max(1, len(previous.text)) - 1, previous.idx - 1, -1):
            entry = user_data.get(_entry_key(offset))
            if not entry:
                continue
            for component, (layer, length) in entry.items():
                if component in decided:
                    continue
                decided.add(component)  # only the nearest earlier entry counts
                if offset + length > start:
                    layers[component] = layer
        i -= 1
    return layers


def _token_exit_layer(token: Token) -> Optional[int]:
    """Exit layer of the token (1..L); with several early-exit components, the deepest."""
    layers = _token_exit_layers(token)
    return max(layers.values()) if layers else None


def _doc_speedup(doc: Doc) -> Optional[float]:
    """Full-depth cost divided by the cost spent, over all early-exit
    components (each encoder pass once: a shared encoder's tasks add none)."""
    info = doc._.earlyexit or {}
    passes = [entry for entry in info.values() if not entry.get("encoder")]
    cost = sum(entry["cost"] for entry in passes)
    full = sum(entry["full_cost"] for entry in passes)
    if not info:
        return None
    return full / cost if cost > 0 else 1.0


def register_extensions() -> None:
    if not Doc.has_extension("earlyexit"):
        Doc.set_extension("earlyexit", default=None)
    if not Doc.has_extension("earlyexit_speedup"):
        Doc.set_extension("earlyexit_speedup", getter=_doc_speedup)
    if not Token.has_extension("exit_layer"):
        Token.set_extension("exit_layer", getter=_token_exit_layer)
    if not Token.has_extension("exit_layers"):
        Token.set_extension("exit_layers", getter=_token_exit_layers)
    if not Doc.has_extension("earlyexit_tasks"):
        Doc.set_extension("earlyexit_tasks", default=None)


def put_task_outputs(doc: Doc, outputs: Dict[str, dict]) -> None:
    """Leave a shared encoder's predictions for its tasks on `doc`: task
    name -> that task's prediction (a dict of plain values and arrays, so a
    doc that a disabled task never took from still serializes)."""
    doc._.earlyexit_tasks = {**(doc._.earlyexit_tasks or {}), **outputs}


def task_outputs(doc: Doc, task: str) -> Optional[dict]:
    """The prediction a shared encoder left on `doc` for `task`, if any."""
    return (doc._.earlyexit_tasks or {}).get(task)


def take_task_outputs(doc: Doc, task: str) -> None:
    """Remove `task`'s prediction from `doc` once the task has annotated it
    (the dict is replaced, not changed: `Doc.from_docs` copies shallowly)."""
    rest = {name: value for name, value in (doc._.earlyexit_tasks or {}).items() if name != task}
    doc._.earlyexit_tasks = rest or None


def _has_entries_of(user_data: dict, component: str) -> bool:
    """Whether `user_data` holds exit entries of `component` (an earlier run)."""
    return any(
        isinstance(key, tuple)
        and len(key) == 4
        and key[1] == TOKEN_EXITS_KEY
        and isinstance(value, dict)
        and component in value
        for key, value in user_data.items()
    )


def record_exits(
    doc: Doc,
    component: str,
    exit_layers,
    n_layers: int,
    cost: float,
    full_cost: float,
    width: float = 1.0,
    encoder: Optional[str] = None,
) -> None:
    """Store one component's exit information on a doc (without touching others'):
    `cost` at the width it ran, `full_cost` of a full-depth, full-width pass;
    `encoder`: the shared encoder whose pass it is (a task's entry repeats
    that pass's cost and is not counted again in `doc._.earlyexit_speedup`).

    Entries are replaced, never changed in place: `Doc.from_docs` copies them
    shallowly, so the source doc may share them."""
    user_data = doc.user_data
    starts = doc.to_array(IDX).tolist() if len(doc) else []
    lengths = [max(1, n) for n in doc.to_array(LENGTH).tolist()] if len(doc) else []
    layers = [int(layer) for layer in exit_layers]
    if not _has_entries_of(user_data, component):
        # the usual case: nothing of this component to replace, no stale entries.
        # Tokens of the same layer and length share one entry (entries are never
        # changed in place): far fewer objects for the garbage collector to visit
        shared: Dict[tuple, dict] = {}
        for start, length, layer in zip(starts, lengths, layers):
            key = _entry_key(start)
            entry = user_data.get(key)
            if entry:
                user_data[key] = {**entry, component: (layer, length)}
            else:
                value = shared.get((layer, length))
                if value is None:
                    value = shared[(layer, length)] = {component: (layer, length)}
                user_data[key] = value
    else:
        for start, length, layer in zip(starts, lengths, layers):
            # this component's entries inside the token are from an earlier run on
            # other tokens (before a merge): they would mix into the new layer
            for offset in range(start + 1, start + length):
                key = _entry_key(offset)
                entry = user_data.get(key)
                if entry and component in entry:
                    rest = {name: value for name, value in entry.items() if name != component}
                    if rest:
                        user_data[key] = rest
                    else:
                        del user_data[key]
            key = _entry_key(start)
            entry = dict(user_data.get(key) or {})
            entry[component] = (layer, length)
            user_data[key] = entry
    info = dict(doc._.earlyexit or {})
    info[component] = {
        "n_layers": int(n_layers),
        "cost": float(cost),
        "full_cost": float(full_cost),
        "speedup": float(full_cost / cost) if cost > 0 else 1.0,
        "width": float(width),
    }
    if encoder is not None:
        info[component]["encoder"] = encoder
    doc._.earlyexit = info
