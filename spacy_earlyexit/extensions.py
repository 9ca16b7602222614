"""Extension attributes that report how much work each token took.

`doc._.earlyexit` holds, per early-exit component name, the exit layer of each
token and the analytic cost of the doc; the getters below summarize it.
"""
from typing import Dict, Optional

from spacy.tokens import Doc, Token


def _token_exit_layers(token: Token) -> Dict[str, int]:
    info = token.doc._.earlyexit or {}
    return {name: entry["exit_layers"][token.i] for name, entry in info.items()}


def _token_exit_layer(token: Token) -> Optional[int]:
    """Exit layer of the token (1..L); with several early-exit components, the deepest."""
    layers = _token_exit_layers(token)
    return max(layers.values()) if layers else None


def _doc_speedup(doc: Doc) -> Optional[float]:
    """Full-depth cost divided by the cost spent, over all early-exit components."""
    info = doc._.earlyexit or {}
    cost = sum(entry["cost"] for entry in info.values())
    full = sum(entry["full_cost"] for entry in info.values())
    if not info:
        return None
    return full / cost if cost > 0 else 1.0


def _doc_relative_cost(doc: Doc) -> Optional[float]:
    speedup = _doc_speedup(doc)
    return None if speedup is None else 1.0 / speedup


def register_extensions() -> None:
    if not Doc.has_extension("earlyexit"):
        Doc.set_extension("earlyexit", default=None)
    if not Doc.has_extension("earlyexit_speedup"):
        Doc.set_extension("earlyexit_speedup", getter=_doc_speedup)
    if not Doc.has_extension("earlyexit_relative_cost"):
        Doc.set_extension("earlyexit_relative_cost", getter=_doc_relative_cost)
    if not Token.has_extension("exit_layer"):
        Token.set_extension("exit_layer", getter=_token_exit_layer)
    if not Token.has_extension("exit_layers"):
        Token.set_extension("exit_layers", getter=_token_exit_layers)


def record_exits(doc: Doc, component: str, exit_layers, n_layers: int, cost: float, full_cost: float) -> None:
    """Store one component's exit information on a doc (without touching others')."""
    info = dict(doc._.earlyexit or {})
    info[component] = {
        "exit_layers": [int(layer) for layer in exit_layers],
        "n_layers": int(n_layers),
        "cost": float(cost),
        "full_cost": float(full_cost),
        "speedup": float(full_cost / cost) if cost > 0 else 1.0,
    }
    doc._.earlyexit = info
