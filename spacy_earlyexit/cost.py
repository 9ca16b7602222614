"""Analytic cost of a multi-exit encoder, in multiply-accumulates (MACs).

Per layer, with n real pieces in a sequence of which q are active, hidden size
d, attention width a (kept heads x head size; d at full width) and f kept
feed-forward neurons: keys and values `2 n d a`, queries and output projection
`2 q d a`, attention scores and weighted sum `2 q n a`, feed-forward
`2 q d f`; a classifier costs `d C` per word it labels. Embeddings are the same
for every policy and width, and left out.
"""
from dataclasses import dataclass

from torch import Tensor

from .width import kept


@dataclass(frozen=True)
class LayerCost:
    hidden_size: int
    ff_size: int
    n_labels: int
    n_heads: int = 1

    def layer(self, n: Tensor, q: Tensor, width: float = 1.0) -> Tensor:
        """MACs of one layer at `width` for sequences of n pieces with q active."""
        d = self.hidden_size
        a = kept(width, self.n_heads) * (d // self.n_heads)
        f = kept(width, self.ff_size)
        return 2 * n * d * a + 2 * q * d * a + 2 * q * n * a + 2 * q * d * f

    def classifier(self, n_words: Tensor) -> Tensor:
        return n_words * self.hidden_size * self.n_labels

    def full(self, n: Tensor, n_words: Tensor, n_layers: int) -> Tensor:
        """A standard single-exit pass: every layer on every piece at full
        width, one classifier."""
        return n_layers * self.layer(n, n) + self.classifier(n_words)
